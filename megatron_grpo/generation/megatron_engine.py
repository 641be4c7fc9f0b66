"""Generation with the policy's own Megatron model, in the same process: nothing to refit.

Why: vLLM is the production engine but is not always installable (or lags the model), and the hf
engine is ~50x too slow for training runs (reference/DESIGN.md: 465 tokens/s on an H200 at batch
64). This engine decodes with the very ``GPTModel`` the optimizer updates: ``load_weights`` is a
no-op because the engine holds a reference to the trained model, not a copy (after
``policy.train_step`` the next ``generate`` samples from the new weights;
tests/test_megatron_engine.py proves it by comparing logprobs after an optimizer step).

How (see kv_cache.py for why not megatron-core's static/dynamic inference engines; measured on CPU,
fp32, 4 layers, hidden 256 / 512, batch 8 / 4, prompt 512 / 1024: one decode step through
megatron-core's ``StaticInferenceContext`` took 19.8 / 87.1 ms, through kv_cache.py 10.3 / 43.1 ms,
same logits to 2e-6; ``bench/generation.py`` repeats the comparison on a GPU): prompts are
left-padded into one batch and prefilled in row chunks of at most ``prefill_tokens`` tokens; then
every row decodes one token per step against a static KV cache (keys cached after RoPE, per-row
positions, so padding changes nothing). On CUDA the decode step is captured once per (batch,
cache length) in a CUDA graph and replayed. Sampling happens on the full-vocabulary logits
(gathered over TP for the last position only); TP rank 0's sampled ids are broadcast so every
rank continues with the same tokens.

SPMD contract: with tensor parallelism, every TP rank calls ``generate`` with the same prompts and
params (as every megatron collective requires) and gets the same result. Pipeline parallelism is
not supported (a clear error names the fix).

Logprobs and stopping follow base.py and hf.py exactly (the same ``sample_tokens``): sampling uses
temperature, then top-k, then top-p, and ``logprobs[i]`` is the log of that sampling distribution at
the sampled id (greedy: the unscaled log-softmax); a row stops on a stop id (included) or its token
budget. Memory: the KV cache is allocated by
``generate``, kept between calls of the same (bucketed) shape so the captured graph replays, and
freed by ``sleep()`` (called before training); a batch whose cache would not fit in ~80% of the free
GPU memory is generated in chunks; with ``offload_optimizer=True`` ``wake()`` moves the policy's
optimizer state to CPU and ``sleep()`` brings it back.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist

from megatron_grpo.generation.base import Generation, SamplingParams, WeightStream, shared_prompts, start_generate
from megatron_grpo.generation.hf import sample_tokens, sampling_logprobs
from megatron_grpo.generation.kv_cache import CachedGPTForward, KVCache, sequence_parallel_off

log = logging.getLogger(__name__)

def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


class MegatronEngine:
    """Batched sampling with the policy's Megatron model (see the module docstring).

    Args:
        policy: a ``MegatronPolicy``; its bare ``GPTModel`` (``policy.model``) is used by reference.
        model: alternatively the bare ``GPTModel`` itself (benchmarks, tests without an optimizer).
        pad_token_id: the id fed for padding and for rows that already finished.
        max_batch_size: split a larger ``generate`` into chunks of this many prompts (bounds the cache).
        prefill_tokens: at most this many prompt tokens (rows x padded width) per prefill forward.
        cuda_graphs: capture the decode step in a CUDA graph (default: on when the model is on CUDA).
        bucket_shapes: round the cache's rows up to a power of two and its length up to a multiple of
            256, so that generate calls of a training run reuse a few caches / captured graphs
            (default: as ``cuda_graphs``); else exact rows and a multiple of 64.
        offload_optimizer: ``wake()`` calls ``policy.offload_optimizer()`` and ``sleep()`` calls
            ``policy.onload_optimizer()`` (frees GPU memory for the KV cache during generation).
        sync_every: check "every row finished" on the host every this many decode steps.
    """

    shares_policy_weights = True  # the trainer may skip building the refit stream for this engine

    def __init__(
        self,
        policy: Any = None,
        *,
        model: torch.nn.Module | None = None,
        pad_token_id: int = 0,
        max_batch_size: int | None = None,
        prefill_tokens: int = 16384,
        cuda_graphs: bool | None = None,
        bucket_shapes: bool | None = None,
        offload_optimizer: bool = False,
        sync_every: int = 16,
    ):
        if (policy is None) == (model is None):
            raise ValueError("MegatronEngine needs exactly one of policy= or model=")
        self.policy = policy
        self.model = model if model is not None else policy.model
        self.forward = CachedGPTForward(self.model)
        param = next(self.model.parameters())
        self.device = param.device
        self.pad_token_id = int(pad_token_id)
        self.max_batch_size = max_batch_size
        self.prefill_tokens = max(1, int(prefill_tokens))
        self.cuda_graphs = (self.device.type == "cuda") if cuda_graphs is None else bool(cuda_graphs)
        if self.cuda_graphs and self.device.type != "cuda":
            raise ValueError("MegatronEngine(cuda_graphs=True) needs the model on a CUDA device")
        self.bucket_shapes = self.cuda_graphs if bucket_shapes is None else bool(bucket_shapes)
        self.offload_optimizer = offload_optimizer
        self.sync_every = max(1, int(sync_every))
        self._cache: KVCache | None = None
        self._graph: _DecodeGraph | None = None
        self.graph_error: str | None = None  # why CUDA-graph capture failed, if it did
        self.last_stats: dict[str, float] = {}
        log.info("megatron engine: decoding with the policy's own model in-process (no refit copy), "
                 "device=%s, TP=%d, cuda_graphs=%s", self.device, self._tp()[0], self.cuda_graphs)

    # ------------------------------------------------------------------ interface

    def load_weights(self, stream: WeightStream) -> None:
        """No-op by design: the engine reads the policy's own parameters, so after an optimizer step
        it already samples from the new weights. The stream is not consumed (the trainer need not
        build one for this backend)."""
        return None

    def sleep(self) -> None:
        """Free the KV cache and captured graph for training; onload the optimizer if asked to."""
        self._graph = None
        self._cache = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        if self.offload_optimizer and self.policy is not None and hasattr(self.policy, "onload_optimizer"):
            self.policy.onload_optimizer()

    def wake(self) -> None:
        """Before generation: offload the optimizer state if asked to (the cache comes with generate)."""
        if self.offload_optimizer and self.policy is not None and hasattr(self.policy, "offload_optimizer"):
            self.policy.offload_optimizer()

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams,
        max_new_tokens: Sequence[int] | None = None,
    ) -> list[Generation]:
        budgets, generator = start_generate("MegatronEngine", prompts, params, max_new_tokens, self.device)
        chunk = self.max_batch_size or max(1, len(prompts))
        if prompts:
            chunk = min(chunk, self._rows_that_fit(max(len(p) for p in prompts) + max(budgets) - 1))
        out: list[Generation] = []
        stats = {"prefill_s": 0.0, "decode_s": 0.0, "decode_steps": 0, "generated_tokens": 0}
        was_training = self.model.training
        self.model.eval()
        try:
            with sequence_parallel_off(self.model):
                for start in range(0, len(prompts), chunk):
                    out += self._generate_batch(
                        prompts[start : start + chunk], params, budgets[start : start + chunk], generator, stats
                    )
        finally:
            self.model.train(was_training)
        self.last_stats = stats
        return out

    def _rows_that_fit(self, need_len: int, headroom: float = 0.8) -> int:
        """On CUDA: how many rows of KV cache fit in ``headroom`` x (free + this engine's cache) memory;
        a batch larger than that is generated in chunks instead of failing with out-of-memory."""
        if self.device.type != "cuda":
            return 1 << 30
        f = self.forward
        _, length = self._shape_for(1, need_len)
        elt = next(self.model.parameters()).element_size()
        per_row = len(f.layers) * 2 * f.kv_heads * length * f.head_dim * elt
        free, _ = torch.cuda.mem_get_info(self.device)
        held = self._cache.nbytes() if self._cache is not None else 0
        rows = int(headroom * (free + held) // per_row)
        tp, group, _ = self._tp()
        if tp > 1:  # every TP rank must cut the batch the same way (the chunks run collectives)
            box = torch.tensor([rows], device=self.device)
            dist.all_reduce(box, op=dist.ReduceOp.MIN, group=group)
            rows = int(box)
        if rows < 1:
            raise RuntimeError(f"MegatronEngine: not even one row of KV cache ({per_row / 2**30:.2f} GiB for "
                               f"{length} tokens) fits in GPU memory; lower generation.max_new_tokens or "
                               f"enable offload_optimizer")
        return 1 << (rows.bit_length() - 1) if self.bucket_shapes else rows

    # ------------------------------------------------------------------ internals

    def _tp(self) -> tuple[int, Any, int]:
        """(TP size, TP group, global rank of TP rank 0); (1, None, 0) without megatron groups."""
        from megatron.core import parallel_state

        if not parallel_state.model_parallel_is_initialized():
            return 1, None, 0
        size = parallel_state.get_tensor_model_parallel_world_size()
        if size == 1:
            return 1, None, 0
        return size, parallel_state.get_tensor_model_parallel_group(), \
            parallel_state.get_tensor_model_parallel_src_rank()

    def _all_tp_ranks(self, ok: bool) -> bool:
        """Whether ``ok`` holds on every rank of the TP group (a MIN all-reduce): the ranks must pick the
        same decode path, graph or eager, or their collectives no longer pair up."""
        tp, group, _ = self._tp()
        if tp == 1:
            return ok
        flag = torch.tensor([1 if ok else 0], dtype=torch.int32, device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=group)
        return bool(flag.item())

    def _full_logits(self, local: torch.Tensor) -> torch.Tensor:
        """[b, vocab / tp] -> [b, vocab] float32 on every TP rank."""
        tp, group, _ = self._tp()
        if tp > 1:
            parts = [torch.empty_like(local) for _ in range(tp)]
            dist.all_gather(parts, local.contiguous(), group=group)
            local = torch.cat(parts, dim=-1)
        return local.float()

    def _cache_for(self, batch: int, max_len: int) -> KVCache:
        """Reuse the held cache when it matches (keeps the CUDA graph); else allocate a new one."""
        cache = self._cache
        if cache is not None and cache.batch == batch and cache.max_len == max_len:
            return cache
        self._cache = self._graph = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        dtype = next(p.dtype for n, p in self.model.named_parameters() if "linear_qkv" in n and p.dim() == 2)
        f = self.forward
        self._cache = KVCache.allocate(len(f.layers), batch, f.kv_heads, max_len, f.head_dim, dtype, self.device)
        return self._cache

    def _sample(self, logits: torch.Tensor, params: SamplingParams, generator) -> tuple[torch.Tensor, torch.Tensor]:
        """logits [b, vocab] float32 -> (sampled ids [b], their logprobs [b] under the sampling
        distribution), same on all TP ranks (TP rank 0's ids are broadcast)."""
        sampled, lp = sample_tokens(logits, params, generator)
        tp, group, src = self._tp()
        if tp > 1:
            dist.broadcast(sampled, src=src, group=group)
            lp = sampling_logprobs(logits, params).gather(-1, sampled[:, None]).squeeze(-1)
        return sampled, lp

    def _shape_for(self, batch: int, need_len: int) -> tuple[int, int]:
        """Cache (rows, length) for a batch (see ``bucket_shapes``)."""
        if self.bucket_shapes:
            return 1 << max(0, batch - 1).bit_length(), _round_up(need_len, 256)
        return batch, _round_up(need_len, 64)

    def _generate_batch(self, prompts, params: SamplingParams, budgets: list[int], generator,
                        stats: dict) -> list[Generation]:
        dev = self.device
        real, width = len(prompts), max(len(p) for p in prompts)
        steps = max(budgets)
        # the cache holds prompt + new tokens (the last sampled token is never fed back)
        batch, max_len = self._shape_for(real, width + steps - 1)
        prompts = list(prompts) + [[self.pad_token_id]] * (batch - real)  # filler rows: one step, dropped
        budgets = list(budgets) + [1] * (batch - real)
        cache = self._cache_for(batch, max_len)
        self.forward.ensure_rope(max_len, dev)

        ids = torch.full((batch, width), self.pad_token_id, dtype=torch.long)
        lengths = torch.tensor([len(p) for p in prompts], dtype=torch.long)
        for b, prompt in enumerate(prompts):
            ids[b, width - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
        ids, lengths = ids.to(dev), lengths.to(dev)
        pad = width - lengths
        key_ok = torch.arange(max_len, device=dev)[None, :] >= pad[:, None]  # prompt part; decode part below
        key_ok[:, width:] = False

        t0 = time.perf_counter()
        # a prompt sampled G times (a GRPO group) is prefilled once; its KV cache is forked
        unique, source = shared_prompts(prompts)
        rows_per_chunk = max(1, self.prefill_tokens // width)
        logits_parts = []
        for r0 in range(0, len(unique), rows_per_chunk):
            rows = slice(r0, min(len(unique), r0 + rows_per_chunk))
            picked = torch.tensor(unique[rows], device=dev)
            logits_parts.append(self.forward.prefill(cache, rows, ids[picked], pad[picked]))
        logits = self._full_logits(torch.cat(logits_parts))
        if len(unique) < batch:
            # the unique prompts sit in cache rows [0, U); row b takes row source[b] <= b (gather first)
            index = torch.tensor(source, device=dev)
            for layer in range(cache.data.shape[0]):
                cache.data[layer, :, :, :, :width] = cache.data[layer, :, index, :, :width]
            logits = logits[index]
        _sync(dev)
        t1 = time.perf_counter()
        stats["prefill_rows"] = stats.get("prefill_rows", 0) + len(unique)

        budget_t = torch.tensor(budgets, device=dev)
        stops = torch.tensor(sorted(set(params.stop_token_ids)) or [-1], device=dev)
        out_ids = torch.full((batch, steps), self.pad_token_id, dtype=torch.long, device=dev)
        out_lp = torch.zeros((batch, steps), dtype=torch.float32, device=dev)
        n_out = torch.zeros(batch, dtype=torch.long, device=dev)  # tokens kept per row
        stopped = torch.zeros(batch, dtype=torch.bool, device=dev)
        done = torch.zeros(batch, dtype=torch.bool, device=dev)
        positions = lengths.clone()
        step_fn = None
        n_steps = 0
        for step in range(steps):
            sampled, lp = self._sample(logits, params, generator)
            live = ~done
            out_ids[:, step] = torch.where(live, sampled, self.pad_token_id)
            out_lp[:, step] = torch.where(live, lp, 0.0)
            n_out += live.long()
            is_stop = torch.isin(sampled, stops) & live
            stopped |= is_stop
            done |= is_stop | (n_out >= budget_t)
            n_steps = step + 1
            if step == steps - 1:
                break
            if (step + 1) % self.sync_every == 0 and bool(done.all()):
                break
            feed = sampled.masked_fill(done, self.pad_token_id)
            write = torch.full((1,), width + step, dtype=torch.long, device=dev)
            key_ok[:, width + step] = True
            step_fn = step_fn or self._decode_fn(cache, batch)
            logits = self._full_logits(step_fn(feed, positions, write, key_ok))
            positions += 1
        _sync(dev)
        t2 = time.perf_counter()

        out_ids, out_lp, n_out, stopped = out_ids.cpu(), out_lp.cpu(), n_out.cpu(), stopped.cpu()
        stats["prefill_s"] += t1 - t0
        stats["decode_s"] += t2 - t1
        stats["decode_steps"] += n_steps
        stats["generated_tokens"] += int(n_out[:real].sum())
        stats["cuda_graphs"] = float(self._graph is not None)
        result = []
        for b in range(real):
            n = int(n_out[b])
            tokens = out_ids[b, :n].tolist()
            reason = "stop" if bool(stopped[b]) else "length"
            result.append(Generation(token_ids=tokens, logprobs=out_lp[b, :n].tolist(), finish_reason=reason,
                                     stop_token_id=tokens[-1] if reason == "stop" else None))
        return result

    def _decode_fn(self, cache: KVCache, batch: int) -> Callable[..., torch.Tensor]:
        """The decode step: eager, or a CUDA graph captured for this cache (reused while it is)."""
        if not self.cuda_graphs:
            return lambda tokens, positions, write, key_ok: self.forward.decode(cache, tokens, positions, write,
                                                                                key_ok)
        if self._graph is None or self._graph.cache is not cache:
            graph, error = None, None
            try:
                graph = _DecodeGraph(self.forward, cache, batch)
            except Exception as exc:  # noqa: BLE001 - fall back to eager decoding, loudly
                error = f"{type(exc).__name__}: {exc}"
            if not self._all_tp_ranks(error is None):  # one rank's failure sends every rank to eager
                log.warning("MegatronEngine: CUDA-graph capture of the decode step failed (%s); decoding eagerly "
                            "from now on (cuda_graphs=False)", error or "on another tensor-parallel rank")
                self.cuda_graphs = False
                self.graph_error = error or "capture failed on another tensor-parallel rank"
                self._graph = None
                return self._decode_fn(cache, batch)
            self._graph = graph
        return self._graph


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class _DecodeGraph:
    """``CachedGPTForward.decode`` captured in a CUDA graph for one cache (static shapes).

    Inputs are copied into static buffers, the graph replays, the logits buffer is returned (valid
    until the next replay). Tensor-parallel all-reduces inside the layers are captured too (NCCL
    supports graph capture)."""

    def __init__(self, forward: CachedGPTForward, cache: KVCache, batch: int, warmup: int = 2):
        dev = cache.data.device
        self.cache = cache
        self.tokens = torch.zeros(batch, dtype=torch.long, device=dev)
        self.positions = torch.zeros(batch, dtype=torch.long, device=dev)
        self.write = torch.zeros(1, dtype=torch.long, device=dev)
        self.key_ok = torch.zeros((batch, cache.max_len), dtype=torch.bool, device=dev)
        # warm up on a side stream (as torch.cuda.graphs recommends), writing only to the cache's
        # last position (which decode overwrites before reading it as a valid key)
        self.write.fill_(cache.max_len - 1)
        self.key_ok.fill_(True)  # finite garbage only: an all-masked row would write NaN keys
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                forward.decode(cache, self.tokens, self.positions, self.write, self.key_ok)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: a capture error here cannot be hit by CUDA calls of other threads (Ray, loggers)
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self.logits = forward.decode(cache, self.tokens, self.positions, self.write, self.key_ok)

    def __call__(self, tokens, positions, write, key_ok) -> torch.Tensor:
        self.tokens.copy_(tokens)
        self.positions.copy_(positions)
        self.write.copy_(write)
        self.key_ok.copy_(key_ok)
        self.graph.replay()
        return self.logits


def tokens_per_second(stats: dict[str, float]) -> float:
    """Generated tokens per second of wall time (prefill included) from ``engine.last_stats``."""
    wall = stats.get("prefill_s", 0.0) + stats.get("decode_s", 0.0)
    return stats.get("generated_tokens", 0) / wall if wall > 0 else math.nan
