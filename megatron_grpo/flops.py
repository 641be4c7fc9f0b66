"""Training FLOPs of a Qwen3-shaped decoder, for the TFLOP/s and MFU metrics.

Counts matrix multiplies only (2 FLOPs per multiply-add); norms, RoPE, softmax and the embedding
lookup are ignored, as in the usual MFU convention. Per layer and token, forward:
    q, k, v projections   2 * h * (n_q + 2 * n_kv) * d
    output projection     2 * n_q * d * h
    scores + values       4 * n_q * d * L   (L = attended positions: (S + 1) / 2 on average
                                              for a causal sequence of length S, else S)
    SwiGLU MLP            6 * h * f          (gate, up, down)
plus the logits, 2 * h * V, once per token. Training = forward + backward (2x forward) = 3x, or 4x
when activations are recomputed in the backward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Dense bf16 peak per GPU (FLOP/s, no sparsity), keyed by a substring of torch.cuda.get_device_name().
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,  # SXM; the PCIe card is lower (756e12)
    "A100": 312e12,
}


@dataclass(frozen=True)
class DecoderShape:
    """The sizes that decide a Qwen3-style decoder's FLOPs."""

    hidden_size: int
    num_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    ffn_hidden_size: int
    vocab_size: int

    @classmethod
    def from_hf_config(cls, config: Any) -> DecoderShape:
        """From a transformers Qwen3Config (or anything with the same attribute names)."""
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(
            hidden_size=config.hidden_size,
            num_layers=config.num_hidden_layers,
            num_attention_heads=heads,
            num_key_value_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=head_dim,
            ffn_hidden_size=config.intermediate_size,
            vocab_size=config.vocab_size,
        )


def forward_flops_per_token(shape: DecoderShape, seq_len: int, *, causal: bool = True) -> float:
    """Forward FLOPs per token, averaged over a sequence of ``seq_len`` tokens."""
    h, d = shape.hidden_size, shape.head_dim
    n_q, n_kv = shape.num_attention_heads, shape.num_key_value_heads
    attended = (seq_len + 1) / 2 if causal else seq_len
    per_layer = (
        2 * h * (n_q + 2 * n_kv) * d  # q, k, v
        + 2 * n_q * d * h  # output projection
        + 4 * n_q * d * attended  # q.k^T and attention-weighted values
        + 6 * h * shape.ffn_hidden_size  # SwiGLU
    )
    return shape.num_layers * per_layer + 2 * h * shape.vocab_size


def training_flops_per_token(
    shape: DecoderShape, seq_len: int, *, causal: bool = True, recompute: bool = False
) -> float:
    """Forward + backward FLOPs per token (3x forward; 4x with full activation recompute)."""
    return (4.0 if recompute else 3.0) * forward_flops_per_token(shape, seq_len, causal=causal)


def training_flops(
    shape: DecoderShape, seq_lens: list[int], *, causal: bool = True, recompute: bool = False
) -> float:
    """Total training FLOPs of one pass over sequences of the given (unpadded) lengths."""
    return sum(n * training_flops_per_token(shape, n, causal=causal, recompute=recompute) for n in seq_lens)


def peak_flops(device_name: str) -> float | None:
    """Dense bf16 peak FLOP/s of one GPU from its name, or None when unknown (no MFU then)."""
    for key, value in PEAK_BF16_FLOPS.items():
        if key in device_name:
            return value
    return None


def mfu(flops: float, seconds: float, num_gpus: int, peak_per_gpu: float | None) -> float | None:
    """Model FLOPs utilization: achieved FLOP/s over the peak of all GPUs; None without a peak."""
    if peak_per_gpu is None or seconds <= 0 or num_gpus < 1:
        return None
    return flops / seconds / (num_gpus * peak_per_gpu)
