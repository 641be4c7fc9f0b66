"""`megatron-grpo demo`: the whole pipeline on a CPU in minutes, with nothing from the HF hub.

What runs (all real parts): the Workplace sandbox from the pinned nemo-gym wheel (PyPI), generated
verifiable tasks (environment/workplace/tasks), a byte-level BPE tokenizer trained in-process on
them, a tiny random Qwen3 saved with save_pretrained, then the recipe:

1. supervised warm start on the training tasks' ground-truth calls (megatron_grpo/sft.py) — a
   random model never emits a tool call, and GRPO needs some successes in a group to learn;
2. GRPO with the Megatron policy, the hf generation engine refit after every step, the Ray
   environment pool, validation, top-k checkpoints, and an HF export at the end.

Tasks: the demo uses the generated tasks of single-step templates (DEMO_TEMPLATES: the arguments
come from the request or are constants a model can memorize), uses WorkBench's "domain tools only"
prompt setting (env.tool_subset) to keep sequences short, and validates on held-out tasks (never
trained on). It prints validation accuracy before and after GRPO and renders the curves to PNG.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import replace
from pathlib import Path

log = logging.getLogger("megatron_grpo.demo")

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo_cpu.yaml"


# Tasks a model can solve in one turn from the request alone: the arguments are copied from the
# request or are constants it can memorize (a colleague's address, a metric's column name).
DEMO_TEMPLATES = (
    "email.send_email",
    "email.send_to_two",
    "customer_relationship_manager.add_customer_details",
    "customer_relationship_manager.add_lead",
    "analytics.plot_month",
)


def demo_tasks(data_dir: str, n: int, seed: int, n_val: int,
               templates: tuple[str, ...] = DEMO_TEMPLATES) -> tuple[list[dict], list[dict]]:
    """(train, validation) generated tasks of the single-step templates; validation tasks are held
    out from training."""
    import random

    from environment.workplace.tasks import generate_tasks

    tasks = generate_tasks(n, seed, data_dir, templates=list(templates))
    if len(tasks) < n_val * 3:
        raise RuntimeError(f"only {len(tasks)} distinct tasks from {n}; raise --tasks")
    random.Random(seed).shuffle(tasks)
    return tasks[n_val:], tasks[:n_val]


def train_demo_tokenizer(samples: list[dict], vocab_size: int, tool_subset: str, min_frequency: int = 50):
    """A cross-word BPE trained on the texts the demo model will see: the rendered prompts (with the
    tools each task is offered) and the ground-truth tool-call turns. Repeated text (the tool
    schemas, the template's instructions) becomes a handful of long tokens, so prompts are short and
    a CPU can train on them; the requests and arguments still have to be read and written."""
    import re

    from megatron_grpo.models.tiny_tokenizer import CONTROL_TOKENS, sample_texts, train_tiny_tokenizer
    from megatron_grpo.rollout.chat import ChatRenderer
    from megatron_grpo.rollout.tool_subset import restrict_tools
    from megatron_grpo.sft import FINAL_ANSWER, call_block

    renderer = ChatRenderer(train_tiny_tokenizer(sample_texts(samples[:50]), vocab_size=512))
    special = re.compile("|".join(re.escape(t) for t in CONTROL_TOKENS))
    texts = [FINAL_ANSWER]
    for sample in samples:
        prompt = renderer.prompt_text(restrict_tools(sample, tool_subset)["responses_create_params"])
        texts += [piece for piece in special.split(prompt) if piece]
        texts.append("\n".join(call_block(c) for c in sample.get("ground_truth") or []))
    return train_tiny_tokenizer(texts, vocab_size=vocab_size, merge_across_words=True, min_frequency=min_frequency)


def greedy_accuracy(model_dir: str, samples: list[dict], data_dir: str, max_steps: int) -> float:
    """Accuracy of greedy rollouts with the hf engine (the initial model, before anything trains)."""
    from transformers import AutoTokenizer

    from environment.pool import LocalEnvPool
    from megatron_grpo.generation.base import SamplingParams
    from megatron_grpo.generation.hf import HFEngine
    from megatron_grpo.rollout.agent_loop import run_episodes
    from megatron_grpo.rollout.chat import ChatRenderer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    engine = HFEngine(model_dir, pad_token_id=tokenizer.pad_token_id)
    batch = run_episodes(engine, LocalEnvPool(data_dir), ChatRenderer(tokenizer), samples,
                         SamplingParams(temperature=0.0, max_new_tokens=48), max_steps=max_steps, context_limit=512)
    return sum(e.reward == 1.0 for e in batch.episodes) / len(samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="megatron-grpo demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/demo", help="run folder (default: results/demo)")
    parser.add_argument("--tasks", type=int, default=1500, help="tasks to generate")
    parser.add_argument("--val-tasks", type=int, default=32)
    parser.add_argument("--sft-steps", type=int, default=300)
    parser.add_argument("--grpo-steps", type=int, default=None, help="default: the config's grpo.max_num_steps")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--templates", default=",".join(DEMO_TEMPLATES), help="comma-separated task templates")
    parser.add_argument("--sft-lr", type=float, default=1e-3)
    parser.add_argument("--sft-batch", type=int, default=32)
    parser.add_argument("overrides", nargs="*", help="extra dotted config overrides for the GRPO run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    t_start = time.perf_counter()

    import os

    from environment.workplace.sandbox_fetch import fetch_sandbox
    from megatron_grpo.config import load_config
    from megatron_grpo.data.samples import write_jsonl
    from megatron_grpo.distributed import free_port
    from megatron_grpo.models.tiny import save_tiny_qwen3
    from megatron_grpo.rollout.tool_subset import restrict_tools
    from megatron_grpo.sft import run_sft
    from megatron_grpo.trainer import train

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MASTER_PORT", str(free_port()))

    data_dir = os.environ.get("WORKPLACE_DATA_DIR") or str(fetch_sandbox())
    os.environ["WORKPLACE_DATA_DIR"] = data_dir  # Ray actors inherit it
    train_tasks, val_tasks = demo_tasks(data_dir, args.tasks, args.seed, args.val_tasks,
                                        tuple(args.templates.split(",")))
    write_jsonl(out / "data" / "train.jsonl", train_tasks)
    write_jsonl(out / "data" / "validation.jsonl", val_tasks)
    log.info("tasks: %d train, %d held-out validation", len(train_tasks), len(val_tasks))

    tokenizer = train_demo_tokenizer(train_tasks, args.vocab, "domain")  # held-out tasks unseen
    model_dir = save_tiny_qwen3(str(out / "model_init"), len(tokenizer), tokenizer=tokenizer, seed=args.seed,
                                num_layers=args.layers, hidden=args.hidden, num_heads=4, num_kv_heads=2,
                                head_dim=args.hidden // 4, ffn_hidden=args.hidden * 3,
                                max_position_embeddings=8192, init_std=0.02)

    overrides = [
        f"policy.model_name={model_dir}",
        f"data.train_path={out / 'data' / 'train.jsonl'}",
        f"data.validation_path={out / 'data' / 'validation.jsonl'}",
        f"checkpointing.checkpoint_dir={out / 'checkpoints'}",
        f"logger.log_dir={out / 'logs'}",
        *([f"grpo.max_num_steps={args.grpo_steps}"] if args.grpo_steps is not None else []),
        f"grpo.max_val_samples={len(val_tasks)}",
        "checkpointing.export_hf_at_end=true",
        *args.overrides,
    ]
    cfg = load_config(CONFIG, overrides)
    val_prompts = [restrict_tools(t, cfg.env.tool_subset) for t in val_tasks]
    init_accuracy = greedy_accuracy(model_dir, val_prompts, data_dir, cfg.grpo.max_rollout_turns)
    sft_samples = [restrict_tools(t, cfg.env.tool_subset) for t in train_tasks]  # as the trainer prompts
    sft_dir = run_sft(cfg, sft_samples, out / "model_sft", steps=args.sft_steps, batch_size=args.sft_batch,
                      lr=args.sft_lr)
    t_sft = time.perf_counter()
    cfg = replace(cfg, policy=replace(cfg.policy, model_name=str(sft_dir)))
    train(cfg)
    t_end = time.perf_counter()
    return report(out, init_accuracy, t_sft - t_start, t_end - t_sft)


def report(out: Path, init_accuracy: float, sft_seconds: float, grpo_seconds: float) -> int:
    from megatron_grpo.metrics import read_metrics
    from megatron_grpo.plot import plot_run

    metrics = read_metrics(out / "logs" / "metrics.jsonl")
    val = {s: m["val:accuracy"] for s, m in sorted(metrics.items()) if "val:accuracy" in m}
    steps = sorted(s for s in metrics if s > 0)
    png = plot_run(out / "logs")
    first, last = (val[min(val)], val[max(val)]) if val else (float("nan"), float("nan"))
    rows = [
        ("setup + warm start (SFT)", f"{sft_seconds:.0f} s"),
        ("val:accuracy of the random initial model", f"{init_accuracy:.3f}"),
        ("GRPO steps", f"{len(steps)} in {grpo_seconds:.0f} s"),
        ("val:accuracy after warm start (step 0)", f"{first:.3f}"),
        (f"val:accuracy after GRPO (step {max(val) if val else '-'})", f"{last:.3f}"),
        ("train:reward_mean, first vs last quarter of GRPO", _quarters(metrics, steps, "train:reward_mean")),
        ("gen_train_logprob_error (last step)", _get(metrics, steps, -1, "gen_train_logprob_error", "{:.2e}")),
        ("checkpoints", ", ".join(sorted(p.name for p in (out / "checkpoints").glob("step_*")))),
        ("HF export", str(out / "hf_export")),
        ("curves", str(png)),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n== megatron-grpo demo ==")
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def _get(metrics: dict, steps: list[int], index: int, key: str, fmt: str = "{:.3f}") -> str:
    if not steps or key not in metrics[steps[index]]:
        return "-"
    return fmt.format(metrics[steps[index]][key])


def _quarters(metrics: dict, steps: list[int], key: str) -> str:
    """Mean of ``key`` over the first and the last quarter of the steps (single steps are noisy: each
    draws a different mix of task templates)."""
    n = max(1, len(steps) // 4)
    if not steps:
        return "-"
    first = [metrics[s][key] for s in steps[:n] if key in metrics[s]]
    last = [metrics[s][key] for s in steps[-n:] if key in metrics[s]]
    if not first or not last:
        return "-"
    return f"{sum(first) / len(first):.3f} -> {sum(last) / len(last):.3f} (steps 1-{n} vs {steps[-n]}-{steps[-1]})"
