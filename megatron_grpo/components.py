"""Build the trainer's parts from the config: policy, tokenizer, generation engine, environment pool.

Each builder takes only the config sections it needs and returns a plain object; the trainer wires
them together. Nothing here runs at import time.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

from megatron_grpo import cpu_compat
from megatron_grpo.config import Config, EnvConfig, GenerationConfig, UserError

log = logging.getLogger(__name__)

SPMD_BACKENDS = ("megatron", "vllm")  # every tensor-parallel rank of a replica decodes together


class ModelFolderError(UserError, FileNotFoundError):
    """A model or tokenizer folder that is missing or cannot be loaded; names the setting and the fix."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def resolve_model_dir(name: str, setting: str = "policy.model_name") -> str:
    """A local HF folder as is; a hub id through the HF cache (``snapshot_download``), with an error
    that says how to provide the weights when the hub cannot be reached."""
    path = Path(name)
    if path.is_dir():
        if not (path / "config.json").is_file() and setting == "policy.model_name":
            raise ModelFolderError(
                f"{setting}={name}: the folder has no config.json; point {setting} at a Hugging Face model "
                f"folder (config.json + *.safetensors, as save_pretrained writes it)"
            )
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:  # a path, not a hub id ("org/name")
        raise ModelFolderError(f"{setting}={name}: no such folder; point {setting} at a Hugging Face "
                               f"model folder or a hub id like Qwen/Qwen3-4B-Instruct-2507")
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(name)
    except Exception as exc:  # offline, unknown repo, gated
        raise ModelFolderError(
            f"{setting}={name!r} is not a local folder and could not be fetched from the Hugging Face hub "
            f"({_first_line(exc)}); download it where the hub is reachable (huggingface-cli download "
            f"{name}) and set {setting}=/path/to/folder"
        ) from exc


def load_tokenizer(cfg: Config) -> Any:
    """The policy's tokenizer; it must carry a chat template (prompts are rendered with it)."""
    from transformers import AutoTokenizer

    setting = "policy.tokenizer_name" if cfg.policy.tokenizer_name else "policy.model_name"
    name = cfg.policy.tokenizer_name or cfg.policy.model_name
    folder = resolve_model_dir(name, setting)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, TypeError) as exc:
        raise ModelFolderError(
            f"{setting}={name}: cannot load a tokenizer from {folder} ({_first_line(exc)}); point "
            f"{setting} at a folder with tokenizer.json / tokenizer_config.json"
        ) from None
    if not getattr(tokenizer, "chat_template", None):
        raise ModelFolderError(
            f"{setting}={name}: the tokenizer has no chat template (tokenizer_config.json 'chat_template' or "
            f"chat_template.jinja); use a chat/instruct model's tokenizer, e.g. policy.tokenizer_name=FOLDER"
        )
    return tokenizer


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


def build_env_pool(env: EnvConfig, ray_address: str | None, teardown: ExitStack | None = None,
                   pools: int = 1) -> Any:
    """A Ray actor pool with ``env.num_actors`` actors, or in-process episodes when it is 0.
    ``pools``: how many ranks build one on the same Ray cluster (they split its CPUs).

    With ``teardown``, the pool's actors are killed on release, and a Ray this call started (none was
    running in this process) is shut down with its daemons; a Ray it only connected to is left up."""
    from environment.pool import LocalEnvPool, RayEnvPool

    data_dir = sandbox_dir(env)
    if env.num_actors <= 0:
        return LocalEnvPool(data_dir)
    import ray

    ray_was_up = ray.is_initialized()
    if teardown is not None and not ray_was_up:
        teardown.callback(ray.shutdown)  # registered first: runs after the pool's actors are killed
    pool = RayEnvPool(num_actors=env.num_actors, data_dir=data_dir, ray_address=ray_address,
                      pools_sharing_cluster=pools)
    if teardown is not None:
        teardown.callback(pool.shutdown)
    return pool


def release_engine(engine: Any) -> None:
    """Free a generation engine's processes and memory (engines without a ``shutdown`` hold none)."""
    shutdown = getattr(engine, "shutdown", None)
    if callable(shutdown):
        shutdown()


def sandbox_dir(env: EnvConfig) -> str:
    """``env.data_dir``, else WORKPLACE_DATA_DIR or the download cache; a UserError naming the fix when
    the folder is missing (checked here, before any actor starts)."""
    from environment.workplace.data_dir import FETCH_HINT, default_data_dir

    if env.data_dir is None:
        try:
            return default_data_dir()
        except FileNotFoundError as exc:
            raise UserError(f"env.data_dir is not set and {exc}") from None
    if not (Path(env.data_dir) / "processed").is_dir():
        raise UserError(f"env.data_dir={env.data_dir}: not a sandbox folder (no processed/); {FETCH_HINT}")
    return env.data_dir
