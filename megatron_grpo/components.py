"""Build the trainer's parts from the config: policy, tokenizer, generation engine, environment pool.

Each builder takes only the config sections it needs and returns a plain object; the trainer wires
them together. Nothing here runs at import time.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from megatron_grpo import cpu_compat
from megatron_grpo.config import Config, EnvConfig, GenerationConfig

log = logging.getLogger(__name__)

SPMD_BACKENDS = ("megatron", "vllm")  # every tensor-parallel rank of a replica decodes together


def resolve_model_dir(name: str) -> str:
    """A local HF folder as is; a hub id through the HF cache (``snapshot_download``), with an error
    that says how to provide the weights when the hub cannot be reached."""
    if Path(name).is_dir():
        return str(Path(name))
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(name)
    except Exception as exc:  # offline, unknown repo, gated
        raise FileNotFoundError(
            f"policy.model_name={name!r} is not a local folder and could not be fetched from the "
            f"Hugging Face hub ({type(exc).__name__}: {exc}); download it on a machine with access "
            f"(huggingface-cli download {name}) and set policy.model_name=/path/to/folder"
        ) from exc


def load_tokenizer(cfg: Config) -> Any:
    from transformers import AutoTokenizer

    name = cfg.policy.tokenizer_name or cfg.policy.model_name
    return AutoTokenizer.from_pretrained(resolve_model_dir(name))


def resolve_backend(gen: GenerationConfig) -> str:
    """``generation.backend`` on this machine (``auto`` resolved; see ``generation.choose_backend``)."""
    import importlib.util

    from megatron_grpo.generation import choose_backend

    try:
        has_vllm = importlib.util.find_spec("vllm") is not None
    except ValueError:
        has_vllm = False
    backend, why = choose_backend(gen.backend, cpu_compat.cuda_enabled(), has_vllm)
    log.info("%s", why)
    return backend


def build_engine(backend: str, gen: GenerationConfig, policy: Any, model_dir: str, pad_id: int) -> Any:
    """The generation engine on this rank. ``hf`` starts from the policy's initial HF folder and is
    refit from the policy's weight stream after every step; ``megatron`` decodes with the policy's
    own model; ``vllm`` is in-process vLLM on the same GPU (or CPU)."""
    from megatron_grpo.generation import make_engine

    if backend == "hf":
        device = policy.device or "cpu"
        dtype = torch.bfloat16 if getattr(policy, "bf16", False) else torch.float32
        return make_engine("hf", model=model_dir, device=device, dtype=dtype, pad_token_id=pad_id)
    if backend == "megatron":
        return make_engine("megatron", policy=policy, pad_token_id=pad_id,
                           offload_optimizer=policy.cfg.optimizer.offload_during_generation)
    if backend == "vllm":
        return make_engine(
            "vllm",
            model=model_dir,
            tensor_parallel_size=policy.cfg.tensor_model_parallel_size,
            dtype="bfloat16" if getattr(policy, "bf16", False) else "float32",
            gpu_memory_utilization=gen.gpu_memory_utilization,
            cpu_kv_cache_gib=gen.cpu_kv_cache_gib,
            max_model_len=gen.max_model_len,
            enable_prefix_caching=gen.enable_prefix_caching,
        )
    raise ValueError(f"generation.backend={backend!r}: choose auto, hf, megatron or vllm")


def build_env_pool(env: EnvConfig, ray_address: str | None) -> Any:
    """A Ray actor pool with ``env.num_actors`` actors, or in-process episodes when it is 0."""
    from environment.pool import LocalEnvPool, RayEnvPool

    if env.num_actors <= 0:
        return LocalEnvPool(env.data_dir)
    return RayEnvPool(num_actors=env.num_actors, data_dir=env.data_dir, ray_address=ray_address)
