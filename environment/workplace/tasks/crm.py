"""CRM templates: add, update (status, rep, contact details, product) and delete customers."""

from __future__ import annotations

import random
from datetime import timedelta

from environment.workplace.tasks import vocab
from environment.workplace.tasks.base import (
    MAX_WRITES,
    PRODUCTS,
    STATUSES,
    TODAY,
    Draft,
    call,
    collect_templates,
    display_name,
    iso,
    nl_date,
    pick,
    template,
)
from environment.workplace.tasks.sandbox import Sandbox


def unique_customer(rng: random.Random, sb: Sandbox) -> dict | None:
    """A customer whose name is unique in the CRM (found by a name search, as an agent would)."""
    name = pick(rng, sb.all_customers())["customer_name"]
    same = [c for c in sb.customers(customer_name=name) if c["customer_name"] == name]
    return same[0] if len(same) == 1 else None


def _rep(rng: random.Random, sb: Sandbox, *exclude: str) -> str:
    return pick(rng, [r for r in sb.reps() if r not in exclude])


def _update(customer: dict, field: str, value: str) -> tuple[str, dict[str, str]]:
    return call(
        "customer_relationship_manager_update_customer",
        customer_id=customer["customer_id"],
        field=field,
        new_value=value,
    )


def _new_name(rng: random.Random, sb: Sandbox) -> str | None:
    name = f"{pick(rng, vocab.FIRST_NAMES)} {pick(rng, vocab.LAST_NAMES)}"
    return None if sb.customers(customer_name=name) else name


@template(
    "customer_relationship_manager",
    (
        "Update the status of {customer} to {status} in the crm",
        "{customer} has moved to {status}. Please update the CRM.",
        "Can you set {customer}'s status to {status} in the crm?",
    ),
    writes=("customer_relationship_manager_update_customer",),
)
def update_status(rng: random.Random, sb: Sandbox) -> Draft | None:
    customer = unique_customer(rng, sb)
    if customer is None:
        return None
    status = pick(rng, [s for s in STATUSES if s != customer["status"]])
    return Draft(
        {"customer": customer["customer_name"], "status": status.lower()}, [_update(customer, "status", status)]
    )


@template(
    "customer_relationship_manager",
    (
        "Delete {customer} from the crm",
        "{customer} is no longer a customer. Can you delete them from the crm?",
        "Please remove {customer}'s record from the CRM.",
    ),
    writes=("customer_relationship_manager_delete_customer",),
)
def delete_customer(rng: random.Random, sb: Sandbox) -> Draft | None:
    customer = unique_customer(rng, sb)
    if customer is None:
        return None
    return Draft(
        {"customer": customer["customer_name"]},
        [call("customer_relationship_manager_delete_customer", customer_id=customer["customer_id"])],
    )


@template(
    "customer_relationship_manager",
    (
        "Add {customer} as a new lead in the crm and assign them to {rep}",
        "Can you add {customer} to the crm? They're a new lead and need to be assigned to {rep}.",
        "New lead: {customer}. Put them in the CRM under {rep}.",
    ),
    writes=("customer_relationship_manager_add_customer",),
)
def add_lead(rng: random.Random, sb: Sandbox) -> Draft | None:
    name = _new_name(rng, sb)
    if name is None:
        return None
    rep = _rep(rng, sb)
    return Draft(
        {"customer": name, "rep": display_name(rep)},
        [call("customer_relationship_manager_add_customer", customer_name=name, assigned_to_email=rep, status="Lead")],
    )


@template(
    "customer_relationship_manager",
    (
        "Add {customer} to the crm with status {status}, assigned to {rep}, interested in {product}, email {email}",
        "Create a CRM record for {customer}: status {status}, rep {rep}, product interest {product}, email {email}.",
        "New CRM entry: {customer} ({email}), {product} interest, status {status}, owned by {rep}.",
        "New CRM entry: {customer} ({email}), {product} interest, status {status}, owned by {rep}.",
    ),
    writes=("customer_relationship_manager_add_customer",),
)
def add_customer_details(rng: random.Random, sb: Sandbox) -> Draft | None:
    name = _new_name(rng, sb)
    if name is None:
        return None
    rep, status, product = _rep(rng, sb), pick(rng, STATUSES), pick(rng, PRODUCTS)
    email = f"{name.lower().replace(' ', '.')}@{pick(rng, vocab.COMPANIES)}.com"
    params = {
        "customer": name,
        "status": status.lower(),
        "rep": display_name(rep),
        "product": product.lower(),
        "email": email,
    }
    return Draft(
        params,
        [
            call(
                "customer_relationship_manager_add_customer",
                customer_name=name,
                assigned_to_email=rep,
                status=status,
                customer_email=email,
                product_interest=product,
            )
        ],
    )


@template(
    "customer_relationship_manager",
    (
        "Reassign {customer} to {rep} in the crm",
        "We're moving {customer} to {rep}. Can you make that change in the crm?",
        "{rep} is taking over {customer}'s account - update the CRM.",
    ),
    writes=("customer_relationship_manager_update_customer",),
)
def reassign_customer(rng: random.Random, sb: Sandbox) -> Draft | None:
    customer = unique_customer(rng, sb)
    if customer is None:
        return None
    rep = _rep(rng, sb, customer["assigned_to_email"])
    return Draft(
        {"customer": customer["customer_name"], "rep": display_name(rep)},
        [_update(customer, "assigned_to_email", rep)],
    )


@template(
    "customer_relationship_manager",
    (
        "Reassign all of {old}'s leads that are interested in {product} to {new} in the crm",
        "{new} is taking over all of {old}'s leads that are interested in {product}. Can you reassign them in the crm?",
        "Move {old}'s {product} leads over to {new} in the crm.",
        "Move {old}'s {product} leads over to {new} in the crm.",
    ),
    writes=("customer_relationship_manager_update_customer",),
    conditional=True,
)
def reassign_leads_by_product(rng: random.Random, sb: Sandbox) -> Draft | None:
    old = _rep(rng, sb)
    new = _rep(rng, sb, old)
    product = pick(rng, PRODUCTS)
    chosen = sb.customers(assigned_to_email=old, status="Lead", product_interest=product)
    if len(chosen) > MAX_WRITES:
        return None
    return Draft(
        {"old": display_name(old), "new": display_name(new), "product": product.lower()},
        [_update(c, "assigned_to_email", new) for c in chosen],
    )


@template(
    "customer_relationship_manager",
    (
        "Give {new} all of {old}'s customers that are interested in {product} and are either qualified or in "
        "proposal in the crm",
        "Move {old}'s {product} customers in the qualified or proposal stage over to {new} in the crm.",
        "In the crm, hand {new} every customer of {old}'s who is interested in {product} and is qualified or "
        "in proposal.",
        "In the crm, hand {new} every customer of {old}'s who is interested in {product} and is qualified or "
        "in proposal.",
    ),
    writes=("customer_relationship_manager_update_customer",),
    conditional=True,
)
def reassign_qualified_or_proposal(rng: random.Random, sb: Sandbox) -> Draft | None:
    old = _rep(rng, sb)
    new = _rep(rng, sb, old)
    product = pick(rng, PRODUCTS)
    found = sb.customers(assigned_to_email=old, product_interest=product)
    chosen = [c for c in found if c["status"] in ("Qualified", "Proposal")]
    if len(chosen) > MAX_WRITES:
        return None
    return Draft(
        {"old": display_name(old), "new": display_name(new), "product": product.lower()},
        [_update(c, "assigned_to_email", new) for c in chosen],
    )


@template(
    "customer_relationship_manager",
    (
        "Delete all of {rep}'s customers that are in the {status} stage and interested in {product} in the crm",
        "We no longer need to keep {rep}'s {status} customers interested in {product}. Delete them from the crm.",
        "Remove from the crm all customers assigned to {rep} with status {status} and product interest {product}.",
        "Remove from the crm all customers assigned to {rep} with status {status} and product interest {product}.",
    ),
    writes=("customer_relationship_manager_delete_customer",),
    conditional=True,
)
def delete_by_stage_and_product(rng: random.Random, sb: Sandbox) -> Draft | None:
    rep, status, product = _rep(rng, sb), pick(rng, STATUSES), pick(rng, PRODUCTS)
    chosen = sb.customers(assigned_to_email=rep, status=status, product_interest=product)
    if len(chosen) > MAX_WRITES:
        return None
    return Draft(
        {"rep": display_name(rep), "status": status.lower(), "product": product.lower()},
        [call("customer_relationship_manager_delete_customer", customer_id=c["customer_id"]) for c in chosen],
    )


@template(
    "customer_relationship_manager",
    (
        "Move every customer in the proposal stage for {product} whose last contact was before {date} to lost "
        "in the crm",
        "Proposal-stage {product} customers we haven't contacted since before {date} are lost. Update their "
        "status in the crm.",
        "Mark as lost every {product} customer still in proposal whose last contact date is before {date}.",
        "Mark as lost every {product} customer still in proposal whose last contact date is before {date}.",
    ),
    writes=("customer_relationship_manager_update_customer",),
    conditional=True,
)
def stale_proposals_to_lost(rng: random.Random, sb: Sandbox) -> Draft | None:
    product = pick(rng, PRODUCTS)
    cutoff = iso(TODAY - timedelta(days=rng.randint(7, 50)))
    found = sb.customers(status="Proposal", product_interest=product)
    chosen = [c for c in found if c["last_contact_date"][:10] < cutoff]
    if len(chosen) > MAX_WRITES:
        return None
    return Draft({"product": product.lower(), "date": nl_date(cutoff)}, [_update(c, "status", "Lost") for c in chosen])


@template(
    "customer_relationship_manager",
    (
        "Update {customer}'s phone number to {phone} in the crm",
        "{customer} has a new phone number: {phone}. Please record it in the CRM.",
        "Change the phone number for {customer} in the crm to {phone}.",
        "Change the phone number for {customer} in the crm to {phone}.",
    ),
    writes=("customer_relationship_manager_update_customer",),
)
def update_phone(rng: random.Random, sb: Sandbox) -> Draft | None:
    customer = unique_customer(rng, sb)
    if customer is None:
        return None
    phone = f"{rng.randint(200, 989)}-{rng.randint(100, 999)}-{rng.randint(1000, 9999)}"
    return Draft({"customer": customer["customer_name"], "phone": phone}, [_update(customer, "customer_phone", phone)])


@template(
    "customer_relationship_manager",
    (
        "{customer} is now interested in {product}. Update the crm.",
        "Change the product interest of {customer} to {product} in the crm",
        "Set {customer}'s product interest to {product} in the CRM.",
        "Set {customer}'s product interest to {product} in the CRM.",
    ),
    writes=("customer_relationship_manager_update_customer",),
)
def update_product_interest(rng: random.Random, sb: Sandbox) -> Draft | None:
    customer = unique_customer(rng, sb)
    if customer is None:
        return None
    product = pick(rng, [p for p in PRODUCTS if p != customer["product_interest"]])
    return Draft(
        {"customer": customer["customer_name"], "product": product.lower()},
        [_update(customer, "product_interest", product)],
    )


@template(
    "customer_relationship_manager",
    (
        "If {customer} is still {status_word}, move them to {target} in the crm",
        "Check {customer}'s status in the CRM. If it's {status}, change it to {target}.",
        "Only if {customer}'s status is currently {status}, update it to {target} in the crm.",
        "Only if {customer}'s status is currently {status}, update it to {target} in the crm.",
    ),
    writes=("customer_relationship_manager_update_customer",),
    conditional=True,
)
def status_if(rng: random.Random, sb: Sandbox) -> Draft | None:
    customer = unique_customer(rng, sb)
    if customer is None:
        return None
    status = customer["status"] if rng.random() < 0.5 else pick(rng, STATUSES)
    target = pick(rng, [s for s in STATUSES if s != status])
    params = {
        "customer": customer["customer_name"],
        "status_word": vocab.STATUS_WORDS[status],
        "status": status.lower(),
        "target": target.lower(),
    }
    return Draft(params, [_update(customer, "status", target)] if customer["status"] == status else [])


@template(
    "customer_relationship_manager",
    (
        "Update {customer}'s email address to {email} in the crm",
        "{customer} changed their email to {email}. Please update the CRM record.",
        "Set the customer email for {customer} to {email} in the crm.",
        "Set the customer email for {customer} to {email} in the crm.",
    ),
    writes=("customer_relationship_manager_update_customer",),
)
def update_email(rng: random.Random, sb: Sandbox) -> Draft | None:
    customer = unique_customer(rng, sb)
    if customer is None:
        return None
    email = f"{customer['customer_name'].lower().replace(' ', '.')}@{pick(rng, vocab.COMPANIES)}.com"
    return Draft({"customer": customer["customer_name"], "email": email}, [_update(customer, "customer_email", email)])


TEMPLATES = collect_templates(globals())
