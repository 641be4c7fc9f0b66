"""GRPO math against values worked out by hand or with plain Python loops (never the code under test)."""

from __future__ import annotations

import math

import pytest
import torch

from megatron_grpo.config import LossConfig
from megatron_grpo.grpo import (
    clipped_pg_loss,
    compute_advantages,
    dynamic_sampling_keep,
    kl_estimate,
    loss_token_weights,
    make_loss_fn,
    steps_per_epoch,
    total_train_steps,
    truncated_importance_weights,
)

EPS = 1e-6


def loop_advantages(rewards: list[float], g: int, leave_one_out: bool, normalize: bool) -> list[float]:
    """Reference: the formulas of grpo_anchors.md §b written as plain loops."""
    out = []
    for start in range(0, len(rewards), g):
        group = rewards[start : start + g]
        for i, r in enumerate(group):
            pool = [x for j, x in enumerate(group) if j != i] if leave_one_out else list(group)
            if len(pool) < 2 and not leave_one_out:
                out.append(0.0)
                continue
            b = sum(pool) / len(pool)
            if len(pool) >= 2:
                s = math.sqrt(sum((x - b) ** 2 for x in pool) / (len(pool) - 1))
            else:
                s = 0.0
            a = r - b
            if normalize and s > 0:
                a = a / (s + EPS)
            out.append(a)
    return out


# ----------------------------------------------------------------------------- advantages


def test_leave_one_out_hand_values():
    # group [1, 0, 0, 0]: sample 0 sees others [0, 0, 0] -> b = 0, s = 0 -> A = 1 (no division);
    # samples 1..3 see [1, 0, 0] -> b = 1/3, s = sqrt(((2/3)^2 + 2 (1/3)^2) / 2) = sqrt(1/3).
    adv = compute_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), 4, leave_one_out=True, normalize=True)
    s = math.sqrt(1 / 3)
    expected = [1.0] + [(-1 / 3) / (s + EPS)] * 3
    assert adv.tolist() == pytest.approx(expected, abs=1e-6)
    raw = compute_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), 4, leave_one_out=True, normalize=False)
    assert raw.tolist() == pytest.approx([1.0, -1 / 3, -1 / 3, -1 / 3], abs=1e-6)


def test_plain_baseline_hand_values():
    # mean 0.25; Bessel std = sqrt((0.75^2 + 3 * 0.25^2) / 3) = 0.5
    adv = compute_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), 4, leave_one_out=False, normalize=True)
    assert adv.tolist() == pytest.approx([0.75 / 0.500001] + [-0.25 / 0.500001] * 3, abs=1e-6)


@pytest.mark.parametrize("leave_one_out", [True, False])
@pytest.mark.parametrize("normalize", [True, False])
def test_advantages_match_loops_on_mixed_groups(leave_one_out, normalize):
    g = 5
    gen = torch.Generator().manual_seed(0)
    rewards = torch.rand(4 * g, generator=gen).round(decimals=1)
    rewards[g : 2 * g] = 0.7  # one flat group
    got = compute_advantages(rewards, g, leave_one_out=leave_one_out, normalize=normalize)
    want = loop_advantages([float(x) for x in rewards.double()], g, leave_one_out, normalize)
    assert got.dtype == torch.float32
    assert got.tolist() == pytest.approx(want, abs=1e-5)


@pytest.mark.parametrize("leave_one_out", [True, False])
def test_equal_rewards_give_zero_advantage_without_division(leave_one_out):
    # 0.1 is not exact in binary: a naive E[r^2] - E[r]^2 leaves a tiny std and sharpens noise.
    for value in (0.0, 1.0, 0.1):
        adv = compute_advantages(torch.full((8,), value), 8, leave_one_out=leave_one_out, normalize=True)
        assert torch.equal(adv, torch.zeros(8))


def test_group_of_two_leave_one_out_is_not_normalized():
    # each sample's baseline is the other reward; the std of one value is undefined -> no division
    adv = compute_advantages(torch.tensor([1.0, 0.0, 0.5, 0.5]), 2, leave_one_out=True, normalize=True)
    assert adv.tolist() == pytest.approx([1.0, -1.0, 0.0, 0.0])


def test_group_of_one():
    with pytest.raises(ValueError, match="leave-one-out.*at least 2"):
        compute_advantages(torch.tensor([1.0, 0.0]), 1, leave_one_out=True, normalize=True)
    adv = compute_advantages(torch.tensor([1.0, 0.0]), 1, leave_one_out=False, normalize=True)
    assert adv.tolist() == [0.0, 0.0]


def test_bad_batch_shape():
    with pytest.raises(ValueError, match="groups of 4"):
        compute_advantages(torch.zeros(6), 4, leave_one_out=True, normalize=True)


def test_dynamic_sampling_keep():
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    assert dynamic_sampling_keep(rewards, 3).tolist() == [False, True, False]


# ----------------------------------------------------------------------------- weights


def test_token_and_sequence_weights():
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]])
    tok = loss_token_weights(mask, token_level=True)
    assert tok.tolist() == [[0.25, 0.25, 0.25, 0], [0, 0.25, 0, 0], [0, 0, 0, 0]]
    # every row is a sequence, the empty third one too (it adds 0): 1/(3*3), 1/(1*3)
    seq = loss_token_weights(mask, token_level=False)
    want = torch.tensor([[1 / 9, 1 / 9, 1 / 9, 0], [0, 1 / 3, 0, 0], [0, 0, 0, 0]])
    assert torch.allclose(seq, want)
    assert torch.equal(loss_token_weights(torch.zeros(2, 3), token_level=True), torch.zeros(2, 3))
    assert torch.equal(loss_token_weights(torch.zeros(2, 3), token_level=False), torch.zeros(2, 3))


# ----------------------------------------------------------------------------- clipped PG loss


def one_token(ratio: float, adv: float, **kw):
    lp = torch.tensor([[math.log(ratio)]], requires_grad=True)
    loss, metrics = clipped_pg_loss(lp, torch.zeros(1, 1), torch.tensor([adv]), torch.ones(1, 1), **kw)
    loss.backward()
    return loss.item(), lp.grad.item(), metrics


CLIP = dict(ratio_clip_min=0.2, ratio_clip_max=0.28)


def test_positive_advantage_clipped_at_upper_bound():
    loss, grad, m = one_token(1.5, 1.0, **CLIP)  # max(-1.5, -1.28)
    assert loss == pytest.approx(-1.28)
    assert grad == 0.0
    assert m["clip_fraction"] == 1.0
    assert m["ratio_mean"] == pytest.approx(1.5)


def test_positive_advantage_below_lower_bound_is_unclipped():
    loss, grad, m = one_token(0.5, 1.0, **CLIP)  # max(-0.5, -0.8) = -0.5, gradient of -A*rho: -rho
    assert loss == pytest.approx(-0.5)
    assert grad == pytest.approx(-0.5)


def test_negative_advantage_clipped_at_lower_bound():
    loss, grad, m = one_token(0.5, -1.0, **CLIP)  # max(0.5, 0.8)
    assert loss == pytest.approx(0.8)
    assert grad == 0.0


def test_inside_the_clip_range():
    loss, grad, m = one_token(1.1, -2.0, **CLIP)
    assert loss == pytest.approx(2.2)
    assert grad == pytest.approx(2.2)  # d(-A exp(lp))/dlp = -A rho
    assert m["clip_fraction"] == 0.0
    # approx_kl = k3 with log r = old - new = -log 1.1
    assert m["approx_kl"] == pytest.approx(1 / 1.1 - 1 + math.log(1.1), rel=1e-4)  # float32


def test_dual_clip():
    loss, grad, m = one_token(5.0, -1.0, ratio_clip_c=3.0, **CLIP)  # max(5, 1.28) = 5 -> min(5, 3)
    assert loss == pytest.approx(3.0)
    assert grad == 0.0
    assert m["dual_clip_fraction"] == 1.0
    loss, _, m = one_token(2.0, -1.0, ratio_clip_c=3.0, **CLIP)  # 2 < 3: dual clip inactive
    assert loss == pytest.approx(2.0)
    assert m["dual_clip_fraction"] == 0.0
    loss, _, _ = one_token(5.0, 1.0, ratio_clip_c=3.0, **CLIP)  # A > 0: dual clip does not apply
    assert loss == pytest.approx(-1.28)
    with pytest.raises(ValueError, match="ratio_clip_c"):
        one_token(1.0, 1.0, ratio_clip_c=1.0, **CLIP)


def random_batch(b=6, s=7, seed=0):
    gen = torch.Generator().manual_seed(seed)
    lengths = [1, 7, 3, 5, 2, 6][:b]
    mask = torch.zeros(b, s)
    for i, n in enumerate(lengths):
        mask[i, s - n :] = 1
    old = -torch.rand(b, s, generator=gen) * 3
    lp = old + (torch.rand(b, s, generator=gen) - 0.5) * 0.8  # ratios in about [0.67, 1.5]
    ref = old + (torch.rand(b, s, generator=gen) - 0.5)
    adv = torch.randn(b, generator=gen)
    return lp, old, ref, adv, mask


def loop_loss(lp, old, adv, mask, token_level, lo, hi, c=None, ref=None, beta=0.0):
    per_seq, total_tokens = [], 0
    total = 0.0
    for i in range(lp.shape[0]):
        terms = []
        for t in range(lp.shape[1]):
            if mask[i, t] == 0:
                continue
            a = float(adv[i])
            rho = math.exp(float(lp[i, t]) - float(old[i, t]))
            rho_c = min(max(rho, 1 - lo), 1 + hi)
            term = max(-a * rho, -a * rho_c)
            if c is not None and a < 0:
                term = min(term, -c * a)
            if beta:
                logr = float(ref[i, t]) - float(lp[i, t])
                term += beta * (math.exp(logr) - 1 - logr)
            terms.append(term)
        total_tokens += len(terms)
        total += sum(terms)
        if terms:
            per_seq.append(sum(terms) / len(terms))
    return total / total_tokens if token_level else sum(per_seq) / lp.shape[0]  # every row counts


@pytest.mark.parametrize("token_level", [True, False])
@pytest.mark.parametrize("dual", [None, 1.2])
def test_loss_matches_loop_token_and_sequence_level(token_level, dual):
    lp, old, ref, adv, mask = random_batch()
    w = loss_token_weights(mask, token_level=token_level)
    loss, _ = clipped_pg_loss(lp, old, adv, w, ratio_clip_min=0.1, ratio_clip_max=0.15, ratio_clip_c=dual)
    want = loop_loss(lp, old, adv, mask, token_level, 0.1, 0.15, dual)
    assert loss.item() == pytest.approx(want, rel=1e-5)


def test_token_and_sequence_level_differ_when_lengths_differ():
    lp, old, _, adv, mask = random_batch()
    tok, _ = clipped_pg_loss(lp, old, adv, loss_token_weights(mask, token_level=True), **CLIP)
    seq, _ = clipped_pg_loss(lp, old, adv, loss_token_weights(mask, token_level=False), **CLIP)
    assert abs(tok.item() - seq.item()) > 1e-3


def test_k3_kl_value_and_gradient():
    lp, old, ref, adv, mask = random_batch()
    w = loss_token_weights(mask, token_level=True)
    beta = 0.05
    lp = lp.clone().requires_grad_(True)
    loss, m = clipped_pg_loss(lp, old, adv, w, **CLIP, ref_logprobs=ref, kl_penalty=beta)
    want = loop_loss(lp.detach(), old, adv, mask, True, 0.2, 0.28, ref=ref, beta=beta)
    assert loss.item() == pytest.approx(want, rel=1e-5)
    assert m["kl_penalty"] > 0
    loss.backward()
    # gradient of the KL term alone: beta * w * (k3 + dk3/dlp), dk3/dlp = 1 - exp(ref - lp)
    lp2 = lp.detach().clone().requires_grad_(True)
    pg, _ = clipped_pg_loss(lp2, old, adv, w, **CLIP)
    pg.backward()
    logr = ref - lp.detach()
    k3 = logr.exp() - 1 - logr
    want_kl_grad = beta * w * (k3 + 1 - logr.exp())
    assert torch.allclose(lp.grad - lp2.grad, want_kl_grad, atol=1e-6)


# Three tokens (beta = 1, weight 1 each, advantage 0 so only the KL term counts):
#   A: lp=-1,  ref=-2 -> log r = -1: no clamp.
#   B: lp=-30, ref=-1 -> log r = 29: the input clamp (20) fires -> the estimate saturates, no gradient.
#   C: lp=-5,  ref=-1 -> log r = 4: k3 = e^4 - 5 = 49.6 > 10, the output clamp fires -> no gradient.
# d/dlp of exp(lp - sg(lp)) * k = k + dk/dlp, with dk1/dlp = 1, dk2/dlp = -log r, dk3/dlp = 1 - e^{log r}.
KL_LP = [-1.0, -30.0, -5.0]
KL_REF = [-2.0, -1.0, -1.0]
KL_HAND = {  # kl_type: (values, gradients)
    "k1": ([1.0, -10.0, -4.0], [2.0, 0.0, -3.0]),
    "k2": ([0.5, 10.0, 8.0], [1.5, 0.0, 4.0]),
    "k3": ([math.exp(-1), 10.0, 10.0], [1.0, 0.0, 0.0]),
}


@pytest.mark.parametrize("kl_type", ["k1", "k2", "k3"])
def test_kl_clamps_hand_values_and_gradients(kl_type):
    values, grads = KL_HAND[kl_type]
    lp = torch.tensor([KL_LP], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([KL_REF], dtype=torch.float64)
    loss, metrics = clipped_pg_loss(lp, lp.detach(), torch.zeros(1), torch.ones(1, 3, dtype=torch.float64),
                                    **CLIP, ref_logprobs=ref, kl_penalty=1.0, kl_type=kl_type)
    loss.backward()
    assert loss.item() == pytest.approx(sum(values), abs=1e-9)
    assert metrics["kl_penalty"] == pytest.approx(sum(values), abs=1e-9)
    assert lp.grad[0].tolist() == pytest.approx(grads, abs=1e-9)
    # kl_estimate alone: the same values; without weights the clamps still bound the value
    per_token = kl_estimate(lp.detach(), ref, kl_type)
    assert per_token[0].tolist() == pytest.approx(values, abs=1e-9)


def test_kl_weight_is_detached_where_the_input_clamp_fires_and_clamped_after_weighting():
    lp = torch.tensor([-30.0, -1.0], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([-1.0, -2.0], dtype=torch.float64)
    weights = torch.tensor([3.0, 3.0], dtype=torch.float64, requires_grad=True)
    kl = kl_estimate(lp, ref, "k1", weights=weights)  # 3 * [-20, 1] -> clamp -> [-10, 3]
    assert kl.tolist() == pytest.approx([-10.0, 3.0])
    kl.sum().backward()
    assert weights.grad.tolist() == pytest.approx([0.0, 1.0])  # token 0: input clamp -> weight detached
    assert lp.grad.tolist() == pytest.approx([0.0, 3.0])  # token 1: w * dk1/dlp = 3


def test_truncated_importance_weights_by_hand():
    # ratios pi_old / pi_gen: 2, 0.25, 3, (masked), and a -inf engine logprob (ratio inf -> weight 0)
    old = torch.tensor([[-1.0, -2.0, -0.5, 9.0, -1.0]])
    gen = old - torch.tensor([[math.log(2), math.log(0.25), math.log(3), 0.0, 0.0]])
    gen[0, 4] = float("-inf")
    mask = torch.tensor([[1, 1, 1, 0, 1]])
    w, m = truncated_importance_weights(old, gen, mask, cap=1.5)
    assert w[0].tolist() == pytest.approx([1.5, 0.25, 1.5, 0.0, 0.0], abs=1e-6)
    assert m["is_weight_mean"] == pytest.approx((1.5 + 0.25 + 1.5 + 0.0) / 4)
    assert m["is_weight_max"] == pytest.approx(3.0)  # before truncation, over finite ratios
    assert m["is_truncated_fraction"] == pytest.approx(2 / 4)
    w, m = truncated_importance_weights(old, gen, mask, cap=None)
    assert w[0, :3].tolist() == pytest.approx([2.0, 0.25, 3.0], abs=1e-6) and m["is_truncated_fraction"] == 0.0
    _, empty = truncated_importance_weights(old, gen, torch.zeros_like(mask), cap=2.0)
    assert empty == {"is_weight_mean": 0.0, "is_weight_max": 0.0, "is_truncated_fraction": 0.0}
    with pytest.raises(ValueError, match="truncated_importance_sampling_ratio"):
        truncated_importance_weights(old, gen, mask, cap=0.0)


def test_importance_weights_scale_the_policy_gradient_term_only():
    # one token, rho = 1, A = 1: l = -A * rho * v with v = 0.5 -> loss -0.5, d/dlp = -0.5
    lp = torch.zeros(1, 1, requires_grad=True)
    loss, _ = clipped_pg_loss(lp, torch.zeros(1, 1), torch.tensor([1.0]), torch.ones(1, 1), **CLIP,
                              is_weights=torch.tensor([[0.5]]))
    loss.backward()
    assert loss.item() == pytest.approx(-0.5) and lp.grad.item() == pytest.approx(-0.5)
    # with KL on, the KL term is not scaled: lp=-1, ref=-2 (k3 = e^-1, gradient 1)
    lp = torch.tensor([[-1.0]], requires_grad=True)
    loss, m = clipped_pg_loss(lp, lp.detach(), torch.tensor([1.0]), torch.ones(1, 1), **CLIP,
                              ref_logprobs=torch.tensor([[-2.0]]), kl_penalty=1.0, is_weights=torch.tensor([[0.5]]))
    loss.backward()
    assert m["pg_loss"] == pytest.approx(-0.5) and m["kl_penalty"] == pytest.approx(math.exp(-1), rel=1e-6)
    assert lp.grad.item() == pytest.approx(-0.5 + 1.0, rel=1e-6)
    cfg = LossConfig(use_importance_sampling_correction=True)
    with pytest.raises(KeyError, match="is_weights"):
        make_loss_fn(cfg)(lp, {"old_logprobs": lp.detach(), "advantages": torch.ones(1),
                               "loss_weights": torch.ones(1, 1)})


def test_masked_positions_with_garbage_are_ignored():
    lp, old, _, adv, mask = random_batch()
    w = loss_token_weights(mask, token_level=True)
    clean, _ = clipped_pg_loss(lp, old, adv, w, **CLIP)
    dirty = lp.clone()
    dirty[mask == 0] = float("nan")
    dirty[0, 0] = float("-inf")
    dirty.requires_grad_(True)
    loss, metrics = clipped_pg_loss(dirty, old, adv, w, **CLIP)
    loss.backward()
    assert loss.item() == pytest.approx(clean.item())
    assert torch.isfinite(dirty.grad).all()
    assert all(math.isfinite(v) for v in metrics.values())


@pytest.mark.parametrize("token_level", [True, False])
def test_micro_batch_split_invariance(token_level):
    lp, old, ref, adv, mask = random_batch()
    cfg = LossConfig(ratio_clip_min=0.2, ratio_clip_max=0.28, ratio_clip_c=3.0,
                     reference_policy_kl_penalty=0.01, token_level_loss=token_level)
    loss_fn = make_loss_fn(cfg)
    w = loss_token_weights(mask, token_level=token_level)
    batch = {"old_logprobs": old, "advantages": adv, "loss_weights": w, "ref_logprobs": ref}

    def run(splits):
        p = lp.clone().requires_grad_(True)
        total, sums, start = 0.0, {}, 0
        for n in splits:
            rows = slice(start, start + n)
            loss, metrics = loss_fn(p[rows], {k: v[rows] for k, v in batch.items()})
            loss.backward()
            total += loss.item()
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v
            start += n
        return total, sums, p.grad

    whole = run([6])
    for splits in ([1] * 6, [2, 4], [3, 1, 2]):
        part = run(splits)
        assert part[0] == pytest.approx(whole[0], rel=1e-5)
        assert part[1] == pytest.approx(whole[1], rel=1e-5, abs=1e-7)
        assert torch.allclose(part[2], whole[2], atol=1e-7)


def test_advantages_per_token_and_bad_shape():
    lp, old, _, adv, mask = random_batch()
    w = loss_token_weights(mask, token_level=True)
    per_seq, _ = clipped_pg_loss(lp, old, adv, w, **CLIP)
    per_tok, _ = clipped_pg_loss(lp, old, adv[:, None].expand_as(lp), w, **CLIP)
    assert per_tok.item() == pytest.approx(per_seq.item())
    with pytest.raises(ValueError, match="advantages must be"):
        clipped_pg_loss(lp, old, adv[:3], w, **CLIP)


def test_make_loss_fn_errors():
    cfg = LossConfig(reference_policy_kl_penalty=0.1)
    lp, old, _, adv, mask = random_batch()
    with pytest.raises(KeyError, match="ref_logprobs"):
        make_loss_fn(cfg)(lp, {"old_logprobs": old, "advantages": adv, "loss_weights": mask})
    with pytest.raises(ValueError, match="kl_type"):
        make_loss_fn(LossConfig(reference_policy_kl_type="k4"))


def test_step_math():
    assert steps_per_epoch(1129, 32) == 36
    assert steps_per_epoch(1128, 8) == 141
    assert total_train_steps(1129, 32, max_num_epochs=1, max_num_steps=1000) == 36
    assert total_train_steps(1129, 4, max_num_epochs=1, max_num_steps=5) == 5
    assert total_train_steps(1129, 64, max_num_epochs=3, max_num_steps=10**6) == 54
