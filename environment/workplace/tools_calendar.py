"""The five calendar tools over the ``calendar`` table (event_id, event_name, participant_email, ...)."""

import operator

from environment.workplace.matching import boolean_mask, column_contains
from environment.workplace.paging import Page
from environment.workplace.series_ops import checked_value, column_max, compare, contains_value
from environment.workplace.state import EpisodeState
from environment.workplace.timestamps import parse_timestamp

_INFO_FIELDS = ["event_id", "event_name", "participant_email", "event_start", "duration"]
_UPDATE_FIELDS = ["event_name", "participant_email", "event_start", "duration"]
_BAD_ID = "Invalid event ID format. Expected 8-digit ID."
_BAD_START = "Invalid event_start format. Expected YYYY-MM-DD HH:MM:SS."
_BAD_DURATION = "Invalid duration format. Expected a number of minutes."
_NONPOSITIVE_DURATION = "Duration must be a positive number of minutes."


def _valid_event_id(event_id) -> bool:
    return isinstance(event_id, str) and len(event_id) == 8 and event_id.isdigit()


def _next_id(ids: list) -> str:
    return str(int(column_max(ids)) + 1).zfill(8)


class CalendarTool:
    """Method names, parameters and defaults mirror the reference so Python's own argument errors match."""

    def __init__(self, state: EpisodeState):
        self._state = state

    def _column(self, name: str) -> list:
        return self._state.calendar.column(name)

    def _has_id(self, event_id) -> bool:
        dtype = self._state.calendar.column_dtype("event_id")
        return contains_value(self._column("event_id"), dtype, event_id)

    def get_event_information_by_id(self, event_id=None, field=None):
        if not event_id:
            return "Event ID not provided."
        if not field:
            return "Field not provided."
        if not _valid_event_id(event_id):
            return _BAD_ID
        if field not in _INFO_FIELDS:
            return f"Invalid field. Available fields are: {', '.join(_INFO_FIELDS)}"
        table = self._state.calendar
        mask = compare(self._column("event_id"), table.column_dtype("event_id"), operator.eq, event_id)
        rows = [row for row, hit in zip(table.rows, mask) if hit]
        if rows:
            return {field: rows[0][field]}
        return "Event not found."

    def search_events(self, query="", time_min=None, time_max=None, page=1, page_size=5):
        if time_min:
            try:
                time_min = parse_timestamp(time_min)
            except ValueError:
                return "Invalid time_min format. Expected YYYY-MM-DD HH:MM:SS."
        if time_max:
            try:
                time_max = parse_timestamp(time_max)
            except ValueError:
                return "Invalid time_max format. Expected YYYY-MM-DD HH:MM:SS."
        table = self._state.calendar
        name_dtype, email_dtype = table.column_dtype("event_name"), table.column_dtype("participant_email")
        by_name = column_contains(self._column("event_name"), name_dtype, query, na=False)
        by_email = column_contains(self._column("participant_email"), email_dtype, query, na=False)
        mask = boolean_mask([a or b for a, b in zip(by_name, by_email)])
        events = [dict(row) for row, hit in zip(table.rows, mask) if hit]
        if time_min:
            events = [e for e in events if parse_timestamp(e["event_start"]) >= time_min]
        if time_max:
            events = [e for e in events if parse_timestamp(e["event_start"]) <= time_max]
        if events:
            events.sort(key=lambda e: parse_timestamp(e["event_start"]), reverse=True)
            paged = Page(events, page, page_size)
            return {
                "events": paged.rows(),
                "pagination": {
                    "total_events": len(events),
                    "page": paged.page,
                    "page_size": page_size,
                    "total_pages": paged.total_pages,
                },
            }
        return "No events found."

    def create_event(self, event_name=None, participant_email=None, event_start=None, duration=None):
        if not event_name:
            return "Event name not provided."
        if not participant_email:
            return "Participant email not provided."
        if not event_start:
            return "Event start not provided."
        if not duration:
            return "Event duration not provided."
        try:
            parse_timestamp(event_start)
        except ValueError:
            return _BAD_START
        try:
            if int(duration) <= 0:
                return _NONPOSITIVE_DURATION
        except ValueError:
            return _BAD_DURATION
        participant_email = participant_email.lower()
        table = self._state.calendar
        event_id = _next_id(self._column("event_id"))
        new_event = {
            "event_id": event_id,
            "event_name": event_name,
            "participant_email": participant_email,
            "event_start": event_start,
            "duration": duration,
        }
        table.append(new_event, ignore_index=False)
        return event_id

    def delete_event(self, event_id=None):
        if not event_id:
            return "Event ID not provided."
        if not _valid_event_id(event_id):
            return _BAD_ID
        if self._has_id(event_id):
            self._state.calendar.delete_where("event_id", event_id)
            return "Event deleted successfully."
        return "Event not found."

    def update_event(self, event_id=None, field=None, new_value=None):
        if not event_id or not field or not new_value:
            return "Event ID, field, or new value not provided."
        if not _valid_event_id(event_id):
            return _BAD_ID
        if field not in _UPDATE_FIELDS:
            return f"Invalid field. Available fields are: {', '.join(_UPDATE_FIELDS)}"
        if field == "event_start":
            try:
                parse_timestamp(new_value)
            except ValueError:
                return _BAD_START
        elif field == "duration":
            try:
                if int(new_value) <= 0:
                    return _NONPOSITIVE_DURATION
            except ValueError:
                return _BAD_DURATION
        if self._has_id(event_id):
            if field == "participant_email":
                new_value = new_value.lower()
            table = self._state.calendar
            value = checked_value(table.column_dtype(field), new_value)
            table.set_where(field, value, "event_id", event_id)
            return "Event updated successfully."
        return "Event not found."
