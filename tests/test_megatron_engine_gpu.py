"""The megatron generation engine on one GPU in bf16 (``-m gpu``; fails without CUDA, never skips).

Same references as tests/test_megatron_engine.py (greedy = argmax of repeated full forwards of the
policy's model; sampled logprobs = ``MegatronPolicy.logprobs``), with bf16 tolerances: the cached
decode and the full forward round differently, so greedy sequences must agree until the first
position where the reference's top two logits are a near tie (then they may diverge).
Both CUDA-graph and eager decoding are checked that way.
"""

from __future__ import annotations

import pytest
import torch
from dist_utils import run_distributed

VOCAB = 96
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [3, 4], [20, 21, 22, 23], [40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50]]
NEW = 12
PAD = 1
TIE = 0.125  # bf16 logit gap below which an argmax flip between two paths is acceptable

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from megatron_grpo.models.tiny import save_tiny_qwen3

    return save_tiny_qwen3(str(tmp_path_factory.mktemp("tiny_qwen3_gen_gpu")), VOCAB, seed=5)


def _check_gpu(hf_dir: str) -> dict:
    from megatron.core import tensor_parallel

    from megatron_grpo.config import OptimizerConfig, PolicyConfig
    from megatron_grpo.distributed import init_distributed
    from megatron_grpo.generation.base import SamplingParams
    from megatron_grpo.generation.megatron_engine import MegatronEngine
    from megatron_grpo.policy import MegatronPolicy

    layout = init_distributed(tp=1)
    cfg = PolicyConfig(precision="bfloat16", train_micro_batch_size=1, logprob_batch_size=4,
                       max_total_sequence_length=64,
                       optimizer=OptimizerConfig(lr=3e-2, min_lr=0.0, weight_decay=0.0, clip_grad=1.0))
    policy = MegatronPolicy(cfg, layout, hf_dir, temperature=0.5)  # scores what T=0.5 samples
    assert next(policy.model.parameters()).dtype == torch.bfloat16
    res: dict = {}

    def full_logits(ids: list[int]) -> torch.Tensor:
        x = torch.tensor([ids], dtype=torch.long, device="cuda")
        with torch.no_grad():
            logits = policy.model(x, torch.arange(len(ids), device="cuda")[None, :], None)
        return tensor_parallel.gather_from_tensor_model_parallel_region(logits)[0, -1].float()

    def greedy_agrees(prompt: list[int], got: list[int]) -> bool:
        """True when ``got`` equals the reference argmax path up to a near tie (then stop)."""
        seq = list(prompt)
        for tok in got:
            logits = full_logits(seq)
            ref = int(logits.argmax())
            if tok != ref:
                return float(logits[ref] - logits[tok]) < TIE
            seq.append(tok)
        return True

    def policy_lp(gens: list[list[int]]) -> list[list[float]]:
        seqs = [p + g for p, g in zip(PROMPTS, gens)]
        s = max(len(q) for q in seqs)
        ids = torch.full((len(seqs), s), PAD, dtype=torch.long)
        for i, q in enumerate(seqs):
            ids[i, : len(q)] = torch.tensor(q)
        lp = policy.logprobs(ids, torch.tensor([len(q) for q in seqs]))
        return [lp[i, len(p) : len(p) + len(g)].tolist() for i, (p, g) in enumerate(zip(PROMPTS, gens))]

    def lp_err(gens, lps) -> float:
        ref = policy_lp(gens)
        return max(abs(a - b) for r, g in zip(ref, lps) for a, b in zip(r, g, strict=True))

    graphs = MegatronEngine(policy=policy, pad_token_id=PAD)  # CUDA graphs on by default
    eager = MegatronEngine(policy=policy, pad_token_id=PAD, cuda_graphs=False)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=NEW)
    g_out = graphs.generate(PROMPTS, greedy)
    res["graphs_used"] = (graphs.cuda_graphs, graphs.last_stats.get("cuda_graphs"), graphs.graph_error)
    e_out = eager.generate(PROMPTS, greedy)
    res["greedy_ok"] = [greedy_agrees(p, g.token_ids) for p, g in zip(PROMPTS, g_out)]
    res["eager_ok"] = [greedy_agrees(p, e.token_ids) for p, e in zip(PROMPTS, e_out)]

    params = SamplingParams(temperature=0.5, max_new_tokens=NEW, seed=3)  # logprobs of softmax(logits/0.5)
    sampled = graphs.generate(PROMPTS, params)
    res["sampled_lp_err"] = lp_err([g.token_ids for g in sampled], [g.logprobs for g in sampled])
    # a second call of the same shape replays the captured graph (no new capture)
    graph_before = graphs._graph
    again = graphs.generate(PROMPTS, params)
    res["graph_reused"] = graphs._graph is graph_before
    res["same_seed_same_ids"] = [g.token_ids for g in again] == [g.token_ids for g in sampled]

    # stop id and a smaller batch that reuses the bucketed cache (filler rows)
    stop_id = g_out[0].token_ids[2]
    stopped = graphs.generate(PROMPTS[:3], SamplingParams(temperature=0.0, max_new_tokens=NEW,
                                                          stop_token_ids=(stop_id,)))
    first = stopped[0].token_ids
    res["stop_ok"] = stopped[0].finish_reason == "stop" and first[-1] == stop_id and first.count(stop_id) == 1

    # refit is a no-op: after an optimizer step the engine samples from the new weights
    seqs = [p + g.token_ids for p, g in zip(PROMPTS, sampled)]
    s = max(len(q) for q in seqs)
    ids = torch.full((len(seqs), s), PAD, dtype=torch.long)
    mask = torch.zeros((len(seqs), s))
    for i, (p, q) in enumerate(zip(PROMPTS, seqs)):
        ids[i, : len(q)] = torch.tensor(q)
        mask[i, len(p) : len(q)] = 1.0
    batch = {"input_ids": ids, "lengths": torch.tensor([len(q) for q in seqs]), "mask": mask}
    old = sum(sum(r) for r in policy_lp([g.token_ids for g in sampled]))
    policy.train_step(batch, lambda logp, mb: (-(logp * mb["mask"][:, : logp.shape[1]]).sum() / float(mask.sum()),
                                               {}))
    graphs.load_weights([])
    after = graphs.generate(PROMPTS, params)
    res["refit_lp_err"] = lp_err([g.token_ids for g in after], [g.logprobs for g in after])
    res["lp_gain"] = sum(sum(r) for r in policy_lp([g.token_ids for g in sampled])) - old

    graphs.wake()
    graphs.sleep()
    res["cache_freed"] = graphs._cache is None and graphs._graph is None
    return res


def test_megatron_engine_bf16_one_gpu(hf_dir):
    assert torch.cuda.is_available(), "the gpu tests need a CUDA device"
    (res,) = run_distributed(_check_gpu, 1, hf_dir, start_method="spawn", timeout_s=600)
    assert res["graphs_used"] == (True, 1.0, None), res  # captured, not fallen back to eager
    assert all(res["greedy_ok"]) and all(res["eager_ok"]), res
    assert res["sampled_lp_err"] < 0.05, res
    assert res["graph_reused"] and res["same_seed_same_ids"], res
    assert res["stop_ok"], res
    assert res["refit_lp_err"] < 0.05, res
    assert res["lp_gain"] > 1.0, res
    assert res["cache_freed"], res
