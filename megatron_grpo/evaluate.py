"""`megatron-grpo evaluate`: validation accuracy of a model or a training checkpoint.

Same parts and the same validation as training (``trainer.validate``: one episode per task of
``data.validation_path`` at ``generation.val_temperature``), so the number equals a training run's
``val:accuracy``. The weights are ``policy.model_name`` (an HF folder), or a checkpoint given with
``--checkpoint results/<exp>/checkpoints/step_N`` (or ``latest`` for the newest under
``checkpointing.checkpoint_dir``). SPMD like training: run it under torchrun/srun for TP/PP.
``megatron-grpo collect-rollouts`` is this command on a task file, writing every episode.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

log = logging.getLogger("megatron_grpo.evaluate")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="megatron-grpo evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML config (configs/*.yaml)")
    parser.add_argument("--checkpoint", default=None,
                        help="a step_N folder, or 'latest' (default: the weights of policy.model_name)")
    parser.add_argument("--out", default=None, help="write the metrics as JSON here (rank 0)")
    parser.add_argument("--rollouts", default=None,
                        help="also write every episode here as JSON lines (megatron-grpo show-rollouts reads it)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. grpo.max_val_samples=50")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from megatron_grpo.config import load_config

    cfg = load_config(args.config, args.overrides)  # a ConfigError is printed as one line by cli.py
    step, metrics, rank = evaluate(cfg, args.checkpoint, rollouts_path=args.rollouts)
    if rank == 0:
        print(json.dumps({"step": step, **metrics}, indent=2))
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps({"step": step, **metrics}, indent=2) + "\n")
    return 0


def evaluate(cfg: Any, checkpoint: str | None = None, *,
             rollouts_path: str | Path | None = None) -> tuple[int, dict[str, float], int]:
    """Validate ``cfg``'s model (or ``checkpoint``: a step_N folder or 'latest') on
    ``data.validation_path``; write every episode to ``rollouts_path`` when given. Returns (the
    checkpoint's step or 0, the val: metrics, this process's rank). Collective: every rank calls it."""
    from megatron_grpo.rollout.traces import RolloutTraces
    from megatron_grpo.trainer import ensure_master_port, resume, started, validate

    resume_from = {None: "none", "latest": "auto"}.get(checkpoint, checkpoint)
    cfg = replace(cfg, checkpointing=replace(cfg.checkpointing, enabled=resume_from != "none", resume=resume_from))
    ensure_master_port()
    with started(cfg) as run:
        if rollouts_path is not None:
            run.traces = RolloutTraces(None, run.renderer, path=rollouts_path, enabled=run.layout.rank == 0)
        step = resume(run)
        metrics = validate(run, step)
    return step, metrics, run.layout.rank
