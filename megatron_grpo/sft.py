"""Supervised warm start on ground-truth trajectories, through the same Megatron policy.

Why: GRPO needs a policy that sometimes succeeds (a group of all-zero rewards has no gradient). A
randomly initialised model never emits a well-formed tool call, so the recipe (the CPU demo, small
models) first trains a few hundred steps on the training tasks' ground-truth calls, then runs GRPO.
It is reported as part of the recipe, not hidden.

A trajectory is built token-in/token-out exactly as a rollout would be (rollout/chat.py): the prompt
ids, then one assistant turn holding every ground-truth call as Hermes ``<tool_call>`` blocks, the
environment's real outputs as the tool turn, then a short final answer. The loss is the mean NLL of
the assistant tokens (mask 1), i.e. what the engine would have to generate.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

FINAL_ANSWER = "Done."


def call_block(call: dict) -> str:
    args = call["arguments"]
    args = json.loads(args) if isinstance(args, str) else args
    return "<tool_call>\n" + json.dumps({"name": call["name"], "arguments": args}) + "\n</tool_call>"


def sft_trajectory(sample: dict, renderer: Any, env: Any) -> tuple[list[int], list[int]]:
    """(token ids, loss mask) of the ground-truth solution of ``sample``; ``env`` is a LocalEnvPool."""
    tok = renderer.tokenizer
    ids = list(renderer.prompt_ids(sample["responses_create_params"]))
    mask = [0] * len(ids)
    calls = sample.get("ground_truth") or []

    def assistant(text: str) -> None:
        turn = tok.encode(text, add_special_tokens=False) + [renderer.im_end_id]
        ids.extend(turn)
        mask.extend([1] * len(turn))

    if calls:
        (eid,) = env.open(1)
        (outputs,) = env.step([eid], [[{"name": c["name"], "arguments": c["arguments"]} for c in calls]])
        env.close([eid])
        assistant("\n".join(call_block(c) for c in calls))
        tool = renderer.tool_turn_ids(outputs)
        ids.extend(tool)
        mask.extend([0] * len(tool))
    assistant(FINAL_ANSWER)
    return ids, mask


def sft_warm_start(
    policy: Any,
    samples: Sequence[dict],
    renderer: Any,
    env: Any,
    *,
    steps: int,
    batch_size: int,
    seed: int = 0,
    log_every: int = 25,
) -> list[float]:
    """Train ``policy`` for ``steps`` optimizer steps on ground-truth trajectories of ``samples``
    (sampled with replacement, seeded). Returns the loss per step (mean NLL per assistant token)."""
    from megatron_grpo.grpo import loss_token_weights

    data = [sft_trajectory(s, renderer, env) for s in samples]
    rng = random.Random(seed)
    pad = renderer.tokenizer.pad_token_id or 0

    def nll(logprobs: torch.Tensor, mb: dict[str, torch.Tensor]):
        loss = -(logprobs * mb["loss_weights"]).sum()
        return loss, {"nll": float(loss.detach())}

    losses = []
    for step in range(1, steps + 1):
        chosen = [data[rng.randrange(len(data))] for _ in range(batch_size)]
        width = max(len(ids) for ids, _ in chosen)
        input_ids = torch.full((batch_size, width), pad, dtype=torch.long)
        mask = torch.zeros(batch_size, width)
        for i, (ids, m) in enumerate(chosen):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            mask[i, : len(m)] = torch.tensor(m, dtype=torch.float32)
        lengths = torch.tensor([len(ids) for ids, _ in chosen])
        out = policy.train_step(
            {"input_ids": input_ids, "lengths": lengths,
             "loss_weights": loss_token_weights(mask, token_level=True)},
            nll,
        )
        losses.append(out["nll"])
        if step % log_every == 0 or step == steps:
            log.info("sft step %d/%d: nll %.4f", step, steps, out["nll"])
    return losses


def run_sft(cfg: Any, samples: Sequence[dict], out_dir: str | Path, *, steps: int, batch_size: int,
            lr: float) -> Path:
    """Warm-start ``cfg.policy.model_name`` on ``samples`` and save the result as an HF folder
    (``out_dir``), which GRPO then starts from. Collective (every rank calls it)."""
    from environment.pool import LocalEnvPool
    from megatron_grpo.components import load_tokenizer, resolve_model_dir
    from megatron_grpo.distributed import init_distributed
    from megatron_grpo.models.hf_mapping import save_hf_checkpoint
    from megatron_grpo.policy import MegatronPolicy
    from megatron_grpo.rollout.chat import ChatRenderer

    p = cfg.policy
    layout = init_distributed(p.tensor_model_parallel_size, p.pipeline_model_parallel_size,
                              p.sequence_parallel, seed=cfg.grpo.seed)
    model_dir = resolve_model_dir(p.model_name)
    # the batch as one micro-batch (short sequences: megatron's per-micro-batch overhead dominates on
    # a CPU), rows not packed by group (an SFT batch is not made of GRPO groups)
    sft_cfg = replace(p, train_micro_batch_size=batch_size, shared_prefix=False,
                      optimizer=replace(p.optimizer, lr=lr, min_lr=lr, lr_warmup_steps=0, clip_grad=1.0))
    policy = MegatronPolicy(sft_cfg, layout, model_dir, train_iters=steps)
    renderer = ChatRenderer(load_tokenizer(cfg))
    losses = sft_warm_start(policy, samples, renderer, LocalEnvPool(cfg.env.data_dir),
                            steps=steps, batch_size=batch_size, seed=cfg.grpo.seed)
    save_hf_checkpoint(policy.model, str(out_dir), policy.hf_config,
                       tokenizer_dir=p.tokenizer_name or model_dir)
    log.info("warm start: nll %.3f -> %.3f over %d steps; saved %s", losses[0], losses[-1], steps, out_dir)
    return Path(out_dir)
