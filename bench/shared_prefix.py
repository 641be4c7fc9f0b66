"""Shared-prefix GRPO layout vs one row per sample: old logprobs + one train step, same run, same model.

A Workplace-shaped batch: a 4,096-token prompt (the tool schemas) sampled G=16 times, each sample
adding a remainder of 128-640 tokens (uniform, fixed seed). Both variants run
``MegatronPolicy.logprobs`` then ``MegatronPolicy.train_step`` (the GRPO loss of grpo.make_loss_fn,
token-level) on the same batch from the same weights: ``policy.shared_prefix=false`` (one row per
sample, micro-batch 1) and ``true`` (one packed row [prefix | rest_1 .. rest_16] per group). Each
variant runs in its own process, so peak memory (CPU: max RSS; GPU: max allocated) is its own.

Reported per variant: tokens the model processed (logprobs + train step), wall seconds of each
call, peak memory, the loss and grad norm; then the ratios and the largest logprob difference
between the variants (the exactness check at benchmark scale).

    .venv/bin/python bench/shared_prefix.py                  # CPU: small Qwen3 shape, fp32
    .venv/bin/python bench/shared_prefix.py --tiny           # smoke run (prompt 256, G 4)
    options: --prompt 4096 --group 16 --groups 1 --rest-min 128 --rest-max 640 --layers 4
             --hidden 256 --vocab 8192 --max-len 32768 --threads 1 --device cpu|cuda --out FILE
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch


def make_batch(args) -> dict[str, torch.Tensor]:
    """``groups`` x ``group`` rows: each group's prompt followed by its own remainders."""
    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(args.groups):
        prompt = torch.randint(2, args.vocab, (args.prompt,), generator=g)
        for _ in range(args.group):
            n = int(torch.randint(args.rest_min, args.rest_max + 1, (1,), generator=g))
            rows.append(torch.cat([prompt, torch.randint(2, args.vocab, (n,), generator=g)]))
    width = max(len(r) for r in rows)
    ids = torch.ones((len(rows), width), dtype=torch.long)
    lengths = torch.tensor([len(r) for r in rows])
    loss_mask = torch.zeros((len(rows), width))
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        loss_mask[i, args.prompt : len(r)] = 1.0  # the sampled part
    rewards = torch.randn(len(rows), generator=g)
    return {"input_ids": ids, "lengths": lengths, "loss_mask": loss_mask, "rewards": rewards}


def run_variant(args) -> dict:
    """One variant in this process: build the policy, time logprobs + train_step."""
    if args.device == "cpu":
        os.environ["MEGATRON_GRPO_DEVICE"] = "cpu"
    torch.set_num_threads(args.threads)
    from megatron_grpo import grpo
    from megatron_grpo.config import LossConfig, OptimizerConfig, PolicyConfig
    from megatron_grpo.distributed import destroy_distributed, init_distributed
    from megatron_grpo.policy import MegatronPolicy

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(args.port))
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    layout = init_distributed(tp=1, pp=1)
    cfg = PolicyConfig(precision="bfloat16" if args.device == "cuda" else "float32",
                       train_micro_batch_size=1, logprob_batch_size=1, max_total_sequence_length=args.max_len,
                       shared_prefix=args.variant == "shared",
                       optimizer=OptimizerConfig(lr=1e-5, min_lr=1e-5, clip_grad=1.0))
    policy = MegatronPolicy(cfg, layout, args.model_dir)
    batch = make_batch(args)
    G = args.group
    policy.logprobs(batch["input_ids"][:2, :64], torch.tensor([64, 64]), group_size=2)  # warm-up (allocator)
    if args.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    old = policy.logprobs(batch["input_ids"], batch["lengths"], group_size=G)
    t1 = time.perf_counter()
    tokens_logprobs = policy.tokens_processed
    adv = grpo.compute_advantages(batch["rewards"], G, leave_one_out=True, normalize=True)
    train_batch = {"input_ids": batch["input_ids"], "lengths": batch["lengths"], "old_logprobs": old,
                   "advantages": adv, "loss_weights": grpo.loss_token_weights(batch["loss_mask"], token_level=True)}
    loss_fn = grpo.make_loss_fn(LossConfig())
    t2 = time.perf_counter()
    metrics = policy.train_step(train_batch, loss_fn, group_size=G)
    if args.device == "cuda":
        torch.cuda.synchronize()
    t3 = time.perf_counter()
    if args.device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    torch.save(old, args.logprobs_out)
    destroy_distributed()
    return dict(variant=args.variant, tokens=tokens_logprobs + policy.tokens_processed,
                logprobs_s=round(t1 - t0, 2), train_step_s=round(t3 - t2, 2), total_s=round(t3 - t0 - (t2 - t1), 2),
                peak_gib=round(peak, 2), loss=metrics["loss"], grad_norm=metrics["grad_norm"])


def build_model(args, out_dir: str) -> str:
    from megatron_grpo.models.tiny import save_tiny_qwen3

    heads = max(2, args.hidden // 64)
    return save_tiny_qwen3(out_dir, args.vocab, num_layers=args.layers, hidden=args.hidden, num_heads=heads,
                           num_kv_heads=max(1, heads // 2), head_dim=64, ffn_hidden=3 * args.hidden,
                           max_position_embeddings=max(8192, args.max_len), seed=0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prompt", type=int, default=4096)
    p.add_argument("--group", type=int, default=16)
    p.add_argument("--groups", type=int, default=1)
    p.add_argument("--rest-min", type=int, default=128)
    p.add_argument("--rest-max", type=int, default=640)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--max-len", type=int, default=32768, help="policy.max_total_sequence_length (as the recipe)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--tiny", action="store_true", help="prompt 256, G 4, remainders 16-64 (smoke run)")
    p.add_argument("--out", default=None)
    # internal: one variant in a child process
    p.add_argument("--variant", choices=("unshared", "shared"), default=None, help=argparse.SUPPRESS)
    p.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    p.add_argument("--logprobs-out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=29511, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.tiny:
        args.prompt, args.group, args.rest_min, args.rest_max = 256, 4, 16, 64
    if args.variant:
        print(json.dumps(run_variant(args)), flush=True)
        return 0

    results: list[dict] = [dict(device=args.device, torch=torch.__version__, prompt=args.prompt, group=args.group,
                                groups=args.groups, rest=[args.rest_min, args.rest_max], layers=args.layers,
                                hidden=args.hidden, vocab=args.vocab, threads=args.threads)]
    print(json.dumps(results[0]), flush=True)
    from megatron_grpo.distributed import free_port

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(args, os.path.join(tmp, "model"))
        records = {}
        for variant in ("unshared", "shared"):
            cmd = [sys.executable, os.path.abspath(__file__), *(argv if argv is not None else sys.argv[1:]),
                   "--variant", variant, "--model-dir", model_dir, "--port", str(free_port()),
                   "--logprobs-out", os.path.join(tmp, f"{variant}.pt")]
            env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                print(proc.stderr[-4000:], file=sys.stderr)
                return proc.returncode
            records[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(json.dumps(records[variant]), flush=True)
            results.append(records[variant])
        err = float((torch.load(os.path.join(tmp, "shared.pt"), weights_only=True)
                     - torch.load(os.path.join(tmp, "unshared.pt"), weights_only=True))
                    .abs().max())
    base, shared = records["unshared"], records["shared"]
    summary = dict(
        tokens_ratio=round(base["tokens"] / shared["tokens"], 2),
        speedup=round(base["total_s"] / shared["total_s"], 2),
        logprobs_speedup=round(base["logprobs_s"] / shared["logprobs_s"], 2),
        train_step_speedup=round(base["train_step_s"] / shared["train_step_s"], 2),
        peak_ratio=round(shared["peak_gib"] / base["peak_gib"], 2),
        max_logprob_diff=err,
        loss_rel_diff=abs(shared["loss"] - base["loss"]) / max(abs(base["loss"]), 1e-12),
        grad_norm_rel_diff=abs(shared["grad_norm"] - base["grad_norm"]) / base["grad_norm"],
        goal="speedup >= 3 at the same loss",
    )
    print(json.dumps(summary), flush=True)
    results.append(summary)
    out = args.out or (os.path.join(os.environ["OUT"], "shared_prefix_bench.json") if os.environ.get("OUT") else None)
    if out:
        with open(out, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
