"""The template protocol, the ground-truth conventions, and the wording helpers templates share.

A template is a function ``draw(rng, sandbox) -> Draft | None`` (sandbox.Sandbox) plus its phrasings. ``draw`` picks
parameters with the seeded ``rng`` and computes the ground truth by querying the sandbox *through the
environment's own read tools* (searches, lookups, counts) exactly as an agent would; it never writes
an answer by hand. It returns ``None`` when the drawn parameters make an unfair task (a tie, an
ambiguous name, more writes than an agent can make in 6 steps); the generator then draws again.

Ground-truth conventions (the verifier replays calls and compares tables, so these matter):
- every argument value is a string (an int ``duration`` would score 0.0 against a string one);
- additive writes (send/forward/reply, create_event/task, add_customer, create_plot) that touch the
  same table appear in the order the query states; updates and deletes are order-free;
- an empty list means "the condition is false, change nothing".
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from environment.workplace.tasks.sandbox import Sandbox

# The environment's fixed clock: Thursday 2023-11-30 23:59:00 (see prompt.SYSTEM_PROMPT).
TODAY = date(2023, 11, 30)
NOW = "2023-11-30 23:59:00"

CATEGORIES = (
    "email",
    "calendar",
    "analytics",
    "project_management",
    "customer_relationship_manager",
    "multi_domain",
)
CATEGORY_PREFIX = "workplace_assistant_"
ENVIRONMENT_NAME = "workplace_assistant"

WRITE_TOOLS = (
    "email_send_email",
    "email_delete_email",
    "email_forward_email",
    "email_reply_email",
    "calendar_create_event",
    "calendar_delete_event",
    "calendar_update_event",
    "analytics_create_plot",
    "project_management_create_task",
    "project_management_delete_task",
    "project_management_update_task",
    "customer_relationship_manager_update_customer",
    "customer_relationship_manager_add_customer",
    "customer_relationship_manager_delete_customer",
)

# Most writes one task may ask for. The agent has 6 model steps; a task typically needs a directory
# lookup and a search before its writes, so 4 writes keep every task solvable one call per step.
MAX_WRITES = 4


@dataclass(frozen=True)
class Draft:
    """One drawn task before rendering: placeholder values for the phrasing and the ground-truth calls."""

    params: dict[str, str]
    calls: list[tuple[str, dict[str, str]]]


@dataclass(frozen=True)
class Template:
    """A task family: ``draw`` computes a Draft from the sandbox; ``phrasings`` render its query.

    ``writes`` names every write tool the template can emit (checked against what it emits);
    ``conditional`` marks templates whose answer can be "do nothing"; ``domains`` are the toolkits an
    agent must use to solve it (reads included), reported as the task's difficulty.
    """

    name: str
    category: str
    domains: tuple[str, ...]
    phrasings: tuple[str, ...]
    writes: tuple[str, ...]
    draw: Callable[[random.Random, Sandbox], Draft | None]
    conditional: bool = False


def template(
    category: str,
    phrasings: Sequence[str],
    writes: Sequence[str],
    domains: Sequence[str] | None = None,
    conditional: bool = False,
) -> Callable[[Callable[[random.Random, Sandbox], Draft | None]], Template]:
    """Decorator turning a ``draw`` function into a Template named ``<category>.<function name>``."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown template category {category!r}; expected one of {CATEGORIES}")
    unknown = [w for w in writes if w not in WRITE_TOOLS]
    if unknown:
        raise ValueError(f"template category {category!r}: unknown write tools {unknown}")

    def wrap(fn: Callable[[random.Random, Sandbox], Draft | None]) -> Template:
        return Template(
            name=f"{category}.{fn.__name__}",
            category=category,
            domains=tuple(domains or (category,)),
            phrasings=tuple(phrasings),
            writes=tuple(writes),
            draw=fn,
            conditional=conditional,
        )

    return wrap


def collect_templates(namespace: dict[str, Any]) -> tuple[Template, ...]:
    """The Templates defined in a module namespace, in definition order."""
    return tuple(v for v in namespace.values() if isinstance(v, Template))


BOARDS = ("Back end", "Front end", "Design")
LISTS = ("Backlog", "In Progress", "In Review", "Completed")
STATUSES = ("Qualified", "Won", "Lost", "Lead", "Proposal")
PRODUCTS = ("Software", "Hardware", "Services", "Consulting", "Training")


# ---- natural-language helpers ----------------------------------------------------------------------
def iso(d: date) -> str:
    return d.isoformat()


def parse_day(s: str) -> date:
    return date.fromisoformat(s[:10])


def nl_date(d: date | str) -> str:
    """'2023-11-21' -> 'November 21'."""
    d = parse_day(d) if isinstance(d, str) else d
    return f"{d.strftime('%B')} {d.day}"


def nl_time(hhmm: str) -> str:
    """'15:30:00' -> '3:30 pm', '09:00' -> '9 am'."""
    h, m = int(hhmm[:2]), int(hhmm[3:5])
    suffix = "am" if h < 12 else "pm"
    h12 = h if 1 <= h <= 12 else (12 if h == 0 else h - 12)
    return f"{h12}:{m:02d} {suffix}" if m else f"{h12} {suffix}"


def nl_minutes(minutes: int) -> str:
    """90 -> '90-minute' (the adjective form: 'a 90-minute meeting')."""
    return {30: "30-minute", 60: "1-hour", 90: "90-minute", 120: "2-hour"}.get(minutes, f"{minutes}-minute")


def first_name(address: str) -> str:
    return address.split(".")[0].split("@")[0]


def display_name(address: str) -> str:
    return first_name(address).capitalize()


def earliest(events: list[dict]) -> dict | None:
    """The first of start-sorted events, or None when there is none or two share the first start time."""
    if not events or (len(events) > 1 and events[1]["event_start"] == events[0]["event_start"]):
        return None
    return events[0]


def latest(events: list[dict]) -> dict | None:
    """The last of start-sorted events, or None when there is none or two share the last start time."""
    return earliest(events[::-1])


def call(name: str, **arguments: str) -> tuple[str, dict[str, str]]:
    """One ground-truth call; every value must already be a string."""
    for key, value in arguments.items():
        if not isinstance(value, str):
            raise TypeError(f"ground-truth call {name}: argument {key}={value!r} is not a string")
    return (name, arguments)


def pick(rng: random.Random, items: Sequence[Any]) -> Any:
    """rng.choice over a sequence that must not be empty (clear error instead of IndexError)."""
    if not items:
        raise ValueError("pick: nothing to choose from")
    return items[rng.randrange(len(items))]
