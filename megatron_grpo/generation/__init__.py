"""Generation engines behind one interface (see base.py), chosen by name.

    make_engine("hf", model=path_or_model)          transformers on the policy's device (CPU tests)
    make_engine("vllm", model=hf_folder, ...)       in-process vLLM, co-located (GPU; megatron-grpo[gpu])
    make_engine("megatron", policy=..., ...)        decode with the policy's own Megatron model
    make_engine("scripted", scripts=[...])          plays given token sequences (agent-loop tests)

Engines are imported only when asked for, so vllm is never imported unless configured.
"""

from __future__ import annotations

from typing import Any

BACKENDS = ("hf", "vllm", "megatron", "scripted")


def make_engine(backend: str, **kwargs: Any):
    """Build the engine named ``backend`` with its keyword arguments (see each engine's class)."""
    if backend == "hf":
        from megatron_grpo.generation.hf import HFEngine

        return HFEngine(**kwargs)
    if backend == "vllm":
        from megatron_grpo.generation.vllm_engine import VLLMEngine

        return VLLMEngine(**kwargs)
    if backend == "scripted":
        from megatron_grpo.generation.scripted import ScriptedEngine

        return ScriptedEngine(**kwargs)
    if backend == "megatron":
        try:
            from megatron_grpo.generation import megatron_engine
        except ModuleNotFoundError as exc:
            if exc.name != "megatron_grpo.generation.megatron_engine":
                raise
            raise ValueError(
                "generation.backend=megatron needs megatron_grpo/generation/megatron_engine.py, which is "
                "not in this installation; use generation.backend=hf (CPU) or vllm (GPU)"
            ) from exc
        return megatron_engine.MegatronEngine(**kwargs)
    raise ValueError(f"unknown generation backend {backend!r}; choose one of {', '.join(BACKENDS)}")
