"""Per-step metrics: jsonl (always), tensorboard, wandb, and a one-line console progress report.

Only global rank 0 writes; on every other rank :class:`MetricsLogger` does nothing, so callers need
no rank checks. Sinks share one tiny interface (``write(step, scalars)``, ``close()``); wandb and
tensorboard are imported only when enabled.

Files, under ``run_dir``: ``metrics.jsonl`` (one JSON object per ``log`` call: ``{"step": N, ...}``,
appended and flushed, so a resumed run continues the same file), ``tensorboard/`` and ``wandb/``.

Metric keys (names as the reference recipe logs them; the trainer uses the constants below):

    train:accuracy                 fraction of rollouts with reward 1 (the verifier's pass rate)
    train:reward_mean              mean reward of the step's rollouts
    train:advantage_mean           mean advantage over the rollouts (about 0 with a group baseline)
    train:policy_loss              the step's GRPO loss (summed micro-batch contributions)
    policy_loss                    the same value, under the name the issue lists
    grad_norm                      global gradient norm before clipping
    val:accuracy                   validation pass rate (only on validation steps)
    train:e2e_samples_per_s        rollouts finished per second of step wall time (E2E samples/s)
    train:generation_tokens_per_s  generated tokens per second of generation time
    train:training_tflops_per_s    model TFLOP/s per GPU of the training phase (see flops.py)
    train:mfu                      training_tflops_per_s over the GPU's dense bf16 peak (GPU only)
    gen_train_logprob_error        mean |logp_gen - logp_train| over generated tokens (refit check)
    timing/<phase>                 seconds per phase: step, generation, reward, logprobs, train,
                                   refit, validation, checkpoint

Any other numeric key (e.g. the loss's clip_fraction) is written as-is; non-numeric values are
kept in the jsonl only.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Protocol

TRAIN_ACCURACY = "train:accuracy"
VAL_ACCURACY = "val:accuracy"
REWARD_MEAN = "train:reward_mean"
ADVANTAGE_MEAN = "train:advantage_mean"
TRAIN_POLICY_LOSS = "train:policy_loss"
POLICY_LOSS = "policy_loss"
GRAD_NORM = "grad_norm"
E2E_SAMPLES_PER_S = "train:e2e_samples_per_s"
GENERATION_TOKENS_PER_S = "train:generation_tokens_per_s"
TRAINING_TFLOPS_PER_S = "train:training_tflops_per_s"
MFU = "train:mfu"
GEN_TRAIN_LOGPROB_ERROR = "gen_train_logprob_error"
TIMING_PREFIX = "timing/"
TIMING_PHASES = ("step", "generation", "reward", "logprobs", "train", "refit", "validation", "checkpoint")

METRIC_KEYS = (
    TRAIN_ACCURACY,
    REWARD_MEAN,
    ADVANTAGE_MEAN,
    TRAIN_POLICY_LOSS,
    POLICY_LOSS,
    GRAD_NORM,
    VAL_ACCURACY,
    E2E_SAMPLES_PER_S,
    GENERATION_TOKENS_PER_S,
    TRAINING_TFLOPS_PER_S,
    MFU,
    GEN_TRAIN_LOGPROB_ERROR,
) + tuple(TIMING_PREFIX + phase for phase in TIMING_PHASES)

METRICS_FILE = "metrics.jsonl"


def global_rank() -> int:
    """This process's rank: torch.distributed when initialized, else RANK / SLURM_PROCID, else 0."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank()
    except ImportError:
        pass
    for var in ("RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def _plain(value: Any) -> Any:
    """Tensors / numpy scalars -> python numbers; other values unchanged."""
    if hasattr(value, "item") and callable(value.item):
        try:
            return value.item()
        except (ValueError, RuntimeError):
            return value
    return value


def _numeric(metrics: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
    }


class Sink(Protocol):
    def write(self, step: int, metrics: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class JsonlSink:
    """Appends ``{"step": N, **metrics}`` per call and flushes, so a crash loses nothing logged."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = open(path, "a", encoding="utf-8")  # closed in close()

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        record = {"step": step}
        for key, value in metrics.items():
            if isinstance(value, float) and not math.isfinite(value):
                value = None  # JSON has no nan/inf
            record[key] = value
        self._file.write(json.dumps(record, default=str) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class TensorBoardSink:
    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(log_dir))

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        for key, value in _numeric(metrics).items():
            self._writer.add_scalar(key, value, global_step=step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class WandbSink:
    """Online when WANDB_API_KEY is set (or cfg.mode says so), else offline into ``run_dir/wandb``."""

    def __init__(self, cfg: Any, run_dir: Path, config: dict[str, Any] | None):
        try:
            import wandb
        except ImportError as exc:
            raise ImportError(
                "logger.wandb.enabled=true but the 'wandb' package is not installed; "
                "pip install wandb, or set logger.wandb.enabled=false"
            ) from exc
        mode = cfg.mode or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        run_dir.mkdir(parents=True, exist_ok=True)
        self.mode = mode
        self._run = wandb.init(project=cfg.project, name=cfg.name, dir=str(run_dir), mode=mode, config=config)

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        self._run.log(_numeric(metrics), step=step)

    def close(self) -> None:
        self._run.finish()


_SHORT = {"generation": "gen", "reward": "env", "logprobs": "lp", "validation": "val", "checkpoint": "ckpt"}


def throughput_metrics(
    *,
    num_samples: int,
    step_seconds: float,
    generated_tokens: int,
    generation_seconds: float,
    training_flops: float,
    training_seconds: float,
    num_gpus: int,
    peak_flops_per_gpu: float | None = None,
) -> dict[str, float]:
    """The step's throughput metrics under their logged names (a zero duration leaves its key out).

    training_flops: the model FLOPs of the step's training pass (flops.training_flops over all
    sequences); TFLOP/s are per GPU, MFU is against ``peak_flops_per_gpu`` (flops.peak_flops).
    """
    out: dict[str, float] = {}
    if step_seconds > 0:
        out[E2E_SAMPLES_PER_S] = num_samples / step_seconds
    if generation_seconds > 0:
        out[GENERATION_TOKENS_PER_S] = generated_tokens / generation_seconds
    if training_seconds > 0 and num_gpus > 0:
        per_gpu = training_flops / training_seconds / num_gpus
        out[TRAINING_TFLOPS_PER_S] = per_gpu / 1e12
        if peak_flops_per_gpu:
            out[MFU] = per_gpu / peak_flops_per_gpu
    return out


def _fmt_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def progress_line(
    step: int, total_steps: int | None, metrics: dict[str, Any], eta_seconds: float | None
) -> str:
    """``step 3/36 | reward 0.41 | acc 0.38 | val 0.40 | 1,234 tok/s | 45.2s (gen 30.1 train 12.0) | ETA 1m``.

    Fields whose metric is absent are left out, so the line works for validation-only calls too.
    """
    m = _numeric(metrics)
    parts = [f"step {step}/{total_steps}" if total_steps else f"step {step}"]
    for label, key, fmt in (
        ("reward", REWARD_MEAN, "{:.3f}"),
        ("acc", TRAIN_ACCURACY, "{:.3f}"),
        ("val", VAL_ACCURACY, "{:.3f}"),
        ("loss", TRAIN_POLICY_LOSS, "{:.4f}"),
        ("gnorm", GRAD_NORM, "{:.3f}"),
    ):
        if key in m:
            parts.append(f"{label} {fmt.format(m[key])}")
    if GENERATION_TOKENS_PER_S in m:
        parts.append(f"{m[GENERATION_TOKENS_PER_S]:,.0f} tok/s")
    if TRAINING_TFLOPS_PER_S in m:
        parts.append(f"{m[TRAINING_TFLOPS_PER_S]:.1f} TFLOP/s")
    timing = {k[len(TIMING_PREFIX) :]: v for k, v in m.items() if k.startswith(TIMING_PREFIX)}
    if timing:
        total = timing.pop("step", None)
        phases = " ".join(f"{_SHORT.get(name, name)} {secs:.1f}" for name, secs in timing.items())
        head = f"{total:.1f}s" if total is not None else ""
        parts.append(f"{head} ({phases})".strip() if phases else head)
    if eta_seconds is not None:
        parts.append(f"ETA {_fmt_duration(eta_seconds)}")
    return " | ".join(parts)


class MetricsLogger:
    """Fan one dict of per-step metrics out to the enabled sinks and the console (rank 0 only).

    Usage: ``logger = MetricsLogger(cfg.logger, run_dir, total_steps=n, config=to_dict(cfg))``,
    ``logger.log(step, {...})`` once or more per step, ``logger.close()`` at the end (also a
    context manager). ``console=False`` silences the progress line (tests, library use).
    """

    def __init__(
        self,
        cfg: Any,
        run_dir: str | Path,
        *,
        total_steps: int | None = None,
        config: dict[str, Any] | None = None,
        rank: int | None = None,
        console: bool = True,
    ):
        self.run_dir = Path(run_dir)
        self.total_steps = total_steps
        self.enabled = (global_rank() if rank is None else rank) == 0
        self.sinks: list[Sink] = []
        self._console = None
        self._first_time: float | None = None
        self._first_step: int | None = None
        if not self.enabled:
            return
        if cfg.jsonl:
            self.sinks.append(JsonlSink(self.run_dir / METRICS_FILE))
        if cfg.tensorboard:
            self.sinks.append(TensorBoardSink(self.run_dir / "tensorboard"))
        if cfg.wandb.enabled:
            self.sinks.append(WandbSink(cfg.wandb, self.run_dir, config))
        if console:
            from rich.console import Console

            self._console = Console(highlight=False)

    @property
    def jsonl_path(self) -> Path:
        return self.run_dir / METRICS_FILE

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """Write ``metrics`` for ``step`` to every sink and print the progress line."""
        if not self.enabled:
            return
        plain = {k: _plain(v) for k, v in metrics.items() if v is not None}
        for sink in self.sinks:
            sink.write(step, plain)
        if self._console is not None:
            line = progress_line(step, self.total_steps, plain, self._eta(step, plain))
            self._console.print(line, markup=False)

    def _eta(self, step: int, metrics: dict[str, Any]) -> float | None:
        """Remaining time from the mean step time: timing/step when logged, else the wall clock."""
        if not self.total_steps:
            return None
        remaining = max(self.total_steps - step, 0)
        step_time = metrics.get(TIMING_PREFIX + "step")
        if isinstance(step_time, (int, float)):
            return remaining * float(step_time)
        now = time.monotonic()
        if self._first_time is None:
            self._first_time, self._first_step = now, step
            return None
        done = step - self._first_step
        return remaining * (now - self._first_time) / done if done > 0 else None

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
        self.sinks = []

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_metrics(path: str | Path) -> dict[int, dict[str, Any]]:
    """Read a metrics.jsonl: step -> the merged records of that step (later lines win).

    A step lower than the previous line's marks a resumed run: the old run's records from that step
    on are dropped, so they never mix with the new ones. Raises ValueError naming the file and line
    of a bad record.
    """
    path = Path(path)
    steps: dict[int, dict[str, Any]] = {}
    last = None
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                step = int(record.pop("step"))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
                raise ValueError(f"{path}:{lineno}: not a metrics record ({exc})") from None
            if last is not None and step < last:
                steps = {s: m for s, m in steps.items() if s < step}
            last = step
            steps.setdefault(step, {}).update(record)
    return dict(sorted(steps.items()))
