"""Rollouts across ranks: which ranks generate, and how every rank gets the whole batch.

Why: training is SPMD (every rank calls the policy with the same global batch), generation is not
always: the ``hf`` engine runs on one rank per model replica, while ``megatron`` and ``vllm`` decode
with all tensor-parallel ranks of a replica together. Each data-parallel replica rolls out its own
contiguous slice of the samples; the first rank of each replica (tp_rank == pp_rank == 0) then
contributes its episodes to one all-gather, so every rank ends with all episodes in sample order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch.distributed as dist


def replica_slice(n: int, dp: int, dp_rank: int) -> slice:
    """The contiguous share of ``n`` samples that data-parallel replica ``dp_rank`` rolls out."""
    per, extra = divmod(n, dp)
    lo = dp_rank * per + min(dp_rank, extra)
    return slice(lo, lo + per + (1 if dp_rank < extra else 0))


REPLICA_SEED_STRIDE = 1_000_000_007  # > every offset added below it (turns: 1_000_003 x turn, requests: index)


def replica_seed(seed: int, dp_rank: int) -> int:
    """The sampling seed of data-parallel replica ``dp_rank``: ``seed`` itself on replica 0, far apart
    on the others. Every engine derives its per-turn and per-request seeds by adding small offsets
    (agent_loop: 1_000_003 x turn; vllm: the request index), so replicas never share a seed and a
    GRPO group split across replicas gets distinct samples. All ranks of one replica (its
    tensor-parallel ranks) share the dp rank and so the seed, as SPMD decoding requires."""
    return seed + dp_rank * REPLICA_SEED_STRIDE


def generates_here(layout: Any, spmd_engine: bool) -> bool:
    """Whether this rank runs the agent loop (holds an engine and environment episodes)."""
    return spmd_engine or (layout.tp_rank == 0 and layout.pp_rank == 0)


def gather_rollouts(
    run: Callable[[Sequence[dict]], Any],
    samples: Sequence[dict],
    layout: Any,
    spmd_engine: bool,
) -> tuple[list[Any], dict[str, float]]:
    """Run ``run(my_samples) -> RolloutBatch`` where this rank generates; return (all episodes in
    sample order, timing: the slowest replica per phase). Collective over the world when it has > 1 rank."""
    mine = samples[replica_slice(len(samples), layout.dp, layout.dp_rank)]
    result = run(mine) if generates_here(layout, spmd_engine) and mine else None
    local = (list(result.episodes), dict(result.timing)) if result is not None else ([], {})
    if layout.world_size == 1:
        return local
    contributes = layout.tp_rank == 0 and layout.pp_rank == 0
    gathered: list[Any] = [None] * layout.world_size
    dist.all_gather_object(gathered, (layout.dp_rank, local) if contributes else None)
    episodes: list[Any] = []
    timing: dict[str, float] = {}
    for _, (eps, tim) in sorted((g for g in gathered if g is not None), key=lambda g: g[0]):
        episodes.extend(eps)
        for key, value in tim.items():
            timing[key] = max(timing.get(key, 0.0), value)
    if len(episodes) != len(samples):
        raise RuntimeError(f"rollout gather: {len(episodes)} episodes for {len(samples)} samples")
    return episodes, timing
