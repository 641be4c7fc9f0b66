"""Multi-domain templates: read one toolkit, write another (often conditionally)."""

from __future__ import annotations

import random
from datetime import timedelta

from environment.workplace.tasks import vocab
from environment.workplace.tasks.analytics import FIRST_DAY, threshold_near_extreme
from environment.workplace.tasks.base import (
    MAX_WRITES,
    NOW,
    TODAY,
    Draft,
    call,
    collect_templates,
    display_name,
    earliest,
    iso,
    nl_date,
    nl_time,
    pick,
    template,
)
from environment.workplace.tasks.crm import unique_customer
from environment.workplace.tasks.sandbox import Sandbox

TOMORROW = TODAY + timedelta(days=1)
THRESHOLD_METRICS = ("total_visits", "user_engaged", "session_duration_seconds")


def _overdue_tasks(sb: Sandbox, member: str) -> list[dict]:
    return [
        t for t in sb.tasks(assigned_to_email=member) if t["due_date"] < iso(TODAY) and t["list_name"] != "Completed"
    ]


def _meeting(name: str, person: str, start: str, minutes: int = 30) -> tuple[str, dict[str, str]]:
    return call(
        "calendar_create_event", event_name=name, participant_email=person, event_start=start, duration=str(minutes)
    )


def _metric_condition(rng: random.Random, sb: Sandbox) -> tuple[dict[str, str], bool, str]:
    """'<metric> was more/less than T on any day since D': (params, whether it held, metric text)."""
    metric = pick(rng, THRESHOLD_METRICS)
    metric_text = vocab.METRICS[metric][0]
    since = iso(FIRST_DAY + timedelta(days=rng.randint(0, (TODAY - FIRST_DAY).days - 2)))
    values = list(sb.daily(metric, since, iso(TODAY)).values())
    more = rng.random() < 0.5
    threshold = threshold_near_extreme(rng, values, more)
    held = any(v > threshold for v in values) if more else any(v < threshold for v in values)
    params = {
        "metric_text": metric_text,
        "direction": "more" if more else "less",
        "threshold": str(threshold),
        "since": nl_date(since),
    }
    return params, held, metric_text


@template(
    "multi_domain",
    (
        "If we haven't contacted {customer} since {date}, book a 30-minute meeting called 'Update on {customer}' "
        "with whoever is assigned to them in the crm at the first time I'm free tomorrow",
        "Check the crm: if {customer}'s last contact was before {date}, schedule a half-hour 'Update on {customer}' "
        "meeting with their account rep at my earliest free slot tomorrow.",
        "If {customer}'s last contact date in the crm is earlier than {date}, book 'Update on {customer}' for"
        " 30 minutes with their assigned rep at the first time I'm free tomorrow.",
        "If {customer}'s last contact date in the crm is earlier than {date}, book 'Update on {customer}' for"
        " 30 minutes with their assigned rep at the first time I'm free tomorrow.",
    ),
    writes=("calendar_create_event",),
    domains=("customer_relationship_manager", "calendar"),
    conditional=True,
)
def meet_rep_if_stale(rng: random.Random, sb: Sandbox) -> Draft | None:
    customer = unique_customer(rng, sb)
    if customer is None:
        return None
    cutoff = iso(TODAY - timedelta(days=rng.randint(3, 40)))
    calls = []
    if customer["last_contact_date"][:10] < cutoff:
        slot = sb.first_free_slot(iso(TOMORROW), 30)
        if slot is None:
            return None
        calls = [_meeting(f"Update on {customer['customer_name']}", customer["assigned_to_email"], slot)]
    return Draft({"customer": customer["customer_name"], "date": nl_date(cutoff)}, calls)


@template(
    "multi_domain",
    (
        "Add {customer} as a new lead in the crm and assign them to whichever of {a} and {b} has fewer overdue "
        "tasks (due before today)",
        "{customer} is a new lead. Of {a} and {b}, find who has fewer tasks due before today that aren't "
        "completed, and add {customer} to the crm under that person.",
        "Compare overdue tasks (due before today, not completed) for {a} and {b}, then add {customer} to the "
        "crm as a lead assigned to whoever has fewer.",
        "Compare overdue tasks (due before today, not completed) for {a} and {b}, then add {customer} to the "
        "crm as a lead assigned to whoever has fewer.",
    ),
    writes=("customer_relationship_manager_add_customer",),
    domains=("project_management", "customer_relationship_manager"),
)
def lead_to_least_overdue(rng: random.Random, sb: Sandbox) -> Draft | None:
    a, b = rng.sample(sb.assignees(), 2)
    na, nb = len(_overdue_tasks(sb, a)), len(_overdue_tasks(sb, b))
    if na == nb:
        return None
    name = f"{pick(rng, vocab.FIRST_NAMES)} {pick(rng, vocab.LAST_NAMES)}"
    if sb.customers(customer_name=name):
        return None
    owner = a if na < nb else b
    return Draft(
        {"customer": name, "a": display_name(a), "b": display_name(b)},
        [
            call(
                "customer_relationship_manager_add_customer", customer_name=name, assigned_to_email=owner, status="Lead"
            )
        ],
    )


@template(
    "multi_domain",
    (
        "Find the email from {email_date} about '{subject}' and schedule a {minutes}-minute meeting called "
        "'{subject}' at {time} on {date} with the sender",
        "There's an email from {email_date} titled '{subject}'. Book a {minutes}-minute meeting with whoever sent "
        "it, called '{subject}', on {date} at {time}.",
        "Schedule '{subject}' for {minutes} minutes on {date} at {time} with the person who sent me the "
        "'{subject}' email on {email_date}.",
        "Schedule '{subject}' for {minutes} minutes on {date} at {time} with the person who sent me the "
        "'{subject}' email on {email_date}.",
    ),
    writes=("calendar_create_event",),
    domains=("email", "calendar"),
)
def meeting_from_email(rng: random.Random, sb: Sandbox) -> Draft | None:
    email = pick(rng, sb.emails())
    day = email["sent_datetime"][:10]
    same = [e for e in sb.emails(date_min=day, date_max=day) if e["subject"] == email["subject"]]
    if len(same) != 1:
        return None
    when = TODAY + timedelta(days=rng.randint(1, 14))
    if when.weekday() >= 5:
        return None
    minutes = pick(rng, (30, 60))
    hour = rng.randint(9, 16)
    start = f"{iso(when)} {hour:02d}:00:00"
    params = {
        "email_date": nl_date(day),
        "subject": email["subject"],
        "minutes": str(minutes),
        "time": nl_time(f"{hour:02d}:00"),
        "date": nl_date(when),
    }
    return Draft(params, [_meeting(email["subject"], email["sender/recipient"], start, minutes)])


@template(
    "multi_domain",
    (
        "Send an email to the attendee of the first event on {date}. Title it with the event name and tell them "
        "'{body}'",
        "Whoever is in my first meeting on {date} should get an email with the meeting's name as the subject "
        "saying '{body}'.",
        "Email the participant of my earliest meeting on {date}, using the meeting name as the subject and "
        "'{body}' as the body.",
        "Email the participant of my earliest meeting on {date}, using the meeting name as the subject and "
        "'{body}' as the body.",
    ),
    writes=("email_send_email",),
    domains=("calendar", "email"),
)
def email_first_event_attendee(rng: random.Random, sb: Sandbox) -> Draft | None:
    days = sorted({e["event_start"][:10] for e in sb.events(time_min=NOW)})
    day = pick(rng, days)
    first = earliest(sb.events_on(day))
    if first is None:
        return None
    body = pick(
        rng,
        (
            "Remember to attend this event.",
            "Looking forward to seeing you there.",
            "Please bring your notes to this meeting.",
        ),
    )
    return Draft(
        {"date": nl_date(day), "body": body},
        [call("email_send_email", recipient=first["participant_email"], subject=first["event_name"], body=body)],
    )


@template(
    "multi_domain",
    (
        "If {name} hasn't sent me any emails since {date}, schedule a 30 minute meeting with them on {day} at "
        "{time} called 'Catch up with {name}'",
        "Check whether {name} has emailed me on or after {date}. If not, book 'Catch up with {name}' with them "
        "for 30 minutes on {day} at {time}.",
        "Book a 30-minute 'Catch up with {name}' with {name} on {day} at {time}, but only if they haven't "
        "emailed me since {date}.",
        "Book a 30-minute 'Catch up with {name}' with {name} on {day} at {time}, but only if they haven't "
        "emailed me since {date}.",
    ),
    writes=("calendar_create_event",),
    domains=("email", "calendar"),
    conditional=True,
)
def meet_if_no_email(rng: random.Random, sb: Sandbox) -> Draft | None:
    person = pick(rng, sb.people())
    since = iso(TODAY - timedelta(days=rng.randint(0, 3)))
    when = TODAY + timedelta(days=rng.randint(1, 14))
    if when.weekday() >= 5:
        return None
    hour = rng.randint(9, 17)
    found = sb.emails(person, date_min=since)
    name = display_name(person)
    calls = [] if found else [_meeting(f"Catch up with {name}", person, f"{iso(when)} {hour:02d}:00:00")]
    return Draft({"name": name, "date": nl_date(since), "day": nl_date(when), "time": nl_time(f"{hour:02d}:00")}, calls)


@template(
    "multi_domain",
    (
        "If I haven't met with {name} since {date}, send them an email titled 'Catch up soon?' saying "
        "'We haven't caught up in a while - can you send some availability over next week?'",
        "Have I had a meeting with {name} between {date} and now? If not, email them with the subject 'Catch up "
        "soon?' and the body 'We haven't caught up in a while - can you send some availability over next week?'",
        "Unless I've had a meeting with {name} since {date}, send them 'We haven't caught up in a while - can"
        " you send some availability over next week?' with the subject 'Catch up soon?'.",
        "Unless I've had a meeting with {name} since {date}, send them 'We haven't caught up in a while - can"
        " you send some availability over next week?' with the subject 'Catch up soon?'.",
    ),
    writes=("email_send_email",),
    domains=("calendar", "email"),
    conditional=True,
)
def email_if_not_met(rng: random.Random, sb: Sandbox) -> Draft | None:
    person = pick(rng, sb.people())
    since = iso(TODAY - timedelta(days=rng.randint(2, 12)))
    met = sb.events(person, time_min=f"{since} 00:00:00", time_max=NOW)
    body = "We haven't caught up in a while - can you send some availability over next week?"
    calls = [] if met else [call("email_send_email", recipient=person, subject="Catch up soon?", body=body)]
    return Draft({"name": display_name(person), "date": nl_date(since)}, calls)


@template(
    "multi_domain",
    (
        "If {name} has any overdue tasks (due before today and not completed), send them an email titled "
        "'Overdue tasks' saying 'You have a few overdue tasks - can you update me on them?'. Otherwise email them "
        "with 'Nice work keeping on top of your tasks this sprint!' titled 'Good work this sprint'",
        "Check {name}'s tasks. With anything overdue (due before today, not completed), email them 'You have a few "
        "overdue tasks - can you update me on them?' with the subject 'Overdue tasks'; if nothing is overdue, "
        "send 'Nice work keeping on top of your tasks this sprint!' with the subject 'Good work this sprint'.",
        "Email {name}: if they have overdue tasks (due before today, not completed), use the subject 'Overdue"
        " tasks' and say 'You have a few overdue tasks - can you update me on them?'; otherwise use the "
        "subject 'Good work this sprint' and say 'Nice work keeping on top of your tasks this sprint!'",
        "Email {name}: if they have overdue tasks (due before today, not completed), use the subject 'Overdue"
        " tasks' and say 'You have a few overdue tasks - can you update me on them?'; otherwise use the "
        "subject 'Good work this sprint' and say 'Nice work keeping on top of your tasks this sprint!'",
    ),
    writes=("email_send_email",),
    domains=("project_management", "email"),
)
def email_about_overdue(rng: random.Random, sb: Sandbox) -> Draft | None:
    member = pick(rng, sb.assignees())
    if _overdue_tasks(sb, member):
        subject, body = "Overdue tasks", "You have a few overdue tasks - can you update me on them?"
    else:
        subject, body = "Good work this sprint", "Nice work keeping on top of your tasks this sprint!"
    return Draft(
        {"name": display_name(member)}, [call("email_send_email", recipient=member, subject=subject, body=body)]
    )


@template(
    "multi_domain",
    (
        "If {name} has any overdue tasks (due before today and not completed), book a half-hour meeting with them "
        "called 'Catch up on overdue tasks' at the earliest time I'm free {when}",
        "Does {name} have tasks that were due before today and aren't completed? If so, schedule a 30-minute "
        "'Catch up on overdue tasks' with them at my first free slot {when}.",
        "Book 'Catch up on overdue tasks' (30 minutes) with {name} at the first time I'm free {when}, but "
        "only if they have tasks due before today that aren't completed.",
        "Book 'Catch up on overdue tasks' (30 minutes) with {name} at the first time I'm free {when}, but "
        "only if they have tasks due before today that aren't completed.",
    ),
    writes=("calendar_create_event",),
    domains=("project_management", "calendar"),
    conditional=True,
)
def meet_if_overdue(rng: random.Random, sb: Sandbox) -> Draft | None:
    member = pick(rng, sb.assignees())
    day = TODAY + timedelta(days=rng.randint(1, 7))
    if day.weekday() >= 5:
        return None
    calls = []
    if _overdue_tasks(sb, member):
        slot = sb.first_free_slot(iso(day), 30)
        if slot is None:
            return None
        calls = [_meeting("Catch up on overdue tasks", member, slot)]
    when = "tomorrow" if day == TOMORROW else f"on {nl_date(day)}"
    return Draft({"name": display_name(member), "when": when}, calls)


@template(
    "multi_domain",
    (
        "If {metric_text} was {direction} than {threshold} on any day since {since}, send an email to {name} "
        "titled 'Update on {metric_text}' saying 'I noticed {metric_text} was {direction} than {threshold} - can "
        "you update me?'",
        "Check whether {metric_text} was {direction} than {threshold} on any single day since {since}. If it was, "
        "email {name} with the subject 'Update on {metric_text}' and the body 'I noticed {metric_text} was "
        "{direction} than {threshold} - can you update me?'",
        "Email {name} with the subject 'Update on {metric_text}' and the body 'I noticed {metric_text} was "
        "{direction} than {threshold} - can you update me?' if that really happened on some day since "
        "{since}.",
        "Email {name} with the subject 'Update on {metric_text}' and the body 'I noticed {metric_text} was "
        "{direction} than {threshold} - can you update me?' if that really happened on some day since "
        "{since}.",
    ),
    writes=("email_send_email",),
    domains=("analytics", "email"),
    conditional=True,
)
def email_if_metric(rng: random.Random, sb: Sandbox) -> Draft | None:
    params, held, metric_text = _metric_condition(rng, sb)
    person = pick(rng, sb.people())
    params["name"] = display_name(person)
    body = f"I noticed {metric_text} was {params['direction']} than {params['threshold']} - can you update me?"
    calls = [call("email_send_email", recipient=person, subject=f"Update on {metric_text}", body=body)] if held else []
    return Draft(params, calls)


@template(
    "multi_domain",
    (
        "If {metric_text} was {direction} than {threshold} on any day since {since}, make a backlog task called "
        "'Improve {metric_text}' for {name} on the {board} board due {due}",
        "Was {metric_text} {direction} than {threshold} on some day since {since}? If so, add a Backlog task "
        "'Improve {metric_text}' on the {board} board, assigned to {name}, due {due}.",
        "Create the Backlog task 'Improve {metric_text}' for {name} on the {board} board, due {due}, only if "
        "{metric_text} was {direction} than {threshold} on at least one day since {since}.",
        "Create the Backlog task 'Improve {metric_text}' for {name} on the {board} board, due {due}, only if "
        "{metric_text} was {direction} than {threshold} on at least one day since {since}.",
    ),
    writes=("project_management_create_task",),
    domains=("analytics", "project_management"),
    conditional=True,
)
def task_if_metric(rng: random.Random, sb: Sandbox) -> Draft | None:
    params, held, metric_text = _metric_condition(rng, sb)
    member = pick(rng, sb.assignees())
    board = pick(rng, ("Back end", "Front end", "Design"))
    due = iso(TODAY + timedelta(days=rng.randint(1, 21)))
    params.update({"name": display_name(member), "board": board, "due": nl_date(due)})
    calls = []
    if held:
        calls = [
            call(
                "project_management_create_task",
                task_name=f"Improve {metric_text}",
                assigned_to_email=member,
                list_name="Backlog",
                due_date=due,
                board=board,
            )
        ]
    return Draft(params, calls)


@template(
    "multi_domain",
    (
        "If {metric_text} was {direction} than {threshold} on any day since {since}, delete all of {rep}'s leads "
        "interested in {product} from the crm",
        "I think {metric_text} might have been {direction} than {threshold} at some point since {since}. Check, and "
        "if so, remove {rep}'s {product} leads from the CRM.",
        "Delete {rep}'s leads interested in {product} from the crm if {metric_text} was {direction} than "
        "{threshold} on any day since {since}.",
        "Delete {rep}'s leads interested in {product} from the crm if {metric_text} was {direction} than "
        "{threshold} on any day since {since}.",
    ),
    writes=("customer_relationship_manager_delete_customer",),
    domains=("analytics", "customer_relationship_manager"),
    conditional=True,
)
def delete_leads_if_metric(rng: random.Random, sb: Sandbox) -> Draft | None:
    params, held, _ = _metric_condition(rng, sb)
    rep = pick(rng, sb.reps())
    product = pick(rng, ("Software", "Hardware", "Services", "Consulting", "Training"))
    leads = sb.customers(assigned_to_email=rep, status="Lead", product_interest=product)
    if not leads or len(leads) > MAX_WRITES - 1:  # an analytics read, a directory lookup and a CRM search first
        return None
    params.update({"rep": display_name(rep), "product": product.lower()})
    calls = [call("customer_relationship_manager_delete_customer", customer_id=c["customer_id"]) for c in leads]
    return Draft(params, calls if held else [])


@template(
    "multi_domain",
    (
        "If {name} has any overdue tasks (due before today and not completed), book a half-hour meeting with them "
        "called 'Catch up on overdue tasks' at the earliest time I'm free tomorrow and send them an email titled "
        "'Discuss overdue tasks' saying 'I have scheduled a meeting for us to discuss your overdue tasks.'",
        "Check if {name} has overdue tasks (due before today, not completed). If yes: schedule a 30-minute 'Catch "
        "up on overdue tasks' with them at my first free time tomorrow, and email them 'I have scheduled a meeting "
        "for us to discuss your overdue tasks.' with the subject 'Discuss overdue tasks'.",
        "When {name} has overdue tasks (due before today, not completed), do two things: book a 30-minute "
        "'Catch up on overdue tasks' with them at the earliest time I'm free tomorrow, and send them an email"
        " titled 'Discuss overdue tasks' saying 'I have scheduled a meeting for us to discuss your overdue "
        "tasks.'",
        "When {name} has overdue tasks (due before today, not completed), do two things: book a 30-minute "
        "'Catch up on overdue tasks' with them at the earliest time I'm free tomorrow, and send them an email"
        " titled 'Discuss overdue tasks' saying 'I have scheduled a meeting for us to discuss your overdue "
        "tasks.'",
    ),
    writes=("calendar_create_event", "email_send_email"),
    domains=("project_management", "calendar", "email"),
    conditional=True,
)
def meet_and_email_if_overdue(rng: random.Random, sb: Sandbox) -> Draft | None:
    member = pick(rng, sb.assignees())
    calls = []
    if _overdue_tasks(sb, member):
        slot = sb.first_free_slot(iso(TOMORROW), 30)
        if slot is None:
            return None
        body = "I have scheduled a meeting for us to discuss your overdue tasks."
        calls = [
            _meeting("Catch up on overdue tasks", member, slot),
            call("email_send_email", recipient=member, subject="Discuss overdue tasks", body=body),
        ]
    return Draft({"name": display_name(member)}, calls)


@template(
    "multi_domain",
    (
        "Forward the latest email from {name} to whoever is assigned to {customer} in the crm",
        "Look up {customer}'s account rep in the CRM and forward them {name}'s most recent email.",
        "Who owns {customer} in the crm? Forward them the most recent email I got from {name}.",
        "Who owns {customer} in the crm? Forward them the most recent email I got from {name}.",
    ),
    writes=("email_forward_email",),
    domains=("email", "customer_relationship_manager"),
)
def forward_to_account_rep(rng: random.Random, sb: Sandbox) -> Draft | None:
    customer = unique_customer(rng, sb)
    if customer is None:
        return None
    sender = pick(rng, sb.people())
    found = sb.emails(sender)
    if not found:
        return None
    return Draft(
        {"name": display_name(sender), "customer": customer["customer_name"]},
        [call("email_forward_email", email_id=found[0]["email_id"], recipient=customer["assigned_to_email"])],
    )


@template(
    "multi_domain",
    (
        "Create a backlog task on the {board} board named after the subject of {name}'s latest email, assign it "
        "to {name} and make it due {date}",
        "Take the subject line of the most recent email from {name} and turn it into a Backlog task on the {board} "
        "board for them, due {date}.",
        "Make a Backlog task on the {board} board for {name}, named exactly like the subject of the last "
        "email they sent me, due {date}.",
        "Make a Backlog task on the {board} board for {name}, named exactly like the subject of the last "
        "email they sent me, due {date}.",
    ),
    writes=("project_management_create_task",),
    domains=("email", "project_management"),
)
def task_from_email(rng: random.Random, sb: Sandbox) -> Draft | None:
    member = pick(rng, sb.assignees())
    found = sb.emails(member)
    if not found:
        return None
    board = pick(rng, ("Back end", "Front end", "Design"))
    due = iso(TODAY + timedelta(days=rng.randint(1, 21)))
    return Draft(
        {"board": board, "name": display_name(member), "date": nl_date(due)},
        [
            call(
                "project_management_create_task",
                task_name=found[0]["subject"],
                assigned_to_email=member,
                list_name="Backlog",
                due_date=due,
                board=board,
            )
        ],
    )


@template(
    "multi_domain",
    (
        "Make a line chart of {metric_text} from {start} to {end} and email {name} titled '{metric_title} report' "
        "saying 'The {metric_text} chart is ready.'",
        "Plot {metric_text} between {start} and {end} as a line chart, then send {name} an email with the subject "
        "'{metric_title} report' and the body 'The {metric_text} chart is ready.'",
        "Create a line chart of {metric_text} for {start} to {end}, and let {name} know by email (subject "
        "'{metric_title} report', body 'The {metric_text} chart is ready.').",
        "Create a line chart of {metric_text} for {start} to {end}, and let {name} know by email (subject "
        "'{metric_title} report', body 'The {metric_text} chart is ready.').",
    ),
    writes=("analytics_create_plot", "email_send_email"),
    domains=("analytics", "email"),
)
def plot_and_email(rng: random.Random, sb: Sandbox) -> Draft | None:
    metric = pick(rng, tuple(vocab.METRICS))
    metric_text = vocab.METRICS[metric][0]
    span = (TODAY - FIRST_DAY).days
    a = rng.randint(0, span - 2)
    b = rng.randint(a + 1, span)
    start, end = iso(FIRST_DAY + timedelta(days=a)), iso(FIRST_DAY + timedelta(days=b))
    person = pick(rng, sb.people())
    title = metric_text[0].upper() + metric_text[1:]
    return Draft(
        {
            "metric_text": metric_text,
            "metric_title": title,
            "start": nl_date(start),
            "end": nl_date(end),
            "name": display_name(person),
        },
        [
            call("analytics_create_plot", time_min=start, time_max=end, value_to_plot=metric, plot_type="line"),
            call(
                "email_send_email",
                recipient=person,
                subject=f"{title} report",
                body=f"The {metric_text} chart is ready.",
            ),
        ],
    )


@template(
    "multi_domain",
    (
        "Delete all my upcoming meetings with {name} and email them titled 'Meetings cancelled' saying '{body}'",
        "Cancel every future meeting I have with {name}, then send them an email with the subject 'Meetings "
        "cancelled' and the body '{body}'.",
        "Remove all my future meetings with {name} from the calendar and email them '{body}' with the subject"
        " 'Meetings cancelled'.",
        "Remove all my future meetings with {name} from the calendar and email them '{body}' with the subject"
        " 'Meetings cancelled'.",
    ),
    writes=("calendar_delete_event", "email_send_email"),
    domains=("calendar", "email"),
)
def cancel_and_notify(rng: random.Random, sb: Sandbox) -> Draft | None:
    person = pick(rng, sb.people())
    upcoming = sb.events(person, time_min=NOW)
    if not upcoming or len(upcoming) + 1 > MAX_WRITES:
        return None
    body = pick(
        rng,
        (
            "I need to cancel our upcoming meetings - let's reschedule soon.",
            "Our meetings are cancelled for now. Sorry for the short notice.",
        ),
    )
    calls = [call("calendar_delete_event", event_id=e["event_id"]) for e in upcoming]
    calls.append(call("email_send_email", recipient=person, subject="Meetings cancelled", body=body))
    return Draft({"name": display_name(person), "body": body}, calls)


@template(
    "multi_domain",
    (
        "Reassign {customer} in the crm to the person I have my first meeting with on {date}",
        "Whoever is in my first meeting on {date} should take over {customer} - update the crm.",
        "Make the participant of my first meeting on {date} the account rep for {customer} in the crm.",
        "Make the participant of my first meeting on {date} the account rep for {customer} in the crm.",
    ),
    writes=("customer_relationship_manager_update_customer",),
    domains=("calendar", "customer_relationship_manager"),
)
def reassign_to_meeting_attendee(rng: random.Random, sb: Sandbox) -> Draft | None:
    customer = unique_customer(rng, sb)
    if customer is None:
        return None
    days = sorted({e["event_start"][:10] for e in sb.events(time_min=NOW)})
    day = pick(rng, days)
    first = earliest(sb.events_on(day))
    if first is None or first["participant_email"] == customer["assigned_to_email"]:
        return None
    return Draft(
        {"customer": customer["customer_name"], "date": nl_date(day)},
        [
            call(
                "customer_relationship_manager_update_customer",
                customer_id=customer["customer_id"],
                field="assigned_to_email",
                new_value=first["participant_email"],
            )
        ],
    )


@template(
    "multi_domain",
    (
        "If {name} has any tasks in review, delete my next meeting with them",
        "Check whether {name} has tasks in the In Review list; if they do, cancel my next meeting with them.",
        "Cancel my next meeting with {name} if any of their tasks are in review.",
        "Cancel my next meeting with {name} if any of their tasks are in review.",
    ),
    writes=("calendar_delete_event",),
    domains=("project_management", "calendar"),
    conditional=True,
)
def cancel_meeting_if_in_review(rng: random.Random, sb: Sandbox) -> Draft | None:
    member = pick(rng, sb.assignees())
    upcoming = earliest(sb.events(member, time_min=NOW))
    if upcoming is None:
        return None
    in_review = [t for t in sb.tasks(assigned_to_email=member) if t["list_name"] == "In Review"]
    calls = [call("calendar_delete_event", event_id=upcoming["event_id"])] if in_review else []
    return Draft({"name": display_name(member)}, calls)


TEMPLATES = collect_templates(globals())
