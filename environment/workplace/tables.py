"""The sandbox databases as plain Python rows, with the pandas semantics the reward depends on.

The reference keeps each database in a pandas DataFrame read with ``dtype=str``. Three things about
those frames decide whether two final states compare equal, so every table here tracks them:

- rows: one dict per row, column -> value. Cells read from the CSV are ``str`` or ``MISSING``
  (pandas' NaN for an empty cell); values written by tools are stored as passed (``int``, ``None``,
  ``list`` ... when the model sent those).
- labels: the DataFrame index. Deletes keep the labels of the other rows; appends made with
  ``ignore_index=True`` renumber 0..n-1 (``labels is None`` means exactly that); a calendar append
  labels the new row 0.
- dtypes: ``"str"`` (pandas' string dtype) until a non-string value is appended to the column, then
  ``"object"``. ``DataFrame.equals`` compares dtypes, so this matters for the reward.

Base tables are parsed once per data folder and process (``load_base_tables``) and never mutated;
an episode works on ``Table`` views that copy the row list on their first write (copy-on-write), so
starting an episode costs a few object allocations.
"""

import csv
import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MISSING = float("nan")  # an empty CSV cell: pandas' NaN in a str column (prints as "nan", JSON null)
STR = "str"
OBJECT = "object"

# pandas.read_csv's default na_values: such cells become NaN even with dtype=str.
_NA_STRINGS = frozenset(
    "|#N/A|#N/A N/A|#NA|-1.#IND|-1.#QNAN|-NaN|-nan|1.#IND|1.#QNAN|<NA>|N/A|NA|NULL|NaN|None|n/a|nan|null"
    .split("|")
)

# The compared databases: attribute name -> CSV file under processed/.
DATABASE_FILES = {
    "emails": "emails.csv",
    "calendar": "calendar_events.csv",
    "analytics": "analytics_data.csv",
    "project_tasks": "project_tasks.csv",
    "crm": "customer_relationship_manager_data.csv",
}


def is_missing(value: Any) -> bool:
    """pandas ``isna`` for a scalar cell: None or a float NaN."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def has_column(table: "Table", name: Any) -> bool:
    """``name in df.columns``: pandas hashes the key first, so a list or dict raises TypeError."""
    hash(name)
    return name in table.columns


@dataclass(frozen=True)
class BaseTable:
    """One parsed CSV: column names, rows (never mutated) and per-column dtypes."""

    columns: tuple[str, ...]
    rows: tuple[dict, ...]
    dtypes: tuple[str, ...]
    column_cache: dict = field(default_factory=dict, compare=False, repr=False)  # name -> values, read-only


@dataclass(frozen=True)
class BaseTables:
    """Everything read from one sandbox folder."""

    emails: BaseTable
    calendar: BaseTable
    analytics: BaseTable
    project_tasks: BaseTable
    crm: BaseTable
    directory: tuple[str, ...]  # raw/email_addresses.csv, one address per line, no header
    derived: dict = field(default_factory=dict, compare=False, repr=False)  # lazily built read-only indexes


def _read_csv(path: Path) -> BaseTable:
    if not path.is_file():
        raise FileNotFoundError(f"missing sandbox file {path}")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        try:
            header = tuple(next(reader))
        except StopIteration:
            raise ValueError(f"{path}: empty CSV file (expected a header line)") from None
        rows = []
        for line_no, fields in enumerate(reader, start=2):
            if not fields:
                continue  # pandas skips blank lines
            if len(fields) != len(header):
                raise ValueError(f"{path}:{line_no}: expected {len(header)} fields, got {len(fields)}")
            rows.append({c: (MISSING if v in _NA_STRINGS else v) for c, v in zip(header, fields)})
    return BaseTable(columns=header, rows=tuple(rows), dtypes=tuple(STR for _ in header))


def _read_directory(path: Path) -> tuple[str, ...]:
    if not path.is_file():
        raise FileNotFoundError(f"missing sandbox file {path}")
    with open(path, newline="", encoding="utf-8") as f:
        return tuple(fields[0] for fields in csv.reader(f) if fields)


@functools.lru_cache(maxsize=8)
def load_base_tables(data_dir: str) -> BaseTables:
    """Parse a sandbox folder (``processed/*.csv``, ``raw/email_addresses.csv``); cached per folder."""
    root = Path(data_dir)
    tables = {name: _read_csv(root / "processed" / file) for name, file in DATABASE_FILES.items()}
    analytics = tables["analytics"]
    # The reference converts user_engaged to bool right after reading.
    engaged = [dict(row, user_engaged=row["user_engaged"] == "True") for row in analytics.rows]
    tables["analytics"] = BaseTable(analytics.columns, tuple(engaged), analytics.dtypes)
    return BaseTables(**tables, directory=_read_directory(root / "raw" / "email_addresses.csv"))


def _positions(values: list, wanted: str) -> list[int]:
    """Indices of the cells equal to the string ``wanted`` (list.index scans in C)."""
    found, i = [], -1
    while True:
        try:
            i = values.index(wanted, i + 1)
        except ValueError:
            return found
        found.append(i)


class Table:
    """An episode's view of one database: rows, index labels and dtypes, copied on first write."""

    __slots__ = ("columns", "rows", "labels", "dtypes", "_owned", "_column_cache")

    def __init__(self, base: BaseTable):
        self.columns = base.columns
        self.rows = base.rows  # a tuple until the first write
        self.labels: list[int] | None = None  # None: the index is 0..n-1
        self.dtypes = base.dtypes
        self._owned = False
        self._column_cache = base.column_cache  # shared with the base until the first write

    def _own(self) -> None:
        if not self._owned:
            self.rows = list(self.rows)
            self.dtypes = list(self.dtypes)
            self._owned = True

    def column(self, name: str) -> list:
        """The values of one column (cached until the next write; callers must not mutate it)."""
        values = self._column_cache.get(name)
        if values is None:
            values = self._column_cache[name] = [row[name] for row in self.rows]
        return values

    def column_dtype(self, column: str) -> str:
        return self.dtypes[self.columns.index(column)]

    def index_labels(self) -> list[int]:
        return list(range(len(self.rows))) if self.labels is None else list(self.labels)

    def delete_where(self, column: str, value: Any) -> None:
        """Keep the rows whose ``column`` differs from ``value`` (labels of kept rows unchanged)."""
        drop = set(_positions(self.column(column), value))
        labels = self.index_labels()
        self._own()
        self._column_cache = {}
        self.rows = [row for i, row in enumerate(self.rows) if i not in drop]
        self.labels = [label for i, label in enumerate(labels) if i not in drop]

    def set_where(self, column: str, value: Any, match_column: str, match_value: Any) -> None:
        """``df.loc[df[match_column] == match_value, column] = value`` for an already-checked value."""
        positions = _positions(self.column(match_column), match_value)
        self._own()
        # other columns' cached values stay valid (the lists are never mutated, only replaced)
        self._column_cache = {k: v for k, v in self._column_cache.items() if k != column}
        for i in positions:
            new_row = dict(self.rows[i])
            new_row[column] = value
            self.rows[i] = new_row

    def append(self, row: dict, ignore_index: bool) -> None:
        """``pd.concat([df, one_row_frame], ignore_index=...)``: dtypes widen to object for non-str."""
        self._own()
        self._column_cache = {}
        for i, column in enumerate(self.columns):
            if self.dtypes[i] == STR and not isinstance(row[column], str):
                self.dtypes[i] = OBJECT
        labels = None if ignore_index else self.index_labels() + [0]
        self.rows.append({c: row[c] for c in self.columns})
        self.labels = labels
