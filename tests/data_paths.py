"""Where the tests' reference data lives: nothing outside the repository and the download cache.

- The Workplace Assistant sandbox (NeMo-Gym's ``csv_data``) comes through the project's own path:
  the pinned ``nemo-gym`` wheel from PyPI, sha256-checked, into the download cache
  (``$MEGATRON_GRPO_CACHE`` or ``~/.cache/megatron_grpo``), once per machine.
- Small third-party files that the tests compare against live in ``tests/fixtures/`` with their
  licenses (see tests/fixtures/README.md).
"""

from __future__ import annotations

import contextlib
import functools
import io
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures"
NEMO_GYM = FIXTURES / "nemo_gym"
EXAMPLE = NEMO_GYM / "example.jsonl"  # 5 reference tasks in the exact sample format (27 tool schemas)
EXAMPLE_ROLLOUTS = NEMO_GYM / "example_rollouts.jsonl"  # 5 recorded rollouts with rewards
WORKBENCH = FIXTURES / "workbench"  # WorkBench's data/ folder: processed/ (+ queries_and_answers/), raw/
WORKBENCH_QA = WORKBENCH / "processed" / "queries_and_answers"


@functools.cache
def sandbox_dir() -> str:
    """The reference sandbox folder, fetched on first use (``megatron-grpo download --no-tasks``)."""
    from environment.workplace import sandbox_fetch

    with contextlib.redirect_stdout(io.StringIO()):
        return str(sandbox_fetch.fetch_sandbox(progress=False))
