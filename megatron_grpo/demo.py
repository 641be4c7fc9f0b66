"""`megatron-grpo demo`: GRPO learning from the environment's reward on a CPU, in minutes.

What runs (all real parts): the Workplace sandbox from the pinned nemo-gym wheel (PyPI), generated
verifiable tasks (environment/workplace/tasks), a byte-level BPE tokenizer trained in-process on
the training tasks, a tiny random Qwen3 saved with save_pretrained, then the recipe:

1. a short supervised warm start on the training tasks' ground-truth calls (megatron_grpo/sft.py):
   a random model never emits a tool call, and GRPO needs some successes in a group to learn.
   Measured on 128 held-out tasks: 250 steps leave the model at ~0.25 and GRPO does not move it
   within 20 steps; 300 steps give 0.67-0.75, where GRPO improves it steadily (mostly by copying
   the request's names and texts instead of recalling a training task's);
2. GRPO with the Megatron policy, the hf generation engine refit after every step, the Ray
   environment pool, greedy validation on held-out tasks (never trained on, not even by the
   tokenizer), top-k checkpoints, rollout traces and an HF export at the end.

The report compares held-out accuracy after the warm start (GRPO step 0) with the accuracy after
GRPO, so the gain printed is the GRPO phase's own, and shows one held-out task before and after.

The tokenizer, the initial model and the warm-started model depend only on the demo's settings and
seed: they are cached in the download cache (``$MEGATRON_GRPO_CACHE`` or ~/.cache/megatron_grpo,
``demo/<key>``), so a second run goes straight to GRPO. ``--no-cache`` rebuilds them.

Reproducibility: the same seed, code and package versions on the same kind of CPU give the same
numbers (the torch thread count does not change them). Another CPU (other SIMD kernels) or another
transformers/megatron-core release rounds differently, and a small model trained for minutes
amplifies rounding: expect the spread over seeds that the README quotes, not the same digits.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

log = logging.getLogger("megatron_grpo.demo")

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo_cpu.yaml"
CACHE_FORMAT = 1  # bump when the warm start's code changes what it produces


# Tasks a model can solve in one turn from the request alone: the arguments are copied from the
# request or are constants it can memorize (a colleague's address, a metric's column name).
DEMO_TEMPLATES = (
    "email.send_email",
    "email.send_to_two",
    "customer_relationship_manager.add_customer_details",
    "customer_relationship_manager.add_lead",
    "analytics.plot_month",
)


@dataclass(frozen=True)
class WarmStart:
    """Everything that determines the cached tokenizer, initial model and warm-started model."""

    seed: int
    tasks: int
    val_tasks: int
    templates: tuple[str, ...]
    vocab: int
    hidden: int
    layers: int
    sft_steps: int
    sft_lr: float
    sft_batch: int
    settings: str  # the config's policy, tool subset and turns, as JSON

    def key(self) -> str:
        import torch
        import transformers

        text = json.dumps({**asdict(self), "format": CACHE_FORMAT, "torch": torch.__version__,
                           "transformers": transformers.__version__}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


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


def warm_start(spec: WarmStart, cfg, train_tasks: list[dict], cache: Path | None) -> tuple[Path, dict, bool]:
    """(the warm-started HF model folder, its info (``seconds``, ``spec``), whether it came from
    ``cache``). Built (tokenizer, random model, supervised warm start) and published in
    ``cache`` atomically unless it holds one for ``spec`` already."""
    from megatron_grpo.models.tiny import save_tiny_qwen3
    from megatron_grpo.rollout.tool_subset import restrict_tools
    from megatron_grpo.sft import run_sft

    if cache is not None and (cache / "info.json").is_file():
        log.info("warm start: cached in %s (delete it or pass --no-cache to rebuild)", cache)
        return cache / "model_sft", json.loads((cache / "info.json").read_text()), True
    t0 = time.perf_counter()
    work = None
    if cache is not None:
        for stale in cache.parent.glob(cache.name + ".tmp*"):
            if not _alive(stale.name.rsplit(".tmp", 1)[1]):  # left by a killed run
                shutil.rmtree(stale, ignore_errors=True)
        work = cache.with_name(cache.name + f".tmp{os.getpid()}")
    root = work or Path(cfg.logger.log_dir).parent / "warm_start"
    shutil.rmtree(root, ignore_errors=True)
    tokenizer = train_demo_tokenizer(train_tasks, spec.vocab, cfg.env.tool_subset)  # held-out tasks unseen
    model_dir = save_tiny_qwen3(str(root / "model_init"), len(tokenizer), tokenizer=tokenizer, seed=spec.seed,
                                num_layers=spec.layers, hidden=spec.hidden, num_heads=4, num_kv_heads=2,
                                head_dim=spec.hidden // 4, ffn_hidden=spec.hidden * 3,
                                max_position_embeddings=8192, init_std=0.02)
    log.info("tokenizer (%d tokens) and initial model: %.0f s", len(tokenizer), time.perf_counter() - t0)
    sft_samples = [restrict_tools(t, cfg.env.tool_subset) for t in train_tasks]  # as the trainer prompts
    sft_cfg = replace(cfg, policy=replace(cfg.policy, model_name=model_dir))
    run_sft(sft_cfg, sft_samples, root / "model_sft", steps=spec.sft_steps, batch_size=spec.sft_batch, lr=spec.sft_lr)
    info = {"seconds": time.perf_counter() - t0, "spec": asdict(spec)}
    (root / "info.json").write_text(json.dumps(info, indent=2) + "\n")
    if cache is None:
        return root / "model_sft", info, False
    shutil.rmtree(cache, ignore_errors=True)
    os.replace(root, cache)  # a killed run leaves only a .tmp folder, never a half-written cache
    return cache / "model_sft", info, False


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="megatron-grpo demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/demo", help="run folder (default: results/demo)")
    parser.add_argument("--seed", type=int, default=0, help="tasks, model init, warm start and GRPO sampling")
    parser.add_argument("--tasks", type=int, default=1500, help="tasks to generate")
    parser.add_argument("--val-tasks", type=int, default=128, help="held-out validation tasks")
    parser.add_argument("--sft-steps", type=int, default=300)
    parser.add_argument("--sft-lr", type=float, default=1e-3)
    parser.add_argument("--sft-batch", type=int, default=32)
    parser.add_argument("--grpo-steps", type=int, default=None, help="default: the config's grpo.max_num_steps")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--templates", default=",".join(DEMO_TEMPLATES), help="comma-separated task templates")
    parser.add_argument("--no-cache", action="store_true", help="rebuild the tokenizer and warm start")
    parser.add_argument("overrides", nargs="*", help="extra dotted config overrides for the GRPO run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    t_start = time.perf_counter()

    from environment.workplace.data_dir import cache_dir
    from environment.workplace.sandbox_fetch import fetch_sandbox
    from megatron_grpo.config import load_config
    from megatron_grpo.data.samples import write_jsonl
    from megatron_grpo.distributed import free_port
    from megatron_grpo.trainer import train

    out = Path(args.out)
    if (out / "logs").exists():
        shutil.rmtree(out / "logs")  # a fresh run: old curves and traces would mix with the new ones
    for stale in ("checkpoints", "hf_export"):
        shutil.rmtree(out / stale, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MASTER_PORT", str(free_port()))

    data_dir = os.environ.get("WORKPLACE_DATA_DIR") or str(fetch_sandbox())
    os.environ["WORKPLACE_DATA_DIR"] = data_dir  # Ray actors inherit it
    templates = tuple(args.templates.split(","))
    train_tasks, val_tasks = demo_tasks(data_dir, args.tasks, args.seed, args.val_tasks, templates)
    write_jsonl(out / "data" / "train.jsonl", train_tasks)
    write_jsonl(out / "data" / "validation.jsonl", val_tasks)
    log.info("tasks: %d train, %d held-out validation", len(train_tasks), len(val_tasks))

    overrides = [
        f"data.train_path={out / 'data' / 'train.jsonl'}",
        f"data.validation_path={out / 'data' / 'validation.jsonl'}",
        f"checkpointing.checkpoint_dir={out / 'checkpoints'}",
        f"logger.log_dir={out / 'logs'}",
        f"grpo.seed={args.seed}",
        *([f"grpo.max_num_steps={args.grpo_steps}"] if args.grpo_steps is not None else []),
        f"grpo.max_val_samples={len(val_tasks)}",
        "checkpointing.export_hf_at_end=true",
        *args.overrides,
    ]
    cfg = load_config(CONFIG, overrides)  # a ConfigError is printed as one line by cli.py
    spec = warm_start_spec(args, cfg, templates)
    cache = None if args.no_cache else cache_dir() / "demo" / spec.key()
    sft_dir, info, cached = warm_start(spec, cfg, train_tasks, cache)
    t_sft = time.perf_counter()
    cfg = replace(cfg, policy=replace(cfg.policy, model_name=str(sft_dir)))
    train(cfg)
    t_end = time.perf_counter()
    return report(out, t_sft - t_start, t_end - t_sft, cached=cached)



def warm_start_spec(args: argparse.Namespace, cfg, templates: tuple[str, ...]) -> WarmStart:
    """What the warm start depends on: the command line's model and SFT settings and the policy
    settings, less the model paths and the batching and optimizer fields the supervised steps set
    themselves (so that tuning GRPO's batch or learning rate reuses the cached warm start)."""
    from megatron_grpo.config import to_dict

    unused = ("model_name", "tokenizer_name", "train_global_batch_size", "train_micro_batch_size",
              "logprob_batch_size", "shared_prefix")  # paths, and batching the supervised steps set
    policy = {k: v for k, v in to_dict(cfg.policy).items() if k not in unused}
    policy["optimizer"] = {k: v for k, v in policy["optimizer"].items()
                           if k not in ("lr", "min_lr", "lr_warmup_steps", "clip_grad")}
    settings = {"policy": policy, "tool_subset": cfg.env.tool_subset, "max_rollout_turns": cfg.grpo.max_rollout_turns}
    return WarmStart(seed=args.seed, tasks=args.tasks, val_tasks=args.val_tasks, templates=templates,
                     vocab=args.vocab, hidden=args.hidden, layers=args.layers, sft_steps=args.sft_steps,
                     sft_lr=args.sft_lr, sft_batch=args.sft_batch, settings=json.dumps(settings, sort_keys=True))

def report(out: Path, sft_seconds: float, grpo_seconds: float, cached: bool = False) -> int:
    from megatron_grpo.metrics import read_metrics
    from megatron_grpo.plot import plot_run

    metrics = read_metrics(out / "logs" / "metrics.jsonl")
    val = {s: m["val:accuracy"] for s, m in sorted(metrics.items()) if "val:accuracy" in m}
    n_val = int(next((m["val:num_samples"] for m in metrics.values() if "val:num_samples" in m), 0))
    steps = sorted(s for s in metrics if s > 0)
    png = plot_run(out / "logs")
    first, last = (val[min(val)], val[max(val)]) if val else (float("nan"), float("nan"))
    rows = [
        ("setup + warm start (SFT)", f"{sft_seconds:.0f} s" + (" (cached)" if cached else "")),
        ("GRPO steps", f"{len(steps)} in {grpo_seconds:.0f} s"),
        (f"held-out accuracy after the warm start (step 0, n={n_val})", f"{first:.3f}"),
        (f"held-out accuracy after GRPO (step {max(val) if val else '-'})", f"{last:.3f}"),
        ("GRPO phase gain", f"{last - first:+.3f}"),
        ("train:reward_mean, first vs last quarter of GRPO", _quarters(metrics, steps, "train:reward_mean")),
        ("gen_train_logprob_error (last step)", _get(metrics, steps, -1, "gen_train_logprob_error", "{:.2e}")),
        ("checkpoints", ", ".join(sorted(p.name for p in (out / "checkpoints").glob("step_*")))),
        ("HF export", str(out / "hf_export")),
        ("rollouts", f"{out / 'logs' / 'rollouts'} (megatron-grpo show-rollouts {out})"),
        ("curves", str(png)),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n== megatron-grpo demo ==")
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    if val:
        print(before_after(out / "logs", min(val), max(val)))
    return 0


def before_after(log_dir: Path, first: int, last: int) -> str:
    """One held-out task as the agent did it at validation step ``first`` and at ``last`` (from the
    rollout traces): a task GRPO fixed when there is one."""
    from megatron_grpo.rollout.traces import read_records, step_path

    def validation(step: int) -> dict:
        path = step_path(log_dir, step)
        records = read_records(path) if path.is_file() else []
        return {r["task_id"]: r for r in records if r.get("phase") == "validation"}

    before, after = validation(first), validation(last)
    common = [t for t in before if t in after]
    if not common:
        return ""
    fixed = [t for t in common if before[t]["reward"] < 1.0 <= after[t]["reward"]]
    task = (fixed or common)[0]
    lines = [f"\none held-out task, before and after GRPO (task {task}, {before[task].get('template')}):",
             f"  request: {before[task]['request']}"]
    for label, r in ((f"after the warm start (step {first})", before[task]),
                     (f"after GRPO (step {last})", after[task])):
        lines.append(f"  {label}: reward {r['reward']:g}")
        lines += _episode_lines(r)
    return "\n".join(lines)


def _episode_lines(record: dict) -> list[str]:
    lines = []
    for m in record["messages"]:
        if m["role"] == "assistant":
            calls = m.get("tool_calls") or []
            for c in calls:
                lines.append(f"    call   {c['name']}({c['arguments']})")
            if not calls:
                lines.append(f"    says   {m['content'].strip()[:200]!r}")
        elif m["role"] == "tool":
            lines.append(f"    output {m['content'][:200]}")
    return lines


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
