"""The six analytics tools: read-only counts over ``analytics`` plus ``create_plot`` (the scored part)."""

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


class AnalyticsTool:
    """Method names, parameters and defaults mirror the reference so Python's own argument errors match."""

    def __init__(self, state: EpisodeState):
        self._state = state

    def _rows_in_range(self, time_min, time_max) -> list[dict]:
        """``data_of_visit`` string comparisons, both ends inclusive, as in the reference."""
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

    @staticmethod
    def _per_date(rows: list[dict], value) -> dict:
        out: dict = {}
        for row in sorted(rows, key=lambda r: r["date_of_visit"]):
            out[row["date_of_visit"]] = out.get(row["date_of_visit"], 0) + value(row)
        return out

    def get_visitor_information_by_id(self, visitor_id=None):
        if not visitor_id:
            return "Visitor ID not provided."
        table = self._state.analytics
        ids = [r["visitor_id"] for r in table.rows]
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
        return self._per_date(self._rows_in_range(time_min, time_max), lambda r: 1)

    def engaged_users_count(self, time_min=None, time_max=None):
        return self._per_date(self._rows_in_range(time_min, time_max), lambda r: int(bool(r["user_engaged"])))

    def traffic_source_count(self, time_min=None, time_max=None, traffic_source=None):
        rows = self._rows_in_range(time_min, time_max)
        if traffic_source:
            table = self._state.analytics
            sources = [r["traffic_source"] for r in rows]
            hits = compare(sources, table.column_dtype("traffic_source"), operator.eq, traffic_source)
            by_row = {id(r): int(h) for r, h in zip(rows, hits)}
            return self._per_date(rows, lambda r: by_row[id(r)])
        return self._per_date(rows, lambda r: 1)

    def get_average_session_duration(self, time_min=None, time_max=None):
        if not time_min and not time_max:
            self._state.session_duration_float = True
        rows = self._rows_in_range(time_min, time_max)
        totals = self._per_date(rows, lambda r: float(r["session_duration_seconds"]))
        counts = self._per_date(rows, lambda r: 1)
        return {date: totals[date] / counts[date] for date in totals}
