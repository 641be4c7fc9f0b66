"""Refit time: the policy's weight stream into the hf engine vs the device-copy floor, same run.

Qwen3-4B shape (random bf16 weights drawn on the GPU, nothing downloaded), TP=1, one GPU. The
source is the policy's Megatron GPTModel (``megatron_grpo.models.qwen3.build_qwen3_model``) and
the stream is exactly ``MegatronPolicy.weight_stream``: ``models.hf_mapping.iter_hf_weights`` (fused
QKV split per query group, fused gate/up split, HF names, buckets of ``--bucket-mb``). The sink is
``HFEngine.load_weights`` through ``megatron_grpo.refit.refit`` (the trainer's call). The policy's
optimizer is not built: it plays no part in the stream and would only cost memory.

Floor: the bytes the refit must move (every HF tensor once) divided by the copy rate of one large
device-to-device ``copy_`` measured in the same run (bytes copied per second; the read+write
bandwidth is twice that: about 3.0 TB/s on an H100, 4.3 TB/s on an H200). Ratio = refit seconds /
floor seconds; goal: <= 20.

The engine is awake (its weights on the GPU) during the timed refits: the GPU-to-GPU copy the goal
is about, and what the co-located vLLM engine does (it wakes its weight memory before loading). The
trainer's hf engine instead sleeps on the CPU between rollouts, so its refit goes through host
memory; that path is timed once as well (``asleep_refit_s``: sleep is not timed, the refit into
the CPU copy plus the wake back to the GPU is) and reported beside the ratio, not in it.

Correctness is checked in the same run: before the refit the engine's logits differ from the
Megatron model's; after it they agree to the dtype's rounding (``logit_diff_before/after``).

    .venv/bin/python bench/refit.py                          # GPU, Qwen3-4B shape, bf16
    .venv/bin/python bench/refit.py --tiny --device cpu      # smoke run (seconds)
    options: --bucket-mb 512 --repeats 3 --no-asleep --out FILE

Results are JSON lines, also written to --out (default $OUT/refit_bench.json when $OUT is set).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time

import torch

QWEN3_4B = dict(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=32768,
                rope_theta=1e6, tie_word_embeddings=True, rms_norm_eps=1e-6)
TINY = dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=1024,
            rope_theta=1e6, tie_word_embeddings=True, rms_norm_eps=1e-6)
GOAL_RATIO = 20.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def build_policy_model(hf_config, device: torch.device, dtype: torch.dtype, seed: int):
    """The policy's GPTModel (TP=1) with random weights drawn on ``device`` (a 4B CPU init is slow)."""
    from megatron_grpo.distributed import init_distributed
    from megatron_grpo.models.qwen3 import build_qwen3_model, transformer_config_from_hf

    init_distributed(tp=1, pp=1)
    config = transformer_config_from_hf(hf_config, tp=1, pp=1, params_dtype=dtype)
    if device.type == "cuda":
        config.use_cpu_initialization = False
        config.perform_initialization = False
    model = build_qwen3_model(hf_config, config).to(device=device, dtype=dtype).eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:  # norm weights: around 1, randomised so a wrong mapping shows
                p.normal_(1.0, 0.1, generator=gen)
            else:
                p.normal_(0.0, 0.02, generator=gen)
    return model


def build_engine(hf_config, device: torch.device, dtype: torch.dtype, seed: int):
    """An ``HFEngine`` over a transformers Qwen3 built directly on ``device`` (other random weights)."""
    from transformers import Qwen3ForCausalLM

    from megatron_grpo.generation.hf import HFEngine

    hf_config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Qwen3ForCausalLM(hf_config).eval()
    finally:
        torch.set_default_dtype(default)
    return HFEngine(model=model, device=device)


def copy_rate(device: torch.device, nbytes: int, repeats: int = 10) -> float:
    """Bytes per second of one ``dst.copy_(src)`` of ``nbytes`` on ``device`` (each byte read once and
    written once), the mean over ``repeats`` after two warm-ups."""
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=device).normal_()
    dst = torch.empty_like(src)
    for _ in range(2):
        dst.copy_(src)
    _sync(device)
    t = time.perf_counter()
    for _ in range(repeats):
        dst.copy_(src)
    _sync(device)
    seconds = (time.perf_counter() - t) / repeats
    del src, dst
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return nbytes / seconds


@torch.no_grad()
def logit_diff(model, engine, vocab: int, device: torch.device, seq: int = 32) -> float:
    """max |Megatron logits - engine logits| on one random sequence (the same function after a refit)."""
    from megatron.core import tensor_parallel

    ids = torch.randint(0, vocab, (1, seq), generator=torch.Generator().manual_seed(7)).to(device)
    pos = torch.arange(seq, device=device)[None]
    ours = tensor_parallel.gather_from_tensor_model_parallel_region(model(ids, pos, None))[..., :vocab]
    theirs = engine.model(input_ids=ids).logits
    return float((ours.float() - theirs.float()).abs().max())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny Qwen3 shape (smoke run)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bucket-mb", type=int, default=512, help="refit bucket size (generation.refit_bucket_mb)")
    parser.add_argument("--repeats", type=int, default=3, help="timed refits after one warm-up")
    parser.add_argument("--no-asleep", action="store_true", help="skip the refit into a sleeping (CPU) engine")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (--device cpu)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available (use --device cpu --tiny)")
    if args.repeats < 1 or args.bucket_mb < 1:
        parser.error("--repeats and --bucket-mb must be >= 1")
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    from transformers import Qwen3Config

    from megatron_grpo.distributed import destroy_distributed
    from megatron_grpo.refit import refit

    results: list[dict] = []

    def emit(record: dict) -> None:
        results.append(record)
        print(json.dumps(record), flush=True)

    shape = TINY if args.tiny else QWEN3_4B
    emit({"info": {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                   "shape": "tiny" if args.tiny else "qwen3-4b", "dtype": str(dtype).removeprefix("torch."),
                   "bucket_mb": args.bucket_mb, "torch": torch.__version__}})
    t = time.perf_counter()
    model = build_policy_model(Qwen3Config(**shape), device, dtype, seed=0)
    engine = build_engine(Qwen3Config(**shape), device, dtype, seed=1)
    _sync(device)
    emit({"build_s": round(time.perf_counter() - t, 1)})

    before = logit_diff(model, engine, shape["vocab_size"], device)
    stats = refit(model_stream(model, args.bucket_mb), engine)  # warm-up, and the correctness check
    _sync(device)
    after = logit_diff(model, engine, shape["vocab_size"], device)
    emit({"refit_bytes": stats.bytes, "tensors": stats.tensors, "buckets": stats.buckets,
          "first_refit_s": round(stats.seconds, 4), "logit_diff_before": before, "logit_diff_after": after})

    times = []
    for _ in range(args.repeats):
        _sync(device)
        t = time.perf_counter()
        refit(model_stream(model, args.bucket_mb), engine)
        _sync(device)
        times.append(time.perf_counter() - t)
    refit_s = sum(times) / len(times)

    asleep: dict = {}
    if not args.no_asleep and device.type == "cuda":
        engine.sleep()  # as between rollouts in the trainer: the hf engine's weights move to the CPU
        _sync(device)
        t = time.perf_counter()
        refit(model_stream(model, args.bucket_mb), engine)  # into the CPU copy, then wake() to the GPU
        _sync(device)
        asleep = {"asleep_refit_s": round(time.perf_counter() - t, 3)}

    # the floor: a buffer the size of the model on the GPU (capped at 4 GiB: the rate is flat by then)
    probe = min(stats.bytes, 4 << 30) if device.type == "cuda" else min(stats.bytes, 256 << 20)
    rate = copy_rate(device, max(probe, 1 << 20))
    floor_s = stats.bytes / rate
    ratio = refit_s / floor_s
    emit({"refit_s": round(refit_s, 4), "refit_s_each": [round(x, 4) for x in times],
          "copy_gb_per_s": round(rate / 1e9, 1), "read_write_gb_per_s": round(2 * rate / 1e9, 1),
          "floor_s": round(floor_s, 5), "refit_gb_per_s": round(stats.bytes / refit_s / 1e9, 1),
          "ratio_refit_over_floor": round(ratio, 2), "goal": GOAL_RATIO,
          "meets_goal": ratio <= GOAL_RATIO, "correct": after < 0.05 * max(before, 1e-6), **asleep})

    out = args.out or (os.path.join(os.environ["OUT"], "refit_bench.json") if os.environ.get("OUT") else None)
    if out:
        with open(out, "w") as f:
            json.dump(results, f, indent=1)
    destroy_distributed()
    return 0


def model_stream(model, bucket_mb: int):
    """``MegatronPolicy.weight_stream`` without the policy object (see the module docstring)."""
    from megatron_grpo.models.hf_mapping import iter_hf_weights

    return iter_hf_weights(model, bucket_mb << 20)


if __name__ == "__main__":
    sys.exit(main())
