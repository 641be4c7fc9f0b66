"""``Series.str.contains(pat, case=False)`` as pandas 3 computes it, without pandas.

The reference filters calendar, project and CRM rows with ``str.contains`` (regex on, case off). What
pandas does depends on the column's dtype:

- ``str`` columns (pyarrow-backed) match with RE2 through ``pyarrow.compute.match_substring_regex``,
  except for patterns RE2 lacks or treats differently (lookaround, backreferences, ``\\s``,
  ``\\u`` escapes; ``\\w \\d \\b`` on non-ASCII data; ``$`` on data with newlines), which go to
  Python's ``re``. Missing cells give False.
- ``object`` columns (after a tool stored a non-string) use Python's ``re``; a cell that is not a
  string gives NaN, which makes the later boolean mask raise.

Plain ASCII patterns on ASCII cells (nearly every real query) take a fast substring path whose result
is the same under both engines. pyarrow is imported only for the rare patterns that need RE2.
"""

import re
from typing import Any

from environment.workplace.tables import is_missing

NA = object()  # a NaN entry in an object-dtype boolean result
_REGEX_SPECIALS = frozenset(".^$*+?()[]{}|\\")
_ESCAPED_UNICODE = re.compile(r"(?<!\\)(?:\\\\)*\\(?:[uU]|N{)")
_UNESCAPED_END_ANCHOR = re.compile(r"(?<!\\)((?:\\\\)*)\\Z")
_ALLOWED_STR_ACCESSOR = {"string", "empty", "mixed", "mixed-integer"}


def _is_plain(pat: str) -> bool:
    return pat.isascii() and not any(ch in _REGEX_SPECIALS for ch in pat)


def _check_pattern_type(pat: Any) -> None:
    """pandas first runs ``re.compile(pat)`` (only to warn about groups): a non-string raises there."""
    if isinstance(pat, str):
        return
    try:
        re.compile(pat)
    except re.error:
        pass


def _regex_nodes(pat: str) -> list:
    from re import _parser  # type: ignore[attr-defined]

    repeats = {_parser.MAX_REPEAT, _parser.MIN_REPEAT, getattr(_parser, "POSSESSIVE_REPEAT", None)}

    def walk(tokens):
        for op, arg in tokens:
            yield op, arg
            if op == _parser.SUBPATTERN:
                yield from walk(arg[3])
            elif op == _parser.BRANCH:
                for branch in arg[1]:
                    yield from walk(branch)
            elif op in repeats:
                yield from walk(arg[2])
            elif op in (getattr(_parser, "ATOMIC_GROUP", None), _parser.IN):
                yield from walk(arg)

    try:
        return list(walk(_parser.parse(pat)))
    except re.error:
        return []


def _needs_python_regex(pat: str, values: list[str]) -> bool:
    """Whether pandas sends this pattern to Python's ``re`` instead of RE2 (pandas 3.1 rules)."""
    from re import _parser  # type: ignore[attr-defined]

    if _ESCAPED_UNICODE.search(pat):
        return True
    nodes = _regex_nodes(pat)
    if any(op in (_parser.ASSERT, _parser.ASSERT_NOT, _parser.GROUPREF) for op, _ in nodes):
        return True
    space = {_parser.CATEGORY_SPACE, _parser.CATEGORY_NOT_SPACE}
    if any(arg in space for op, arg in nodes if op == _parser.CATEGORY):
        return True
    unicode_sensitive = {
        (_parser.CATEGORY, _parser.CATEGORY_WORD),
        (_parser.CATEGORY, _parser.CATEGORY_NOT_WORD),
        (_parser.CATEGORY, _parser.CATEGORY_DIGIT),
        (_parser.CATEGORY, _parser.CATEGORY_NOT_DIGIT),
        (_parser.AT, _parser.AT_BOUNDARY),
        (_parser.AT, _parser.AT_NON_BOUNDARY),
    }
    at_or_category = (_parser.CATEGORY, _parser.AT)
    sensitive = any((op, arg) in unicode_sensitive for op, arg in nodes if op in at_or_category)
    if sensitive and not all(v.isascii() for v in values):
        return True
    if any(op == _parser.AT and arg == _parser.AT_END for op, arg in nodes):
        if any("\n" in v for v in values):
            return True
    return False


def _re2_contains(values: list[str], pat: str) -> list[bool]:
    """RE2 matching as pandas does it; without pyarrow installed, Python's ``re`` (same result for
    nearly all patterns; error texts for invalid patterns differ)."""
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
    except ImportError:
        compiled = re.compile(pat, flags=re.IGNORECASE)
        return [compiled.search(v) is not None for v in values]

    pat = _UNESCAPED_END_ANCHOR.sub(r"\1\\z", pat)
    result = pc.match_substring_regex(pa.array(values, type=pa.large_string()), pat, ignore_case=True)
    return [bool(x) for x in result.to_pylist()]


def str_column_contains(values: list[Any], pat: Any) -> list[bool]:
    """``str.contains(pat, case=False)`` on a str-dtype column; missing cells give False."""
    _check_pattern_type(pat)
    present = [i for i, v in enumerate(values) if not is_missing(v)]
    texts = [values[i] for i in present]
    out = [False] * len(values)
    if isinstance(pat, str) and _is_plain(pat):
        lowered = pat.lower()
        slow = []
        for i, text in zip(present, texts):
            if text.isascii():
                out[i] = lowered in text.lower()
            else:
                slow.append(i)
        if slow:
            for i, hit in zip(slow, _re2_contains([values[i] for i in slow], pat)):
                out[i] = hit
        return out
    if not isinstance(pat, str) or _needs_python_regex(pat, texts):
        compiled = re.compile(pat, flags=re.IGNORECASE)
        hits = [compiled.search(t) is not None for t in texts]
    else:
        hits = _re2_contains(texts, pat) if texts else []
    for i, hit in zip(present, hits):
        out[i] = hit
    return out


def infer_dtype(values: list[Any]) -> str:
    """The part of ``pandas.api.types.infer_dtype(skipna=True)`` the ``.str`` accessor check needs."""
    kinds = set()
    for v in values:
        if is_missing(v):
            continue
        if isinstance(v, str):
            kinds.add("string")
        elif isinstance(v, bool):
            kinds.add("boolean")
        elif isinstance(v, int):
            kinds.add("integer")
        elif isinstance(v, float):
            kinds.add("floating")
        else:
            kinds.add("mixed")
    if not kinds:
        return "empty"
    if len(kinds) == 1:
        return kinds.pop()
    if kinds == {"integer", "floating"}:
        return "mixed-integer-float"
    if "integer" in kinds and "mixed" not in kinds and "boolean" not in kinds:
        return "mixed-integer"
    return "mixed"


def check_str_accessor(values: list[Any]) -> None:
    """The ``.str`` accessor's dtype check on an object column."""
    if any(isinstance(v, str) for v in values):
        return  # "string", "mixed" or "mixed-integer": all accepted
    inferred = infer_dtype(values)
    if inferred not in _ALLOWED_STR_ACCESSOR:
        raise AttributeError(f"Can only use .str accessor with string values, not {inferred}")


def object_column_contains(values: list[Any], pat: Any, na: Any = NA) -> list[Any]:
    """``str.contains(pat, case=False, na=na)`` on an object column: non-strings give ``na``."""
    check_str_accessor(values)
    _check_pattern_type(pat)
    compiled = re.compile(pat, flags=re.IGNORECASE)
    return [compiled.search(v) is not None if isinstance(v, str) else na for v in values]


def column_contains(values: list[Any], dtype: str, pat: Any, na: Any = NA) -> list[Any]:
    """Dispatch on the column dtype; ``na`` is the result for non-string cells of object columns."""
    if dtype == "str":
        return str_column_contains(values, pat)
    return object_column_contains(values, pat, na)


def boolean_mask(mask: list[Any]) -> list[bool]:
    """Indexing a frame with a mask that holds NaN raises, as in pandas."""
    if any(m is NA for m in mask):
        raise ValueError("Cannot mask with non-boolean array containing NA / NaN values")
    return mask
