"""The megatron generation engine against the policy it decodes with (real megatron-core on gloo).

References are computed independently of the engine's KV cache: greedy decoding by repeated full
forward passes of the policy's model on the unpadded prompt (argmax of the last position), and
sampled-token logprobs by ``MegatronPolicy.logprobs`` on prompt + generation. Each distributed test
is one launch running several checks (a launch costs several seconds).
"""

from __future__ import annotations

import pytest
import torch
from dist_utils import run_distributed

from megatron_grpo.generation import choose_backend

VOCAB = 96
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [3, 4], [20, 21, 22, 23], [40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50]]
NEW = 8
PAD = 1


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from megatron_grpo.models.tiny import save_tiny_qwen3

    return save_tiny_qwen3(str(tmp_path_factory.mktemp("tiny_qwen3_gen")), VOCAB, seed=5)


def _policy(hf_dir: str, tp: int, pp: int = 1, sequence_parallel: bool = False):
    from megatron_grpo.config import OptimizerConfig, PolicyConfig
    from megatron_grpo.distributed import init_distributed
    from megatron_grpo.policy import MegatronPolicy

    layout = init_distributed(tp=tp, pp=pp, sequence_parallel=sequence_parallel)
    cfg = PolicyConfig(
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, sequence_parallel=sequence_parallel,
        precision="float32", train_micro_batch_size=1, logprob_batch_size=4, max_total_sequence_length=64,
        optimizer=OptimizerConfig(lr=3e-2, min_lr=0.0, weight_decay=0.0, clip_grad=1.0),
    )
    return MegatronPolicy(cfg, layout, hf_dir, temperature=1.0)


def _full_logits(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    """Last-position logits [vocab] of one sequence: the model's plain forward, no cache (right-padded
    to a multiple of TP for sequence parallelism; causal attention keeps the padding invisible)."""
    from megatron.core import parallel_state, tensor_parallel

    tp = parallel_state.get_tensor_model_parallel_world_size()
    s = -(-len(ids) // tp) * tp
    x = torch.tensor([list(ids) + [PAD] * (s - len(ids))], dtype=torch.long)
    logits = model(x, torch.arange(s)[None, :], None)  # [1, s, vocab / tp]
    return tensor_parallel.gather_from_tensor_model_parallel_region(logits)[0, len(ids) - 1].float()


def _argmax_reference(model: torch.nn.Module, prompt: list[int], steps: int) -> tuple[list[int], list[float]]:
    seq, toks, lps = list(prompt), [], []
    for _ in range(steps):
        logits = _full_logits(model, seq)
        t = int(logits.argmax())
        toks.append(t)
        lps.append(float(torch.log_softmax(logits, -1)[t]))
        seq.append(t)
    return toks, lps


def _sampling_reference(model: torch.nn.Module, prompt: list[int], gen: list[int], params) -> list[float]:
    """log p(gen[i]) under the cut, tempered distribution of full forwards over prompt + gen[:i]."""
    from megatron_grpo.generation.hf import sampling_logprobs

    seq, out = list(prompt), []
    for tok in gen:
        out.append(float(sampling_logprobs(_full_logits(model, seq)[None, :], params)[0, tok]))
        seq.append(tok)
    return out


def _policy_logprobs(policy, prompts: list[list[int]], gens: list[list[int]]) -> list[list[float]]:
    """policy.logprobs of every generated token given its prompt and the earlier generated tokens."""
    seqs = [p + g for p, g in zip(prompts, gens)]
    s = max(len(q) for q in seqs)
    ids = torch.full((len(seqs), s), PAD, dtype=torch.long)
    for i, q in enumerate(seqs):
        ids[i, : len(q)] = torch.tensor(q)
    lp = policy.logprobs(ids, torch.tensor([len(q) for q in seqs]))
    return [lp[i, len(p) : len(p) + len(g)].tolist() for i, (p, g) in enumerate(zip(prompts, gens))]


def _max_err(a: list[list[float]], b: list[list[float]]) -> float:
    return max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb, strict=True))


def _check_engine(hf_dir: str, tp: int, sequence_parallel: bool, full: bool) -> dict:
    from megatron_grpo.generation import make_engine
    from megatron_grpo.generation.base import SamplingParams

    torch.manual_seed(0)
    policy = _policy(hf_dir, tp, sequence_parallel=sequence_parallel)
    engine = make_engine("megatron", policy=policy, pad_token_id=PAD, prefill_tokens=24)  # 2 prefill chunks
    res: dict = {}
    # graph or eager is agreed over the TP group: one rank's failed capture sends every rank to eager
    from megatron.core import parallel_state

    res["tp_agree"] = [engine._all_tp_ranks(parallel_state.get_tensor_model_parallel_rank() == 1),
                       engine._all_tp_ranks(True)]

    # greedy, batched prompts of different lengths == argmax of repeated full forwards, per prompt
    greedy = engine.generate(PROMPTS, SamplingParams(temperature=0.0, max_new_tokens=NEW))
    refs = [_argmax_reference(policy.model, p, NEW) for p in PROMPTS]
    res["greedy"] = [g.token_ids for g in greedy]
    res["greedy_ref"] = [r[0] for r in refs]
    res["greedy_lp_err"] = _max_err([g.logprobs for g in greedy], [r[1] for r in refs])
    res["greedy_reasons"] = [g.finish_reason for g in greedy]

    # sampling with top-k/top-p: the logprobs of the cut, renormalized distribution (full forwards, no cache)
    cut = SamplingParams(temperature=0.9, top_p=0.9, top_k=20, max_new_tokens=NEW, seed=7)
    sampled = engine.generate(PROMPTS, cut)
    res["sampled"] = [g.token_ids for g in sampled]
    res["sampled_again"] = [g.token_ids for g in engine.generate(PROMPTS, cut)]  # same seed: same ids
    refs = [_sampling_reference(policy.model, p, g.token_ids, cut) for p, g in zip(PROMPTS, sampled)]
    res["cut_lp_err"] = _max_err([g.logprobs for g in sampled], refs)

    # temperature 0.5 (what training uses): engine logprobs == policy.logprobs with logits / 0.5, and
    # clearly not the T=1 ones
    params = SamplingParams(temperature=0.5, max_new_tokens=NEW, seed=7)
    tempered = engine.generate(PROMPTS, params)
    gens = [g.token_ids for g in tempered]
    policy.temperature = 0.5
    res["sampled_lp_err"] = _max_err([g.logprobs for g in tempered], _policy_logprobs(policy, PROMPTS, gens))
    policy.temperature = 1.0
    res["t1_lp_err"] = _max_err([g.logprobs for g in tempered], _policy_logprobs(policy, PROMPTS, gens))
    policy.temperature = 0.5
    if not full:
        return res

    # stop ids and per-prompt budgets
    stop_id = res["greedy"][0][2]
    stop = engine.generate(PROMPTS, SamplingParams(temperature=0.0, max_new_tokens=NEW, stop_token_ids=(stop_id,)),
                           max_new_tokens=[NEW, 3, NEW, 1])
    res["stop"] = [(g.token_ids, g.finish_reason, g.stop_token_id) for g in stop]
    res["stop_id"] = stop_id

    # a GRPO batch (each prompt G times): prefilled once per prompt, the KV cache forked to the rows;
    # equal to generating every row on its own
    grouped = [PROMPTS[0]] * 3 + [PROMPTS[3]] * 2 + [PROMPTS[1]]
    greedy_params = SamplingParams(temperature=0.0, max_new_tokens=NEW)
    forked = engine.generate(grouped, greedy_params)
    res["forked_prefill_rows"] = engine.last_stats["prefill_rows"]
    alone = [engine.generate([p], greedy_params)[0] for p in grouped]
    res["forked"] = [g.token_ids for g in forked]
    res["forked_ref"] = [g.token_ids for g in alone]
    res["forked_lp_err"] = _max_err([g.logprobs for g in forked], [g.logprobs for g in alone])
    res["forked_sampled"] = [g.token_ids for g in engine.generate(grouped, params)]

    # refit is a no-op: after an optimizer step the engine already samples from the new weights
    before = engine.generate(PROMPTS, params)
    seqs = [p + g.token_ids for p, g in zip(PROMPTS, before)]
    s = max(len(q) for q in seqs)
    ids = torch.full((len(seqs), s), PAD, dtype=torch.long)
    mask = torch.zeros((len(seqs), s))
    for i, (p, q) in enumerate(zip(PROMPTS, seqs)):
        ids[i, : len(q)] = torch.tensor(q)
        mask[i, len(p) : len(q)] = 1.0
    batch = {"input_ids": ids, "lengths": torch.tensor([len(q) for q in seqs]), "mask": mask}

    def loss_fn(logp, mb):
        m = mb["mask"][:, : logp.shape[1]]
        return -(logp * m).sum() / float(mask.sum()), {}

    policy.train_step(batch, loss_fn)
    engine.load_weights([])  # what the trainer calls after each step: nothing to copy
    after = engine.generate(PROMPTS, params)
    new_lp = _policy_logprobs(policy, PROMPTS, [g.token_ids for g in after])
    res["refit_err"] = _max_err([g.logprobs for g in after], new_lp)
    # the stepped weights made the earlier samples more likely: the engine must see that
    res["lp_before"] = sum(sum(g.logprobs) for g in before)
    res["lp_same_tokens_after"] = sum(sum(r) for r in _policy_logprobs(policy, PROMPTS, [g.token_ids for g in before]))
    refs_after = [_argmax_reference(policy.model, p, NEW) for p in PROMPTS]

    # bucketed shapes (what CUDA graphs use): 3 prompts run as 4 rows (one filler row), the cache is
    # reused by a later call of another size in the same bucket, results unchanged
    bucketed = make_engine("megatron", policy=policy, pad_token_id=PAD, bucket_shapes=True)
    greedy3 = bucketed.generate(PROMPTS[:3], SamplingParams(temperature=0.0, max_new_tokens=NEW))
    cache3 = bucketed._cache
    greedy4 = bucketed.generate(PROMPTS, SamplingParams(temperature=0.0, max_new_tokens=NEW - 2))
    res["bucket_rows"] = cache3.batch
    res["bucket_cache_reused"] = bucketed._cache is cache3
    res["bucketed"] = [g.token_ids for g in greedy3] + [g.token_ids for g in greedy4]
    res["bucketed_ref"] = [r[0] for r in refs_after[:3]] + [r[0][: NEW - 2] for r in refs_after]

    # sleep frees the cache; generate works again after wake
    engine.sleep()
    res["cache_after_sleep"] = engine._cache is None
    engine.wake()
    res["greedy_after_wake"] = [g.token_ids for g in engine.generate(PROMPTS[:2], SamplingParams(temperature=0.0,
                                                                                                max_new_tokens=2))]
    res["greedy_after_wake_ref"] = [_argmax_reference(policy.model, p, 2)[0] for p in PROMPTS[:2]]
    return res


def _assert_engine_results(res: dict, full: bool) -> None:
    assert res["tp_agree"] == [False, True]  # at TP=2 also on rank 1, whose own flag was True
    assert res["greedy"] == res["greedy_ref"]
    assert all(len(g) == NEW for g in res["greedy"]) and set(res["greedy_reasons"]) == {"length"}
    assert res["greedy_lp_err"] < 1e-4
    assert res["sampled"] == res["sampled_again"]
    assert res["sampled"] != res["greedy"]  # it really sampled
    assert res["sampled_lp_err"] < 1e-4 and res["cut_lp_err"] < 1e-4
    assert res["t1_lp_err"] > 0.1  # the temperature really changes the logprobs
    if not full:
        return
    stop_id = res["stop_id"]
    for (toks, reason, sid), greedy, budget in zip(res["stop"], res["greedy"], [NEW, 3, NEW, 1]):
        prefix = greedy[:budget]
        if stop_id in prefix:
            cut = prefix.index(stop_id) + 1
            assert (toks, reason, sid) == (prefix[:cut], "stop", stop_id)
        else:
            assert (toks, reason, sid) == (prefix, "length", None)
    assert res["stop"][0][1] == "stop"  # the stop id is the 3rd greedy token of prompt 0
    assert res["forked_prefill_rows"] == 3
    assert res["forked"] == res["forked_ref"]
    assert res["forked_lp_err"] < 1e-5
    assert len({tuple(t) for t in res["forked_sampled"][:3]}) > 1  # forked rows sample independently
    assert res["refit_err"] < 1e-4
    assert res["lp_same_tokens_after"] > res["lp_before"] + 1.0
    assert res["bucket_rows"] == 4 and res["bucket_cache_reused"]
    assert res["bucketed"] == res["bucketed_ref"]
    assert res["cache_after_sleep"]
    assert res["greedy_after_wake"] == res["greedy_after_wake_ref"]


def test_engine_tp1(hf_dir):
    (res,) = run_distributed(_check_engine, 1, hf_dir, 1, False, True)
    _assert_engine_results(res, full=True)


def test_engine_tp2_sequence_parallel(hf_dir):
    res = run_distributed(_check_engine, 2, hf_dir, 2, True, True)
    assert res[0] == res[1]  # every TP rank returns the same generations
    _assert_engine_results(res[0], full=True)


def _check_pp2_error(hf_dir: str) -> str:
    from megatron_grpo.distributed import init_distributed
    from megatron_grpo.generation.megatron_engine import MegatronEngine
    from megatron_grpo.models.qwen3 import build_qwen3_model, transformer_config_from_hf

    init_distributed(tp=1, pp=2)
    stage = build_qwen3_model(hf_dir, transformer_config_from_hf(hf_dir, tp=1, pp=2))  # this rank's half
    try:
        MegatronEngine(model=stage)
    except ValueError as exc:
        return str(exc)
    return "no error"


def test_engine_rejects_pipeline_parallel(hf_dir):
    messages = run_distributed(_check_pp2_error, 2, hf_dir)
    assert all("pipeline_model_parallel_size=1" in m for m in messages), messages


def test_choose_backend():
    """generation.backend: auto picks vllm on a GPU with vLLM, megatron on a GPU without, hf on CPU
    (vLLM's CPU build only when named); an explicit choice is kept."""
    assert choose_backend("auto", has_cuda=True, has_vllm=True)[0] == "vllm"
    name, why = choose_backend("auto", has_cuda=True, has_vllm=False)
    assert name == "megatron" and "vllm" in why
    assert choose_backend("auto", has_cuda=False, has_vllm=True)[0] == "hf"
    assert choose_backend("auto", has_cuda=False, has_vllm=False)[0] == "hf"
    for explicit in ("megatron", "hf"):
        assert choose_backend(explicit, has_cuda=False, has_vllm=False)[0] == explicit
    assert choose_backend("vllm", has_cuda=True, has_vllm=True)[0] == "vllm"
    assert choose_backend("vllm", has_cuda=False, has_vllm=True)[0] == "vllm"  # vLLM's CPU build
    with pytest.raises(ValueError, match=r"megatron-grpo\[vllm\]"):
        choose_backend("vllm", has_cuda=True, has_vllm=False)
    with pytest.raises(ValueError, match="generation.backend must be one of"):
        choose_backend("sglang", has_cuda=True, has_vllm=True)


def test_resolve_backend_on_this_machine():
    """What ``generation.backend=auto`` picks here (CPU CI: hf, whether or not vLLM's CPU build is in)."""
    from megatron_grpo.components import resolve_backend
    from megatron_grpo.config import GenerationConfig

    assert resolve_backend(GenerationConfig(backend="auto")) == ("vllm" if torch.cuda.is_available() else "hf")
    assert resolve_backend(GenerationConfig(backend="vllm")) == "vllm"  # installed by make test
