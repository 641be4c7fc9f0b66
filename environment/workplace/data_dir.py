"""Where the Workplace Assistant sandbox (the CSV databases) lives on disk.

The sandbox is a folder laid out like NeMo-Gym's ``csv_data/``: ``processed/*.csv`` (the five
databases) and ``raw/email_addresses.csv`` (the company directory). WorkBench's ``data/`` folder has
the same layout and works too.
"""

import os
from pathlib import Path

FETCH_HINT = (
    "run `megatron-grpo download` to fetch it, pass `--sandbox PATH`, or set WORKPLACE_DATA_DIR "
    "to a folder with processed/*.csv and raw/email_addresses.csv"
)


def cache_dir() -> Path:
    """The download cache: ``$MEGATRON_GRPO_CACHE``, else ``~/.cache/megatron_grpo``."""
    root = os.environ.get("MEGATRON_GRPO_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "megatron_grpo"


def default_data_dir() -> str:
    """The sandbox folder to use when none is given.

    ``$WORKPLACE_DATA_DIR`` when set, else ``<cache>/workplace_assistant/csv_data``. Raises
    FileNotFoundError naming the command that fetches the data when the folder does not exist.
    """
    from_env = os.environ.get("WORKPLACE_DATA_DIR")
    if from_env:
        path = Path(from_env).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"WORKPLACE_DATA_DIR={from_env} is not a folder; {FETCH_HINT}")
        return str(path)
    path = cache_dir() / "workplace_assistant" / "csv_data"
    if not path.is_dir():
        raise FileNotFoundError(f"Workplace Assistant sandbox not found at {path}; {FETCH_HINT}")
    return str(path)
