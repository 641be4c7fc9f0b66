"""The policy's optimizer: megatron's Adam (optionally distributed) with its LR schedule, plus the
state surgery that checkpoint loading and CPU offload need.

Kept apart from policy.py so that the policy reads as logprobs / train step / weights; everything
here acts on a megatron optimizer object and the ``policy.optimizer`` config section.
"""

from __future__ import annotations

from typing import Any

import torch

from megatron_grpo.config import PolicyConfig


class OptimizerConfigError(ValueError):
    """An optimizer setting that cannot work; the message names the config key."""


def build_optimizer(cfg: PolicyConfig, ddp: torch.nn.Module, params_dtype: torch.dtype,
                     train_iters: int | None) -> tuple[Any, Any]:
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    o = cfg.optimizer
    if o.min_lr > o.lr:
        raise OptimizerConfigError(f"policy.optimizer.min_lr={o.min_lr} must be <= policy.optimizer.lr={o.lr}")
    if o.lr_warmup_steps > 0 and not 0.0 <= o.lr_warmup_init <= o.lr:
        raise OptimizerConfigError(
            f"policy.optimizer.lr_warmup_init={o.lr_warmup_init} must be in [0, policy.optimizer.lr={o.lr}]"
        )
    decay_steps = o.lr_decay_steps or train_iters
    if o.lr_decay_style != "constant" and not decay_steps:
        raise OptimizerConfigError(
            f"policy.optimizer.lr_decay_style={o.lr_decay_style!r} needs policy.optimizer.lr_decay_steps"
        )
    decay_steps = max(decay_steps or 0, o.lr_warmup_steps + 1)
    bf16 = params_dtype == torch.bfloat16
    optimizer = get_megatron_optimizer(
        OptimizerConfig(
            optimizer="adam",
            lr=o.lr,
            min_lr=o.min_lr,
            weight_decay=o.weight_decay,
            adam_beta1=o.adam_beta1,
            adam_beta2=o.adam_beta2,
            adam_eps=o.adam_eps,
            clip_grad=o.clip_grad,
            bf16=bf16,
            params_dtype=params_dtype,
            use_distributed_optimizer=o.use_distributed_optimizer,
        ),
        [ddp],
    )
    scheduler = OptimizerParamScheduler(
        optimizer,
        init_lr=o.lr_warmup_init if o.lr_warmup_steps > 0 else o.lr,
        max_lr=o.lr,
        min_lr=o.min_lr,
        lr_warmup_steps=o.lr_warmup_steps,
        lr_decay_steps=decay_steps,
        lr_decay_style=o.lr_decay_style,
        start_wd=o.weight_decay,
        end_wd=o.weight_decay,
        wd_incr_steps=decay_steps,
        wd_incr_style="constant",
    )
    return optimizer, scheduler


def ensure_optimizer_state(optimizer: Any) -> None:
    """Give a never-stepped optimizer its (zero) Adam state so that megatron can describe it for
    loading. megatron's own ``init_state_fn`` leaves out torch AdamW's per-param ``step`` (with
    apex/TE the step lives in the param groups), which the distributed optimizer's state_dict needs."""
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(opt, "optimizer", None)
        if inner is None:
            continue
        init = getattr(opt, "init_state_fn", None)
        if init is not None:
            init(inner, opt.config)
        if isinstance(inner, torch.optim.Optimizer) and type(inner).__module__.startswith("torch.optim"):
            for group in inner.param_groups:
                for p in group["params"]:
                    inner.state[p].setdefault("step", torch.tensor(0.0))


def restore_torch_adam_steps(optimizer: Any) -> None:
    """After a distributed-optimizer load with torch's AdamW (no apex/TE, e.g. on CPU): megatron
    restores the Adam step count into the param groups but its bucket copy also overwrites the
    per-param ``step`` the state was pre-filled with (``ensure_optimizer_state``); put the
    checkpoint's count back, or Adam's bias correction would restart."""
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(opt, "optimizer", None)
        if not isinstance(inner, torch.optim.Optimizer) or not type(inner).__module__.startswith("torch.optim"):
            continue
        for group in inner.param_groups:
            if group.get("step") is None:
                continue
            for p in group["params"]:
                if p in inner.state and "step" in inner.state[p]:
                    inner.state[p]["step"] = torch.tensor(float(group["step"]))


def move_optimizer_state(optimizer: Any, device: torch.device, *, move_main_params: bool) -> None:
    """Move the optimizer-owned tensors: Adam moments, and with mixed precision the fp32 main params
    (in fp32 runs those alias the model's own weights and must stay)."""
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(opt, "optimizer", None)
        if inner is None:
            continue
        for state in inner.state.values():
            for k, v in state.items():
                if torch.is_tensor(v) and v.dim() > 0:
                    state[k] = v.to(device, non_blocking=True)
        if move_main_params:
            for group in inner.param_groups:
                for p in group["params"]:
                    p.data = p.data.to(device, non_blocking=True)
    if torch.cuda.is_available():
        torch.cuda.synchronize()  # non_blocking copies (both directions) must land before use
