"""Element-wise column operations with the results and errors pandas 3 gives for them.

Each function takes the column's values and dtype (``"str"`` or ``"object"``) and the scalar the
reference compared them with. The model may send any JSON value as an argument, so the non-string
cases matter: they decide which error text the model sees.
"""

import operator
from typing import Any

from environment.workplace.tables import MISSING, OBJECT, STR, is_missing

_OP_NAMES = {operator.eq: "eq", operator.ne: "ne", operator.ge: "ge", operator.le: "le"}


def _lengths_error(values: list, other: list) -> ValueError:
    return ValueError("Lengths must match to compare", (len(values),), (len(other),))


def _check_int64(value: Any) -> None:
    """pyarrow converts a Python int scalar to int64 before comparing a str column with it."""
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
        raise OverflowError("Python int too large to convert to C long")


def compare(values: list[Any], dtype: str, op: Any, other: Any) -> list[bool]:
    """``series <op> other`` for op in ==, !=, >=, <=."""
    if isinstance(other, list):
        if len(other) != len(values):
            raise _lengths_error(values, other)
        return [bool(op(v, o)) for v, o in zip(values, other)]
    if dtype == STR:
        if isinstance(other, dict):
            raise NotImplementedError(f"{_OP_NAMES[op]} not implemented for {type(other)}")
        _check_int64(other)
        if not values:
            return []
        if isinstance(other, str):
            if op is operator.eq:
                return [v == other for v in values]  # a missing cell (NaN) never equals a string
            if op is operator.ne:
                return [v is MISSING or v != other for v in values]
            return [v is not MISSING and op(v, other) for v in values]  # str columns hold MISSING
        if op is operator.eq:
            return [False] * len(values)
        if op is operator.ne:
            return [True] * len(values)
        if other is None:
            return [False] * len(values)
        raise TypeError(f"Invalid comparison between dtype=str and {type(other).__name__}")
    # object dtype: Python comparisons element by element; missing cells compare False
    if op in (operator.eq, operator.ne):
        return [bool(op(v, other)) if not is_missing(v) else op is operator.ne for v in values]
    return [False if is_missing(v) or is_missing(other) else bool(op(v, other)) for v in values]


def contains_value(values: list[Any], dtype: str, value: Any) -> bool:
    """``value in series.values`` (membership test the tools use before deleting or updating)."""
    if dtype == STR:
        if isinstance(value, list):  # pandas first asks isna(value), element-wise for a list
            if not value:
                raise ValueError(
                    "The truth value of an empty array is ambiguous. Use `array.size > 0` to check that an "
                    "array is not empty."
                )
            if len(value) > 1:
                raise ValueError(
                    "The truth value of an array with more than one element is ambiguous. "
                    "Use a.any() or a.all()"
                )
            if is_missing(value[0]):
                return any(is_missing(v) for v in values)
            raise ValueError("Lengths must match to compare")
        if isinstance(value, dict):
            raise NotImplementedError(f"eq not implemented for {type(value)}")
        _check_int64(value)
        if not isinstance(value, str):
            return False
        return value in values
    return any(v == value for v in values)


def column_max(values: list[Any]) -> Any:
    """``series.max()`` of an id column (string order); NaN when empty, as pandas gives."""
    present = [v for v in values if isinstance(v, str)]
    return max(present) if present else MISSING


def checked_value(dtype: str, value: Any) -> Any:
    """The value ``df.loc[mask, col] = value`` stores for one matching row, or the error it raises."""
    if dtype == STR:
        if isinstance(value, list):
            raise ValueError("Must have equal len keys and value when setting with an iterable")
        if isinstance(value, dict):  # aligned on the row labels like a Series: nothing matches
            if _numeric_mapping(value):
                raise TypeError(
                    "Invalid value for dtype 'str'. Value should be a string or missing value "
                    "(or array of those)."
                )
            return MISSING
        if is_missing(value):
            return MISSING
        if not isinstance(value, str):
            raise TypeError(
                f"Invalid value '{value}' for dtype 'str'. Value should be a string or missing value, "
                f"got '{type(value).__name__}' instead."
            )
        return value
    assert dtype == OBJECT
    if isinstance(value, list):
        raise ValueError("setting an array element with a sequence.")
    if isinstance(value, dict):  # pandas aligns a dict on the row labels: nothing matches
        return MISSING
    return value


def _numeric_mapping(value: dict) -> bool:
    """A dict whose values make a numeric Series (reindexing it gives float NaN, which str rejects)."""
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value.values())
