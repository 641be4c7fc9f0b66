"""The read-only sandbox view templates query: the initial databases, through the environment's own tools.

Ground truths are computed from what these reads return (searches, lookups, counts), never from the
CSV files directly, so a task's answer is what an agent using the same tools would find.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from environment.workplace.tasks.base import BOARDS, STATUSES, TODAY, WRITE_TOOLS, first_name, iso


class Sandbox:
    """Read-only view of the initial databases, queried through the environment's own tools.

    ``reader(name, arguments) -> output`` runs one tool and returns its raw Python result
    (``environment.workplace.Episode.call``); ``from_data_dir`` builds one on a fresh episode and
    ``from_env`` adapts anything with ``call(name, arguments) -> '{"output": ...}'`` (WorkplaceEnv).
    Reads are memoized: the initial state never changes during generation (write tools are refused
    here), so equal calls give equal results. Returned values are shared and must not be mutated.
    """

    def __init__(self, reader: Callable[[str, dict], Any]):
        self._reader = reader
        self._cache: dict[str, Any] = {}
        self._derived: dict[str, Any] = {}

    def _memo(self, key: str, compute: Callable[[], Any]) -> Any:
        """Values derived from reads (vocabularies such as the people list), computed once."""
        if key not in self._derived:
            self._derived[key] = compute()
        return self._derived[key]

    @classmethod
    def from_data_dir(cls, data_dir: str | None = None) -> Sandbox:
        from environment.workplace import Episode, default_data_dir, load_base_tables

        return cls(Episode(load_base_tables(str(data_dir or default_data_dir()))).call)

    @classmethod
    def from_env(cls, env: Any) -> Sandbox:
        return cls(lambda name, arguments: json.loads(env.call(name, arguments))["output"])

    def read(self, tool: str, /, **arguments: Any) -> Any:
        if tool in WRITE_TOOLS:
            raise ValueError(f"Sandbox.read: {tool} is a write tool; templates only read the sandbox")
        key = tool + json.dumps(arguments, sort_keys=True)
        if key not in self._cache:
            output = self._reader(tool, arguments)
            if isinstance(output, str) and output.startswith("Error"):
                raise RuntimeError(f"Sandbox.read: {tool}({arguments}) failed: {output}")
            self._cache[key] = output
        return self._cache[key]

    # ---- company directory -------------------------------------------------------------------------
    def people(self) -> list[str]:
        """The company addresses a query may name by first name, sorted.

        Only addresses whose first name finds exactly that address in the directory (so "Nadia" in a
        query means one person); all 20 in the reference sandbox.
        """

        def unique() -> list[str]:
            find = "company_directory_find_email_address"
            return sorted(a for a in self.read(find, name="@") if self.read(find, name=first_name(a)) == [a])

        return self._memo("people", unique)

    def nameable(self, address: str) -> bool:
        return address in self._memo("people_set", lambda: frozenset(self.people()))

    # ---- email -------------------------------------------------------------------------------------
    def emails(self, query: str = "", date_min: str | None = None, date_max: str | None = None) -> list[dict]:
        """Emails matching ``query`` sent between the dates (inclusive), newest first (the tool's order).

        One search per query (all pages); the date window is applied to its result, which is what the
        tool's own date_min/date_max do, so the set of distinct tool calls stays small and cacheable.
        """
        out = self.read("email_search_emails", query=query, page=1, page_size=100_000)
        rows = out["emails"] if isinstance(out, dict) else []
        return [
            e
            for e in rows
            if (date_min is None or e["sent_datetime"][:10] >= date_min)
            and (date_max is None or e["sent_datetime"][:10] <= date_max)
        ]

    # ---- calendar ----------------------------------------------------------------------------------
    def events(self, query: str = "", time_min: str | None = None, time_max: str | None = None) -> list[dict]:
        """Events matching ``query`` starting in [time_min, time_max], earliest first.

        Like ``emails``: one search per query, the start-time window (the tool filters on the start too)
        applied to its result; times are "YYYY-MM-DD HH:MM:SS" strings, so string order is time order.
        """
        out = self.read("calendar_search_events", query=query, page=1, page_size=100_000)
        rows = out["events"] if isinstance(out, dict) else []
        chosen = [
            e
            for e in rows
            if (time_min is None or e["event_start"] >= time_min) and (time_max is None or e["event_start"] <= time_max)
        ]
        return sorted(chosen, key=lambda e: (e["event_start"], e["event_id"]))

    def events_on(self, day: str, query: str = "") -> list[dict]:
        return self.events(query, f"{day} 00:00:00", f"{day} 23:59:59")

    def first_free_slot(self, day: str, minutes: int) -> str | None:
        """Earliest start on ``day`` (on the half hour, 9:00 to 18:00) free for ``minutes`` minutes."""
        busy = []
        for e in self.events_on(day):
            start = datetime.strptime(e["event_start"], "%Y-%m-%d %H:%M:%S")
            busy.append((start, start + timedelta(minutes=int(e["duration"]))))
        slot = datetime.strptime(f"{day} 09:00:00", "%Y-%m-%d %H:%M:%S")
        close = slot.replace(hour=18)
        while slot + timedelta(minutes=minutes) <= close:
            end = slot + timedelta(minutes=minutes)
            if all(end <= b0 or slot >= b1 for b0, b1 in busy):
                return slot.strftime("%Y-%m-%d %H:%M:%S")
            slot += timedelta(minutes=30)
        return None

    # ---- project management ------------------------------------------------------------------------
    def tasks(self, **filters: str) -> list[dict]:
        out = self.read("project_management_search_tasks", **filters)
        return sorted(out, key=lambda t: t["task_id"]) if isinstance(out, list) else []

    def all_tasks(self) -> list[dict]:
        def compute() -> list[dict]:
            rows = [t for board in BOARDS for t in self.tasks(board=board)]
            return sorted({t["task_id"]: t for t in rows}.values(), key=lambda t: t["task_id"])

        return self._memo("all_tasks", compute)

    def assignees(self) -> list[str]:
        """The PM team (the only addresses create_task accepts) a query can name, sorted."""
        return self._memo(
            "assignees", lambda: sorted({t["assigned_to_email"] for t in self.all_tasks()} & set(self.people()))
        )

    # ---- CRM ---------------------------------------------------------------------------------------
    def customers(self, **filters: str) -> list[dict]:
        out = self.read("customer_relationship_manager_search_customers", page=1, page_size=1000, **filters)
        rows = out["customers"] if isinstance(out, dict) else []
        return sorted(rows, key=lambda c: c["customer_id"])

    def all_customers(self) -> list[dict]:
        def compute() -> list[dict]:
            rows = [c for s in STATUSES for c in self.customers(status=s)]
            return sorted({c["customer_id"]: c for c in rows}.values(), key=lambda c: c["customer_id"])

        return self._memo("all_customers", compute)

    def reps(self) -> list[str]:
        """The account reps in the CRM a query can name, sorted."""
        return self._memo(
            "reps", lambda: sorted({c["assigned_to_email"] for c in self.all_customers()} & set(self.people()))
        )

    # ---- analytics ---------------------------------------------------------------------------------
    def daily(self, metric: str, time_min: str, time_max: str) -> dict[str, float]:
        """Per-day values of a plottable metric over [time_min, time_max] (YYYY-MM-DD), from the analytics tools.

        Each tool is asked once for the whole history; the window is cut from that answer.
        """
        span = {"time_min": "2000-01-01", "time_max": iso(TODAY)}
        if metric == "total_visits":
            out = self.read("analytics_total_visits_count", **span)
        elif metric == "user_engaged":
            out = self.read("analytics_engaged_users_count", **span)
        elif metric == "session_duration_seconds":
            out = self.read("analytics_get_average_session_duration", **span)
        elif metric.startswith("visits_"):
            source = metric[len("visits_") :].replace("_", " ")
            out = self.read("analytics_traffic_source_count", traffic_source=source, **span)
        else:
            raise ValueError(f"Sandbox.daily: unknown metric {metric!r}")
        out = out if isinstance(out, dict) else {}
        return {day: value for day, value in out.items() if time_min <= day <= time_max}
