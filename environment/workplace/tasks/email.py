"""Email templates: delete, send, reply and forward, some conditional on what the inbox holds."""

from __future__ import annotations

import random
from datetime import timedelta

from environment.workplace.tasks import vocab
from environment.workplace.tasks.base import (
    MAX_WRITES,
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


def _sender(rng: random.Random, sb: Sandbox) -> tuple[str, str]:
    """A random colleague who has emailed me: (address, display name)."""
    address = pick(rng, sb.people())
    return address, display_name(address)


def _other(rng: random.Random, sb: Sandbox, *exclude: str) -> str:
    return pick(rng, [p for p in sb.people() if p not in exclude])


def _recent_day(rng: random.Random, days_back: int = 14) -> str:
    return iso(TODAY - timedelta(days=rng.randint(1, days_back)))


def _latest_with_subject(sb: Sandbox, subject: str, sender: str | None = None) -> dict | None:
    """The newest email whose subject is exactly ``subject`` (optionally from ``sender``)."""
    found = sb.emails(sender or "")
    return next((e for e in found if e["subject"] == subject), None)


@template(
    "email",
    (
        "Delete my last email from {name}",
        "Can you delete the most recent email {name} sent me?",
        "Please get rid of the latest email I got from {name}.",
        "Trash {name}'s most recent email to me.",
    ),
    writes=("email_delete_email",),
)
def delete_last_from(rng: random.Random, sb: Sandbox) -> Draft | None:
    address, name = _sender(rng, sb)
    found = sb.emails(address)
    if not found:
        return None
    return Draft({"name": name}, [call("email_delete_email", email_id=found[0]["email_id"])])


@template(
    "email",
    (
        "Delete all the emails {name} sent me since {date}",
        "Please delete every email from {name} received on or after {date}.",
        "Clear out {name}'s emails from {date} onwards, if there are any.",
    ),
    writes=("email_delete_email",),
    conditional=True,
)
def delete_from_since(rng: random.Random, sb: Sandbox) -> Draft | None:
    address, name = _sender(rng, sb)
    day = _recent_day(rng, 12)
    found = sb.emails(address, date_min=day)
    if len(found) > MAX_WRITES:
        return None
    return Draft(
        {"name": name, "date": nl_date(day)},
        [call("email_delete_email", email_id=e["email_id"]) for e in found],
    )


@template(
    "email",
    (
        "Send an email to {name} saying '{body}' and title it '{subject}'",
        "Email {name} with the subject '{subject}' and the message '{body}'",
        "Can you write to {name}? Subject: '{subject}'. Body: '{body}'",
        "Please send {name} an email titled '{subject}' that says '{body}'",
    ),
    writes=("email_send_email",),
)
def send_email(rng: random.Random, sb: Sandbox) -> Draft | None:
    address = pick(rng, sb.people())
    subject, body = pick(rng, vocab.EMAIL_SUBJECTS), pick(rng, vocab.EMAIL_BODIES)
    return Draft(
        {"name": display_name(address), "subject": subject, "body": body},
        [call("email_send_email", recipient=address, subject=subject, body=body)],
    )


@template(
    "email",
    (
        "Reply to {name}'s last email about '{subject}' with '{reply}'",
        "Can you answer the most recent email from {name} about '{subject}'? Just say '{reply}'",
        "Respond to {name}'s latest message on '{subject}' with '{reply}'",
    ),
    writes=("email_reply_email",),
)
def reply_last_about(rng: random.Random, sb: Sandbox) -> Draft | None:
    address, name = _sender(rng, sb)
    found = sb.emails(address)
    if not found:
        return None
    subject = pick(rng, sorted({e["subject"] for e in found}))
    target = _latest_with_subject(sb, subject, address)
    reply = pick(rng, vocab.REPLY_BODIES)
    return Draft(
        {"name": name, "subject": subject, "reply": reply},
        [call("email_reply_email", email_id=target["email_id"], body=reply)],
    )


@template(
    "email",
    (
        "Reply to the latest email from {name} with '{reply}'",
        "I need to reply to {name}'s most recent email with '{reply}'. Can you do that?",
        "Answer the last email {name} sent me: '{reply}'",
    ),
    writes=("email_reply_email",),
)
def reply_latest_from(rng: random.Random, sb: Sandbox) -> Draft | None:
    address, name = _sender(rng, sb)
    found = sb.emails(address)
    if not found:
        return None
    reply = pick(rng, vocab.REPLY_BODIES)
    return Draft({"name": name, "reply": reply}, [call("email_reply_email", email_id=found[0]["email_id"], body=reply)])


@template(
    "email",
    (
        "Forward the latest email about '{subject}' to {name}",
        "Can you send {name} the most recent email with the subject '{subject}'? Forward it please.",
        "{name} needs the last email about '{subject}'. Please forward it.",
    ),
    writes=("email_forward_email",),
)
def forward_latest_about(rng: random.Random, sb: Sandbox) -> Draft | None:
    subject = pick(rng, sorted({e["subject"] for e in sb.emails()}))
    target = _latest_with_subject(sb, subject)
    if target is None:
        return None
    recipient = _other(rng, sb, target["sender/recipient"])
    return Draft(
        {"subject": subject, "name": display_name(recipient)},
        [call("email_forward_email", email_id=target["email_id"], recipient=recipient)],
    )


@template(
    "email",
    (
        "Forward my most recent email from {sender} to {recipient}",
        "Please forward {sender}'s latest email to {recipient}.",
        "Send the last email I got from {sender} on to {recipient}.",
    ),
    writes=("email_forward_email",),
)
def forward_recent_from(rng: random.Random, sb: Sandbox) -> Draft | None:
    address, name = _sender(rng, sb)
    found = sb.emails(address)
    if not found:
        return None
    recipient = _other(rng, sb, address)
    return Draft(
        {"sender": name, "recipient": display_name(recipient)},
        [call("email_forward_email", email_id=found[0]["email_id"], recipient=recipient)],
    )


@template(
    "email",
    (
        "Forward the last email about '{subject}' to {first} and then to {second}",
        "Please forward the most recent email titled '{subject}' to {first}, and after that to {second}.",
        "Send the newest '{subject}' email on to {first} first and then to {second} (forward it twice).",
        "Send the newest '{subject}' email on to {first} first and then to {second} (forward it twice).",
    ),
    writes=("email_forward_email",),
)
def forward_about_to_two(rng: random.Random, sb: Sandbox) -> Draft | None:
    subject = pick(rng, sorted({e["subject"] for e in sb.emails()}))
    target = _latest_with_subject(sb, subject)
    if target is None:
        return None
    first = _other(rng, sb, target["sender/recipient"])
    second = _other(rng, sb, target["sender/recipient"], first)
    return Draft(
        {"subject": subject, "first": display_name(first), "second": display_name(second)},
        [
            call("email_forward_email", email_id=target["email_id"], recipient=first),
            call("email_forward_email", email_id=target["email_id"], recipient=second),
        ],
    )


@template(
    "email",
    (
        "Delete all emails from {name} about '{subject}'",
        "I don't need {name}'s emails about '{subject}' anymore - please delete all of them.",
        "Get rid of every email {name} sent me with the subject '{subject}'.",
        "Get rid of every email {name} sent me with the subject '{subject}'.",
    ),
    writes=("email_delete_email",),
)
def delete_from_about(rng: random.Random, sb: Sandbox) -> Draft | None:
    address, name = _sender(rng, sb)
    found = sb.emails(address)
    if not found:
        return None
    subject = pick(rng, sorted({e["subject"] for e in found}))
    matching = [e for e in found if e["subject"] == subject]
    if len(matching) > MAX_WRITES:
        return None
    return Draft(
        {"name": name, "subject": subject},
        [call("email_delete_email", email_id=e["email_id"]) for e in matching],
    )


@template(
    "email",
    (
        "If {name} has emailed me since {date}, reply to their latest email with '{reply}' - otherwise send "
        "them an email titled '{subject}' saying '{body}'",
        "Check whether {name} sent me anything on or after {date}. If so, reply to the newest one with "
        "'{reply}'; if not, email them with the subject '{subject}' and the body '{body}'",
        "Reply '{reply}' to {name}'s latest email if they wrote to me on or after {date}; if they haven't, "
        "send them '{body}' with the subject '{subject}'",
        "Reply '{reply}' to {name}'s latest email if they wrote to me on or after {date}; if they haven't, "
        "send them '{body}' with the subject '{subject}'",
    ),
    writes=("email_reply_email", "email_send_email"),
)
def reply_or_send(rng: random.Random, sb: Sandbox) -> Draft | None:
    address, name = _sender(rng, sb)
    day = _recent_day(rng, 10)
    reply = pick(rng, vocab.REPLY_BODIES)
    subject, body = pick(rng, vocab.EMAIL_SUBJECTS), pick(rng, vocab.EMAIL_BODIES)
    found = sb.emails(address, date_min=day)
    if found:
        calls = [call("email_reply_email", email_id=found[0]["email_id"], body=reply)]
    else:
        calls = [call("email_send_email", recipient=address, subject=subject, body=body)]
    params = {"name": name, "date": nl_date(day), "reply": reply, "subject": subject, "body": body}
    return Draft(params, calls)


@template(
    "email",
    (
        "If {sender} sent me any email since {date}, forward the most recent one to {recipient}",
        "Has {sender} emailed me on or after {date}? If yes, forward their latest email to {recipient}.",
        "Forward {sender}'s most recent email to {recipient}, but only if it arrived on or after {date}.",
        "Forward {sender}'s most recent email to {recipient}, but only if it arrived on or after {date}.",
    ),
    writes=("email_forward_email",),
    conditional=True,
)
def forward_if_recent(rng: random.Random, sb: Sandbox) -> Draft | None:
    address, name = _sender(rng, sb)
    day = _recent_day(rng, 10)
    recipient = _other(rng, sb, address)
    found = sb.emails(address, date_min=day)
    calls = [call("email_forward_email", email_id=found[0]["email_id"], recipient=recipient)] if found else []
    return Draft({"sender": name, "date": nl_date(day), "recipient": display_name(recipient)}, calls)


@template(
    "email",
    (
        "Delete the oldest email about '{subject}'",
        "Please remove the earliest email I have with the subject '{subject}'.",
        "Find the first email I ever got about '{subject}' and delete it.",
        "Find the first email I ever got about '{subject}' and delete it.",
    ),
    writes=("email_delete_email",),
)
def delete_oldest_about(rng: random.Random, sb: Sandbox) -> Draft | None:
    subject = pick(rng, sorted({e["subject"] for e in sb.emails()}))
    matching = [e for e in sb.emails() if e["subject"] == subject]
    if not matching:
        return None
    return Draft({"subject": subject}, [call("email_delete_email", email_id=matching[-1]["email_id"])])


@template(
    "email",
    (
        "Send {first} and {second} an email titled '{subject}' saying '{body}' - {first} first, then {second}",
        "Email {first}, then {second}, with the subject '{subject}' and the message '{body}'",
        "I need two emails sent, one to {first} and then one to {second}: subject '{subject}', message '{body}'.",
        "I need two emails sent, one to {first} and then one to {second}: subject '{subject}', message '{body}'.",
    ),
    writes=("email_send_email",),
)
def send_to_two(rng: random.Random, sb: Sandbox) -> Draft | None:
    first = pick(rng, sb.people())
    second = _other(rng, sb, first)
    subject, body = pick(rng, vocab.EMAIL_SUBJECTS), pick(rng, vocab.EMAIL_BODIES)
    return Draft(
        {"first": display_name(first), "second": display_name(second), "subject": subject, "body": body},
        [
            call("email_send_email", recipient=first, subject=subject, body=body),
            call("email_send_email", recipient=second, subject=subject, body=body),
        ],
    )


TEMPLATES = collect_templates(globals())
