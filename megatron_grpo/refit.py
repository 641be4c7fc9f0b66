"""Refit: the trained policy's weights into the generation engine, and the metric that proves it.

Why: generation that samples from stale or half-loaded weights makes GRPO silently off-policy. The
policy streams its weights as Hugging Face-named full tensors in size-bounded buckets
(``MegatronPolicy.weight_stream(bucket_bytes)``); the engine loads them with ``load_weights``
(which fails on unknown, missing or mis-shaped tensors). After every refit, the trainer compares
the engine's logprobs of the sampled tokens with the policy's logprobs of the same tokens:
``gen_train_logprob_error`` (:func:`logprob_mismatch`) must stay near 0.

One path for every caller (the trainer after each optimizer step and on resume, the tests, the
refit benchmark): :func:`refit`. Whether an engine needs one comes from the engine itself: an
engine with ``shares_policy_weights`` (the megatron engine decodes with the policy's own model)
gets nothing. The stream is collective (gathers over TP, broadcasts over PP), so a rank that holds
no engine (the hf engine runs on one rank per replica) drains it; engines that share the policy's
weights run on every rank, so no rank drains alone.

Order for co-located engines (NeMo-RL #191: waking everything before the refit runs out of
memory): the engine wakes only its weight memory inside ``load_weights`` (vLLM:
``wake_up(tags=["weights"])``), the tensors are copied, then :func:`refit` calls ``engine.wake()`` to
restore the rest (the KV cache).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from megatron_grpo.generation.base import GenerationEngine

Bucket = list[tuple[str, torch.Tensor]]


@dataclass
class RefitStats:
    seconds: float
    bytes: int
    tensors: int
    buckets: int

    def as_metrics(self, prefix: str = "refit/") -> dict[str, float]:
        return {
            f"{prefix}seconds": self.seconds,
            f"{prefix}gb": self.bytes / 1e9,
            f"{prefix}tensors": float(self.tensors),
        }


def refit(policy_stream: Iterable[Bucket], engine: GenerationEngine | None) -> RefitStats:
    """Load every bucket of ``policy_stream`` into ``engine``, then wake the engine fully.

    ``engine=None`` (this rank generates nothing) drains the stream; an engine that shares the
    policy's weights is left alone and the stream is never started (zero stats)."""
    stats = RefitStats(0.0, 0, 0, 0)
    if engine is not None and getattr(engine, "shares_policy_weights", False):
        return stats

    def counted() -> Iterator[Bucket]:
        for bucket in policy_stream:
            stats.buckets += 1
            stats.tensors += len(bucket)
            stats.bytes += sum(t.numel() * t.element_size() for _, t in bucket)
            yield bucket

    started = time.perf_counter()
    if engine is None:
        for _ in counted():
            pass
    else:
        engine.load_weights(counted())
        engine.wake()
    stats.seconds = time.perf_counter() - started
    return stats


def state_dict_stream(model: torch.nn.Module, bucket_bytes: int = 512 << 20) -> Iterator[Bucket]:
    """An HF model's own parameters as a refit stream (hf -> hf refit, tests). Buckets hold at most
    ``bucket_bytes`` (a larger tensor travels alone)."""
    bucket: Bucket = []
    size = 0
    for name, param in model.named_parameters():
        nbytes = param.numel() * param.element_size()
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, param.detach()))
        size += nbytes
    if bucket:
        yield bucket


def logprob_mismatch(
    engine_logprobs: torch.Tensor, policy_logprobs: torch.Tensor, mask: torch.Tensor
) -> float:
    """``gen_train_logprob_error``: mean |engine - policy| logprob over masked tokens ([B, S] each).

    0 means the engine sampled from exactly the trained policy. (NeMo-RL logs
    ``token_mult_prob_error``, the masked mean of exp(|diff|), whose perfect value is 1; see
    :func:`token_mult_prob_error`.) Returns 0.0 when the mask is empty.
    """
    diff = (engine_logprobs.double() - policy_logprobs.double()).abs()
    mask = mask.to(diff.dtype)
    total = mask.sum()
    return float((diff * mask).sum() / total) if total > 0 else 0.0


def token_mult_prob_error(
    engine_logprobs: torch.Tensor, policy_logprobs: torch.Tensor, mask: torch.Tensor
) -> float:
    """NeMo-RL's metric: masked mean of exp(|engine - policy|); 1.0 is perfect."""
    diff = (engine_logprobs.double() - policy_logprobs.double()).abs()
    mask = mask.to(diff.dtype)
    total = mask.sum()
    return float((torch.exp(diff * mask) * mask).sum() / total) if total > 0 else 1.0
