"""The generation-engine interface shared by the vllm, megatron, hf and scripted engines.

Why one small interface: the agent loop and the trainer must not care which engine samples. An
engine takes token ids in and gives token ids out (never text: see rollout/chat.py), with the
logprob of every sampled id so the trainer can measure generation-vs-training mismatch.

Contract of :meth:`GenerationEngine.generate`:

* ``prompts``: a batch of token-id lists (any lengths).
* returns one :class:`Generation` per prompt, same order: the sampled ids (the stop id included when
  one ended the sequence), ``logprobs[i]`` = log p(token_ids[i] | prompt, token_ids[:i]) under the
  distribution the token was SAMPLED from (see "Logprob convention"), and ``finish_reason`` "stop"
  (a stop id was sampled) or "length" (the token budget ran out).
* ``max_new_tokens`` (optional, one per prompt) lowers ``params.max_new_tokens`` per prompt, so the
  agent loop can respect each episode's remaining context.

Logprob convention (every engine, and the trainer's policy): the sampling distribution is
``softmax(filter(logits / T))`` with ``T = params.temperature`` and ``filter`` the top-k then top-p
cut (renormalized); the engine returns the log of that probability at the sampled id (what vLLM
calls processed logprobs). Greedy decoding (``T == 0``) returns the unscaled ``log_softmax(logits)``.
Training uses ``generation.temperature`` as T for the policy's old and new logprobs too (logits / T
in ``MegatronPolicy``), so the ratio, the score function and ``gen_train_logprob_error`` all refer
to the distribution that produced the rollouts, at any T. The policy cannot reproduce a top-k/top-p
cut, so training refuses ``generation.top_p < 1`` and ``generation.top_k > 0`` with a config error
(evaluation accepts them). Validation sampling (``generation.val_temperature``) never enters a
loss and may be anything.

``load_weights(stream)`` takes the refit stream: an iterable of buckets, each a list of
``(hf_name, full_tensor)``. ``sleep()`` frees what the engine holds on the device for training;
``wake()`` brings it back (engines without device state make both no-ops).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

WeightStream = Iterable[list[tuple[str, torch.Tensor]]]


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings; ``temperature == 0`` means greedy. ``top_k=None`` or ``<= 0``: no top-k."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    max_new_tokens: int = 4096
    stop_token_ids: tuple[int, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"SamplingParams.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"SamplingParams.max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass
class Generation:
    """One prompt's sampled continuation (see the module docstring for the logprob contract)."""

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" | "length"
    stop_token_id: int | None = None  # the stop id that ended it, if any
    extra: dict = field(default_factory=dict)


@runtime_checkable
class GenerationEngine(Protocol):
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams,
        max_new_tokens: Sequence[int] | None = None,
    ) -> list[Generation]: ...

    def load_weights(self, stream: WeightStream) -> None: ...

    def sleep(self) -> None: ...

    def wake(self) -> None: ...


def per_prompt_budgets(n: int, params: SamplingParams, max_new_tokens: Sequence[int] | None) -> list[int]:
    """``params.max_new_tokens`` for every prompt, lowered by the optional per-prompt caps."""
    if max_new_tokens is None:
        return [params.max_new_tokens] * n
    if len(max_new_tokens) != n:
        raise ValueError(f"max_new_tokens has {len(max_new_tokens)} entries for {n} prompts")
    budgets = [min(params.max_new_tokens, int(m)) for m in max_new_tokens]
    if any(b < 1 for b in budgets):
        raise ValueError(f"every prompt needs a budget of at least 1 new token, got {budgets}")
    return budgets


def start_generate(
    engine: str,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams,
    max_new_tokens: Sequence[int] | None,
    device: torch.device | str,
) -> tuple[list[int], torch.Generator | None]:
    """The checks and set-up every engine's ``generate`` starts with: per-prompt token budgets, no
    empty prompt, and a seeded sampler (``None`` when ``params.seed`` is unset)."""
    budgets = per_prompt_budgets(len(prompts), params, max_new_tokens)
    if any(len(p) == 0 for p in prompts):
        raise ValueError(f"{engine}.generate: every prompt needs at least one token")
    generator = None
    if params.seed is not None:
        generator = torch.Generator(device=device).manual_seed(params.seed)
    return budgets, generator


def shared_prompts(prompts: Sequence[Sequence[int]]) -> tuple[list[int], list[int]]:
    """(row of each distinct prompt in first-seen order, index into that list for every row):
    identical prompts are prefilled once and their KV cache is copied to the other rows."""
    first: dict[tuple[int, ...], int] = {}
    unique: list[int] = []
    source: list[int] = []
    for b, prompt in enumerate(prompts):
        key = tuple(prompt)
        if key not in first:
            first[key] = len(unique)
            unique.append(b)
        source.append(first[key])
    return unique, source
