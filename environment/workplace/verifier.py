"""The reward: NeMo-Gym's ``is_correct`` (replay both call lists on fresh state, compare 5 tables).

Reference algorithm (resources_servers/workplace_assistant/utils.py):
1. Replay the predicted calls on fresh databases, then the ground-truth calls on other fresh ones:
   ``functions[name](**json.loads(arguments))``; any exception (unknown tool, bad JSON, bad or
   unexpected argument, a tool raising) skips that call. Null arguments are NOT dropped here.
2. Lower-case every column of calendar, emails, plots, project tasks and CRM except
   ``status``, ``list_name`` and ``board`` (``Series.str.lower``: non-strings become NaN).
3. Reward 1.0 iff every pair is ``DataFrame.equals``: same index labels in the same order, same
   dtypes, and equal cells (NaN equals NaN and None).

Replaying on copy-on-write state costs microseconds, so this module replays literally instead of
reasoning about trajectories incrementally.
"""

import json
from typing import Any

from environment.workplace.episode import Episode
from environment.workplace.matching import check_str_accessor
from environment.workplace.state import EpisodeState
from environment.workplace.tables import OBJECT, BaseTables, Table, is_missing, load_base_tables

CASE_SENSITIVE_COLUMNS = frozenset({"status", "list_name", "board"})
_NA = ("<NA>",)  # a normalized missing cell


def replay(calls: list[dict], base: BaseTables) -> EpisodeState:
    """Run ``calls`` on fresh state, skipping every call that raises (as the reference does)."""
    episode = Episode(base)
    for call in calls:
        try:
            arguments = call["arguments"]
            args = arguments if isinstance(arguments, dict) else json.loads(arguments)
            episode.function(call["name"])(**args)
        except Exception:
            continue
    return episode.state


def _normalized_cell(column: str, value: Any) -> Any:
    if column in CASE_SENSITIVE_COLUMNS:
        return _NA if is_missing(value) else value
    return value.lower() if isinstance(value, str) else _NA


def _rows_equal(columns: tuple[str, ...], a: dict, b: dict) -> bool:
    if a is b:  # rows are immutable and shared copy-on-write: the common case
        return True
    return all(_normalized_cell(c, a[c]) == _normalized_cell(c, b[c]) for c in columns)


def _tables_equal(a: Table, b: Table) -> bool:
    """``DataFrame.equals`` after lower-casing: labels, dtypes, then cells row by row."""
    for column, dtype in zip(a.columns, a.dtypes):
        if dtype == OBJECT and column not in CASE_SENSITIVE_COLUMNS:
            check_str_accessor([row[column] for row in a.rows])
    for column, dtype in zip(b.columns, b.dtypes):
        if dtype == OBJECT and column not in CASE_SENSITIVE_COLUMNS:
            check_str_accessor([row[column] for row in b.rows])
    if len(a.rows) != len(b.rows) or tuple(a.dtypes) != tuple(b.dtypes):
        return False
    if a.labels != b.labels and a.index_labels() != b.index_labels():
        return False
    if a.rows is b.rows or list(a.rows) == list(b.rows):  # exact equality implies equal after lowering
        return True
    return all(_rows_equal(a.columns, x, y) for x, y in zip(a.rows, b.rows))


def _plots_equal(a: list[str], b: list[str]) -> bool:
    # One file_path column; dtype object while empty, str after the first row; labels 0..n-1.
    return len(a) == len(b) and all(x.lower() == y.lower() for x, y in zip(a, b))


def states_equal(predicted: EpisodeState, expected: EpisodeState) -> bool:
    """The reference comparison of calendar, emails, plots, project tasks and CRM.

    A column the reference's ``.str`` accessor rejects (an object column whose cells are all
    non-strings, e.g. after deleting every original row) makes the reference raise; here it scores 0.
    """
    try:
        return (
            _tables_equal(predicted.calendar, expected.calendar)
            and _tables_equal(predicted.emails, expected.emails)
            and _plots_equal(predicted.plots, expected.plots)
            and _tables_equal(predicted.project_tasks, expected.project_tasks)
            and _tables_equal(predicted.crm, expected.crm)
        )
    except AttributeError:
        return False


def verify_calls(calls: list[dict], ground_truth: list[dict], data_dir: str | None = None) -> float:
    """1.0 when ``calls`` leave the databases as ``ground_truth`` does, else 0.0.

    Each call is ``{"name": str, "arguments": str | dict}`` (a JSON string as the model wrote it, or
    the already-parsed dict). ``data_dir`` defaults to ``default_data_dir()``.
    """
    if data_dir is None:
        from environment.workplace.data_dir import default_data_dir

        data_dir = default_data_dir()
    base = load_base_tables(str(data_dir))
    return 1.0 if states_equal(replay(calls, base), replay(ground_truth, base)) else 0.0


