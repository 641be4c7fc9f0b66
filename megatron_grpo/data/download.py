"""`megatron-grpo download`: fetch the tasks and the sandbox databases, split train/validation.

Tasks come from the Hugging Face dataset ``nvidia/Nemotron-RL-agent-workplace_assistant`` (its
``train`` split, 1255 rows) or from ``--source PATH``: a JSONL in the sample format, or a WorkBench
``queries_and_answers`` folder (converted with the 27 tool schemas and the system prompt). They are
split 90/10 by category (scikit-learn, random_state=42; 1255 rows -> 1129 / 126 as in the reference recipe) into
``train.jsonl`` / ``validation.jsonl``. The sandbox is NeMo-Gym's ``csv_data`` from the pinned
``nemo-gym`` wheel (sha256-checked), or ``--sandbox PATH``. Both steps are skipped when their output
is already there, unless ``--force``.

Defaults: tasks in ``<cache>/workplace_assistant/``, sandbox in ``<cache>/workplace_assistant/csv_data``;
the cache is ``$MEGATRON_GRPO_CACHE`` or ``~/.cache/megatron_grpo``.

Imports no torch (runs on CPU-only login nodes).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from megatron_grpo.data.samples import SampleError, check_rows, load_samples, write_jsonl
from megatron_grpo.data.split import stratified_split

HF_DATASET = "nvidia/Nemotron-RL-agent-workplace_assistant"
HF_SPLIT = "train"
SPLIT_NAMES = ("train.jsonl", "validation.jsonl")


class DownloadError(RuntimeError):
    """A source that cannot be read; the message says which flag to use instead."""


def default_tasks_dir() -> Path:
    """Where the task splits go: the folder the shipped configs read (``data.train_path``),
    relative to the working directory (the repository root on a cluster)."""
    return Path("data") / "workplace_assistant"


def load_hf_tasks(name: str = HF_DATASET, split: str = HF_SPLIT) -> list[dict]:
    """Rows of a Hugging Face dataset split, as plain dicts in the sample format (validated)."""
    try:
        import datasets

        dataset = datasets.load_dataset(name, split=split)
    except Exception as e:  # any hub or cache failure gets the same advice
        raise DownloadError(
            f"could not load {name} (split {split!r}) from the Hugging Face hub: {type(e).__name__}: {e}\n"
            f"No hub access? Fetch the dataset's {split}.jsonl elsewhere and pass --source PATH "
            "(a JSONL in the sample format, or a WorkBench data/processed/queries_and_answers folder)."
        ) from e
    from megatron_grpo.data.workbench import tool_schemas

    reference = {schema["name"]: schema for schema in tool_schemas()}
    rows = [_from_arrow(dict(row), reference) for row in dataset]
    return check_rows(rows, source=f"hf:{name}[{split}]")


def _from_arrow(row: dict, reference: dict[str, dict]) -> dict:
    """Undo what Arrow does to a sample: a list of structs gets the union of their keys with absent ones
    null (every tool schema would gain the other tools' properties as null, in union order).

    Nulls are dropped, and a schema equal to one of ours up to key order is replaced by ours, so the
    model sees properties in the reference order (``reference``: our schemas by name). A
    ``ground_truth`` stored as JSON text is decoded.
    """
    row = _drop_nulls(row)
    if isinstance(row.get("ground_truth"), str):
        try:
            row["ground_truth"] = json.loads(row["ground_truth"])
        except ValueError:
            pass  # reported by validation
    params = row.get("responses_create_params")
    if isinstance(params, dict) and isinstance(params.get("tools"), list):
        params["tools"] = [
            reference[t["name"]] if isinstance(t, dict) and reference.get(t.get("name")) == t else t
            for t in params["tools"]
        ]
    return row


def load_source(path: Path) -> list[dict]:
    """Samples from ``--source``: a JSONL file, or a WorkBench folder (converted)."""
    from megatron_grpo.data.workbench import WorkbenchError, find_queries_folder, load_workbench

    if path.is_dir():
        if find_queries_folder(path) is None:
            raise DownloadError(
                f"--source {path}: a folder must be WorkBench's queries_and_answers (or hold "
                "data/processed/queries_and_answers); otherwise pass a JSONL file"
            )
        try:
            samples = load_workbench(path)
        except WorkbenchError as e:
            raise DownloadError(f"--source {path}: {e}") from e
        print(
            "note: WorkBench's answers were computed on WorkBench's own sandbox (its data/ folder); "
            "pass --sandbox <WorkBench>/data to train on it instead of NeMo-Gym's."
        )
        return samples
    if not path.is_file():
        raise DownloadError(f"--source {path}: no such file or folder")
    return load_samples(path)


def download_tasks(
    out_dir: Path,
    *,
    source: Path | None = None,
    dataset: str = HF_DATASET,
    hf_split: str = HF_SPLIT,
    validation_fraction: float = 0.1,
    seed: int = 42,
    force: bool = False,
) -> tuple[Path, Path]:
    """Write ``out_dir/train.jsonl`` and ``out_dir/validation.jsonl`` unless both exist (or ``force``)."""
    train_path, val_path = (out_dir / name for name in SPLIT_NAMES)
    if train_path.is_file() and val_path.is_file() and not force:
        print(f"tasks present at {train_path} and {val_path}, skipping (--force to redo)")
        return train_path, val_path
    if source is not None:
        print(f"reading tasks from {source}")
        samples = load_source(source)
    else:
        print(f"loading {dataset} (split {hf_split!r}) with datasets.load_dataset")
        samples = load_hf_tasks(dataset, hf_split)
    train, validation = stratified_split(samples, validation_fraction=validation_fraction, seed=seed)
    write_jsonl(train_path, train)
    write_jsonl(val_path, validation)
    print(f"wrote {len(train)} train / {len(validation)} validation samples to {out_dir}")
    _print_categories(train, validation)
    return train_path, val_path


def _print_categories(train: list[dict], validation: list[dict]) -> None:
    n_train, n_val = Counter(s["category"] for s in train), Counter(s["category"] for s in validation)
    width = max(len(c) for c in n_train | n_val)
    print(f"  {'category':<{width}}  train  validation")
    for category in sorted(n_train | n_val):
        print(f"  {category:<{width}}  {n_train[category]:>5}  {n_val[category]:>10}")


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="megatron-grpo download",
        description="Fetch Workplace Assistant tasks and sandbox databases; split them by category.",
    )
    tasks = parser.add_argument_group("tasks")
    tasks.add_argument(
        "--source",
        metavar="PATH",
        type=Path,
        default=None,
        help="a JSONL in the sample format or a WorkBench queries_and_answers folder "
        "(instead of the Hugging Face dataset)",
    )
    tasks.add_argument(
        "--dataset",
        metavar="NAME",
        default=HF_DATASET,
        help=f"Hugging Face dataset id or a local dataset folder (default {HF_DATASET})",
    )
    tasks.add_argument(
        "--hf-split", metavar="SPLIT", default=HF_SPLIT, help="which split of it to divide (default train)"
    )
    tasks.add_argument(
        "--out",
        metavar="DIR",
        type=Path,
        default=None,
        help="folder for train.jsonl / validation.jsonl (default data/workplace_assistant, as the configs expect)",
    )
    tasks.add_argument("--validation-fraction", metavar="F", type=float, default=0.1)
    tasks.add_argument("--seed", type=int, default=42, help="scikit-learn random_state of the split")
    tasks.add_argument("--no-tasks", action="store_true", help="only fetch the sandbox")
    sandbox = parser.add_argument_group("sandbox")
    sandbox.add_argument(
        "--sandbox",
        metavar="PATH",
        type=Path,
        default=None,
        help="copy this local csv_data folder instead of fetching NeMo-Gym's",
    )
    sandbox.add_argument(
        "--wheel",
        metavar="PATH",
        type=Path,
        default=None,
        help="take csv_data from this local nemo-gym wheel instead of downloading it",
    )
    sandbox.add_argument(
        "--wheel-url", metavar="URL", default=None, help="download the pinned wheel from this URL (a mirror)"
    )
    sandbox.add_argument(
        "--sandbox-dest",
        metavar="DIR",
        type=Path,
        default=None,
        help="where to put csv_data (default <cache>/workplace_assistant/csv_data)",
    )
    sandbox.add_argument("--no-sandbox", action="store_true", help="only fetch the tasks")
    parser.add_argument("--force", action="store_true", help="redo steps whose output already exists")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from environment.workplace import sandbox_fetch

    try:
        if not args.no_tasks:
            out_dir = args.out if args.out is not None else default_tasks_dir()
            download_tasks(
                out_dir,
                source=args.source,
                dataset=args.dataset,
                hf_split=args.hf_split,
                validation_fraction=args.validation_fraction,
                seed=args.seed,
                force=args.force,
            )
        if not args.no_sandbox:
            sandbox_fetch.fetch_sandbox(
                args.sandbox_dest,
                wheel=args.wheel,
                sandbox=args.sandbox,
                url=args.wheel_url or sandbox_fetch.WHEEL_URL,
                force=args.force,
                progress=not args.quiet,
            )
    except (DownloadError, SampleError, sandbox_fetch.SandboxError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
