"""The one Hugging Face <-> Megatron weight mapping for Qwen3, used three ways.

  load_hf_checkpoint   HF safetensors folder -> this rank's TP x PP shard (reads only its slices)
  iter_hf_weights      the refit stream: the model as HF-named full tensors in size-bounded buckets
  save_hf_checkpoint   that stream written as an HF folder (config.json, sharded safetensors + index)

Megatron parameter (local spec names; the TE spec's fused norms are the same tensors) -> HF:

  embedding.word_embeddings.weight          model.embed_tokens.weight         vocab-parallel rows
  decoder.layers.i.input_layernorm.weight   model.layers.g.input_layernorm    replicated
  ...self_attention.linear_qkv.weight       q_proj, k_proj, v_proj            fused per query group
  ...self_attention.q/k_layernorm.weight    self_attn.q_norm / k_norm         replicated
  ...self_attention.linear_proj.weight      self_attn.o_proj                  row-parallel (dim 1)
  ...pre_mlp_layernorm.weight               post_attention_layernorm          replicated
  ...mlp.linear_fc1.weight                  mlp.gate_proj, mlp.up_proj        fused, each split over TP
  ...mlp.linear_fc2.weight                  mlp.down_proj                     row-parallel (dim 1)
  decoder.final_layernorm.weight            model.norm.weight                 replicated
  output_layer.weight                       lm_head.weight (embed_tokens when tied)  vocab-parallel rows

``g`` is the global layer index: local index i plus this stage's PP offset (megatron's
``layer_number - 1``). Fused QKV layout per query group: [q heads of the group; k; v]; TP rank r
holds query groups [r*G/tp, (r+1)*G/tp). Fused fc1 on TP rank r: [gate rows r; up rows r].
Vocabulary rows past the HF vocabulary (TP padding) are zero on import and dropped on export.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

# megatron suffix inside a layer -> (kind, HF suffix or suffixes inside "model.layers.g.")
LAYER_RULES: dict[str, tuple[str, tuple[str, ...]]] = {
    "input_layernorm.weight": ("replicated", ("input_layernorm.weight",)),
    "self_attention.linear_qkv.layer_norm_weight": ("replicated", ("input_layernorm.weight",)),
    "self_attention.linear_qkv.weight": (
        "qkv", ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight")),
    "self_attention.linear_qkv.bias": (
        "qkv", ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias")),
    "self_attention.q_layernorm.weight": ("replicated", ("self_attn.q_norm.weight",)),
    "self_attention.k_layernorm.weight": ("replicated", ("self_attn.k_norm.weight",)),
    "self_attention.linear_proj.weight": ("row", ("self_attn.o_proj.weight",)),
    "pre_mlp_layernorm.weight": ("replicated", ("post_attention_layernorm.weight",)),
    "mlp.linear_fc1.layer_norm_weight": ("replicated", ("post_attention_layernorm.weight",)),
    "mlp.linear_fc1.weight": ("gate_up", ("mlp.gate_proj.weight", "mlp.up_proj.weight")),
    "mlp.linear_fc2.weight": ("row", ("mlp.down_proj.weight",)),
}
TOP_RULES: dict[str, tuple[str, tuple[str, ...]]] = {
    "embedding.word_embeddings.weight": ("vocab", ("model.embed_tokens.weight",)),
    "decoder.final_layernorm.weight": ("replicated", ("model.norm.weight",)),
    "output_layer.weight": ("vocab", ("lm_head.weight",)),
}
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
    "added_tokens.json", "chat_template.jinja", "chat_template.json", "generation_config.json",
)


def unwrap_model(model: Any):
    """The bare GPTModel inside megatron DDP / Float16Module wrappers (or a one-chunk list)."""
    if isinstance(model, (list, tuple)):
        if len(model) != 1:
            raise ValueError(f"expected one model chunk, got {len(model)} (virtual pipeline is not supported)")
        model = model[0]
    while hasattr(model, "module"):
        model = model.module
    return model


@dataclass(frozen=True)
class _Geometry:
    """Shapes of the full (unsharded) model, from the megatron config."""

    layers: int
    hidden: int
    heads: int
    groups: int
    head_dim: int
    ffn: int
    vocab: int  # the HF vocabulary (before TP padding)
    tied: bool
    qkv_bias: bool

    @property
    def q_per_group(self) -> int:
        return self.heads // self.groups


def _geometry(model) -> _Geometry:
    c = model.config
    return _Geometry(
        layers=c.num_layers, hidden=c.hidden_size, heads=c.num_attention_heads,
        groups=c.num_query_groups or c.num_attention_heads, head_dim=c.kv_channels, ffn=c.ffn_hidden_size,
        vocab=getattr(model, "hf_vocab_size", model.vocab_size),
        tied=bool(model.share_embeddings_and_output_weights), qkv_bias=bool(c.add_qkv_bias),
    )


def hf_tensor_shapes(geo: _Geometry) -> dict[str, tuple[int, ...]]:
    """Every tensor of the HF checkpoint with its full shape (no lm_head when tied)."""
    h, d = geo.hidden, geo.head_dim
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (geo.vocab, h)}
    for g in range(geo.layers):
        p = f"model.layers.{g}."
        shapes.update({
            p + "input_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (geo.heads * d, h),
            p + "self_attn.k_proj.weight": (geo.groups * d, h),
            p + "self_attn.v_proj.weight": (geo.groups * d, h),
            p + "self_attn.q_norm.weight": (d,),
            p + "self_attn.k_norm.weight": (d,),
            p + "self_attn.o_proj.weight": (h, geo.heads * d),
            p + "post_attention_layernorm.weight": (h,),
            p + "mlp.gate_proj.weight": (geo.ffn, h),
            p + "mlp.up_proj.weight": (geo.ffn, h),
            p + "mlp.down_proj.weight": (h, geo.ffn),
        })
        if geo.qkv_bias:
            shapes.update({p + "self_attn.q_proj.bias": (geo.heads * d,),
                           p + "self_attn.k_proj.bias": (geo.groups * d,),
                           p + "self_attn.v_proj.bias": (geo.groups * d,)})
    shapes["model.norm.weight"] = (h,)
    if not geo.tied:
        shapes["lm_head.weight"] = (geo.vocab, h)
    return shapes


@dataclass
class _Entry:
    """One local megatron parameter and the HF tensors it corresponds to."""

    name: str
    param: torch.nn.Parameter
    kind: str
    hf_names: tuple[str, ...]
    exported: bool = True  # False for the tied output layer (HF has no lm_head then)


def _entries(model, geo: _Geometry) -> list[_Entry]:
    """Map every local parameter of the (unwrapped) model; unknown parameters are an error."""
    layer_offset = {}
    if getattr(model, "decoder", None) is not None:
        layer_offset = {i: layer.layer_number - 1 for i, layer in enumerate(model.decoder.layers)}
    out = []
    for name, param in model.named_parameters():
        if name.startswith("decoder.layers."):
            _, _, idx, suffix = name.split(".", 3)
            if suffix not in LAYER_RULES:
                raise ValueError(f"no HF mapping for megatron parameter {name}")
            kind, hf = LAYER_RULES[suffix]
            prefix = f"model.layers.{layer_offset[int(idx)]}."
            out.append(_Entry(name, param, kind, tuple(prefix + s for s in hf)))
        elif name in TOP_RULES:
            kind, hf = TOP_RULES[name]
            if name == "output_layer.weight" and geo.tied:
                out.append(_Entry(name, param, kind, ("model.embed_tokens.weight",), exported=False))
            else:
                out.append(_Entry(name, param, kind, hf))
        else:
            raise ValueError(f"no HF mapping for megatron parameter {name}")
    return out


# ----------------------------------------------------------------------------------------------
# import


class _HFReader:
    """Lazy tensor slices from an HF safetensors folder (sharded with an index json, or not)."""

    def __init__(self, hf_dir: str | Path):
        self.dir = Path(hf_dir)
        index = self.dir / "model.safetensors.index.json"
        if index.exists():
            self.where = {k: self.dir / v for k, v in json.loads(index.read_text())["weight_map"].items()}
        else:
            files = sorted(self.dir.glob("*.safetensors"))
            if not files:
                raise FileNotFoundError(f"{self.dir}: no *.safetensors files (and no model.safetensors.index.json)")
            from safetensors import safe_open

            self.where = {}
            for f in files:
                with safe_open(str(f), framework="pt") as h:
                    self.where.update({k: f for k in h.keys()})  # noqa: SIM118 - safe_open has no __iter__
        self._open: dict[Path, Any] = {}

    def names(self) -> set[str]:
        return set(self.where)

    def slice(self, name: str):
        if name not in self.where:
            raise ValueError(f"{self.dir}: tensor {name} is missing from the checkpoint")
        path = self.where[name]
        if path not in self._open:
            from safetensors import safe_open

            self._open[path] = safe_open(str(path), framework="pt")
        return self._open[path].get_slice(name)

    def close(self) -> None:
        self._open.clear()


def _read(reader: _HFReader, name: str, expected: dict[str, tuple[int, ...]],
          rows: tuple[int, int] | None = None, cols: tuple[int, int] | None = None) -> torch.Tensor:
    sl = reader.slice(name)
    found = tuple(sl.get_shape())
    want = expected[name]
    if found != want:
        raise ValueError(
            f"{reader.dir}: tensor {name} has shape {list(found)} but the model config expects {list(want)}"
        )
    if rows is not None:
        return sl[rows[0]:rows[1]]
    if cols is not None:
        return sl[:, cols[0]:cols[1]]
    return sl[:]


def _local_from_hf(entry: _Entry, reader: _HFReader, expected, geo: _Geometry, tp_rank: int, tp: int):
    shape = entry.param.shape
    if entry.kind == "replicated":
        return _read(reader, entry.hf_names[0], expected)
    if entry.kind == "row":
        width = shape[1]
        return _read(reader, entry.hf_names[0], expected, cols=(tp_rank * width, (tp_rank + 1) * width))
    if entry.kind == "vocab":
        rows = shape[0]
        start, stop = tp_rank * rows, (tp_rank + 1) * rows
        block = _read(reader, entry.hf_names[0], expected, rows=(min(start, geo.vocab), min(stop, geo.vocab)))
        if block.shape[0] == rows:
            return block
        local = torch.zeros(shape, dtype=block.dtype)
        local[: block.shape[0]] = block
        return local
    if entry.kind == "qkv":
        g_local = geo.groups // tp
        g0, g1 = tp_rank * g_local, (tp_rank + 1) * g_local
        qn, kn, vn = entry.hf_names
        d, qpg = geo.head_dim, geo.q_per_group
        q = _read(reader, qn, expected, rows=(g0 * qpg * d, g1 * qpg * d))
        k = _read(reader, kn, expected, rows=(g0 * d, g1 * d))
        v = _read(reader, vn, expected, rows=(g0 * d, g1 * d))
        tail = q.shape[1:]
        fused = torch.cat([q.reshape(g_local, qpg * d, *tail), k.reshape(g_local, d, *tail),
                           v.reshape(g_local, d, *tail)], dim=1)
        return fused.reshape(-1, *tail)
    if entry.kind == "gate_up":
        rows = shape[0] // 2
        gate = _read(reader, entry.hf_names[0], expected, rows=(tp_rank * rows, (tp_rank + 1) * rows))
        up = _read(reader, entry.hf_names[1], expected, rows=(tp_rank * rows, (tp_rank + 1) * rows))
        return torch.cat([gate, up], dim=0)
    raise AssertionError(entry.kind)


def load_hf_checkpoint(model, hf_dir: str | Path) -> None:
    """Copy an HF Qwen3 checkpoint into this rank's shard of ``model`` (any TP x PP layout).

    Each rank opens the safetensors files lazily and reads only the rows / columns of its TP
    rank for the layers of its PP stage. Raises ValueError naming the tensor when a tensor is
    missing, has a shape other than the model config implies, or when the checkpoint holds
    tensors the config does not (e.g. more layers). Not a collective.
    """
    from megatron.core import parallel_state

    model = unwrap_model(model)
    geo = _geometry(model)
    expected = hf_tensor_shapes(geo)
    reader = _HFReader(hf_dir)
    unexpected = sorted(reader.names() - set(expected) - {"lm_head.weight"})
    if unexpected:
        raise ValueError(
            f"{hf_dir}: tensors not in the model config: {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''} "
            f"({len(unexpected)} in all); does config.json (num_hidden_layers, attention_bias) match the weights?"
        )
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    tp = parallel_state.get_tensor_model_parallel_world_size()
    try:
        with torch.no_grad():
            for entry in _entries(model, geo):
                local = _local_from_hf(entry, reader, expected, geo, tp_rank, tp)
                if tuple(local.shape) != tuple(entry.param.shape):
                    raise ValueError(
                        f"{hf_dir}: {entry.hf_names} give a local shard of shape {list(local.shape)} for "
                        f"megatron parameter {entry.name} of shape {list(entry.param.shape)}"
                    )
                entry.param.data.copy_(local.to(dtype=entry.param.dtype))
    finally:
        reader.close()


# ----------------------------------------------------------------------------------------------
# export: the refit stream


def _gather_tp(tensor: torch.Tensor, group, tp: int) -> list[torch.Tensor]:
    if tp == 1:
        return [tensor]
    parts = [torch.empty_like(tensor) for _ in range(tp)]
    dist.all_gather(parts, tensor.contiguous(), group=group)
    return parts


def _cat(parts, dim: int) -> torch.Tensor:
    """torch.cat without the copy when there is one part (TP=1: a view of the parameter)."""
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim)


def _hf_from_shards(entry: _Entry, shards: list[torch.Tensor], geo: _Geometry) -> list[tuple[str, torch.Tensor]]:
    if entry.kind == "replicated":
        return [(entry.hf_names[0], shards[0])]
    if entry.kind == "row":
        return [(entry.hf_names[0], _cat(shards, dim=1))]
    if entry.kind == "vocab":
        return [(entry.hf_names[0], _cat(shards, dim=0)[: geo.vocab])]
    if entry.kind == "qkv":
        d, qpg = geo.head_dim, geo.q_per_group
        tail = shards[0].shape[1:]
        fused = torch.cat([s.reshape(-1, (qpg + 2) * d, *tail) for s in shards], dim=0)
        q, k, v = torch.split(fused, [qpg * d, d, d], dim=1)
        return [(n, t.reshape(-1, *tail)) for n, t in zip(entry.hf_names, (q, k, v))]
    if entry.kind == "gate_up":
        gates, ups = zip(*(torch.chunk(s, 2, dim=0) for s in shards))
        return [(entry.hf_names[0], _cat(gates, dim=0)), (entry.hf_names[1], _cat(ups, dim=0))]
    raise AssertionError(entry.kind)


def _iter_hf_tensors(model) -> Iterator[tuple[str, torch.Tensor]]:
    """Every HF tensor, full, on every rank of the model-parallel group (collective)."""
    from megatron.core import parallel_state

    geo = _geometry(model)
    shapes = hf_tensor_shapes(geo)
    tp_group = parallel_state.get_tensor_model_parallel_group()
    tp = parallel_state.get_tensor_model_parallel_world_size()
    pp = parallel_state.get_pipeline_model_parallel_world_size()
    entries = [e for e in _entries(model, geo) if e.exported]
    if pp == 1:
        for e in entries:
            yield from _hf_from_shards(e, _gather_tp(e.param.detach(), tp_group, tp), geo)
        return
    pp_group = parallel_state.get_pipeline_model_parallel_group()
    pp_rank = parallel_state.get_pipeline_model_parallel_rank()
    pp_ranks = dist.get_process_group_ranks(pp_group)
    plans: list[Any] = [None] * pp
    dist.all_gather_object(plans, [(e.hf_names, str(e.param.dtype)) for e in entries], group=pp_group)
    device = next(model.parameters()).device
    for stage, plan in enumerate(plans):
        for i, (names, dtype) in enumerate(plan):
            if stage == pp_rank:
                e = entries[i]
                tensors = _hf_from_shards(e, _gather_tp(e.param.detach(), tp_group, tp), geo)
            else:
                dtype = getattr(torch, dtype.removeprefix("torch."))
                tensors = [(n, torch.empty(shapes[n], dtype=dtype, device=device)) for n in names]
            for name, t in tensors:
                t = t.contiguous()
                dist.broadcast(t, src=pp_ranks[stage], group=pp_group)
                yield name, t


def iter_hf_weights(model, bucket_bytes: int) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """The model as HF-named full tensors, in buckets of at most ``bucket_bytes`` bytes.

    COLLECTIVE: every rank of the model-parallel (TP x PP) group must iterate it to the end; each
    rank yields the same buckets (gathered over TP, broadcast over PP). A tensor larger than
    ``bucket_bytes`` comes alone in its bucket. A generator: apart from the bucket being built it
    holds only the tensor being gathered. Tensors are on the model's device in its dtype; some
    are views of the live parameters (replicated ones; most at TP=1), so copy them if kept past
    an optimizer step.
    """
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be positive, got {bucket_bytes}")
    model = unwrap_model(model)
    bucket: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, tensor in _iter_hf_tensors(model):
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, tensor))
        size += nbytes
    if bucket:
        yield bucket


# ----------------------------------------------------------------------------------------------
# export: an HF folder


def _config_for_save(hf_config: Any, dtype: torch.dtype) -> dict[str, Any]:
    from megatron_grpo.models.qwen3 import hf_config_dict

    cfg = hf_config_dict(hf_config)
    name = str(dtype).removeprefix("torch.")
    cfg["torch_dtype"] = name
    if "dtype" in cfg:
        cfg["dtype"] = name
    cfg.setdefault("architectures", ["Qwen3ForCausalLM"])
    if not cfg.get("architectures"):
        cfg["architectures"] = ["Qwen3ForCausalLM"]
    return cfg


def save_hf_checkpoint(
    model,
    out_dir: str | Path,
    hf_config: Any,
    tokenizer_dir: str | Path | None = None,
    max_shard_bytes: int = 2**30,
) -> None:
    """Write the model as an HF folder loadable by ``AutoModelForCausalLM.from_pretrained``.

    COLLECTIVE (built on ``iter_hf_weights``): every model-parallel rank must call it; global
    rank 0 writes ``config.json`` (dtype set to the weights' dtype), ``model-0000i-of-0000n
    .safetensors`` shards of at most ``max_shard_bytes`` (a bigger tensor alone in its shard),
    ``model.safetensors.index.json``, and copies the tokenizer files found in ``tokenizer_dir``.
    Files are written to ``<out_dir>.tmp`` and renamed, so a crash never leaves a half folder.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    writer = not dist.is_initialized() or dist.get_rank() == 0
    tmp = out.with_name(out.name + ".tmp")
    if writer:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    shard_names: list[list[str]] = []
    total, dtype = 0, None
    for i, bucket in enumerate(iter_hf_weights(model, max_shard_bytes)):
        if writer:
            # copies: at TP=1 gate/up (and q/k/v) are views of one fused parameter, and
            # safetensors refuses tensors that share memory
            tensors = {n: t.detach().to("cpu", copy=True).contiguous() for n, t in bucket}
            save_file(tensors, str(tmp / f"shard-{i}.safetensors"), metadata={"format": "pt"})
            shard_names.append(list(tensors))
            total += sum(t.numel() * t.element_size() for t in tensors.values())
            dtype = bucket[0][1].dtype
    if writer:
        n = len(shard_names)
        weight_map = {}
        for i, names in enumerate(shard_names):
            final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            os.replace(tmp / f"shard-{i}.safetensors", tmp / final)
            weight_map.update({k: final for k in names})
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        (tmp / "config.json").write_text(json.dumps(_config_for_save(hf_config, dtype), indent=2))
        if tokenizer_dir is not None:
            for fname in TOKENIZER_FILES:
                src = Path(tokenizer_dir) / fname
                if src.exists():
                    shutil.copy2(src, tmp / fname)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    if dist.is_initialized():
        dist.barrier()
