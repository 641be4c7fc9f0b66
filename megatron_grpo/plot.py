"""`megatron-grpo plot RUN_DIR [--out PNG]`: reward and accuracy curves of a run, as a PNG.

Reads the run's ``metrics.jsonl`` (written by :mod:`megatron_grpo.metrics`) and draws
train:reward_mean, train:accuracy and val:accuracy against the step.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from megatron_grpo.metrics import METRICS_FILE, REWARD_MEAN, TRAIN_ACCURACY, VAL_ACCURACY, read_metrics

CURVES = ((REWARD_MEAN, "train reward mean", "-"), (TRAIN_ACCURACY, "train accuracy", "--"),
          (VAL_ACCURACY, "validation accuracy", "-o"))


def find_metrics_file(run_dir: Path) -> Path:
    """``run_dir/metrics.jsonl``, else ``run_dir/logs/metrics.jsonl``, else the one found below it."""
    if run_dir.is_file():
        return run_dir
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    for candidate in (run_dir / METRICS_FILE, run_dir / "logs" / METRICS_FILE):
        if candidate.is_file():
            return candidate
    found = sorted(run_dir.rglob(METRICS_FILE))
    if not found:
        raise FileNotFoundError(f"no {METRICS_FILE} under {run_dir}: has this run logged a step yet?")
    return found[0]


def plot_run(run_dir: str | Path, out: str | Path | None = None, title: str | None = None) -> Path:
    """Render the curves of ``run_dir`` to ``out`` (default ``<metrics folder>/curves.png``)."""
    path = find_metrics_file(Path(run_dir))
    steps = read_metrics(path)
    series = {
        key: [(s, m[key]) for s, m in steps.items() if isinstance(m.get(key), (int, float))]
        for key, _, _ in CURVES
    }
    if not any(series.values()):
        names = ", ".join(key for key, _, _ in CURVES)
        raise ValueError(f"{path} has none of {names} to plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for key, label, style in CURVES:
        if series[key]:
            xs, ys = zip(*series[key])
            ax.plot(xs, ys, style, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("reward / accuracy")
    ax.set_title(title or str(Path(run_dir)))
    ax.grid(alpha=0.3)
    ax.legend()
    out_path = Path(out) if out is not None else path.parent / "curves.png"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    return out_path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="megatron-grpo plot", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run folder (or its metrics.jsonl)")
    parser.add_argument("--out", type=Path, default=None, help="PNG path (default: next to metrics.jsonl)")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    try:
        out = plot_run(args.run_dir, args.out, args.title)
    except (FileNotFoundError, ValueError) as exc:
        print(f"megatron-grpo plot: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0
