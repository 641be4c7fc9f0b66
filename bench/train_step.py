"""Training-step throughput: our Qwen3 fwd+bwd vs a bare megatron-core GPTModel, same run, same spec.

Qwen3-4B shape (random weights, nothing downloaded), seq 4096, micro-batch 1, bf16, TP=1, one GPU.
"bare" is megatron-core's own local layer spec with core attention through torch SDPA (the
standalone megatron-core probe, the anchor: 490 TFLOP/s, 0.62 MFU on an H200); "ours" is
a pluggable path from ``OURS``:

  model   megatron_grpo.models.qwen3.build_qwen3_model (fp32-compute RMSNorm, padded-vocab hook)

Each path: build, one warm-up step, then ``--steps`` timed steps of
``loss = model(tokens, positions, None, labels=labels).float().mean(); loss.backward()``.
tokens/s = mbs x seq / step time; TFLOP/s from megatron_grpo.flops (causal attention counted
half, the project's convention; ``tflops_full_attn`` counts it whole, as the anchor did); MFU
against a measured bf16 matmul peak. The ratio printed is ours / bare tokens/s (goal >= 0.90).

    .venv/bin/python bench/train_step.py                        # GPU, Qwen3-4B shape
    .venv/bin/python bench/train_step.py --device cpu --tiny    # smoke run (seconds)
    options: --shape qwen3-0.6b|qwen3-1.7b|qwen3-4b --seq 4096 --mbs 1 --steps 5 --ours model
             --impl local|transformer_engine --out FILE

To add a path (e.g. the policy's train_step): write ``factory(hf_config: dict, args) -> step``
where ``step()`` runs one fwd+bwd on a fixed batch of ``args.mbs x args.seq`` tokens, and add it
to ``OURS``. Results are JSON lines, also written to --out (default $OUT/train_step_bench.json
when $OUT is set).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from collections.abc import Callable

import torch

SHAPES = {  # HF config.json fields of the Qwen3 dense models (tie_word_embeddings as released)
    "qwen3-0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, tie_word_embeddings=True),
    "qwen3-1.7b": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, tie_word_embeddings=True),
    "qwen3-4b": dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
                     num_key_value_heads=8, tie_word_embeddings=True),
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, tie_word_embeddings=True),
}


def hf_config(shape: str) -> dict:
    base = dict(model_type="qwen3", vocab_size=151936 if shape != "tiny" else 512, head_dim=128 if shape != "tiny"
                else 32, max_position_embeddings=40960, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
                attention_bias=False, hidden_act="silu", initializer_range=0.02)
    return {**base, **SHAPES[shape]}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _batch(cfg: dict, args) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, cfg["vocab_size"], (args.mbs, args.seq), generator=g).to(args.device)
    labels = torch.roll(tokens, -1, dims=1)
    positions = torch.arange(args.seq, device=args.device)[None].expand(args.mbs, -1)
    return tokens, positions, labels


def _step_fn(model, cfg: dict, args) -> Callable[[], None]:
    tokens, positions, labels = _batch(cfg, args)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        loss = model(tokens, positions, None, labels=labels).float().mean()
        loss.backward()

    return step


def _dtype(args) -> torch.dtype:
    return torch.bfloat16 if args.device.type == "cuda" else torch.float32


def bare_megatron(cfg: dict, args) -> Callable[[], None]:
    """megatron-core's GPTModel with its own spec; only core attention swapped for torch SDPA."""
    from megatron.core.models.gpt import GPTModel

    from megatron_grpo.models.qwen3 import SDPAttention, transformer_config_from_hf

    config = transformer_config_from_hf(cfg, tp=1, pp=1, params_dtype=_dtype(args))
    if args.impl == "transformer_engine":
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

        spec = get_gpt_layer_with_transformer_engine_spec(qk_layernorm=True)
    else:
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

        spec = get_gpt_layer_local_spec(qk_layernorm=True, normalization="RMSNorm")
        spec.submodules.self_attention.submodules.core_attention = SDPAttention
    model = GPTModel(config=config, transformer_layer_spec=spec, vocab_size=cfg["vocab_size"],
                     max_sequence_length=args.seq, share_embeddings_and_output_weights=cfg["tie_word_embeddings"],
                     position_embedding_type="rope", rotary_base=int(cfg["rope_theta"]))
    model = model.to(device=args.device, dtype=_dtype(args))  # torch norms are built fp32
    return _step_fn(model, cfg, args)


def ours_model(cfg: dict, args) -> Callable[[], None]:
    """The trainer's model builder (megatron_grpo.models.qwen3)."""
    from megatron_grpo.models.qwen3 import build_qwen3_model, transformer_config_from_hf

    config = transformer_config_from_hf(cfg, tp=1, pp=1, params_dtype=_dtype(args))
    model = build_qwen3_model(cfg, config, impl=args.impl).to(args.device)
    return _step_fn(model, cfg, args)


OURS: dict[str, Callable[[dict, argparse.Namespace], Callable[[], None]]] = {"model": ours_model}


def measure_peak(device: torch.device) -> float:
    """Measured dense matmul rate (bf16 on GPU, fp32 on CPU), FLOP/s."""
    n, dtype, reps = (8192, torch.bfloat16, 20) if device.type == "cuda" else (512, torch.float32, 10)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t)


def run_path(name: str, factory, cfg: dict, args, peak: float) -> dict:
    from megatron_grpo.flops import DecoderShape, training_flops_per_token

    record: dict = dict(path=name, shape=args.shape, seq=args.seq, mbs=args.mbs, impl=args.impl,
                        dtype=str(_dtype(args)).removeprefix("torch."))
    try:
        step = factory(cfg, args)
        step()  # warm-up (allocator, kernels)
        _sync(args.device)
        t = time.perf_counter()
        for _ in range(args.steps):
            step()
        _sync(args.device)
        dt = (time.perf_counter() - t) / args.steps
    except torch.OutOfMemoryError:
        record["error"] = "OOM"
        return record
    finally:
        gc.collect()
        if args.device.type == "cuda":
            record["max_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    shape = DecoderShape.from_hf_config(argparse.Namespace(**cfg))
    tokens = args.mbs * args.seq
    flops = training_flops_per_token(shape, args.seq) * tokens / dt
    full = training_flops_per_token(shape, args.seq, causal=False) * tokens / dt
    record.update(step_s=round(dt, 4), tokens_per_s=round(tokens / dt, 1), tflops=round(flops / 1e12, 2),
                  tflops_full_attn=round(full / 1e12, 2), mfu=round(flops / peak, 3))
    return record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="qwen3-4b")
    p.add_argument("--tiny", action="store_true", help="tiny shape, seq 64, 2 steps (smoke run)")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seq", type=int, default=4096)
    p.add_argument("--mbs", type=int, default=1)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--ours", choices=sorted(OURS), default="model")
    p.add_argument("--impl", choices=("local", "transformer_engine"), default="local")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.tiny:
        args.shape, args.seq, args.steps = "tiny", 64, min(args.steps, 2)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but CUDA is not available (use --device cpu --tiny)")
    args.device = torch.device(args.device)
    if args.device.type == "cpu":
        os.environ["MEGATRON_GRPO_DEVICE"] = "cpu"  # the CPU path even on a GPU machine

    from megatron_grpo.distributed import destroy_distributed, init_distributed

    init_distributed(tp=1, pp=1)
    cfg = hf_config(args.shape)
    peak = measure_peak(args.device)
    env = dict(device=torch.cuda.get_device_name() if args.device.type == "cuda" else "cpu",
               torch=torch.__version__, peak_tflops=round(peak / 1e12, 1))
    print(json.dumps(env), flush=True)
    results = [env]
    for name, factory in (("bare", bare_megatron), (f"ours:{args.ours}", OURS[args.ours])):
        record = run_path(name, factory, cfg, args, peak)
        print(json.dumps(record), flush=True)
        results.append(record)
    bare, ours = results[1], results[2]
    if "tokens_per_s" in bare and "tokens_per_s" in ours:
        summary = dict(ratio_ours_over_bare=round(ours["tokens_per_s"] / bare["tokens_per_s"], 3), goal=0.90)
        print(json.dumps(summary), flush=True)
        results.append(summary)
    out = args.out or (os.path.join(os.environ["OUT"], "train_step_bench.json") if os.environ.get("OUT") else None)
    if out:
        with open(out, "w") as f:
            json.dump(results, f, indent=1)
    destroy_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
