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
import functools
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
        if isinstance(other, dt.date) and not isinstance(other, dt.datetime):
            raise TypeError("Cannot compare NaT with datetime.date object")
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

    def _instant(self) -> tuple:
        wall = self.wall if self.offset is None else self.wall - self.offset
        return (wall.year, wall, self.nanos)

    def _key(self, other: "Stamp") -> tuple:
        if (self.offset is None) != (other.offset is None):
            raise TypeError("Cannot compare tz-naive and tz-aware timestamps")
        return self._instant(), other._instant()

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


class _BeforeYearOne(Stamp):
    """A Timestamp with a year <= 0 (pandas parses ISO strings such as "-1"); no Python date."""

    __slots__ = ("ymd",)

    def __init__(self, ymd: tuple[int, int, int]):
        super().__init__(dt.datetime(1, 1, 1))
        self.ymd = ymd

    def _instant(self) -> tuple:
        return (self.ymd[0], self.ymd)

    def date(self) -> dt.date:
        raise ValueError(
            "date not yet supported on Timestamps which are outside the range of Python's standard library. "
        )


_NEGATIVE_YEAR = re.compile(r"-(\d{1,4})(?:-(\d{2})(?:-(\d{2}))?)?")


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


@functools.lru_cache(maxsize=8192)
def _parse_iso(text: str) -> Stamp | None:
    """pandas' ISO 8601 fast path; None when it does not apply (pandas then falls back to dateutil)."""
    m = _ISO.fullmatch(text)
    if m is None:
        return None
    year, month, day, hour, minute, second, frac, tz = m.groups()
    try:
        clock = (int(hour or 0), int(minute or 0), int(second or 0))
        wall = dt.datetime(int(year), int(month), int(day), *clock)
    except ValueError:
        return None
    offset = _parse_offset(tz)
    if offset is not None and abs(offset) >= dt.timedelta(hours=24):
        raise ValueError(
            f'Parsed string "{text}" gives an invalid tzoffset, which must be between '
            "-timedelta(hours=24) and timedelta(hours=24)"
        )
    frac = (frac or "").ljust(9, "0")
    return Stamp(wall.replace(microsecond=int(frac[:6])), int(frac[6:]), offset)


_PLAIN_NUMBER = re.compile(r"\s*[+-]?[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?\s*", re.ASCII)


def _looks_like_datetime(text: str) -> bool:
    """pandas' ``does_string_look_like_datetime``: plain (ASCII) numbers below 1000 are not dates."""
    if not text or text[0] == "0":
        return True
    if text in ("a", "A", "m", "M", "p", "P", "t", "T"):
        return False
    if not _PLAIN_NUMBER.fullmatch(text):
        return True
    return float(text) >= 1000


def _looks_like_time(text: str) -> bool:
    """pandas' ``does_string_look_like_time`` ("9:30", "10:15:00"): parsed on today's date."""
    if len(text) < 4:
        return False
    if text[1] == ":":
        hour, minute = text[0], text[2:4]
    elif text[2] == ":":
        hour, minute = text[0:2], text[3:5]
    else:
        return False
    if not (hour.isascii() and hour.isdigit() and minute.isascii() and minute.isdigit()):
        return False
    return 0 <= int(hour) <= 23 and 0 <= int(minute) <= 59


def _dateutil(text: str, default: dt.datetime) -> Stamp:
    """pandas' ``dateutil_parse`` wrapper around dateutil's parser, with pandas' error texts."""
    from dateutil import parser as dateutil_parser
    from dateutil import relativedelta

    try:
        res, _ = dateutil_parser.DEFAULTPARSER._parse(text, dayfirst=False, yearfirst=False)
    except (ValueError, OverflowError) as err:
        raise ValueError(str(err)) from None
    if res is None:
        raise ValueError(f"Unknown datetime string format, unable to parse: {text}")
    fields = ["year", "month", "day", "hour", "minute", "second", "microsecond"]
    repl = {f: getattr(res, f) for f in fields if getattr(res, f) is not None}
    if not repl:
        raise ValueError(f"Unable to parse datetime string: {text}")
    try:
        value = default.replace(**repl)
    except ValueError as err:
        raise ValueError(f"{err}: {text}") from None
    except OverflowError:
        raise ValueError(f'Parsing "{text}" to datetime overflows') from None
    if res.weekday is not None and not res.day:
        value = value + relativedelta.relativedelta(weekday=res.weekday)
    offset = None
    if res.tzname and res.tzoffset is None and res.tzname not in ("UTC", "GMT", "Z", "z"):
        raise ValueError(f'Parsed string "{text}" included an unrecognized timezone "{res.tzname}".')
    if res.tzoffset is not None or res.tzname in ("UTC", "GMT", "Z", "z"):
        offset = dt.timedelta(seconds=res.tzoffset or 0)
        if abs(offset) >= dt.timedelta(hours=24):
            raise ValueError(f"Offset {res.tzoffset} exceeds 24 hours")
    return Stamp(value, 0, offset)


def _parse_string(text: str) -> "Stamp | _NaT":
    if text == "now" or text == "today":
        return Stamp(dt.datetime.now())
    if ":" in text[1:3] and _looks_like_time(text):  # a bare time means today: not cacheable
        return _dateutil(text, dt.datetime.now().replace(hour=0, minute=0, second=0, microsecond=0))
    return _parse_dated_string(text)


@functools.lru_cache(maxsize=16384)
def _parse_dated_string(text: str) -> "Stamp | _NaT":
    if text in _NAT_STRINGS:
        return NAT
    stamp = _parse_iso(text)
    if stamp is not None:
        return stamp
    negative = _NEGATIVE_YEAR.fullmatch(text)
    if negative and 1 <= int(negative[2] or 1) <= 12 and 1 <= int(negative[3] or 1) <= 31:
        return _BeforeYearOne((-int(negative[1]), int(negative[2] or 1), int(negative[3] or 1)))
    if not _looks_like_datetime(text):
        raise ValueError(f'Given date string "{text}" not likely a datetime')
    quarter = re.fullmatch(r"(\d{4})[Qq]([1-4])", text)
    if quarter:
        return Stamp(dt.datetime(int(quarter[1]), 3 * int(quarter[2]) - 2, 1))
    return _dateutil(text, dt.datetime(1, 1, 1))


def parse_timestamp(value: Any) -> Stamp | _NaT:
    """``pd.Timestamp(value)``; raises ValueError for an unparsable string, TypeError for other types."""
    if value is None:
        return NAT
    if isinstance(value, str):
        return _parse_string(value)
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
