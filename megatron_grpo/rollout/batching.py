"""Finished episodes -> the padded tensors the policy trains on.

Contract (B episodes, S = longest episode): ``input_ids`` [B, S] int64 right-padded with
``pad_id``; ``lengths`` [B]; ``loss_mask`` [B, S] float (1 on generated tokens); ``gen_logprobs``
[B, S] float (the engine's logprobs of generated tokens, 0 elsewhere). Position t of every per-token
tensor refers to token t, matching ``MegatronPolicy.logprobs`` (log p(token_t | tokens_<t)).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from megatron_grpo.rollout.agent_loop import EpisodeResult


def episodes_to_batch(episodes: Sequence[EpisodeResult], pad_id: int) -> dict[str, torch.Tensor]:
    if not episodes:
        raise ValueError("episodes_to_batch: no episodes")
    b, s = len(episodes), max(len(ep.token_ids) for ep in episodes)
    input_ids = torch.full((b, s), pad_id, dtype=torch.long)
    loss_mask = torch.zeros(b, s)
    gen_logprobs = torch.zeros(b, s)
    for i, ep in enumerate(episodes):
        n = len(ep.token_ids)
        input_ids[i, :n] = torch.tensor(ep.token_ids, dtype=torch.long)
        loss_mask[i, :n] = torch.tensor(ep.loss_mask, dtype=torch.float32)
        gen_logprobs[i, :n] = torch.tensor(ep.logprobs, dtype=torch.float32)
    lengths = torch.tensor([len(ep.token_ids) for ep in episodes], dtype=torch.long)
    return {"input_ids": input_ids, "lengths": lengths, "loss_mask": loss_mask, "gen_logprobs": gen_logprobs}
