"""`megatron-grpo collect-rollouts`: run a model's agent loop on a task file, write every trajectory.

    megatron-grpo collect-rollouts --model MODEL --input train.jsonl --output rollouts.jsonl [--limit N]
        [--config CFG] [--temperature T] [section.key=value ...]

The reference recipe's "test the environment" step (NeMo-Gym's ``ng_collect_rollouts``) for this
project: before training, check that a model, the chat template, the tool-call parser and the
environment fit together, and see what the model does. ``MODEL`` is a Hugging Face folder or a
training checkpoint (``.../checkpoints/step_N``: its own config and base model are used). The
trajectories (rollout/traces.py records, one per task: request, assistant turns, parsed calls, tool
outputs, reward) go to ``--output``; the accuracy is printed. It is ``megatron-grpo evaluate`` on
the input file (the same code path and numbers), so it runs under torchrun/srun for TP/PP too.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger("megatron_grpo.collect_rollouts")


def is_checkpoint(path: str | Path) -> bool:
    return (Path(path) / "training_info.json").is_file()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="megatron-grpo collect-rollouts", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a Hugging Face model folder (or hub id) or a step_N checkpoint")
    parser.add_argument("--input", required=True, help="tasks, one JSON sample per line (train.jsonl format)")
    parser.add_argument("--output", required=True, help="where to write the trajectories (JSON lines)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N tasks (default: all)")
    parser.add_argument("--config", default=None,
                        help="YAML config for the model, generation and environment settings (default: the "
                             "checkpoint's own config, or the built-in defaults for an HF folder)")
    parser.add_argument("--temperature", type=float, default=None,
                        help="sampling temperature (default: the config's generation.val_temperature; 0 = greedy)")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. generation.max_new_tokens=1024")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from megatron_grpo.config import load_config
    from megatron_grpo.evaluate import evaluate

    checkpoint = None
    config = args.config
    overrides = [f"data.train_path={args.input}", f"data.validation_path={args.input}",
                 f"grpo.max_val_samples={'null' if args.limit is None else args.limit}"]
    if is_checkpoint(args.model):
        checkpoint = str(Path(args.model))
        config = config or str(Path(args.model) / "config.json")  # JSON is YAML
    else:
        overrides.append(f"policy.model_name={args.model}")
    if args.temperature is not None:
        overrides.append(f"generation.val_temperature={args.temperature}")
    if args.limit is not None and args.limit < 1:
        print(f"megatron-grpo collect-rollouts: --limit must be >= 1, got {args.limit}", file=sys.stderr)
        return 2
    if not Path(args.input).is_file():
        print(f"megatron-grpo collect-rollouts: --input {args.input}: no such file", file=sys.stderr)
        return 2
    cfg = load_config(config, overrides + list(args.overrides))  # a ConfigError: one line by cli.py
    step, metrics, rank = evaluate(cfg, checkpoint, rollouts_path=args.output)
    if rank == 0:
        n = int(metrics.get("val:num_samples", 0))
        print(json.dumps({"model": args.model, "step": step, "tasks": n, "output": args.output,
                          "accuracy": metrics.get("val:accuracy"), "reward_mean": metrics.get("val:reward_mean"),
                          "mean_turns": metrics.get("val:mean_turns")}, indent=2))
    return 0
