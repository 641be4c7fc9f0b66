"""Generation throughput: the megatron and vllm engines vs the hf engine, same model, same run.

Qwen3-4B shape with random bf16 weights (nothing downloaded), prompt 1024 random ids, 256 sampled
tokens per row (temperature 1, no stop id, so every row generates exactly 256), batch 16/64/256.
tokens/s = batch x new tokens / wall time of one ``generate`` call (prefill included), as the
standalone transformers probe measured it. The megatron engine is timed cold (first call: cache
allocation and CUDA-graph capture included) and warm (same shapes again, the steady state of a
training run), with CUDA graphs and without; the ratio printed is megatron (warm, graphs) / hf.
Goal: >= 10x the hf engine at batch 64 on one GPU. When vLLM is installed (vLLM's CPU build on a
CPU machine) the hf engine's model is saved to a folder and the vllm engine (in-process, the
trainer's settings) is timed on the same prompts after one warm-up call: vllm / hf is printed too.

    .venv/bin/python bench/generation.py                       # GPU, full shape
    .venv/bin/python bench/generation.py --tiny --device cpu   # smoke run
    options: --batches 16,64,256 --hf-batches 16,64 --prompt-len 1024 --new-tokens 256 --out FILE

Results are printed as JSON lines and written to --out (default $OUT/generation_bench.json when
$OUT is set).
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
            num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=4096,
            rope_theta=1e6, tie_word_embeddings=True, rms_norm_eps=1e-6)


def _emit(record: dict, results: list) -> None:
    results.append(record)
    print(json.dumps(record), flush=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def build_megatron_model(hf_config, device: torch.device, dtype: torch.dtype):
    """Qwen3 GPTModel (the policy's builder) with random weights drawn on the device (fast)."""
    from megatron_grpo.distributed import init_distributed
    from megatron_grpo.models.qwen3 import build_qwen3_model, transformer_config_from_hf

    for key, value in dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                           MASTER_PORT=os.environ.get("MASTER_PORT", "29517")).items():
        os.environ.setdefault(key, value)
    init_distributed(tp=1, pp=1)
    config = transformer_config_from_hf(hf_config, tp=1, pp=1, params_dtype=dtype)
    if device.type == "cuda":  # allocate on the GPU and fill there instead of a 4B-param CPU init
        config.use_cpu_initialization = False
        config.perform_initialization = False
    model = build_qwen3_model(hf_config, config).to(device=device, dtype=dtype).eval()
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:  # norm weights
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)
    return model


def build_hf_model(hf_config, device: torch.device, dtype: torch.dtype):
    from transformers import Qwen3ForCausalLM

    hf_config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Qwen3ForCausalLM(hf_config).eval()
    finally:
        torch.set_default_dtype(default)
    return model


@torch.no_grad()
def decode_step_comparison(model, batch: int, prompt_len: int, steps: int, device: torch.device) -> dict:
    """ms per decode step: megatron-core's StaticInferenceContext path (GPTModel.forward with
    inference_context) vs our CachedGPTForward (eager), same model, same tokens, each timed over
    the second half of ``steps``; plus the max logit difference (they compute the same function)."""
    from megatron.core.inference.contexts import StaticInferenceContext

    from megatron_grpo.generation.kv_cache import CachedGPTForward, KVCache

    vocab = model.vocab_size
    ids = torch.randint(0, vocab, (batch, prompt_len + steps), device=device)
    total = prompt_len + steps
    rec: dict = {"compare": "decode_step", "batch": batch, "prompt_len": prompt_len}
    mcore_logits = []
    try:
        ctx = StaticInferenceContext(batch, total)
        pos = torch.arange(prompt_len, device=device)[None].expand(batch, prompt_len)
        # attention_mask=None: the SDPA core attention is causal when sq == sk (flash kernel)
        model(ids[:, :prompt_len], pos, None, inference_context=ctx, runtime_gather_output=True)
        ctx.sequence_len_offset += prompt_len
        ctx.enable_decode_mode()
        for i in range(steps):
            if i == steps // 2:  # time the second half (the first warms kernels and allocator)
                _sync(device)
                t = time.perf_counter()
            p = prompt_len + i
            out = model(ids[:, p : p + 1], torch.full((batch, 1), p, device=device), None, inference_context=ctx,
                        runtime_gather_output=True)
            ctx.sequence_len_offset += 1
            mcore_logits.append(out[:, -1].float())
        _sync(device)
        rec["mcore_static_ms"] = round(1000 * (time.perf_counter() - t) / (steps - steps // 2), 3)
        del ctx
    except Exception as exc:  # noqa: BLE001 - reported, not fatal: it is a comparison
        rec["mcore_static_error"] = f"{type(exc).__name__}: {exc}"[:300]
    _free(device)
    f = CachedGPTForward(model)
    f.ensure_rope(total, device)
    cache = KVCache.allocate(len(f.layers), batch, f.kv_heads, total, f.head_dim,
                             next(model.parameters()).dtype, device)
    f.prefill(cache, slice(0, batch), ids[:, :prompt_len], torch.zeros(batch, dtype=torch.long, device=device))
    key_ok = torch.zeros(batch, total, dtype=torch.bool, device=device)
    key_ok[:, :prompt_len] = True
    ours = []
    for i in range(steps):
        if i == steps // 2:
            _sync(device)
            t = time.perf_counter()
        p = prompt_len + i
        key_ok[:, p] = True
        ours.append(f.decode(cache, ids[:, p], torch.full((batch,), p, device=device),
                             torch.tensor([p], device=device), key_ok).float())
    _sync(device)
    rec["cached_forward_eager_ms"] = round(1000 * (time.perf_counter() - t) / (steps - steps // 2), 3)
    if mcore_logits:
        rec["max_logit_diff"] = float(max((a - b).abs().max() for a, b in zip(mcore_logits, ours)))
        rec["speedup"] = round(rec["mcore_static_ms"] / rec["cached_forward_eager_ms"], 2)
    del cache
    _free(device)
    return rec


def time_generate(engine, prompts, params) -> tuple[float, list]:
    device = getattr(engine, "device", torch.device("cpu"))
    _sync(device)
    t = time.perf_counter()
    out = engine.generate(prompts, params)
    _sync(device)
    return time.perf_counter() - t, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny Qwen3 shape (smoke run)")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--batches", default=None, help="comma list (default 16,64,256; tiny: 4,16)")
    parser.add_argument("--hf-batches", default=None, help="batches for the hf engine (default: --batches)")
    parser.add_argument("--prompt-len", type=int, default=None, help="default 1024 (tiny: 64)")
    parser.add_argument("--new-tokens", type=int, default=None, help="default 256 (tiny: 32)")
    parser.add_argument("--no-eager", action="store_true", help="skip the megatron run without CUDA graphs")
    parser.add_argument("--compare-batch", type=int, default=None,
                        help="batch of the decode-step comparison with megatron-core's static inference "
                             "context (default 64, tiny: 4; 0 skips it)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (--device cpu)")
    parser.add_argument("--no-vllm", action="store_true", help="skip the vllm engine (default: run it if installed)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    from transformers import Qwen3Config

    from megatron_grpo.generation.base import SamplingParams
    from megatron_grpo.generation.hf import HFEngine
    from megatron_grpo.generation.megatron_engine import MegatronEngine

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench/generation.py: --device cuda but CUDA is not available; use --device cpu", file=sys.stderr)
        return 2
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    shape = TINY if args.tiny else QWEN3_4B
    batches = [int(b) for b in (args.batches or ("4,16" if args.tiny else "16,64,256")).split(",")]
    hf_batches = [int(b) for b in args.hf_batches.split(",")] if args.hf_batches else batches
    prompt_len = args.prompt_len or (64 if args.tiny else 1024)
    new_tokens = args.new_tokens or (32 if args.tiny else 256)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)

    results: list[dict] = []
    info = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "dtype": str(dtype),
            "shape": "tiny" if args.tiny else "qwen3-4b", "prompt_len": prompt_len, "new_tokens": new_tokens,
            "torch": torch.__version__}
    _emit({"info": info}, results)
    hf_config = Qwen3Config(**shape)
    params = SamplingParams(temperature=1.0, max_new_tokens=new_tokens, seed=0)
    gen = torch.Generator().manual_seed(1)

    def prompts_for(b: int) -> list[list[int]]:
        ids = torch.randint(0, shape["vocab_size"] - 1000 if not args.tiny else shape["vocab_size"],
                            (b, prompt_len), generator=gen)
        return ids.tolist()

    # ---------------------------------------------------------------- megatron engine
    t = time.perf_counter()
    model = build_megatron_model(hf_config, device, dtype)
    _emit({"megatron_model_build_s": round(time.perf_counter() - t, 1)}, results)
    compare_batch = args.compare_batch if args.compare_batch is not None else (4 if args.tiny else 64)
    if compare_batch:
        _emit(decode_step_comparison(model, compare_batch, prompt_len, 16, device), results)
    megatron_tps: dict[int, float] = {}
    modes = [("graphs", True)] if device.type == "cuda" else [("eager", False)]
    if device.type == "cuda" and not args.no_eager:
        modes.append(("eager", False))
    for mode, graphs in modes:
        engine = MegatronEngine(model=model, cuda_graphs=graphs)
        for b in batches:
            prompts = prompts_for(b)
            try:
                cold_s, _ = time_generate(engine, prompts, params)
                warm_s, out = time_generate(engine, prompts, params)
            except torch.OutOfMemoryError as exc:
                _emit({"engine": "megatron", "mode": mode, "batch": b, "error": f"OOM: {exc}"[:200]}, results)
                engine.sleep()
                _free(device)
                continue
            n = sum(len(g.token_ids) for g in out)
            stats = engine.last_stats
            rec = {"engine": "megatron", "mode": mode, "batch": b, "new_tokens": n // b,
                   "cold_s": round(cold_s, 3), "warm_s": round(warm_s, 3),
                   "tokens_per_s": round(n / warm_s, 1), "cold_tokens_per_s": round(n / cold_s, 1),
                   "prefill_s": round(stats["prefill_s"], 3),
                   "decode_ms_per_step": round(1000 * stats["decode_s"] / max(1, stats["decode_steps"]), 3),
                   "graph_used": bool(stats.get("cuda_graphs")), "graph_error": engine.graph_error}
            if device.type == "cuda":
                rec["peak_mem_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 1)
                torch.cuda.reset_peak_memory_stats()
            _emit(rec, results)
            if mode == modes[0][0]:
                megatron_tps[b] = n / warm_s
            engine.sleep()
            _free(device)
    del model, engine
    _free(device)

    # ---------------------------------------------------------------- hf engine
    t = time.perf_counter()
    hf_model = build_hf_model(hf_config, device, dtype)
    _emit({"hf_model_build_s": round(time.perf_counter() - t, 1)}, results)
    hf_engine = HFEngine(model=hf_model, device=device)
    hf_engine.generate([p[:64] for p in prompts_for(2)], SamplingParams(temperature=1.0, max_new_tokens=4))
    hf_tps: dict[int, float] = {}
    for b in hf_batches:
        prompts = prompts_for(b)
        try:
            wall, out = time_generate(hf_engine, prompts, params)
        except torch.OutOfMemoryError as exc:
            _emit({"engine": "hf", "batch": b, "error": f"OOM: {exc}"[:200]}, results)
            _free(device)
            continue
        n = sum(len(g.token_ids) for g in out)
        hf_tps[b] = n / wall
        _emit({"engine": "hf", "batch": b, "new_tokens": n // b, "wall_s": round(wall, 3),
               "tokens_per_s": round(n / wall, 1)}, results)
        _free(device)

    # ---------------------------------------------------------------- vllm engine
    import importlib.util

    vllm_tps: dict[int, float] = {}
    if not args.no_vllm and importlib.util.find_spec("vllm") is not None:
        import tempfile

        from megatron_grpo.generation.vllm_engine import VLLMEngine

        folder = tempfile.mkdtemp(prefix="generation_bench_")
        hf_model.save_pretrained(folder)
        del hf_model, hf_engine
        _free(device)
        t = time.perf_counter()
        engine = VLLMEngine(folder, dtype="bfloat16" if device.type == "cuda" else "float32",
                            max_model_len=prompt_len + new_tokens, cpu_kv_cache_gib=2.0, gpu_memory_utilization=0.8)
        engine.generate([p[:64] for p in prompts_for(2)], SamplingParams(temperature=1.0, max_new_tokens=4))
        _emit({"vllm_engine_build_s": round(time.perf_counter() - t, 1)}, results)
        for b in hf_batches:
            wall, out = time_generate(engine, prompts_for(b), params)
            n = sum(len(g.token_ids) for g in out)
            vllm_tps[b] = n / wall
            _emit({"engine": "vllm", "batch": b, "new_tokens": n // b, "wall_s": round(wall, 3),
                   "tokens_per_s": round(n / wall, 1)}, results)
        engine.shutdown()

    # ---------------------------------------------------------------- summary
    for b in batches:
        if b in megatron_tps and b in hf_tps:
            _emit({"batch": b, "megatron_tokens_per_s": round(megatron_tps[b], 1),
                   "hf_tokens_per_s": round(hf_tps[b], 1), "ratio": round(megatron_tps[b] / hf_tps[b], 2)},
                  results)
    for b in hf_batches:
        if b in vllm_tps and b in hf_tps:
            _emit({"batch": b, "vllm_tokens_per_s": round(vllm_tps[b], 1), "hf_tokens_per_s": round(hf_tps[b], 1),
                   "vllm_over_hf": round(vllm_tps[b] / hf_tps[b], 2)}, results)
    out_path = args.out or (os.path.join(os.environ["OUT"], "generation_bench.json") if os.environ.get("OUT") else None)
    if out_path:
        with open(out_path, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
