"""The six analytics tools: read-only counts over ``analytics`` plus ``create_plot`` (the scored part).

No tool writes the analytics table, so the per-date counts are built once per sandbox (``_Daily``)
and a query with string bounds only walks the ~90 distinct dates. Bounds of other types go through
the row-wise path, which raises what pandas raises for them.
"""

import operator

from environment.workplace.series_ops import compare
from environment.workplace.state import EpisodeState

PLOT_VALUES = [
    "total_visits",
    "session_duration_seconds",
    "user_engaged",
    "visits_direct",
    "visits_referral",
    "visits_search_engine",
    "visits_social_media",
]
PLOT_TYPES = ["bar", "line", "scatter", "histogram"]


class _Daily:
    """Per date (sorted, as pandas' groupby sorts): visits, engaged visits, visits per source, seconds."""

    def __init__(self, rows: tuple[dict, ...]):
        self.dates = sorted({r["date_of_visit"] for r in rows})
        self.visits = dict.fromkeys(self.dates, 0)
        self.engaged = dict.fromkeys(self.dates, 0)
        self.seconds = dict.fromkeys(self.dates, 0.0)
        self.by_source: dict[str, dict[str, int]] = {}
        for r in rows:
            day = r["date_of_visit"]
            self.visits[day] += 1
            self.engaged[day] += int(bool(r["user_engaged"]))
            self.seconds[day] += float(r["session_duration_seconds"])
            self.by_source.setdefault(r["traffic_source"], dict.fromkeys(self.dates, 0))[day] += 1


def _rows_per_date(rows: list[dict], value) -> dict:
    out: dict = {}
    for row in sorted(rows, key=lambda r: r["date_of_visit"]):
        out[row["date_of_visit"]] = out.get(row["date_of_visit"], 0) + value(row)
    return out


class AnalyticsTool:
    """Method names, parameters and defaults mirror the reference so Python's own argument errors match."""

    def __init__(self, state: EpisodeState):
        self._state = state

    def _daily(self) -> _Daily:
        derived = self._state.base.derived
        if "analytics_daily" not in derived:
            derived["analytics_daily"] = _Daily(self._state.base.analytics.rows)
        return derived["analytics_daily"]

    def _dates_in_range(self, time_min, time_max) -> list[str] | None:
        """Dates within string bounds (inclusive); None when a bound needs the row-wise path."""
        if (time_min and not isinstance(time_min, str)) or (time_max and not isinstance(time_max, str)):
            return None
        return [d for d in self._daily().dates if (not time_min or d >= time_min) and (not time_max or d <= time_max)]

    def _rows_in_range(self, time_min, time_max) -> list[dict]:
        """``date_of_visit`` string comparisons, both ends inclusive, as in the reference."""
        table = self._state.analytics
        dtype = table.column_dtype("date_of_visit")
        rows = list(table.rows)
        if time_min:
            mask = compare([r["date_of_visit"] for r in rows], dtype, operator.ge, time_min)
            rows = [r for r, hit in zip(rows, mask) if hit]
        if time_max:
            mask = compare([r["date_of_visit"] for r in rows], dtype, operator.le, time_max)
            rows = [r for r, hit in zip(rows, mask) if hit]
        return rows

    def get_visitor_information_by_id(self, visitor_id=None):
        if not visitor_id:
            return "Visitor ID not provided."
        table = self._state.analytics
        ids = table.column("visitor_id")
        mask = compare(ids, table.column_dtype("visitor_id"), operator.eq, visitor_id)
        visits = [dict(r) for r, hit in zip(table.rows, mask) if hit]
        if self._state.session_duration_float:
            for visit in visits:
                visit["session_duration_seconds"] = float(visit["session_duration_seconds"])
        if visits:
            return visits
        return "Visitor not found."

    def create_plot(self, time_min=None, time_max=None, value_to_plot=None, plot_type=None):
        if not time_min:
            return "Start date not provided."
        if not time_max:
            return "End date not provided."
        if value_to_plot not in PLOT_VALUES:
            return (
                "Value to plot must be one of 'total_visits', 'session_duration_seconds', 'user_engaged', "
                "'visits_direct', 'visits_referral', 'visits_search_engine', 'visits_social_media'"
            )
        if plot_type not in PLOT_TYPES:
            return "Plot type must be one of 'bar', 'line', 'scatter', or 'histogram'"
        file_path = f"plots/{time_min}_{time_max}_{value_to_plot}_{plot_type}.png"
        self._state.plots.append(file_path)
        return file_path

    def total_visits_count(self, time_min=None, time_max=None):
        dates = self._dates_in_range(time_min, time_max)
        if dates is None:
            return _rows_per_date(self._rows_in_range(time_min, time_max), lambda r: 1)
        visits = self._daily().visits
        return {d: visits[d] for d in dates}

    def engaged_users_count(self, time_min=None, time_max=None):
        dates = self._dates_in_range(time_min, time_max)
        if dates is None:
            rows = self._rows_in_range(time_min, time_max)
            return _rows_per_date(rows, lambda r: int(bool(r["user_engaged"])))
        engaged = self._daily().engaged
        return {d: engaged[d] for d in dates}

    def traffic_source_count(self, time_min=None, time_max=None, traffic_source=None):
        dates = self._dates_in_range(time_min, time_max)
        if dates is None or (traffic_source and not isinstance(traffic_source, str)):
            rows = self._rows_in_range(time_min, time_max)
            if not traffic_source:
                return _rows_per_date(rows, lambda r: 1)
            dtype = self._state.analytics.column_dtype("traffic_source")
            hits = compare([r["traffic_source"] for r in rows], dtype, operator.eq, traffic_source)
            by_row = {id(r): int(h) for r, h in zip(rows, hits)}
            return _rows_per_date(rows, lambda r: by_row[id(r)])
        daily = self._daily()
        counts = daily.by_source.get(traffic_source, {}) if traffic_source else daily.visits
        return {d: counts.get(d, 0) for d in dates}

    def get_average_session_duration(self, time_min=None, time_max=None):
        if not time_min and not time_max:
            self._state.session_duration_float = True
        dates = self._dates_in_range(time_min, time_max)
        if dates is None:
            rows = self._rows_in_range(time_min, time_max)
            totals = _rows_per_date(rows, lambda r: float(r["session_duration_seconds"]))
            counts = _rows_per_date(rows, lambda r: 1)
            return {date: totals[date] / counts[date] for date in totals}
        daily = self._daily()
        return {d: daily.seconds[d] / daily.visits[d] for d in dates}
