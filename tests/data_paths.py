"""Where the tests' reference data lives: nothing outside the repository and the download cache.

- The Workplace Assistant sandbox (NeMo-Gym's ``csv_data``) comes through the project's own path:
  the pinned ``nemo-gym`` wheel from PyPI, sha256-checked, into the download cache
  (``$MEGATRON_GRPO_CACHE`` or ``~/.cache/megatron_grpo``), once per machine.
- Small third-party files that the tests compare against live in ``tests/fixtures/`` with their
  licenses (see tests/fixtures/README.md).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import io
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures"
NEMO_GYM = FIXTURES / "nemo_gym"
EXAMPLE = NEMO_GYM / "example.jsonl"  # 5 reference tasks in the exact sample format (27 tool schemas)
EXAMPLE_ROLLOUTS = NEMO_GYM / "example_rollouts.jsonl"  # 5 recorded rollouts with rewards
WORKBENCH_ARCHIVE = FIXTURES / "workbench" / "data.tar.gz"  # WorkBench data/: processed/, raw/


@functools.cache
def sandbox_dir() -> str:
    """The reference sandbox folder, fetched on first use (``megatron-grpo download --no-tasks``)."""
    from environment.workplace import sandbox_fetch

    with contextlib.redirect_stdout(io.StringIO()):
        return str(sandbox_fetch.fetch_sandbox(progress=False))


@functools.cache
def workbench_dir() -> Path:
    """WorkBench's ``data/`` folder, unpacked once per process from ``tests/fixtures/workbench``.

    Kept as an archive so the repository's text stays the project's own; unpacked into a private
    temporary folder that lives as long as the test process.
    """
    root = Path(tempfile.mkdtemp(prefix="workbench-"))
    atexit.register(shutil.rmtree, root, True)
    with tarfile.open(WORKBENCH_ARCHIVE) as archive:
        archive.extractall(root, filter="data")
    os.chmod(root, 0o755)
    return root
