"""GRPO math: group advantages, loss weights, the clipped policy-gradient loss, dynamic sampling.

Pure tensor math: no I/O, nothing about models or parallelism. The formulas follow NeMo-RL's
``GRPOAdvantageEstimator`` and ``ClippedPGLossFn``: the same values and the same gradients, KL
clamps, sequence-level denominator and truncated importance-sampling correction included.

Batch layout: samples are ordered group-major. With ``G = group_size`` generations per prompt,
group ``g`` is rows ``g*G .. g*G+G-1`` of every per-sample tensor.

Global reduction: the loss over a global batch is ``sum_{i,t} w[i,t] * l[i,t]`` where the weights
``w`` (from :func:`loss_token_weights`) are computed once over the GLOBAL batch. Any micro-batch's
contribution is then the same sum restricted to its rows, and the contributions of all micro-batches
(and of all data-parallel ranks) add up to exactly the global loss, whatever the split.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

# NeMo-RL's constants: epsilon added to the std, and the clamps around the KL estimate.
ADVANTAGE_EPS = 1e-6
KL_INPUT_CLAMP = 20.0
KL_OUTPUT_CLAMP = 10.0

# Keys of the metrics dict returned by truncated_importance_weights.
IS_METRICS = ("is_weight_mean", "is_weight_max", "is_truncated_fraction")

# Keys of the metrics dict returned by clipped_pg_loss, in order.
LOSS_METRICS = (
    "loss", "pg_loss", "kl_penalty", "clip_fraction", "dual_clip_fraction", "ratio_mean", "approx_kl"
)

LossFn = Callable[[Tensor, dict[str, Tensor]], tuple[Tensor, dict[str, float]]]


# ----------------------------------------------------------------------------- advantages


def _grouped(rewards: Tensor, group_size: int) -> Tensor:
    """[N] -> [N // G, G] float64 view, with a clear error on a bad shape."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [N], got shape {tuple(rewards.shape)}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if rewards.numel() % group_size != 0:
        raise ValueError(
            f"{rewards.numel()} rewards do not split into groups of {group_size} "
            "(samples must be ordered group-major, G per prompt)"
        )
    return rewards.detach().to(torch.float64).reshape(-1, group_size)


def group_baseline_and_std(
    rewards: Tensor, group_size: int, *, leave_one_out: bool
) -> tuple[Tensor, Tensor]:
    """Per-sample baseline and std over its group, both [N] float64.

    leave_one_out: b_i = mean of the other G-1 rewards, s_i = their Bessel-corrected std
    (divisor G-2; 0 when G = 2, where it is undefined). Otherwise b = group mean and s = the
    Bessel-corrected group std (divisor G-1). A group of one sample (plain baseline) gets
    b_i = r_i and s_i = 0, so its advantage is 0. The std is computed from centred squares, so a
    group of equal rewards has a std of exactly 0.
    """
    r = _grouped(rewards, group_size)  # [P, G]
    num_groups, g = r.shape
    if leave_one_out:
        if g < 2:
            raise ValueError(
                "leave-one-out baseline needs at least 2 generations per prompt "
                f"(grpo.num_generations_per_prompt = {g}); set grpo.use_leave_one_out_baseline=false"
            )
        others = ~torch.eye(g, dtype=torch.bool)  # others[i, j]: j counts for sample i
        baseline = (r.sum(dim=1, keepdim=True) - r) / (g - 1)  # [P, G]
        if g > 2:
            dev = r.unsqueeze(1) - baseline.unsqueeze(2)  # [P, i, j] = r_j - b_i
            sq = (dev.square() * others).sum(dim=2)
            std = (sq / (g - 2)).sqrt()
        else:
            std = torch.zeros_like(r)
    elif g == 1:
        baseline, std = r.clone(), torch.zeros_like(r)
    else:
        mean = r.mean(dim=1, keepdim=True)
        std = ((r - mean).square().sum(dim=1, keepdim=True) / (g - 1)).sqrt().expand(num_groups, g)
        baseline = mean.expand(num_groups, g)
    return baseline.reshape(-1), std.reshape(-1)


def compute_advantages(
    rewards: Tensor,
    group_size: int,
    *,
    leave_one_out: bool,
    normalize: bool,
    eps: float = ADVANTAGE_EPS,
) -> Tensor:
    """GRPO advantages [N] (dtype float32 unless rewards are float64).

    A_i = r_i - b_i; with ``normalize``, A_i /= (s_i + eps) only where s_i > 0 ("don't sharpen the
    groups with no variation"). See :func:`group_baseline_and_std` for b and s.
    """
    baseline, std = group_baseline_and_std(rewards, group_size, leave_one_out=leave_one_out)
    r = rewards.detach().to(torch.float64)
    adv = r - baseline
    if normalize:
        adv = torch.where(std > 0, adv / (std + eps), adv)
    out_dtype = rewards.dtype if rewards.dtype == torch.float64 else torch.float32
    return adv.to(out_dtype)


def dynamic_sampling_keep(rewards: Tensor, group_size: int) -> Tensor:
    """DAPO dynamic sampling: bool [N // G], True for groups whose rewards are not all equal.

    Groups with zero reward variance give zero advantage everywhere and no learning signal.
    """
    r = _grouped(rewards, group_size)
    return r.max(dim=1).values > r.min(dim=1).values


# ----------------------------------------------------------------------------- loss reduction


def loss_token_weights(loss_mask: Tensor, *, token_level: bool) -> Tensor:
    """Per-token weights [B, S] (float32) over the GLOBAL batch; 0 where ``loss_mask`` is 0.

    token_level: w = mask / (total masked tokens)   -> sum(w * l) is the token mean.
    else:        w = mask / (|o_i| * B)             -> the mean of per-sequence means over ALL B rows.
    Every row counts as a sequence, also one without loss tokens (it contributes 0), as the
    reference divides by the number of samples: a batch whose other episodes have no trainable
    token does not up-weight the rest. An all-zero mask gives all-zero weights (loss 0) instead of a
    division by zero.
    """
    if loss_mask.dim() != 2:
        raise ValueError(f"loss_mask must be [B, S], got shape {tuple(loss_mask.shape)}")
    mask = loss_mask.to(torch.float32)
    if token_level:
        total = mask.sum()
        return mask / total if total > 0 else torch.zeros_like(mask)
    lengths = mask.sum(dim=1, keepdim=True)  # [B, 1]
    return mask / (lengths.clamp(min=1.0) * mask.shape[0])


# ----------------------------------------------------------------------------- policy loss


def kl_estimate(
    logprobs: Tensor, ref_logprobs: Tensor, kl_type: str = "k3", weights: Tensor | None = None
) -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) from sampled-token logprobs (Schulman's k1/k2/k3).

    log r = clamp(ref - logprobs, +-20); k1 = -log r, k2 = (log r)^2 / 2, k3 = r - 1 - log r. Optional
    per-token ``weights`` multiply the estimate; the product is then clamped to +-10. Where the input
    clamp fires, the weight is detached, so a clamped token has no gradient at all (neither through
    the estimate nor through the weight), as where the output clamp fires.
    """
    raw = ref_logprobs - logprobs
    logr = raw.clamp(-KL_INPUT_CLAMP, KL_INPUT_CLAMP)
    if weights is not None:
        weights = torch.where(raw == logr, weights, weights.detach())
    if kl_type == "k1":
        kl = -logr
    elif kl_type == "k2":
        kl = logr.square() / 2
    elif kl_type == "k3":
        kl = logr.exp() - 1 - logr
    else:
        raise ValueError(f"loss_fn.reference_policy_kl_type must be k1, k2 or k3, got {kl_type!r}")
    if weights is not None:
        kl = weights * kl
    return kl.clamp(-KL_OUTPUT_CLAMP, KL_OUTPUT_CLAMP)


def truncated_importance_weights(
    old_logprobs: Tensor, gen_logprobs: Tensor, mask: Tensor, cap: float | None
) -> tuple[Tensor, dict[str, float]]:
    """Off-policy correction for generation/training numerics: w = min(pi_old / pi_gen, cap) per token.

    old_logprobs (the trained policy's, before the update), gen_logprobs (the engine's, of the same
    sampled tokens) and mask: [B, S]. Returns the weights [B, S] (float32, no gradient: they depend
    on neither the current policy nor its parameters; 0 where ``mask`` is 0 or the ratio is not
    finite) and their metrics over the masked tokens: ``is_weight_mean`` (after truncation),
    ``is_weight_max`` (before truncation) and ``is_truncated_fraction`` (ratio > cap). ``cap=None``
    truncates nothing.
    """
    if old_logprobs.shape != gen_logprobs.shape or old_logprobs.shape != mask.shape:
        raise ValueError(f"old_logprobs {tuple(old_logprobs.shape)}, gen_logprobs {tuple(gen_logprobs.shape)} "
                         f"and mask {tuple(mask.shape)} must have the same [B, S] shape")
    if cap is not None and cap <= 0:
        raise ValueError(f"loss_fn.truncated_importance_sampling_ratio must be > 0, got {cap}")
    active = mask != 0
    diff = torch.where(active, old_logprobs.double() - gen_logprobs.double(), 0.0)
    ratio = torch.nan_to_num(diff.exp(), nan=0.0, posinf=0.0, neginf=0.0)
    ratio = torch.where(active, ratio, 0.0)
    weights = ratio if cap is None else ratio.clamp(max=cap)
    n = int(active.sum())
    metrics = dict.fromkeys(IS_METRICS, 0.0)
    if n:
        metrics = {
            "is_weight_mean": float(weights[active].mean()),
            "is_weight_max": float(ratio[active].max()),
            "is_truncated_fraction": 0.0 if cap is None else float((ratio[active] > cap).sum()) / n,
        }
    return weights.float(), metrics


def clipped_pg_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    weights: Tensor,
    *,
    ratio_clip_min: float,
    ratio_clip_max: float,
    ratio_clip_c: float | None = None,
    ref_logprobs: Tensor | None = None,
    kl_penalty: float = 0.0,
    kl_type: str = "k3",
    is_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """One micro-batch's contribution ``sum(weights * l_t)`` to the global clipped-PG loss.

    Shapes: logprobs, old_logprobs, weights, ref_logprobs, is_weights: [b, S] (logprob of each sampled
    token); advantages: [b] (one per sequence) or [b, S]. Per token, with rho = exp(logprobs - old_logprobs):
        l_t = max(-A * rho, -A * clip(rho, 1 - ratio_clip_min, 1 + ratio_clip_max))
        dual clip (ratio_clip_c = c, A < 0): l_t = min(l_t, -c * A)
        importance correction (is_weights = v, from :func:`truncated_importance_weights`): l_t *= v_t
        KL (kl_penalty = beta > 0): l_t += beta * k(logprobs, ref, weights=exp(logprobs - sg(logprobs)))
    The exp(logprobs - sg(logprobs)) factor is 1 in value and turns the KL term into its
    score-function gradient; with the clamps of :func:`kl_estimate`, a token whose KL estimate is
    clamped gets no gradient (as NeMo-RL does). The importance weights apply to the policy-gradient
    term only. Positions with weight 0 are ignored, even if their logprobs are inf or nan.

    Metrics (python floats) are weighted the same way, so summed over micro-batches they are the
    global weighted means: loss, pg_loss, kl_penalty, clip_fraction (rho outside the clip range),
    dual_clip_fraction, ratio_mean, approx_kl (k3 of old vs current, a step-size diagnostic).
    """
    if logprobs.shape != old_logprobs.shape or logprobs.shape != weights.shape:
        raise ValueError(
            f"logprobs {tuple(logprobs.shape)}, old_logprobs {tuple(old_logprobs.shape)} and "
            f"weights {tuple(weights.shape)} must have the same [b, S] shape"
        )
    if ratio_clip_c is not None and ratio_clip_c <= 1.0:
        raise ValueError(f"loss_fn.ratio_clip_c must be > 1 (dual clip), got {ratio_clip_c}")
    if advantages.shape not in (logprobs.shape[:1], logprobs.shape):
        raise ValueError(
            f"advantages must be [b] or [b, S] = {tuple(logprobs.shape)}, got {tuple(advantages.shape)}"
        )
    active = weights != 0
    adv = advantages.to(logprobs.dtype)
    if adv.dim() == 1:
        adv = adv.unsqueeze(1)
    adv = adv.expand_as(logprobs)
    w = weights.to(logprobs.dtype)

    log_ratio = torch.where(active, logprobs - old_logprobs.to(logprobs.dtype), 0.0)
    ratio = log_ratio.exp()
    ratio_clamped = ratio.clamp(1.0 - ratio_clip_min, 1.0 + ratio_clip_max)
    per_token = torch.maximum(-adv * ratio, -adv * ratio_clamped)
    dual_clipped = torch.zeros_like(active)
    if ratio_clip_c is not None:
        bound = -adv * ratio_clip_c
        dual_clipped = (adv < 0) & (per_token > bound) & active
        per_token = torch.where(adv < 0, torch.minimum(per_token, bound), per_token)
    if is_weights is not None:
        if is_weights.shape != logprobs.shape:
            raise ValueError(f"is_weights must be [b, S] = {tuple(logprobs.shape)}, got {tuple(is_weights.shape)}")
        per_token = per_token * torch.where(active, is_weights.to(logprobs.dtype), 0.0).detach()
    pg_loss = (w * per_token).sum()

    kl_loss = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    if kl_penalty != 0.0:
        if ref_logprobs is None:
            raise ValueError("loss_fn.reference_policy_kl_penalty != 0 needs ref_logprobs in the batch")
        safe_lp = torch.where(active, logprobs, 0.0)
        safe_ref = torch.where(active, ref_logprobs.to(logprobs.dtype), 0.0)
        kl = kl_estimate(safe_lp, safe_ref, kl_type, weights=(safe_lp - safe_lp.detach()).exp())
        kl_loss = (w * kl_penalty * kl).sum()
    loss = pg_loss + kl_loss

    with torch.no_grad():
        wd = w.detach()
        clipped = ((ratio < 1.0 - ratio_clip_min) | (ratio > 1.0 + ratio_clip_max)) & active
        approx_kl = (-log_ratio).exp() - 1 + log_ratio
        values = torch.stack(
            [
                loss.detach(),
                pg_loss.detach(),
                kl_loss.detach(),
                (wd * clipped).sum(),
                (wd * dual_clipped).sum(),
                (wd * ratio).sum(),
                (wd * approx_kl).sum(),
            ]
        ).tolist()
    return loss, dict(zip(LOSS_METRICS, values))


def make_loss_fn(loss_cfg) -> LossFn:
    """The policy's loss callable: ``loss_fn(logprobs[b, S], micro_batch) -> (contribution, metrics)``.

    Reads micro_batch["old_logprobs"] [b, S], ["advantages"] [b], ["loss_weights"] [b, S] (from
    :func:`loss_token_weights` over the global batch), when the KL penalty is on ["ref_logprobs"]
    [b, S], and with ``use_importance_sampling_correction`` ["is_weights"] [b, S] (from
    :func:`truncated_importance_weights`). ``loss_cfg`` is a :class:`megatron_grpo.config.LossConfig`.
    """
    kl_penalty = float(loss_cfg.reference_policy_kl_penalty)
    kl_type = loss_cfg.reference_policy_kl_type
    use_is = bool(loss_cfg.use_importance_sampling_correction)
    if kl_type not in ("k1", "k2", "k3"):
        raise ValueError(f"loss_fn.reference_policy_kl_type must be k1, k2 or k3, got {kl_type!r}")
    if loss_cfg.ratio_clip_c is not None and loss_cfg.ratio_clip_c <= 1.0:
        raise ValueError(f"loss_fn.ratio_clip_c must be > 1 (dual clip), got {loss_cfg.ratio_clip_c}")

    def loss_fn(logprobs: Tensor, micro_batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        missing = [k for k in ("old_logprobs", "advantages", "loss_weights") if k not in micro_batch]
        if kl_penalty != 0.0 and "ref_logprobs" not in micro_batch:
            missing.append("ref_logprobs")
        if use_is and "is_weights" not in micro_batch:
            missing.append("is_weights")
        if missing:
            raise KeyError(f"GRPO loss: micro-batch lacks {missing}; has {sorted(micro_batch)}")
        return clipped_pg_loss(
            logprobs,
            micro_batch["old_logprobs"],
            micro_batch["advantages"],
            micro_batch["loss_weights"],
            ratio_clip_min=loss_cfg.ratio_clip_min,
            ratio_clip_max=loss_cfg.ratio_clip_max,
            ratio_clip_c=loss_cfg.ratio_clip_c,
            ref_logprobs=micro_batch.get("ref_logprobs"),
            kl_penalty=kl_penalty,
            kl_type=kl_type,
            is_weights=micro_batch["is_weights"] if use_is else None,
        )

    return loss_fn


# ----------------------------------------------------------------------------- step math


def steps_per_epoch(num_train_prompts: int, num_prompts_per_step: int) -> int:
    """Steps in one pass over the train prompts; the last, partial batch counts (ceil(1129/32) = 36)."""
    if num_train_prompts < 1 or num_prompts_per_step < 1:
        raise ValueError(
            f"need >= 1 train prompt and prompts per step, got {num_train_prompts} and {num_prompts_per_step}"
        )
    return math.ceil(num_train_prompts / num_prompts_per_step)


def total_train_steps(
    num_train_prompts: int, num_prompts_per_step: int, max_num_epochs: int, max_num_steps: int
) -> int:
    """min(max_num_steps, max_num_epochs * steps_per_epoch), as the reference recipe computes it."""
    return min(max_num_steps, max_num_epochs * steps_per_epoch(num_train_prompts, num_prompts_per_step))
