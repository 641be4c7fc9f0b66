"""Qwen3-family megatron-core GPTModel built from a Hugging Face config.

What is mapped from config.json: layers, hidden size, heads, query groups (GQA), head_dim
(``kv_channels``), FFN size (SwiGLU), RMSNorm epsilon, QK RMSNorm, RoPE theta, attention bias,
and tied or untied embeddings (``tie_word_embeddings``). RoPE scaling and sliding-window
attention are refused with a clear error (the Qwen3 dense checkpoints use neither).

Two layer specs:
  local               megatron-core's local modules, with (a) core attention through torch
                      ``scaled_dot_product_attention`` (flash / memory-efficient kernels on GPU,
                      works on CPU; the local unfused attention runs out of memory at seq 4096)
                      and (b) an RMSNorm that computes in fp32 like the HF model and supports
                      sequence parallelism. Runs on CPU and GPU.
  transformer_engine  TransformerEngine's fused spec (GPU only; imported only when chosen).

Vocabulary padding: megatron's vocab-parallel embedding and output layer need the vocabulary
divisible by TP. When it is not, it is padded to the next multiple of TP; the padded rows are
zero on import and dropped on export, and the padded logit columns are set to a large negative
value by a forward hook on the output layer, so softmax, log-probs and sampling never see them.
``model.hf_vocab_size`` holds the real size (Qwen3 checkpoints' 151936 needs no padding).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from megatron_grpo import cpu_compat, shared_prefix
from megatron_grpo.distributed import validate_layout

SUPPORTED_MODEL_TYPES = ("qwen3",)
IMPLS = ("local", "transformer_engine")


class UnsupportedModelError(ValueError):
    """An HF config or layout this model builder does not support; the message names the setting."""


def hf_config_dict(hf_config: Any) -> dict[str, Any]:
    """A plain dict from a ``PretrainedConfig``, a dict, a config.json path or a model folder."""
    if isinstance(hf_config, dict):
        return dict(hf_config)
    if isinstance(hf_config, (str, Path)):
        path = Path(hf_config)
        path = path / "config.json" if path.is_dir() else path
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"no Hugging Face config at {path}") from None
    if hasattr(hf_config, "to_dict"):
        return hf_config.to_dict()
    raise TypeError(f"expected a HF config (dict, PretrainedConfig or path), got {type(hf_config).__name__}")


def rope_theta(cfg: dict[str, Any]) -> float:
    """RoPE base from either the transformers<5 (``rope_theta``) or >=5 (``rope_parameters``) form."""
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or {}
    rope_type = params.get("rope_type") or params.get("type") or scaling.get("rope_type") or scaling.get("type")
    if rope_type not in (None, "default"):
        raise UnsupportedModelError(
            f"config.json: rope type {rope_type!r} is not supported (only the default RoPE of the Qwen3 "
            "dense models); remove rope_scaling or use a model without it"
        )
    return float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))


def padded_vocab_size(vocab_size: int, tp: int) -> int:
    """The vocabulary rounded up to a multiple of ``tp`` (megatron's vocab-parallel layers need it)."""
    return int(math.ceil(vocab_size / tp) * tp)


def _check_supported(cfg: dict[str, Any]) -> None:
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"config.json: model_type {model_type!r} is not supported; expected one of {SUPPORTED_MODEL_TYPES}"
        )
    if cfg.get("use_sliding_window"):
        raise UnsupportedModelError("config.json: use_sliding_window=true is not supported; set it to false")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ValueError(f"config.json: hidden_act {cfg['hidden_act']!r} is not supported (Qwen3 uses silu)")


def transformer_config_from_hf(
    hf_config: Any,
    *,
    tp: int,
    pp: int,
    sequence_parallel: bool = False,
    params_dtype: torch.dtype = torch.float32,
    **overrides: Any,
):
    """megatron ``TransformerConfig`` equal to the HF Qwen3 config, for a TP x PP layout.

    ``params_dtype`` torch.bfloat16 also sets ``bf16=True``. ``overrides`` are passed to
    ``TransformerConfig`` last (e.g. ``recompute_granularity="full"``, ``variable_seq_lengths=True``).
    Raises ValueError naming the fix when heads, query groups or layers do not divide by TP / PP.
    """
    from megatron.core.transformer import TransformerConfig

    cfg = hf_config_dict(hf_config)
    _check_supported(cfg)
    rope_theta(cfg)  # refuses unsupported RoPE variants early
    heads = cfg["num_attention_heads"]
    groups = cfg.get("num_key_value_heads") or heads
    validate_layout(tp * pp, tp, pp, num_attention_heads=heads, num_query_groups=groups,
                    num_layers=cfg["num_hidden_layers"])
    kwargs: dict[str, Any] = dict(
        num_layers=cfg["num_hidden_layers"],
        hidden_size=cfg["hidden_size"],
        num_attention_heads=heads,
        num_query_groups=groups,
        kv_channels=cfg.get("head_dim") or cfg["hidden_size"] // heads,
        ffn_hidden_size=cfg["intermediate_size"],
        normalization="RMSNorm",
        layernorm_epsilon=cfg.get("rms_norm_eps", 1e-6),
        qk_layernorm=True,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=bool(cfg.get("attention_bias", False)),
        hidden_dropout=0.0,
        attention_dropout=float(cfg.get("attention_dropout", 0.0) or 0.0),
        init_method_std=cfg.get("initializer_range", 0.02),
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        sequence_parallel=bool(sequence_parallel and tp > 1),
        params_dtype=params_dtype,
        pipeline_dtype=params_dtype,
        bf16=params_dtype == torch.bfloat16,
        fp16=params_dtype == torch.float16,
        use_cpu_initialization=not cpu_compat.cuda_enabled(),
    )
    kwargs.update(overrides)
    return TransformerConfig(**kwargs)


class RMSNorm(torch.nn.Module):
    """RMSNorm computed in fp32 and cast back before the weight, as HF ``Qwen3RMSNorm`` does.

    Built by megatron's ``build_module(spec, config=, hidden_size=, eps=)``. With sequence
    parallelism the weight is tagged ``sequence_parallel`` so ``finalize_model_grads`` sums its
    gradient over TP (megatron's torch-norm wrapper refuses sequence parallelism instead).
    """

    def __init__(self, config, hidden_size: int, eps: float = 1e-6, **unused: Any):
        super().__init__()
        device = "cpu" if config.use_cpu_initialization else torch.cuda.current_device()
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype, device=device))
        self.eps = eps
        self.hidden_size = hidden_size
        if config.sequence_parallel:
            self.weight.sequence_parallel = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = F.rms_norm(x.float(), (self.hidden_size,), None, self.eps).to(x.dtype)
        return self.weight * normed


class SDPAttention(torch.nn.Module):
    """Core attention through ``torch.nn.functional.scaled_dot_product_attention``.

    Contract (megatron core-attention): query ``[sq, b, heads/tp, d]``, key/value
    ``[sk, b, groups/tp, d]`` -> ``[sq, b, heads/tp * d]``. GQA is handled by SDPA
    (``enable_gqa``), never by materialising repeated keys. Masking: with ``attention_mask``
    (bool, broadcastable to ``[b, 1, sq, sk]``, True = masked out, megatron's convention) that
    mask is used; otherwise causal, aligned to the bottom right when ``sq < sk`` (decoding with a
    KV cache). A 1-D int64 ``attention_mask`` is a shared-prefix layout descriptor (one packed
    ``[prefix | rest_1 .. rest_G]`` row, see shared_prefix.py). Packed sequences (THD
    ``packed_seq_params``) are not supported by this path: pass a block-diagonal ``attention_mask``
    instead, or use the TransformerEngine spec.
    """

    def __init__(self, config, layer_number: int, attn_mask_type, attention_type: str,
                 attention_dropout: float | None = None, softmax_scale: float | None = None,
                 cp_comm_type: str | None = None, pg_collection: Any = None, **unused: Any):
        super().__init__()
        if config.context_parallel_size != 1:
            raise UnsupportedModelError("context parallelism needs the transformer_engine spec")
        self.config = config
        self.scale = softmax_scale
        self.dropout = config.attention_dropout if attention_dropout is None else attention_dropout

    def forward(self, query, key, value, attention_mask=None, attn_mask_type=None,
                attention_bias=None, packed_seq_params=None):
        if packed_seq_params is not None:
            raise UnsupportedModelError(
                "packed sequences (packed_seq_params) are not supported by the local SDPA attention; "
                "pass a block-diagonal attention_mask or use transformer_impl=transformer_engine"
            )
        if attention_bias is not None:
            raise UnsupportedModelError("attention_bias is not supported by the local SDPA attention")
        if shared_prefix.is_layout(attention_mask):  # one packed [prefix | rest_1 .. rest_G] row
            return shared_prefix.attention(query, key, value, attention_mask, self.scale,
                                           self.dropout if self.training else 0.0)
        sq, sk = query.shape[0], key.shape[0]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [s, b, n, d] -> [b, n, s, d]
        mask, causal = None, False
        if attention_mask is not None:
            mask = ~attention_mask.to(torch.bool)
        elif sq == sk:
            causal = True
        else:
            mask = torch.ones(sq, sk, dtype=torch.bool, device=q.device).tril(diagonal=sk - sq)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, scale=self.scale, enable_gqa=True,
            dropout_p=self.dropout if self.training else 0.0,
        )
        b, n, s, d = out.shape
        return out.permute(2, 0, 1, 3).reshape(s, b, n * d)


def qwen3_layer_spec(config, impl: str = "local"):
    """The block spec for this rank's PP stage: ``TransformerBlockSubmodules`` for GPTModel."""
    from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build

    if impl == "transformer_engine":
        try:
            import transformer_engine  # noqa: F401
        except ImportError as e:
            raise ImportError(
                "transformer_impl=transformer_engine but transformer_engine is not importable "
                f"({e}); install transformer-engine[pytorch] or use transformer_impl=local"
            ) from None
        from megatron.core.extensions.transformer_engine import TENorm
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

        layer = get_gpt_layer_with_transformer_engine_spec(qk_layernorm=True)
        final_norm = TENorm
    elif impl == "local":
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

        layer = get_gpt_layer_local_spec(qk_layernorm=True, normalization="RMSNorm")
        sub = layer.submodules
        sub.input_layernorm = RMSNorm
        sub.pre_mlp_layernorm = RMSNorm
        sub.self_attention.submodules.core_attention = SDPAttention
        sub.self_attention.submodules.q_layernorm = RMSNorm
        sub.self_attention.submodules.k_layernorm = RMSNorm
        final_norm = RMSNorm
    else:
        raise ValueError(f"transformer_impl {impl!r} is not one of {IMPLS}")
    return TransformerBlockSubmodules(layer_specs=[layer] * get_num_layers_to_build(config), layer_norm=final_norm)


def _mask_padded_vocab(hf_vocab: int):
    """Forward hook for the output layer: logit columns of padded vocab ids -> large negative."""

    def hook(module, inputs, output):
        from megatron.core import parallel_state

        logits, bias = output
        local = logits.shape[-1]
        start = parallel_state.get_tensor_model_parallel_rank() * local
        if start + local <= hf_vocab:
            return output
        ids = torch.arange(start, start + local, device=logits.device)
        fill = torch.finfo(logits.dtype).min / 2
        return logits.masked_fill(ids >= hf_vocab, fill), bias

    return hook


def build_qwen3_model(hf_config: Any, config, *, impl: str = "local"):
    """This rank's pipeline stage of the Qwen3 GPTModel (``parallel_state`` must be initialised).

    ``config`` comes from ``transformer_config_from_hf``. The output layer keeps logits split
    over TP (``parallel_output=True``): logits are ``[b, s, padded_vocab / tp]`` on the last stage.
    Parameters are created on CPU when CUDA is missing (``use_cpu_initialization``), else on the
    current CUDA device.
    """
    from megatron.core import parallel_state
    from megatron.core.models.gpt import GPTModel

    cpu_compat.apply()
    cfg = hf_config_dict(hf_config)
    _check_supported(cfg)
    tp = parallel_state.get_tensor_model_parallel_world_size()
    if tp != config.tensor_model_parallel_size:
        raise ValueError(
            f"TransformerConfig has tensor_model_parallel_size={config.tensor_model_parallel_size} but "
            f"parallel_state was initialised with TP={tp}"
        )
    theta = rope_theta(cfg)
    vocab = cfg["vocab_size"]
    model = GPTModel(
        config=config,
        transformer_layer_spec=qwen3_layer_spec(config, impl),
        vocab_size=padded_vocab_size(vocab, tp),
        max_sequence_length=cfg.get("max_position_embeddings", 32768),
        pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage(),
        parallel_output=True,
        share_embeddings_and_output_weights=bool(cfg.get("tie_word_embeddings", False)),
        position_embedding_type="rope",
        rotary_percent=1.0,
        rotary_base=int(theta) if float(theta).is_integer() else theta,
    )
    model.hf_vocab_size = vocab
    model.transformer_impl = impl
    if model.post_process and padded_vocab_size(vocab, tp) != vocab:
        model.output_layer.register_forward_hook(_mask_padded_vocab(vocab))
    return model
