"""Rollout throughput and where its time goes: generation, environment, tokenization, refit.

Why: the agent loop must be bound by generation. The environment (tool calls, verifier) and the
token bookkeeping (chat rendering, decoding turns for the parser, tool-turn ids) should stay under
5% of rollout time; this bench measures the split in one run and prints whether that holds.

Two measurements on the example.jsonl tasks (G generations each):

1. ``model``: the tiny random Qwen3 as the policy, after one refit from a second model's weights
   (timed), once per engine of ``--backends`` (default: hf, and vllm when it is installed: vLLM's
   CPU build on a CPU machine), same model, same tasks, same seed; the generated tokens/s of each
   and their ratio. A random model rarely writes a tool call, so this mostly times generation.
2. ``replay``: the scripted engine plays each task's ground-truth calls (one call per turn, then a
   final answer), so the environment and the tokenization run on real tool traffic. Generation is
   ~free there; the bench reports env + tokenization per turn and, combined with the model run's
   generation time per turn, the overhead share they would have in a rollout of that shape.

    .venv/bin/python bench/rollout.py                         # CPU, tiny model, local env
    .venv/bin/python bench/rollout.py --pool ray --generations 8 --max-new-tokens 128
    .venv/bin/python bench/rollout.py --backends vllm --model /path/to/hf_folder
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / "tests" / "fixtures" / "nemo_gym" / "example.jsonl"  # NeMo-Gym's 5 reference tasks


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA), help="jsonl of tasks (default: example.jsonl)")
    p.add_argument("--data-dir", default=None, help="sandbox csv folder (default: WORKPLACE_DATA_DIR or the cache)")
    p.add_argument("--num-prompts", type=int, default=5)
    p.add_argument("--generations", type=int, default=2, help="episodes per prompt (GRPO group size)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--max-steps", type=int, default=6)
    p.add_argument("--context-limit", type=int, default=32768)
    p.add_argument("--backends", default=None, help="comma list of hf, vllm (default: hf,vllm if vllm is installed)")
    p.add_argument("--model", default=None, help="HF folder (default: a tiny random Qwen3 built here)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--pool", choices=["local", "ray"], default="local")
    p.add_argument("--num-actors", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def tiny_qwen3(vocab_size: int, seed: int):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    config = Qwen3Config(vocab_size=vocab_size, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                         max_position_embeddings=32768, tie_word_embeddings=False)
    return Qwen3ForCausalLM(config).eval()


def make_pool(args):
    from environment.workplace.data_dir import default_data_dir

    data_dir = args.data_dir or default_data_dir()  # names `megatron-grpo download` when missing
    if args.pool == "ray":
        from environment.pool import RayEnvPool

        return RayEnvPool(num_actors=args.num_actors, data_dir=data_dir, cpus_per_actor=0.5)
    from environment.pool import LocalEnvPool

    return LocalEnvPool(data_dir)


def replay_scripts(renderer, samples):
    """Per sample: one turn per ground-truth call, then a final answer (all ending in <|im_end|>)."""
    tok = renderer.tokenizer
    scripts = []
    for sample in samples:
        turns = []
        for call in sample["ground_truth"]:
            text = f'<tool_call>\n{{"name": "{call["name"]}", "arguments": {call["arguments"]}}}\n</tool_call>'
            turns.append(tok.encode(text + "<|im_end|>", add_special_tokens=False))
        turns.append(tok.encode("Done.<|im_end|>", add_special_tokens=False))
        scripts.append(turns)
    return scripts


def summarize(name: str, batch, extra: dict) -> dict:
    t = batch.timing
    turns = sum(ep.num_turns for ep in batch.episodes)
    record = {
        "run": name,
        "episodes": len(batch.episodes),
        "turns": turns,
        "episodes_per_s": round(len(batch.episodes) / t["total"], 3),
        "total_s": round(t["total"], 4),
        "generation_s": round(t["generation"], 4),
        "env_s": round(t["env"], 4),
        "tokenization_s": round(t["tokenization"], 4),
        "generated_tokens": sum(sum(ep.loss_mask) for ep in batch.episodes),
        "prompt_tokens_mean": round(sum(ep.prompt_len for ep in batch.episodes) / len(batch.episodes)),
        "reward_mean": round(sum(ep.reward for ep in batch.episodes) / len(batch.episodes), 3),
        "stop_reasons": {r: sum(ep.stop_reason == r for ep in batch.episodes)
                         for r in sorted({ep.stop_reason for ep in batch.episodes})},
        **extra,
    }
    print(json.dumps(record), flush=True)
    return record


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(REPO))
    from megatron_grpo.generation.base import SamplingParams
    from megatron_grpo.generation.scripted import ScriptedEngine
    from megatron_grpo.models.tiny_tokenizer import sample_texts, train_tiny_tokenizer
    from megatron_grpo.refit import refit, state_dict_stream
    from megatron_grpo.rollout.agent_loop import run_episodes
    from megatron_grpo.rollout.chat import ChatRenderer

    rows = [json.loads(line) for line in Path(args.data).read_text().splitlines() if line.strip()]
    prompts = rows[: args.num_prompts]
    samples = [s for s in prompts for _ in range(args.generations)]

    if args.model is None:
        tokenizer = train_tiny_tokenizer(sample_texts(rows), vocab_size=1024)
        policy_model, engine_model = tiny_qwen3(len(tokenizer), seed=1), tiny_qwen3(len(tokenizer), seed=0)
        model_dir = tempfile.mkdtemp(prefix="rollout_bench_")
        engine_model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model_dir = args.model
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        policy_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
    renderer = ChatRenderer(tokenizer)

    import importlib.util

    from megatron_grpo.generation import make_engine

    has_vllm = importlib.util.find_spec("vllm") is not None
    backends = (args.backends or ("hf,vllm" if has_vllm else "hf")).split(",")
    on_cuda = str(args.device).startswith("cuda")

    def build(backend: str):
        if backend == "hf":
            return make_engine("hf", model=model_dir, device=args.device, pad_token_id=tokenizer.pad_token_id)
        return make_engine("vllm", model=model_dir, max_model_len=args.context_limit, cpu_kv_cache_gib=1.0,
                           dtype="bfloat16" if on_cuda else "float32", gpu_memory_utilization=0.5)

    pool = make_pool(args)
    sampling = SamplingParams(temperature=1.0, max_new_tokens=args.max_new_tokens, seed=args.seed)
    loop = dict(max_steps=args.max_steps, context_limit=args.context_limit)
    runs: dict[str, dict] = {}
    try:
        for backend in backends:
            t0 = time.perf_counter()
            engine = build(backend)
            build_s = time.perf_counter() - t0
            run_episodes(engine, pool, renderer, samples[:2], replace_tokens(sampling, 4), **loop)  # warm-up
            engine.sleep()
            started = time.perf_counter()
            stats = refit(state_dict_stream(policy_model.to(args.device), bucket_bytes=64 << 20), engine)
            refit_s = time.perf_counter() - started
            batch = run_episodes(engine, pool, renderer, samples, sampling, **loop)
            generated = sum(sum(ep.loss_mask) for ep in batch.episodes)
            runs[backend] = summarize("model", batch, {
                "backend": backend, "device": str(args.device), "engine_build_s": round(build_s, 2),
                "refit_s": round(refit_s, 4), "refit_mb": round(stats.bytes / 1e6, 2),
                "generated_tokens_per_s": round(generated / batch.timing["generation"], 1)})
            if hasattr(engine, "shutdown"):
                engine.shutdown()
        model_run = runs[backends[0]]

        scripted = ScriptedEngine(replay_scripts(renderer, samples), logprob=0.0)
        whole_turns = replace_tokens(sampling, 4096)  # scripted turns are never cut
        replay = summarize("replay", run_episodes(scripted, pool, renderer, samples, whole_turns, **loop), {})
    finally:
        pool.shutdown()

    if "hf" in runs and "vllm" in runs:
        ratio = runs["vllm"]["generated_tokens_per_s"] / runs["hf"]["generated_tokens_per_s"]
        print(json.dumps({"generated_tokens_per_s": {b: r["generated_tokens_per_s"] for b, r in runs.items()},
                          "vllm_over_hf": round(ratio, 2), "device": str(args.device)}), flush=True)
    rollout_s = model_run["total_s"] + model_run["refit_s"]
    share = (model_run["env_s"] + model_run["tokenization_s"]) / rollout_s
    print(f"\nmodel run ({backends[0]}, {args.device}): {model_run['episodes_per_s']} episodes/s, "
          f"{model_run['episodes']} episodes, {model_run['generated_tokens']} generated tokens")
    print(f"  split of {rollout_s:.3f} s: generation {model_run['generation_s'] / rollout_s:.1%}, "
          f"env {model_run['env_s'] / rollout_s:.1%}, tokenization {model_run['tokenization_s'] / rollout_s:.1%}, "
          f"refit {model_run['refit_s'] / rollout_s:.1%}")
    print(f"  env + tokenization under 5% of rollout time: {'YES' if share < 0.05 else 'NO'} ({share:.2%})")

    gen_per_turn = model_run["generation_s"] / max(1, model_run["turns"])
    overhead_per_turn = (replay["env_s"] + replay["tokenization_s"]) / max(1, replay["turns"])
    projected = overhead_per_turn / (overhead_per_turn + gen_per_turn)
    print(f"replay run (ground-truth tool calls): env + tokenization {overhead_per_turn * 1e3:.2f} ms per turn "
          f"vs generation {gen_per_turn * 1e3:.2f} ms per turn -> {projected:.2%} of a rollout of that shape "
          f"({'under' if projected < 0.05 else 'OVER'} 5%)")
    return 0


def replace_tokens(sampling, n: int):
    from dataclasses import replace

    return replace(sampling, max_new_tokens=n)


if __name__ == "__main__":
    sys.exit(main())
