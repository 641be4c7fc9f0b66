"""Refit parity: after streaming a second model's weights into the hf engine, the engine's logprobs
equal that model's (gen_train_logprob_error ~ 0); without the refit they clearly differ."""

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from megatron_grpo.generation.base import SamplingParams
from megatron_grpo.generation.hf import HFEngine
from megatron_grpo.refit import logprob_mismatch, refit, state_dict_stream, token_mult_prob_error

PROMPTS = [[3, 14, 15, 92, 65], [35, 89], [79, 32, 38, 46, 26, 43, 38]]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models on a loaded 2-core machine: intra-op threads only contend (100x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_qwen3(seed: int, tied: bool = False) -> Qwen3ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen3Config(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         max_position_embeddings=256, tie_word_embeddings=tied)
    return Qwen3ForCausalLM(config).eval()


def policy_logprobs(model, sequences):
    """The policy convention: [B, S], lp[b, t] = log p(tok_t | tok_<t), 0 at t=0 and on padding."""
    width = max(len(s) for s in sequences)
    out = torch.zeros(len(sequences), width, dtype=torch.float64)
    with torch.no_grad():
        for b, seq in enumerate(sequences):
            ids = torch.tensor([seq])
            logits = model(input_ids=ids).logits.float()
            lp = torch.log_softmax(logits[0, :-1], -1).gather(-1, ids[0, 1:, None])[:, 0]
            out[b, 1 : len(seq)] = lp.double()
    return out


def rollout(engine, seed, temperature=1.0):
    gens = engine.generate(PROMPTS, SamplingParams(temperature=temperature, max_new_tokens=10, seed=seed))
    sequences = [p + g.token_ids for p, g in zip(PROMPTS, gens)]
    width = max(len(s) for s in sequences)
    engine_lp = torch.zeros(len(sequences), width, dtype=torch.float64)
    mask = torch.zeros(len(sequences), width)
    for b, (p, g) in enumerate(zip(PROMPTS, gens)):
        engine_lp[b, len(p) : len(p) + len(g.token_ids)] = torch.tensor(g.logprobs, dtype=torch.float64)
        mask[b, len(p) : len(p) + len(g.token_ids)] = 1
    return sequences, engine_lp, mask


def test_refit_makes_engine_match_the_policy():
    engine, policy = HFEngine(tiny_qwen3(0)), tiny_qwen3(1)
    sequences, engine_lp, mask = rollout(engine, seed=5)
    stale = logprob_mismatch(engine_lp, policy_logprobs(policy, sequences), mask)
    assert stale > 0.05

    stats = refit(state_dict_stream(policy, bucket_bytes=64 << 10), engine)
    n_params = len(dict(policy.named_parameters()))
    assert stats.tensors == n_params and stats.buckets > 1
    assert stats.bytes == sum(p.numel() * p.element_size() for p in policy.parameters())

    sequences, engine_lp, mask = rollout(engine, seed=6)
    fresh = logprob_mismatch(engine_lp, policy_logprobs(policy, sequences), mask)
    assert fresh < 1e-5 and stale > 1000 * fresh
    mult = token_mult_prob_error(engine_lp, policy_logprobs(policy, sequences), mask)
    assert mult == pytest.approx(1.0, abs=1e-5)


def test_refit_with_tied_embeddings_accepts_lm_head_or_not():
    engine, policy = HFEngine(tiny_qwen3(0, tied=True)), tiny_qwen3(2, tied=True)
    with_head = [[*bucket] for bucket in state_dict_stream(policy)]
    with_head[-1].append(("lm_head.weight", policy.lm_head.weight.detach()))
    refit(with_head, engine)
    sequences, engine_lp, mask = rollout(engine, seed=1)
    assert logprob_mismatch(engine_lp, policy_logprobs(policy, sequences), mask) < 1e-5


def test_refit_rejects_partial_unknown_or_misshaped_streams():
    engine, policy = HFEngine(tiny_qwen3(0)), tiny_qwen3(1)
    named = list(policy.named_parameters())
    with pytest.raises(ValueError, match="not in the stream"):
        refit([[(n, p.detach()) for n, p in named[1:]]], engine)
    with pytest.raises(KeyError, match="no parameter named"):
        refit([[("model.layers.9.mlp.up_proj.weight", named[0][1].detach())]], engine)
    with pytest.raises(ValueError, match="shape"):
        refit([[(named[0][0], named[0][1].detach()[:-1])]], engine)


def test_mismatch_metrics_by_hand():
    a = torch.tensor([[0.0, -1.0, -2.0], [0.0, -0.5, 0.0]])
    b = torch.tensor([[0.0, -1.5, -2.0], [0.0, -0.25, 9.0]])
    mask = torch.tensor([[0, 1, 1], [0, 1, 0]])
    assert logprob_mismatch(a, b, mask) == pytest.approx((0.5 + 0.0 + 0.25) / 3)
    expected = (torch.exp(torch.tensor(0.5)) + 1 + torch.exp(torch.tensor(0.25))) / 3
    assert token_mult_prob_error(a, b, mask) == pytest.approx(float(expected))
    assert logprob_mismatch(a, b, torch.zeros_like(mask)) == 0.0


def _policy_refit_tp2(policy_dir: str, engine_dir: str) -> dict:
    """On each of 2 gloo ranks: a TP=2 MegatronPolicy and an hf engine holding other weights; both at
    the training temperature 0.5 (the engine samples from and reports softmax(logits / 0.5), the
    policy divides its logits by 0.5)."""
    from megatron_grpo.config import PolicyConfig
    from megatron_grpo.distributed import init_distributed
    from megatron_grpo.policy import MegatronPolicy

    layout = init_distributed(tp=2)
    cfg = PolicyConfig(tensor_model_parallel_size=2, precision="float32", logprob_batch_size=4,
                       max_total_sequence_length=64)
    policy = MegatronPolicy(cfg, layout, policy_dir, temperature=0.5)
    engine = HFEngine(engine_dir)

    def mismatch(seed: int, policy_temperature: float = 0.5) -> float:
        sequences, engine_lp, mask = rollout(engine, seed=seed, temperature=0.5)
        width = engine_lp.shape[1]
        ids = torch.tensor([s + [1] * (width - len(s)) for s in sequences])
        lengths = torch.tensor([len(s) for s in sequences])
        policy.temperature = policy_temperature
        return logprob_mismatch(engine_lp, policy.logprobs(ids, lengths).double(), mask)

    before = mismatch(seed=11)
    stats = refit(policy.weight_stream(32 << 10), engine)
    out = {"before": before, "after": mismatch(seed=12), "buckets": stats.buckets,
           "after_vs_t1": mismatch(seed=12, policy_temperature=1.0)}

    # a GRPO step with the engine's logprobs as the old policy: the loss's logprobs are the same
    # tempered ones, so every ratio is 1 (at T=1 they would not be)
    from megatron_grpo import grpo
    from megatron_grpo.config import LossConfig

    sequences, engine_lp, mask = rollout(engine, seed=13, temperature=0.5)
    width = engine_lp.shape[1]
    batch = {"input_ids": torch.tensor([s + [1] * (width - len(s)) for s in sequences]),
             "lengths": torch.tensor([len(s) for s in sequences]), "old_logprobs": engine_lp.float(),
             "advantages": torch.tensor([1.0, -1.0, 0.5]),
             "loss_weights": grpo.loss_token_weights(mask, token_level=True)}
    for temperature in (0.5, 1.0):
        policy.temperature = temperature
        out[f"step_t{temperature}"] = policy.train_step(dict(batch), grpo.make_loss_fn(LossConfig()))
    out["expected_loss"] = float(-(batch["loss_weights"].sum(1) * batch["advantages"]).sum())
    return out


def test_megatron_policy_stream_refits_the_hf_engine(tmp_path):
    """The trainer's path: TP-sharded policy -> HF-named bucket stream -> engine; then engine and
    policy agree on the logprobs of what the engine samples."""
    from dist_utils import run_distributed

    from megatron_grpo.models.tiny import save_tiny_qwen3

    policy_dir = save_tiny_qwen3(str(tmp_path / "policy"), 128, seed=3)
    engine_dir = save_tiny_qwen3(str(tmp_path / "engine"), 128, seed=4)
    for result in run_distributed(_policy_refit_tp2, 2, policy_dir, engine_dir):
        assert result["before"] > 0.1, result
        assert result["after"] < 1e-4, result
        assert result["after_vs_t1"] > 0.1, result  # scoring at T=1 what T=0.5 sampled is clearly off
        tempered, t1 = result["step_t0.5"], result["step_t1.0"]
        assert tempered["ratio_mean"] == pytest.approx(1.0, abs=1e-4), tempered
        assert tempered["approx_kl"] == pytest.approx(0.0, abs=1e-6) and tempered["clip_fraction"] == 0.0
        assert tempered["loss"] == pytest.approx(result["expected_loss"], abs=1e-4)  # -sum(w * A) at ratio 1
        assert abs(t1["ratio_mean"] - 1.0) > 0.05 and t1["clip_fraction"] > 0.1, t1
        assert result["buckets"] > 1
