"""Tiny Qwen3 models made locally with transformers (random init, fixed seed; nothing downloaded).

Used by the tests, the CPU demo and the benchmarks' smoke runs. The shapes keep every feature
of the real family (GQA with 2 query groups, QK RMSNorm, SwiGLU, RoPE, head_dim != hidden/heads)
while staying small enough for two CPU processes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def tiny_qwen3_config(
    vocab_size: int,
    *,
    tie_word_embeddings: bool = False,
    num_layers: int = 2,
    hidden: int = 64,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    head_dim: int = 16,
    ffn_hidden: int = 128,
    max_position_embeddings: int = 512,
    rope_theta: float = 1_000_000.0,
    **overrides: Any,
):
    """A ``transformers.Qwen3Config`` of the given tiny shape (``overrides`` go to the config)."""
    from transformers import Qwen3Config

    kwargs: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=ffn_hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=head_dim,
        max_position_embeddings=max_position_embeddings,
        rope_theta=rope_theta,
        rms_norm_eps=1e-6,
        tie_word_embeddings=tie_word_embeddings,
        attention_bias=False,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    kwargs.update(overrides)
    return Qwen3Config(**kwargs)


def save_tiny_qwen3(
    out_dir: str | Path,
    vocab_size: int,
    *,
    tie_word_embeddings: bool = False,
    seed: int = 0,
    tokenizer: Any | None = None,
    init_std: float = 0.5,
    **kw: Any,
) -> str:
    """Build a random tiny ``Qwen3ForCausalLM``, ``save_pretrained`` it to ``out_dir``; return the path.

    ``init_std`` is larger than the usual 0.02 so that logits differ visibly between tokens and a
    wrong weight mapping cannot pass a parity test by accident. Norm weights are randomised too
    (they are ones at init) for the same reason. ``tokenizer`` (any HF tokenizer) is saved next
    to the weights when given. ``kw`` goes to ``tiny_qwen3_config``.
    """
    import torch
    from transformers import Qwen3ForCausalLM

    config = tiny_qwen3_config(vocab_size, tie_word_embeddings=tie_word_embeddings, **kw)
    config.initializer_range = init_std
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config).float().eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.2 * torch.randn(param.shape, generator=generator))
            else:
                param.copy_(init_std * torch.randn(param.shape, generator=generator) / (param.shape[-1] ** 0.5))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return str(out)
