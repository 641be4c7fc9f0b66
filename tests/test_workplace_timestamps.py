"""``timestamps.parse_timestamp`` against ``pd.Timestamp`` on the strings a model may send.

Validity, the ValueError/TypeError text (shown to the model by the email search), time-zone
awareness and the calendar date must agree; clock-dependent inputs ("now", bare times) only need to
agree on validity.
"""

import warnings

import pandas as pd
import pytest

from environment.workplace.timestamps import NAT, parse_timestamp

INPUTS = [
    "2023-11-30", "2023-11-30 10:00:00", "2023-11-30T10:00", "2023-11-30 10:00:00Z", "2023/11/30", "11/30/2023",
    "30/11/2023", "Nov 30 2023", "abc", "2023-13-01", "2023-02-30", "1 pm", "tomorrow", "NaT", "nan", "", " ",
    "2023", "202311", "2023-11", "12", "1e5", "Q1 2023", "2023Q1", "2023-11-30 10:00:00.123456789",
    "2023-11-30 10:00:00+05:00", "0", "00", "999", "1000", "25:00", "Monday", "next monday", "Dec 1",
    "December 2023", "2023-12-01 9am", "2023-12-01 09:00 PM", "20231130", "2023-11-30 23:59:00", "30 Nov",
    "11-30-2023", "2023.11.30", "T", "a", "Now", "2023-11-30T10:00:00+25:00", "2023-11-30 10:00:00 UTC",
    "2023-11-30 10:00:00 EST", "1/2/3", "99999", "2023-11-30 24:00:00", " 2023-11-30", "2023-11-30 ", "x@y.z",
    "é", "(", "2023-1-5", "2023-11-30T10", "2023-11-30 10", "1.5", "+1", "３０", "1 2", " 12 ", "-inf", "inf",
    "1_000", "1e2", "5.", "12 30", "2023-W48", "2023-11-30 23:59:00 +0000", 5, 2.5, True, None, [1], {"a": 1},
    10**20, -(2**63), float("inf"),
]
CLOCK_DEPENDENT = {"now", "today", "10:30", "9:30"}


def _pandas(value):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            stamp = pd.Timestamp(value)
        except (ValueError, TypeError) as e:
            return ("error", ValueError if isinstance(e, ValueError) else TypeError, str(e))
    if stamp is pd.NaT:
        return ("NaT",)
    day = str(stamp.date()) if 1 <= stamp.year <= 9999 else "out of range"
    return ("ok", stamp.tz is not None, day)


def _ours(value):
    try:
        stamp = parse_timestamp(value)
    except (ValueError, TypeError) as e:
        return ("error", ValueError if isinstance(e, ValueError) else TypeError, str(e))
    if stamp is NAT:
        return ("NaT",)
    try:
        day = str(stamp.date())
    except ValueError:
        day = "out of range"
    return ("ok", stamp.offset is not None, day)


@pytest.mark.parametrize("value", INPUTS, ids=[repr(v)[:30] for v in INPUTS])
def test_matches_pandas_timestamp(value):
    assert _ours(value) == _pandas(value)


@pytest.mark.parametrize("value", sorted(CLOCK_DEPENDENT))
def test_clock_dependent_inputs_are_valid(value):
    assert _pandas(value)[0] == _ours(value)[0] == "ok"
