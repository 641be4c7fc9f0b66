"""A transformers model as a generation engine: batched sampling with a KV cache.

Why: the reference engine for CPU tests and refit parity (it runs anywhere transformers does) and
a fallback on a GPU without vLLM. Too slow for training runs (reference/DESIGN.md: 465 tokens/s on
an H200 at batch 64).

Batching: prompts are left-padded into one batch; position ids count real tokens only, so a padded
prompt sees the same positions as an unpadded one (what the trainer's policy uses). Finished rows
keep decoding a pad token (masked out) until every row has finished or run out of budget.

Logprobs (base.py's convention): sampling uses ``logits / temperature`` filtered by top-k then
top-p, and ``logprobs[i]`` is the log of that same distribution at the sampled id (greedy: the
unscaled log-softmax). The trainer's policy divides its logits by the same temperature, so
``gen_train_logprob_error`` compares like with like at any temperature.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch

from megatron_grpo.generation.base import Generation, SamplingParams, WeightStream, shared_prompts, start_generate


def filter_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """``logits[B, V]`` (float32) -> temperature-scaled logits with top-k/top-p cut to ``-inf``."""
    logits = logits / params.temperature
    if params.top_k is not None and 0 < params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens ranked above it already reach top_p (the first always stays)
        drop = (probs.cumsum(-1) - probs) >= params.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter_(-1, order, sorted_logits)
    return logits


def sampling_logprobs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """``logits[B, V]`` (float32) -> log-probs [B, V] of the distribution tokens are sampled from:
    ``log_softmax(filter_logits(logits))``, ``-inf`` where top-k/top-p cut; greedy (temperature 0):
    the unscaled ``log_softmax(logits)``."""
    if params.temperature == 0:
        return torch.log_softmax(logits, dim=-1)
    return torch.log_softmax(filter_logits(logits, params), dim=-1)


def sample_tokens(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``logits[B, V]`` float32 -> (sampled ids [B], their logprobs [B] under the sampling distribution)."""
    logp = sampling_logprobs(logits, params)
    if params.temperature == 0:
        sampled = logits.argmax(dim=-1)
    else:
        sampled = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1)
    return sampled, logp.gather(-1, sampled[:, None]).squeeze(-1)


class HFEngine:
    """``model``: a folder ``save_pretrained`` wrote, or a ``PreTrainedModel`` instance (used as is).

    ``max_batch_size`` splits a large ``generate`` into chunks (bounds the KV cache).
    """

    shares_policy_weights = False  # a copy of the weights: the trainer refits it after every step

    def __init__(
        self,
        model: str | Any,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        pad_token_id: int = 0,
        max_batch_size: int | None = None,
    ):
        if isinstance(model, str):
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(model, dtype=dtype or torch.float32)
        elif dtype is not None:
            model = model.to(dtype)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.pad_token_id = pad_token_id
        self.max_batch_size = max_batch_size
        # transformers >= 5.2x names the KV cache argument `cache`; older releases `past_key_values`
        forward_args = inspect.signature(self.model.forward).parameters
        self._cache_arg = "cache" if "cache" in forward_args else "past_key_values"

    # -- generation
    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams,
        max_new_tokens: Sequence[int] | None = None,
    ) -> list[Generation]:
        budgets, generator = start_generate("HFEngine", prompts, params, max_new_tokens, self.device)
        chunk = self.max_batch_size or max(1, len(prompts))
        out: list[Generation] = []
        for start in range(0, len(prompts), chunk):
            out += self._generate_batch(
                prompts[start : start + chunk], params, budgets[start : start + chunk], generator
            )
        return out

    def _generate_batch(self, prompts, params, budgets, generator) -> list[Generation]:
        batch, width = len(prompts), max(len(p) for p in prompts)
        # a prompt sampled G times (a GRPO group) is prefilled once; its KV cache is forked
        unique, source = shared_prompts(prompts)
        input_ids = torch.full((len(unique), width), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(unique), width), dtype=torch.long)
        for b, prompt in enumerate(prompts[i] for i in unique):
            input_ids[b, width - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
            attention[b, width - len(prompt) :] = 1
        input_ids, attention = input_ids.to(self.device), attention.to(self.device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        stops = torch.tensor(sorted(set(params.stop_token_ids)) or [-1], device=self.device)

        result = self.model(
            input_ids=input_ids, attention_mask=attention, position_ids=positions, use_cache=True,
            logits_to_keep=1,
        )
        cache, logits = self._cache_of(result), result.logits[:, -1, :]
        if len(unique) < batch:
            index = torch.tensor(source, device=self.device)
            cache.reorder_cache(index)
            logits, attention, positions = logits[index], attention[index], positions[index]
        next_pos = positions[:, -1:] + 1
        tokens: list[list[int]] = [[] for _ in range(batch)]
        logprobs: list[list[float]] = [[] for _ in range(batch)]
        reasons: list[str | None] = [None] * batch
        for _ in range(max(budgets)):
            sampled, sampled_lp = sample_tokens(logits.float(), params, generator)
            is_stop = torch.isin(sampled, stops)
            sampled_l, lp_l, stop_l = sampled.tolist(), sampled_lp.tolist(), is_stop.tolist()
            for b in range(batch):
                if reasons[b] is not None:
                    continue
                tokens[b].append(sampled_l[b])
                logprobs[b].append(lp_l[b])
                if stop_l[b]:
                    reasons[b] = "stop"
                elif len(tokens[b]) >= budgets[b]:
                    reasons[b] = "length"
            if all(r is not None for r in reasons):
                break
            done = torch.tensor([r is not None for r in reasons], device=self.device)
            feed = sampled.masked_fill(done, self.pad_token_id)[:, None]
            attention = torch.cat([attention, (~done).long()[:, None]], dim=1)
            result = self.model(
                input_ids=feed, attention_mask=attention, position_ids=next_pos, use_cache=True,
                **{self._cache_arg: cache},
            )
            cache, logits = self._cache_of(result), result.logits[:, -1, :]
            next_pos = next_pos + 1
        return [
            Generation(token_ids=t, logprobs=lp, finish_reason=r or "length",
                       stop_token_id=t[-1] if r == "stop" else None)
            for t, lp, r in zip(tokens, logprobs, reasons)
        ]

    @staticmethod
    def _cache_of(result: Any) -> Any:
        cache = getattr(result, "cache", None)
        return cache if cache is not None else result.past_key_values

    # -- scoring (parity checks)
    @torch.no_grad()
    def score(self, sequences: Sequence[Sequence[int]], temperature: float = 1.0) -> list[list[float]]:
        """Logprob of every id given its prefix under softmax(logits / temperature) (0.0 for the
        first id), one sequence at a time."""
        out = []
        for seq in sequences:
            ids = torch.tensor([list(seq)], dtype=torch.long, device=self.device)
            logits = self.model(input_ids=ids).logits.float() / temperature
            lp = torch.log_softmax(logits[0, :-1], dim=-1).gather(-1, ids[0, 1:, None]).squeeze(-1)
            out.append([0.0] + lp.tolist())
        return out

    # -- refit
    @torch.no_grad()
    def load_weights(self, stream: WeightStream) -> None:
        """Copy every ``(hf_name, tensor)`` of the stream into the model; every parameter must come.

        A tied ``lm_head.weight`` may be sent or not (it is the embedding). Unknown names, shape
        mismatches and parameters the stream never sent are errors (a partial refit is a silent
        off-policy bug otherwise).
        """
        params = dict(self.model.named_parameters())
        tied = bool(getattr(self.model.config, "tie_word_embeddings", False))
        loaded: set[str] = set()
        for bucket in stream:
            for name, tensor in bucket:
                if name not in params:
                    if tied and name == "lm_head.weight":
                        continue
                    raise KeyError(f"refit: the engine's model has no parameter named {name!r}")
                target = params[name]
                if tuple(target.shape) != tuple(tensor.shape):
                    raise ValueError(f"refit: {name} has shape {tuple(tensor.shape)}, the engine expects "
                                     f"{tuple(target.shape)}")
                target.copy_(tensor.to(device=target.device, dtype=target.dtype))
                loaded.add(name)
        missing = sorted(set(params) - loaded)
        if missing:
            raise ValueError(f"refit: {len(missing)} parameters were not in the stream, e.g. {missing[:3]}")

    # -- memory
    def sleep(self) -> None:
        """Free device memory for training (moves the model to CPU; a no-op on CPU)."""
        if self.device.type != "cpu":
            self.model.to("cpu")
            torch.cuda.empty_cache()

    def wake(self) -> None:
        if self.device.type != "cpu":
            self.model.to(self.device)
