"""`megatron-grpo prepare-data`: validate every sample, write aggregate metrics, add the agent reference.

This is the job NeMo-Gym's ``ng_prepare_data`` did for the reference recipe:
1. every line of every ``--data`` file is checked; all problems are listed as ``file:line: field: message``
   and nothing is written if there is any;
2. each row gets ``"agent_ref": {"type": "responses_api_agents", "name": <agent>}`` (the agent server
   that runs it; ``workplace_assistant_simple_agent`` in the reference config);
3. ``<stem>_metrics.json`` is written beside each output: counts per category, tools per task,
   ground-truth length histogram, and per-category breakdowns.

Files are rewritten in place (atomically, idempotent) unless ``--out DIR`` is given.

Imports no torch (runs on CPU-only login nodes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter
from pathlib import Path

from megatron_grpo.data.samples import SampleError, validate_file, write_jsonl

AGENT_NAME = "workplace_assistant_simple_agent"
AGENT_TYPE = "responses_api_agents"


def add_agent_ref(samples: list[dict], agent_name: str = AGENT_NAME) -> list[dict]:
    """Copies of ``samples`` with ``agent_ref`` set to the named responses-API agent."""
    ref = {"type": AGENT_TYPE, "name": agent_name}
    return [{**sample, "agent_ref": dict(ref)} for sample in samples]


def _stats(values: list[float]) -> dict:
    if not values:
        return {"count": 0}
    return {
        "count": len(values),
        "mean": round(statistics.fmean(values), 4),
        "min": min(values),
        "max": max(values),
        "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
    }


def _histogram(values: list[int]) -> dict[str, int]:
    """``{"0": n0, "1": n1, ...}`` for every length from 0 to the max (zeros included)."""
    counts = Counter(values)
    return {str(k): counts.get(k, 0) for k in range(max(values, default=-1) + 1)}


def _length_summary(samples: list[dict]) -> dict:
    lengths = [len(s["ground_truth"]) for s in samples]
    return {**_stats(lengths), "histogram": _histogram(lengths)}


def compute_metrics(samples: list[dict]) -> dict:
    """Aggregate metrics of validated samples (JSON-serialisable)."""
    categories = Counter(s["category"] for s in samples)
    per_category = {}
    for category in sorted(categories):
        subset = [s for s in samples if s["category"] == category]
        per_category[category] = {
            "count": len(subset),
            "empty_ground_truth": sum(1 for s in subset if not s["ground_truth"]),
            "ground_truth_length": _length_summary(subset),
            "ground_truth_tool_calls": dict(
                sorted(Counter(c["name"] for s in subset for c in s["ground_truth"]).items())
            ),
        }
    params = [s["responses_create_params"] for s in samples]
    return {
        "num_samples": len(samples),
        "categories": dict(sorted(categories.items())),
        "environment_names": dict(sorted(Counter(s["environment_name"] for s in samples).items())),
        "tools_per_task": _stats([len(p["tools"]) for p in params]),
        "ground_truth_distinct_tools_per_task": _stats([len({c["name"] for c in s["ground_truth"]}) for s in samples]),
        "ground_truth_length": _length_summary(samples),
        "empty_ground_truth": sum(1 for s in samples if not s["ground_truth"]),
        "ground_truth_tool_calls": dict(sorted(Counter(c["name"] for s in samples for c in s["ground_truth"]).items())),
        "user_turns": _stats([sum(1 for m in p["input"] if m.get("role") == "user") for p in params]),
        "temperature": _stats([p["temperature"] for p in params if "temperature" in p]),
        "json_words": _stats([len(json.dumps(s).split()) for s in samples]),
        "per_category": per_category,
    }


def prepare_files(
    paths: list[Path], out_dir: Path | None = None, agent_name: str = AGENT_NAME, check_only: bool = False
) -> list[tuple[Path, Path]]:
    """Validate all files first; then write each prepared file and its metrics. Returns (data, metrics) paths.

    Raises SampleError listing the problems of all files when any line is invalid (nothing written).
    """
    loaded: list[tuple[Path, list[dict]]] = []
    problems: list[tuple[str, int, str, str]] = []
    truncated = 0
    for path in paths:
        if not path.is_file():
            problems.append((str(path), 0, "<file>", "no such file"))
            continue
        samples, found, extra = validate_file(path)
        problems += found
        truncated += extra
        if not found and not samples:
            problems.append((str(path), 0, "<file>", "no samples"))
        loaded.append((path, samples))
    if problems:
        raise SampleError(problems, truncated=truncated)
    written = []
    for path, samples in loaded:
        target = (out_dir / path.name) if out_dir is not None else path
        metrics_path = target.with_name(f"{target.stem}_metrics.json")
        metrics = {
            "file": str(target),
            "agent_ref": {"type": AGENT_TYPE, "name": agent_name},
            **compute_metrics(samples),
        }
        print(f"{path}: {len(samples)} samples valid, {len(metrics['categories'])} categories")
        if check_only:
            continue
        write_jsonl(target, add_agent_ref(samples, agent_name))
        metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")
        print(f"  -> {target} (agent_ref {agent_name}), metrics {metrics_path}")
        written.append((target, metrics_path))
    return written


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="megatron-grpo prepare-data",
        description="Validate samples, write aggregate metrics beside them, add the agent reference.",
    )
    parser.add_argument(
        "--data",
        metavar="PATH",
        type=Path,
        action="append",
        default=None,
        help="a sample JSONL (repeat for several; default: the downloaded train + validation)",
    )
    parser.add_argument(
        "--out", metavar="DIR", type=Path, default=None, help="write prepared files here instead of in place"
    )
    parser.add_argument(
        "--agent-name", metavar="NAME", default=AGENT_NAME, help=f"agent_ref name (default {AGENT_NAME})"
    )
    parser.add_argument("--check", action="store_true", help="validate only; write nothing")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    paths = args.data
    if not paths:
        from megatron_grpo.data.download import SPLIT_NAMES, default_tasks_dir

        paths = [default_tasks_dir() / name for name in SPLIT_NAMES]
        print(f"no --data given; preparing {', '.join(map(str, paths))}")
    try:
        prepare_files(paths, out_dir=args.out, agent_name=args.agent_name, check_only=args.check)
    except SampleError as e:
        n = len(e.problems)
        print(f"error: {n} problem{'s' if n != 1 else ''} found, nothing written:\n{e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
