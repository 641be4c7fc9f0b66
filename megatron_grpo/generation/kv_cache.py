"""A static KV cache and the cached forward pass through a megatron-core GPTModel.

Why our own cached forward instead of ``GPTModel.forward(inference_context=StaticInferenceContext)``
(megatron-core 0.16.1, read in ``transformer/attention.py``):

* the static context stores keys *before* RoPE and re-applies RoPE to the whole key cache at every
  decode step (several extra elementwise passes over the cache per layer and token);
* it shares one position per step across the batch, so prompts of different lengths are decoded in
  lock step through their tails (Megatron-LM's static engine) instead of one batched prefill;
* its CUDA-graph path requires ``flash_decode`` (flash-attn), and the dynamic engine needs
  flash-attn / flashinfer; neither exists on CPU nor in our GPU image.

This module walks the model's OWN submodules (embedding, each layer's input norm, fused QKV
projection with QK-norm via ``get_query_key_value_tensors``, ``linear_proj``, bias-dropout-add, the
layer's MLP path, the final norm and the output layer), so the weights and tensor-parallel
collectives are exactly the trained model's; only attention over the cache is done here, with
torch SDPA. Keys are cached after RoPE, each row has its own positions (left padding is exact),
and a decode step has static shapes (CUDA-graph capturable).

Shapes: hidden states are megatron's ``[s, b, h]``; the cache holds, per layer, keys and values
``[b, kv_heads_per_tp_rank, max_len, head_dim]``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class KVCache:
    """Keys/values of every layer: ``data[layer, 0|1]`` is ``[batch, kv_heads, max_len, head_dim]``."""

    data: torch.Tensor

    @property
    def batch(self) -> int:
        return self.data.shape[2]

    @property
    def max_len(self) -> int:
        return self.data.shape[4]

    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()

    @staticmethod
    def allocate(
        num_layers: int, batch: int, kv_heads: int, max_len: int, head_dim: int,
        dtype: torch.dtype, device: torch.device | str | None,
    ) -> KVCache:
        shape = (num_layers, 2, batch, kv_heads, max_len, head_dim)
        return KVCache(torch.zeros(shape, dtype=dtype, device=device))


def _rotate_half(t: torch.Tensor) -> torch.Tensor:
    x1, x2 = torch.chunk(t, 2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class CachedGPTForward:
    """Prefill and one-token decode through a GPTModel (first and last pipeline stage) with a KVCache.

    ``model``: the bare ``GPTModel`` (not the DDP / Float16Module wrapper); it is only read, never
    copied, so after an optimizer step the next call uses the new weights.
    """

    def __init__(self, model: torch.nn.Module):
        cfg = model.config
        if not (getattr(model, "pre_process", True) and getattr(model, "post_process", True)):
            raise ValueError(
                "the megatron generation engine needs the whole model on each rank "
                "(pipeline_model_parallel_size=1); use policy.pipeline_model_parallel_size=1 "
                "(tensor parallelism for model size) or generation.backend=vllm/hf"
            )
        if getattr(model, "position_embedding_type", "rope") != "rope":
            raise ValueError(f"CachedGPTForward supports RoPE models, got {model.position_embedding_type!r}")
        if cfg.rotary_interleaved or cfg.multi_latent_attention or getattr(cfg, "attention_output_gate", False):
            raise ValueError("CachedGPTForward: interleaved RoPE, MLA and gated attention are not supported")
        self.model = model
        self.layers = list(model.decoder.layers)
        attn = self.layers[0].self_attention
        self.q_heads = attn.num_attention_heads_per_partition
        self.kv_heads = attn.num_query_groups_per_partition
        self.head_dim = attn.hidden_size_per_attention_head
        self.scale = cfg.softmax_scale if cfg.softmax_scale is not None else self.head_dim**-0.5
        self._rope_table: torch.Tensor | None = None  # [max_len, rot_dim] float32 angles

    # ------------------------------------------------------------------ helpers

    def ensure_rope(self, max_len: int, device: torch.device | str | None) -> None:
        """Build the RoPE angle table for positions < max_len (megatron's own ``rotary_pos_emb``
        table, the one training uses). Called before prefill/decode, never inside a CUDA graph."""
        table = self._rope_table
        if table is None or table.shape[0] < max_len or table.device != torch.device(device):
            size = max(max_len, 2 * (table.shape[0] if table is not None else 0), 256)
            emb = self.model.rotary_pos_emb(size)  # [size, 1, 1, rot_dim]
            self._rope_table = emb[:, 0, 0, :].float().to(device)

    def rope_angles(self, positions: torch.Tensor) -> torch.Tensor:
        """positions [b, s] (int64, < the ensure_rope length) -> angles [s, b, 1, rot_dim] float32."""
        return self._rope_table[positions].transpose(0, 1)[:, :, None, :]

    @staticmethod
    def _apply_rope(t: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
        """megatron's unfused RoPE (rope_utils._apply_rotary_pos_emb_bshd) with per-row angles."""
        rot = angles.shape[-1]
        t_rot, t_pass = t[..., :rot], t[..., rot:]
        cos, sin = torch.cos(angles).to(t.dtype), torch.sin(angles).to(t.dtype)
        t_rot = t_rot * cos + _rotate_half(t_rot) * sin
        return torch.cat((t_rot, t_pass), dim=-1) if t_pass.shape[-1] else t_rot

    def _embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [b, s] -> [s, b, h] (TP all-reduced, never sequence-scattered here)."""
        emb = self.model.embedding.word_embeddings(input_ids)
        return emb.transpose(0, 1).contiguous()

    def _attention(self, layer, hidden: torch.Tensor, angles: torch.Tensor, cache: KVCache, index: int,
                   rows: slice, write: torch.Tensor | slice, attn_keys: int,
                   mask: torch.Tensor) -> torch.Tensor:
        """Self-attention of one layer with the cache; returns the layer's hidden after the residual.

        ``write`` selects the cache positions of the new keys (a slice for prefill, a 1-element
        index tensor for decode); attention reads keys [0, attn_keys) of ``rows`` under ``mask``
        ([b, 1, s, attn_keys] bool, True = attend; None = causal without padding, prefill only).
        """
        attn = layer.self_attention
        residual = hidden
        x = layer.input_layernorm(hidden)
        q, k, v = attn.get_query_key_value_tensors(x)  # [s, b, heads, d] each, QK-norm applied
        q = self._apply_rope(q, angles)
        k = self._apply_rope(k, angles)
        k_cache, v_cache = cache.data[index, 0], cache.data[index, 1]
        k_new = k.permute(1, 2, 0, 3)  # [b, kv, s, d]
        v_new = v.permute(1, 2, 0, 3)
        if isinstance(write, slice):
            k_cache[rows, :, write] = k_new
            v_cache[rows, :, write] = v_new
        else:
            k_cache.index_copy_(2, write, k_new)
            v_cache.index_copy_(2, write, v_new)
        keys = k_cache[rows, :, :attn_keys]
        values = v_cache[rows, :, :attn_keys]
        s, b = q.shape[0], q.shape[1]
        group = self.q_heads // self.kv_heads
        if s == 1:
            # decode: the query heads of one KV group become that group's "sequence" (no GQA expand)
            qg = q[0].view(b, self.kv_heads, group, self.head_dim)
            out = F.scaled_dot_product_attention(qg, keys, values, attn_mask=mask, scale=self.scale)
            out = out.reshape(1, b, self.q_heads * self.head_dim)
        else:
            qh = q.permute(1, 2, 0, 3)  # [b, heads, s, d]
            if mask is None:  # causal, no padding: GQA inside SDPA (flash kernel on GPU)
                out = F.scaled_dot_product_attention(qh, keys, values, is_causal=True, scale=self.scale,
                                                     enable_gqa=group > 1)
            else:  # padded rows need a mask; expand the KV heads so SDPA's masked kernels apply
                if group > 1:
                    keys = keys.repeat_interleave(group, dim=1)
                    values = values.repeat_interleave(group, dim=1)
                out = F.scaled_dot_product_attention(qh, keys, values, attn_mask=mask, scale=self.scale)
            out = out.permute(2, 0, 1, 3).reshape(s, b, self.q_heads * self.head_dim)
        out_with_bias = attn.linear_proj(out)
        return layer.self_attn_bda(False, layer.config.bias_dropout_fusion)(
            out_with_bias, residual, layer.hidden_dropout
        )

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [1, b, h] -> this TP rank's logits [b, vocab / tp]."""
        model = self.model
        final_norm = getattr(model.decoder, "final_layernorm", None)
        if final_norm is not None:
            hidden = final_norm(hidden)
        weight = model.shared_embedding_or_output_weight() if model.share_embeddings_and_output_weights else None
        logits, _ = model.output_layer(hidden, weight=weight)
        return logits[0]

    def _layers(self, hidden, angles, cache, rows, write, attn_keys, mask) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            hidden = self._attention(layer, hidden, angles, cache, i, rows, write, attn_keys, mask)
            hidden = layer._forward_mlp(hidden)
        return hidden

    # ------------------------------------------------------------------ public

    def prefill(self, cache: KVCache, rows: slice, input_ids: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """Run left-padded prompts through the model and fill cache positions [0, width) of ``rows``.

        input_ids: [b, width] int64 left-padded; pad: [b] number of pad tokens per row.
        Returns the logits of the last position [b, vocab / tp] (this TP rank's shard).
        """
        b, width = input_ids.shape
        t = torch.arange(width, device=input_ids.device)
        positions = (t[None, :] - pad[:, None]).clamp(min=0)
        if bool((pad == 0).all()):
            mask = None  # no padding: plain causal attention (lets SDPA pick its flash kernel)
        else:
            key_ok = t[None, :] >= pad[:, None]  # [b, width]
            causal = t[None, :, None] >= t[None, None, :]  # [1, q, k]
            diag = torch.eye(width, dtype=torch.bool, device=input_ids.device)[None]
            # a pad query sees only itself (an all-masked row would give NaN); real queries never see pads
            mask = ((causal & key_ok[:, None, :]) | diag)[:, None]
        hidden = self._embed(input_ids)
        hidden = self._layers(hidden, self.rope_angles(positions), cache, rows, slice(0, width), width, mask)
        return self._logits(hidden[-1:])

    def decode(self, cache: KVCache, tokens: torch.Tensor, positions: torch.Tensor, write: torch.Tensor,
               key_ok: torch.Tensor) -> torch.Tensor:
        """One token per row: tokens [b], positions [b], write [1] (cache index of this token, the
        same for every row), key_ok [b, max_len] bool (cache positions that hold real tokens; the
        written position must be included). Returns logits [b, vocab / tp]. Static shapes."""
        b = tokens.shape[0]
        hidden = self._embed(tokens[:, None])
        angles = self.rope_angles(positions[:, None])
        mask = key_ok[:, None, None, :]
        hidden = self._layers(hidden, angles, cache, slice(0, b), write, cache.max_len, mask)
        return self._logits(hidden)


@contextlib.contextmanager
def sequence_parallel_off(model: torch.nn.Module) -> Iterator[None]:
    """Run the tensor-parallel layers without sequence parallelism (decode has one token per row,
    which cannot be split over TP ranks); restores the flags afterwards. megatron-core does the same
    to its output layer for inference (gpt_model.py, ``sequence_parallel_override``)."""
    changed = []
    for module in model.modules():
        for attr in ("sequence_parallel", "reduce_scatter_embeddings"):
            if getattr(module, attr, None) is True:
                setattr(module, attr, False)
                changed.append((module, attr))
    try:
        yield
    finally:
        for module, attr in changed:
            setattr(module, attr, True)
