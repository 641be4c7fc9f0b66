"""The pagination arithmetic shared by the email, calendar and CRM searches.

It is written with the same operations as the reference so that odd ``page``/``page_size`` values
(strings, floats, zero, negatives) give the same results and the same Python errors.
"""

from typing import Any


def paginate(records: list, page: Any, page_size: Any) -> tuple[list, Any, Any]:
    """Return (records on the page, clamped page, total pages)."""
    total = len(records)
    total_pages = (total + page_size - 1) // page_size
    page = max(1, min(page, total_pages)) if total_pages > 0 else 1
    start_idx = (page - 1) * page_size
    end_idx = min(start_idx + page_size, total)
    return records[start_idx:end_idx], page, total_pages


def sort_desc_stable_like_numpy(keys: list[str]) -> list[int]:
    """Row order of pandas ``sort_values(ascending=False)`` on a datetime column of ISO strings.

    With distinct keys any correct sort agrees; with ties pandas' order comes from numpy's
    (unstable) quicksort on the reversed array, so that path runs numpy itself.
    """
    if len(set(keys)) == len(keys):
        return sorted(range(len(keys)), key=keys.__getitem__, reverse=True)
    import numpy as np

    values = np.array(keys, dtype="datetime64[ns]")[::-1]
    index = np.arange(len(keys))[::-1]
    return [int(i) for i in index[values.argsort(kind="quicksort")][::-1]]
