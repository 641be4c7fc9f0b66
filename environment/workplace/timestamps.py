"""``pd.Timestamp(value)`` for the calendar and email tools, without pandas.

The tools only use a parsed timestamp to validate an argument, to compare two timestamps, and to take
its calendar date, so a ``Stamp`` holds the wall-clock datetime (microseconds), the leftover
nanoseconds and whether it carried a time zone. ``NAT`` stands for pandas' NaT: it is truthy and
every comparison with it is False.

Strings in ISO form take a fast path; anything else goes through ``dateutil`` (the parser pandas
falls back to) with pandas' error messages. Non-strings follow pandas: numbers are nanoseconds since
the epoch, None is NaT, anything else is a TypeError.
"""

import datetime as dt
import re
from typing import Any

_EPOCH = dt.datetime(1970, 1, 1)
_NAT_STRINGS = frozenset({"", "NaT", "nat", "NAT", "nan", "NaN", "NAN"})
_ISO = re.compile(
    r"(\d{4})-(\d{1,2})-(\d{1,2})"
    r"(?:[T ](\d{1,2})(?::(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?)?)?"
    r"(Z|[+-]\d{2}(?::?\d{2})?)?"
)


class _NaT:
    """pandas.NaT: truthy, compares False with everything, ``.date()`` is NaT itself."""

    def __bool__(self) -> bool:
        return True

    def _cmp(self, other: Any) -> bool:
        return False

    __lt__ = __le__ = __gt__ = __ge__ = __eq__ = _cmp

    def __ne__(self, other: Any) -> bool:
        return True

    def __hash__(self) -> int:
        return 0

    def date(self) -> "_NaT":
        return self

    def __repr__(self) -> str:
        return "NaT"


NAT = _NaT()


class Stamp:
    """A parsed timestamp: wall datetime (naive), extra nanoseconds, UTC offset or None."""

    __slots__ = ("wall", "nanos", "offset")

    def __init__(self, wall: dt.datetime, nanos: int = 0, offset: dt.timedelta | None = None):
        self.wall, self.nanos, self.offset = wall, nanos, offset

    def _key(self, other: "Stamp") -> tuple:
        if (self.offset is None) != (other.offset is None):
            raise TypeError("Cannot compare tz-naive and tz-aware timestamps")
        if self.offset is None:
            return (self.wall, self.nanos), (other.wall, other.nanos)
        return (self.wall - self.offset, self.nanos), (other.wall - other.offset, other.nanos)

    def __lt__(self, other: Any) -> bool:
        if other is NAT:
            return False
        a, b = self._key(other)
        return a < b

    def __le__(self, other: Any) -> bool:
        if other is NAT:
            return False
        a, b = self._key(other)
        return a <= b

    def __gt__(self, other: Any) -> bool:
        if other is NAT:
            return False
        a, b = self._key(other)
        return a > b

    def __ge__(self, other: Any) -> bool:
        if other is NAT:
            return False
        a, b = self._key(other)
        return a >= b

    def date(self) -> dt.date:
        return self.wall.date()


def _from_nanos(value: int) -> Stamp:
    micros, nanos = divmod(value, 1000)
    return Stamp(_EPOCH + dt.timedelta(microseconds=micros), nanos)


def _parse_offset(text: str | None) -> dt.timedelta | None:
    if text is None:
        return None
    if text == "Z":
        return dt.timedelta(0)
    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:4] or 0)
    return sign * dt.timedelta(hours=hours, minutes=minutes)


def _parse_iso(text: str) -> Stamp | None:
    m = _ISO.fullmatch(text)
    if m is None:
        return None
    year, month, day, hour, minute, second, frac, tz = m.groups()
    if not 1 <= int(month) <= 12:
        raise ValueError(f"month must be in 1..12: {text}")
    if hour is not None and int(hour) > 23:
        raise ValueError(f"hour must be in 0..23: {text}")
    if minute is not None and int(minute) > 59:
        raise ValueError(f"minute must be in 0..59: {text}")
    if second is not None and int(second) > 59:
        raise ValueError(f"second must be in 0..59: {text}")
    try:
        clock = (int(hour or 0), int(minute or 0), int(second or 0))
        wall = dt.datetime(int(year), int(month), int(day), *clock)
    except ValueError:
        raise ValueError(f"day is out of range for month: {text}") from None
    frac = (frac or "").ljust(9, "0")
    wall = wall.replace(microsecond=int(frac[:6]))
    return Stamp(wall, int(frac[6:]), _parse_offset(tz))


def _parse_other(text: str) -> Stamp:
    from dateutil import parser as dateutil_parser

    if text.strip() == "":
        raise ValueError(f"Unable to parse datetime string: {text}")
    lowered = text.lower()
    if lowered in ("now", "today"):
        return Stamp(dt.datetime.now())
    if re.fullmatch(r"\d+(\.\d+)?", text) and len(text) < 4:
        raise ValueError(f'Given date string "{text}" not likely a datetime')
    try:
        parsed = dateutil_parser.parse(text, default=dt.datetime(1, 1, 1))
    except (ValueError, OverflowError):
        raise ValueError(f"Unknown datetime string format, unable to parse: {text}") from None
    offset = parsed.utcoffset()
    return Stamp(parsed.replace(tzinfo=None), 0, offset)


def parse_timestamp(value: Any) -> Stamp | _NaT:
    """``pd.Timestamp(value)``; raises ValueError for an unparsable string, TypeError for other types."""
    if value is None:
        return NAT
    if isinstance(value, str):
        if value in _NAT_STRINGS:
            return NAT
        stamp = _parse_iso(value)
        return stamp if stamp is not None else _parse_other(value)
    if isinstance(value, int) and not isinstance(value, bool):
        if value == -(2**63):
            return NAT
        if not -(2**63) < value < 2**63:
            raise ValueError(f"Out of bounds timestamp {value}")
        return _from_nanos(value)
    if isinstance(value, float):
        if value != value:
            return NAT
        if value in (float("inf"), float("-inf")):
            raise ValueError(f"cannot convert input {value} with the unit 'None'")
        if not -(2.0**63) < value < 2.0**63:
            raise ValueError(f"Out of bounds timestamp {value}")
        return _from_nanos(int(value))
    raise TypeError(f"Cannot convert input [{value}] of type {type(value)} to Timestamp")
