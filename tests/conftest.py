"""Session-wide test fixtures: the reference data, fetched or located once (tests/data_paths.py)."""

from __future__ import annotations

import data_paths
import pytest


@pytest.fixture(scope="session")
def sandbox_dir() -> str:
    """The Workplace Assistant sandbox from the pinned nemo-gym wheel, in the download cache."""
    return data_paths.sandbox_dir()
