"""Calendar templates: cancel, rename, move, resize, re-invite and create events, some conditional."""

from __future__ import annotations

import random
from datetime import date, datetime, timedelta

from environment.workplace.tasks import vocab
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
    latest,
    nl_date,
    nl_minutes,
    nl_time,
    pick,
    template,
)
from environment.workplace.tasks.sandbox import Sandbox

FMT = "%Y-%m-%d %H:%M:%S"
DURATIONS = (30, 60, 90, 120)


def _days_with_events(sb: Sandbox, start: str = "2023-11-15") -> list[str]:
    return sorted({e["event_start"][:10] for e in sb.events(time_min=f"{start} 00:00:00")})


def _future_events(sb: Sandbox) -> list[dict]:
    return sb.events(time_min=NOW)


def _end(event: dict) -> datetime:
    return datetime.strptime(event["event_start"], FMT) + timedelta(minutes=int(event["duration"]))


def _fits_day(start: datetime, minutes: int) -> bool:
    """Within the working day the system prompt sets: not before 9am, not ending after 6pm."""
    return start.hour >= 9 and start + timedelta(minutes=minutes) <= start.replace(hour=18, minute=0)


def _unique_on_day(sb: Sandbox, rng: random.Random) -> dict | None:
    """A future event whose name occurs once on its day (so 'the X meeting on D' names one event)."""
    event = pick(rng, _future_events(sb))
    same = [
        e for e in sb.events_on(event["event_start"][:10]) if e["event_name"].lower() == event["event_name"].lower()
    ]
    return event if len(same) == 1 else None


@template(
    "calendar",
    (
        "Cancel my first meeting on {date}",
        "Delete my first meeting on {date}",
        "Please cancel the earliest event I have on {date}.",
    ),
    writes=("calendar_delete_event",),
)
def cancel_first_on_day(rng: random.Random, sb: Sandbox) -> Draft | None:
    day = pick(rng, _days_with_events(sb))
    first = earliest(sb.events_on(day))
    if first is None:
        return None
    return Draft({"date": nl_date(day)}, [call("calendar_delete_event", event_id=first["event_id"])])


@template(
    "calendar",
    (
        "Change the name of the last event on {date} to {new_name}",
        "Rename my last meeting on {date} to '{new_name}'",
        "Can you call the final event on {date} '{new_name}' instead?",
    ),
    writes=("calendar_update_event",),
)
def rename_last_on_day(rng: random.Random, sb: Sandbox) -> Draft | None:
    day = pick(rng, _days_with_events(sb))
    last = latest(sb.events_on(day))
    new_name = pick(rng, vocab.EVENT_NAMES)
    if last is None or new_name.lower() == last["event_name"].lower():
        return None
    return Draft(
        {"date": nl_date(day), "new_name": new_name},
        [call("calendar_update_event", event_id=last["event_id"], field="event_name", new_value=new_name)],
    )


@template(
    "calendar",
    (
        "Push back my first meeting with {name} on {date} by {delay}",
        "Please move my first meeting with {name} on {date} {delay} later.",
        "Delay the earliest meeting I have with {name} on {date} by {delay}.",
    ),
    writes=("calendar_update_event",),
)
def push_back_first_with(rng: random.Random, sb: Sandbox) -> Draft | None:
    event = pick(rng, _future_events(sb))
    person, day = event["participant_email"], event["event_start"][:10]
    if not sb.nameable(person):
        return None
    first = earliest(sb.events_on(day, query=person))
    if first is None:
        return None
    delay = pick(rng, DURATIONS)
    new_start = datetime.strptime(first["event_start"], FMT) + timedelta(minutes=delay)
    if not _fits_day(new_start, int(first["duration"])):
        return None
    delay_text = {30: "30 minutes", 60: "an hour", 90: "an hour and a half", 120: "2 hours"}[delay]
    return Draft(
        {"name": display_name(person), "date": nl_date(day), "delay": delay_text},
        [
            call(
                "calendar_update_event",
                event_id=first["event_id"],
                field="event_start",
                new_value=new_start.strftime(FMT),
            )
        ],
    )


def _next_named(rng: random.Random, sb: Sandbox) -> tuple[str, dict | None]:
    name = pick(rng, sorted({e["event_name"] for e in _future_events(sb)}))
    upcoming = [e for e in sb.events(name, time_min=NOW) if e["event_name"] == name]
    return name, earliest(upcoming)


@template(
    "calendar",
    (
        "Cancel the next {event} meeting",
        "Can you cancel the next '{event}' on my calendar?",
        "Delete my upcoming {event} event - just the next one.",
    ),
    writes=("calendar_delete_event",),
)
def cancel_next_named(rng: random.Random, sb: Sandbox) -> Draft | None:
    name, event = _next_named(rng, sb)
    if event is None:
        return None
    return Draft({"event": name}, [call("calendar_delete_event", event_id=event["event_id"])])


@template(
    "calendar",
    (
        "Rename the next {event} meeting to {new_name}",
        "Can you rename the next '{event}' to '{new_name}'?",
        "Change the name of my upcoming {event} meeting to {new_name}.",
    ),
    writes=("calendar_update_event",),
)
def rename_next_named(rng: random.Random, sb: Sandbox) -> Draft | None:
    name, event = _next_named(rng, sb)
    new_name = pick(rng, vocab.EVENT_NAMES)
    if event is None or new_name.lower() == name.lower():
        return None
    return Draft(
        {"event": name, "new_name": new_name},
        [call("calendar_update_event", event_id=event["event_id"], field="event_name", new_value=new_name)],
    )


@template(
    "calendar",
    (
        "Cancel my next meeting with {name}",
        "Please delete the next meeting I have with {name}.",
        "I can't make my next meeting with {name} - cancel it.",
    ),
    writes=("calendar_delete_event",),
)
def cancel_next_with(rng: random.Random, sb: Sandbox) -> Draft | None:
    person = pick(rng, sorted({e["participant_email"] for e in _future_events(sb)} & set(sb.people())))
    upcoming = earliest(sb.events(person, time_min=NOW))
    if upcoming is None:
        return None
    return Draft({"name": display_name(person)}, [call("calendar_delete_event", event_id=upcoming["event_id"])])


@template(
    "calendar",
    (
        "Cancel my meetings on {date} that start {relation} {time}",
        "Please delete every event on {date} starting {relation} {time}, if there are any.",
        "Clear my calendar on {date} for anything that starts {relation} {time}.",
    ),
    writes=("calendar_delete_event",),
    conditional=True,
)
def cancel_on_day_around_time(rng: random.Random, sb: Sandbox) -> Draft | None:
    day = iso(TODAY + timedelta(days=rng.randint(1, 21)))
    hour = rng.randint(10, 16)
    time = f"{hour:02d}:00:00"
    after = rng.random() < 0.5
    events = sb.events_on(day)
    chosen = [e for e in events if (e["event_start"][11:] >= time) == after]
    if len(chosen) > MAX_WRITES:
        return None
    relation = "at or after" if after else "before"
    return Draft(
        {"date": nl_date(day), "relation": relation, "time": nl_time(time)},
        [call("calendar_delete_event", event_id=e["event_id"]) for e in chosen],
    )


@template(
    "calendar",
    (
        "Cancel all future meetings with {name}",
        "Please delete every upcoming meeting I have with {name}.",
        "{name} is leaving the project, so cancel all my upcoming meetings with them.",
    ),
    writes=("calendar_delete_event",),
    conditional=True,
)
def cancel_all_future_with(rng: random.Random, sb: Sandbox) -> Draft | None:
    person = pick(rng, sb.people())
    upcoming = sb.events(person, time_min=NOW)
    if len(upcoming) > MAX_WRITES:
        return None
    return Draft(
        {"name": display_name(person)}, [call("calendar_delete_event", event_id=e["event_id"]) for e in upcoming]
    )


@template(
    "calendar",
    (
        "Create a {duration} event called {event} on {date} at {time} with {name}",
        "Schedule a {duration} meeting with {name} named '{event}' on {date} at {time}",
        "Book '{event}' with {name} on {date} at {time}; make it {minutes} minutes long.",
        "Please put a {duration} '{event}' meeting with {name} on my calendar for {date} at {time}.",
    ),
    writes=("calendar_create_event",),
)
def create_event(rng: random.Random, sb: Sandbox) -> Draft | None:
    day = TODAY + timedelta(days=rng.randint(1, 28))
    if day.weekday() >= 5:
        return None
    minutes = pick(rng, DURATIONS)
    start = datetime(day.year, day.month, day.day, rng.randint(9, 16), pick(rng, (0, 30)))
    if not _fits_day(start, minutes):
        return None
    person, name = pick(rng, sb.people()), pick(rng, vocab.EVENT_NAMES)
    duration = nl_minutes(minutes) if rng.random() < 0.5 else f"{minutes} minute"
    return Draft(
        {
            "duration": duration,
            "minutes": str(minutes),
            "event": name,
            "date": nl_date(day),
            "time": nl_time(start.strftime("%H:%M")),
            "name": display_name(person),
        },
        [
            call(
                "calendar_create_event",
                event_name=name,
                participant_email=person,
                event_start=start.strftime(FMT),
                duration=str(minutes),
            )
        ],
    )


@template(
    "calendar",
    (
        "If I haven't met with {name} since {since}, schedule a 30-minute meeting called 'catch-up' with them at "
        "the earliest time I'm free {when}",
        "Have I had a meeting with {name} between {since} and now? If not, book a half-hour 'catch-up' with "
        "them at my first free slot {when}.",
        "Look at my calendar: if there's been no meeting with {name} since {since}, set up a 30-minute "
        "'catch-up' with them in my first free slot {when}.",
        "Look at my calendar: if there's been no meeting with {name} since {since}, set up a 30-minute "
        "'catch-up' with them in my first free slot {when}.",
    ),
    writes=("calendar_create_event",),
    conditional=True,
)
def catch_up_if_not_met(rng: random.Random, sb: Sandbox) -> Draft | None:
    person = pick(rng, sb.people())
    days = rng.randint(2, 14)
    since = iso(TODAY - timedelta(days=days))
    when = TODAY + timedelta(days=rng.randint(1, 7))
    if when.weekday() >= 5:
        return None
    met = sb.events(person, time_min=f"{since} 00:00:00", time_max=NOW)
    calls = []
    if not met:
        slot = sb.first_free_slot(iso(when), 30)
        if slot is None:
            return None
        calls = [
            call(
                "calendar_create_event",
                event_name="catch-up",
                participant_email=person,
                event_start=slot,
                duration="30",
            )
        ]
    when_text = "tomorrow" if when == TODAY + timedelta(days=1) else f"on {nl_date(when)}"
    return Draft({"name": display_name(person), "since": nl_date(since), "when": when_text}, calls)


@template(
    "calendar",
    (
        "Change the {event} meeting on {date} to be {minutes} minutes long",
        "Make my '{event}' on {date} last {minutes} minutes.",
        "Set the duration of the {event} event on {date} to {minutes} minutes.",
    ),
    writes=("calendar_update_event",),
)
def change_duration(rng: random.Random, sb: Sandbox) -> Draft | None:
    event = _unique_on_day(sb, rng)
    if event is None:
        return None
    minutes = pick(rng, [m for m in DURATIONS if str(m) != event["duration"]])
    if not _fits_day(datetime.strptime(event["event_start"], FMT), minutes):
        return None
    return Draft(
        {"event": event["event_name"], "date": nl_date(event["event_start"]), "minutes": str(minutes)},
        [call("calendar_update_event", event_id=event["event_id"], field="duration", new_value=str(minutes))],
    )


@template(
    "calendar",
    (
        "Invite {new} instead of {old} to the {event} meeting on {date}",
        "Swap {old} for {new} on my '{event}' event on {date}.",
        "The {event} on {date} should be with {new}, not {old}. Please update it.",
    ),
    writes=("calendar_update_event",),
)
def change_participant(rng: random.Random, sb: Sandbox) -> Draft | None:
    event = _unique_on_day(sb, rng)
    if event is None:
        return None
    if not sb.nameable(event["participant_email"]):
        return None
    new = pick(rng, [p for p in sb.people() if p != event["participant_email"]])
    return Draft(
        {
            "new": display_name(new),
            "old": display_name(event["participant_email"]),
            "event": event["event_name"],
            "date": nl_date(event["event_start"]),
        },
        [call("calendar_update_event", event_id=event["event_id"], field="participant_email", new_value=new)],
    )


@template(
    "calendar",
    (
        "Move my {time} meeting on {date} to {new_time}",
        "Can you reschedule the meeting I have at {time} on {date} so it starts at {new_time} instead?",
        "Shift my {date} {time} event to {new_time} the same day.",
    ),
    writes=("calendar_update_event",),
)
def move_to_time(rng: random.Random, sb: Sandbox) -> Draft | None:
    event = pick(rng, _future_events(sb))
    day, time = event["event_start"][:10], event["event_start"][11:]
    if len([e for e in sb.events_on(day) if e["event_start"][11:] == time]) != 1:
        return None
    start = datetime.strptime(event["event_start"], FMT)
    new_start = start.replace(hour=rng.randint(9, 16), minute=pick(rng, (0, 30)))
    if new_start == start or not _fits_day(new_start, int(event["duration"])):
        return None
    return Draft(
        {"time": nl_time(time), "date": nl_date(day), "new_time": nl_time(new_start.strftime("%H:%M"))},
        [
            call(
                "calendar_update_event",
                event_id=event["event_id"],
                field="event_start",
                new_value=new_start.strftime(FMT),
            )
        ],
    )


@template(
    "calendar",
    (
        "If my first meeting on {date} is shorter than {limit} minutes, extend it to {limit} minutes",
        "Check my first event on {date}: if it's under {limit} minutes long, make it {limit} minutes.",
        "Make sure my first meeting on {date} lasts at least {limit} minutes - extend it to {limit} if it is shorter.",
        "Make sure my first meeting on {date} lasts at least {limit} minutes - extend it to {limit} if it is shorter.",
    ),
    writes=("calendar_update_event",),
    conditional=True,
)
def extend_first_if_short(rng: random.Random, sb: Sandbox) -> Draft | None:
    day = pick(rng, _days_with_events(sb, iso(TODAY + timedelta(days=1))))
    first = earliest(sb.events_on(day))
    if first is None:
        return None
    limit = pick(rng, (60, 90, 120))
    calls = []
    if int(first["duration"]) < limit:
        if not _fits_day(datetime.strptime(first["event_start"], FMT), limit):
            return None
        calls = [call("calendar_update_event", event_id=first["event_id"], field="duration", new_value=str(limit))]
    return Draft({"date": nl_date(day), "limit": str(limit)}, calls)


@template(
    "calendar",
    (
        "Book a {duration} meeting called '{event}' with {name} at the earliest time I'm free {when}",
        "Find my first free {duration} slot {when} and schedule '{event}' with {name} in it.",
        "Put a {duration} '{event}' with {name} into the earliest gap in my calendar {when}.",
        "Put a {duration} '{event}' with {name} into the earliest gap in my calendar {when}.",
    ),
    writes=("calendar_create_event",),
)
def create_in_first_free_slot(rng: random.Random, sb: Sandbox) -> Draft | None:
    day = TODAY + timedelta(days=rng.randint(1, 21))
    if day.weekday() >= 5:
        return None
    minutes = pick(rng, DURATIONS)
    slot = sb.first_free_slot(iso(day), minutes)
    if slot is None:
        return None
    person, name = pick(rng, sb.people()), pick(rng, vocab.EVENT_NAMES)
    return Draft(
        {"duration": nl_minutes(minutes), "event": name, "name": display_name(person), "when": _day_text(day)},
        [
            call(
                "calendar_create_event",
                event_name=name,
                participant_email=person,
                event_start=slot,
                duration=str(minutes),
            )
        ],
    )


def _day_text(day: date) -> str:
    """'tomorrow' or 'on December 5'."""
    return "tomorrow" if day == TODAY + timedelta(days=1) else f"on {nl_date(day)}"


TEMPLATES = collect_templates(globals())
