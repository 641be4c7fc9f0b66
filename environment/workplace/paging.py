"""The pagination arithmetic shared by the email, calendar and CRM searches.

It is written with the same operations as the reference so that odd ``page``/``page_size`` values
(strings, floats, zero, negatives) give the same results and the same Python errors.
"""

from typing import Any


class Page:
    """(clamped page, total pages, slice bounds); ``rows()`` slices only when asked, as the reference
    slices only when there are results (so a float page_size errors only then)."""

    def __init__(self, records: list, page: Any, page_size: Any):
        self._records = records
        total = len(records)
        self.total_pages = (total + page_size - 1) // page_size
        self.page = max(1, min(page, self.total_pages)) if self.total_pages > 0 else 1
        self._start = (self.page - 1) * page_size
        self._end = min(self._start + page_size, total)

    def rows(self) -> list:
        return [dict(row) for row in self._records[self._start : self._end]]


def sort_desc_stable_like_numpy(keys: list[str]) -> list[int]:
    """Row order of pandas ``sort_values(ascending=False)`` on a datetime column of ISO strings.

    With distinct keys any correct sort agrees; with ties pandas' order comes from numpy's
    (unstable) quicksort on the reversed array, so that path runs numpy itself.
    """
    if len(set(keys)) == len(keys):
        return sorted(range(len(keys)), key=keys.__getitem__, reverse=True)
    try:
        import numpy as np
    except ImportError:  # ties then keep their table order
        return sorted(range(len(keys)), key=keys.__getitem__, reverse=True)

    values = np.array(keys, dtype="datetime64[ns]")[::-1]
    index = np.arange(len(keys))[::-1]
    return [int(i) for i in index[values.argsort(kind="quicksort")][::-1]]
