"""GRPO steps on a real MegatronPolicy (2 gloo ranks, DP=2): what the loss options do to the update.

Each case runs ``policy.train_step`` with the project's GRPO loss (``grpo.make_loss_fn``) on the same
batch and reads the summed gradient megatron applied (``main_grad``, clipping off, lr 0 so that the
weights never move and every case starts from the same point). Old logprobs are the policy's own,
so every ratio is 1 and the policy-gradient term is -A * w per token. The expected relations are
exact, worked out by hand:

* sequence-level denominator: with one of the 4 rows holding no loss token, the gradient is 3/4 of
  the one that divides by the 3 non-empty rows only;
* KL with the input clamp firing on every token (ref - lp > 20): no gradient from the KL term at
  all (the update equals the KL-off update), loss + 10 (the saturated estimate, weights sum to 1);
  an unclamped reference does change the update;
* truncated importance sampling: pi_old / pi_gen = 0.5 everywhere halves the gradient; a ratio of
  4 truncated at C = 2 doubles it (and the metrics say every token was truncated).

Then a policy that trains (lr > 0) with the KL penalty against its kept reference: the reference
logprobs stay those of the initial weights, and the trained weights are restored exactly after
each reference pass.
"""

from __future__ import annotations

import math

import pytest
import torch
from dist_utils import run_distributed

VOCAB = 96
SEQ = 10


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from megatron_grpo.models.tiny import save_tiny_qwen3

    return save_tiny_qwen3(str(tmp_path_factory.mktemp("tiny_qwen3_grpo_step")), VOCAB, seed=11)


def _grads(policy) -> torch.Tensor:
    return torch.cat([p.main_grad.detach().flatten().clone() for p in policy.ddp.module.parameters()])


def _grpo_steps(hf_dir: str) -> dict:
    from megatron_grpo import grpo
    from megatron_grpo.config import LossConfig, OptimizerConfig, PolicyConfig
    from megatron_grpo.distributed import init_distributed
    from megatron_grpo.policy import MegatronPolicy

    layout = init_distributed(tp=1)
    cfg = PolicyConfig(precision="float32", train_micro_batch_size=1, logprob_batch_size=2,
                       max_total_sequence_length=SEQ,
                       optimizer=OptimizerConfig(lr=0.0, min_lr=0.0, weight_decay=0.0, clip_grad=1e9,
                                                 use_distributed_optimizer=False))
    policy = MegatronPolicy(cfg, layout, hf_dir, temperature=0.7)
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([SEQ, 6, 8, 4])
    ids = torch.randint(2, VOCAB, (4, SEQ), generator=g)
    mask = torch.zeros(4, SEQ)
    for i, n in enumerate(lengths.tolist()):
        mask[i, 3:n] = 1.0  # tokens 3.. are "generated"
    mask[3] = 0.0  # row 3: an episode without a trainable token
    old = policy.logprobs(ids, lengths)
    base = {"input_ids": ids, "lengths": lengths, "old_logprobs": old,
            "advantages": torch.tensor([1.0, -0.5, 2.0, 1.5])}

    def step(loss_cfg: LossConfig, weights: torch.Tensor, **extra) -> tuple[torch.Tensor, dict]:
        metrics = policy.train_step(dict(base, loss_weights=weights, **extra), grpo.make_loss_fn(loss_cfg))
        return _grads(policy), metrics

    out: dict = {}
    plain = LossConfig()
    # sequence-level denominator: every row counts (B = 4), vs only the non-empty ones (3)
    seq_w = grpo.loss_token_weights(mask, token_level=False)
    lengths_in_mask = mask.sum(1, keepdim=True).clamp(min=1)
    out["seq_weights_by_hand"] = float((seq_w - mask / (lengths_in_mask * 4)).abs().max())
    out["seq"], _ = step(LossConfig(token_level_loss=False), seq_w)
    out["seq_nonempty_only"], _ = step(LossConfig(token_level_loss=False), mask / (lengths_in_mask * 3))

    tok_w = grpo.loss_token_weights(mask, token_level=True)
    out["pg"], out["pg_metrics"] = step(plain, tok_w)
    # KL: every token clamped at the input (ref - lp = 25 > 20) vs an unclamped reference
    kl = LossConfig(reference_policy_kl_penalty=1.0)
    out["kl_clamped"], out["kl_clamped_metrics"] = step(kl, tok_w, ref_logprobs=old + 25.0)
    out["kl_live"], _ = step(kl, tok_w, ref_logprobs=old + 0.3)
    # truncated importance sampling
    is_cfg = LossConfig(use_importance_sampling_correction=True, truncated_importance_sampling_ratio=2.0)
    half, out["half_metrics"] = grpo.truncated_importance_weights(old, old + math.log(2.0), mask, 2.0)
    out["is_half"], _ = step(is_cfg, tok_w, is_weights=half)
    capped, out["capped_metrics"] = grpo.truncated_importance_weights(old, old - math.log(4.0), mask, 2.0)
    out["is_capped"], _ = step(is_cfg, tok_w, is_weights=capped)

    # the KL reference policy: the initial weights, scored by swapping them in and back out
    cfg.optimizer.lr = cfg.optimizer.min_lr = 0.05
    trained = MegatronPolicy(cfg, layout, hf_dir, temperature=0.7)
    trained.keep_reference()
    out["ref_before"] = trained.reference_logprobs(ids, lengths)
    out["lp_before"] = trained.logprobs(ids, lengths)
    for _ in range(2):  # KL on, against the kept reference
        ref = trained.reference_logprobs(ids, lengths)
        trained.train_step(dict(base, old_logprobs=trained.logprobs(ids, lengths), loss_weights=tok_w,
                                ref_logprobs=ref), grpo.make_loss_fn(kl))
    out["lp_after"] = trained.logprobs(ids, lengths)
    out["ref_after"] = trained.reference_logprobs(ids, lengths)
    out["lp_after_again"] = trained.logprobs(ids, lengths)  # the trained weights came back exactly
    return out


def test_loss_options_change_the_update_as_computed_by_hand(hf_dir):
    results = run_distributed(_grpo_steps, 2, hf_dir)
    for key in ("pg", "seq", "kl_clamped", "is_half"):  # DP ranks hold the same summed gradient
        assert torch.equal(results[0][key], results[1][key]), key
    r = results[0]
    pg = r["pg"]
    assert float(pg.abs().max()) > 1e-3  # a real gradient
    close = lambda a, b: float((a - b).abs().max()) <= 1e-6 * (1 + float(b.abs().max()))  # noqa: E731

    assert r["seq_weights_by_hand"] < 1e-9
    assert close(r["seq"], 0.75 * r["seq_nonempty_only"])

    assert close(r["kl_clamped"], pg)  # clamped KL: no gradient at all
    assert r["kl_clamped_metrics"]["kl_penalty"] == pytest.approx(10.0, rel=1e-5)
    assert r["kl_clamped_metrics"]["loss"] == pytest.approx(r["pg_metrics"]["loss"] + 10.0, rel=1e-5)
    assert float((r["kl_live"] - pg).abs().max()) > 1e-4  # an unclamped KL does move the update

    assert close(r["is_half"], 0.5 * pg)
    assert close(r["is_capped"], 2.0 * pg)
    assert r["half_metrics"]["is_weight_mean"] == pytest.approx(0.5, rel=1e-6)
    assert r["half_metrics"]["is_truncated_fraction"] == 0.0
    assert r["capped_metrics"]["is_weight_max"] == pytest.approx(4.0, rel=1e-5)
    assert r["capped_metrics"]["is_weight_mean"] == pytest.approx(2.0) and \
        r["capped_metrics"]["is_truncated_fraction"] == 1.0


    valid = mask_of(r["lp_before"])
    assert torch.equal(r["ref_before"], r["lp_before"])  # before training the reference is the policy
    assert float((r["lp_after"] - r["lp_before"])[valid].abs().max()) > 1e-3  # training moved the policy
    assert torch.equal(r["ref_after"], r["ref_before"])  # ... not the reference
    assert torch.equal(r["lp_after_again"], r["lp_after"])


def mask_of(logprobs: torch.Tensor) -> torch.Tensor:
    return logprobs != 0
