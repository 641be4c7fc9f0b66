"""Training checkpoints: megatron dist-checkpointing, atomic publication, top-k retention, resume.

Why: a GRPO run is days of GPU time; a crash (or a kill -9 mid-save) must cost at most the steps
since the last good checkpoint, and the disk must hold only the checkpoints worth keeping.

Layout of one checkpoint (``<checkpoint_dir>/step_<n>/``)::

    model_optim/          megatron dist checkpoint (torch_dist): keys "model" (GPTModel sharded state,
                          reshardable to any TP/PP), "optimizer" (DistOpt as dp_reshardable: resume at
                          the same TP/PP, any DP) and "opt_param_scheduler"
    rng/rank_<r>.pt       per-rank RNG states (python, numpy, torch CPU/CUDA, megatron's tracker) as
                          tensors, numbers and strings only; restored only when the world size is
                          unchanged
    training_info.json    {"step", "metrics", "data_state", "layout", "saved_at", "format": 2}
    config.json           the trainer's full config (the dataclass or dict the caller passed)
    run_config.json       {"hf_config": <HF config.json as a dict>, "tokenizer_dir": <path>,
                           "params_dtype": "bfloat16"|"float32"}: enough to rebuild the model at any
                          TP/PP (``build_model_for_export``); "tokenizer_dir" is "tokenizer" (the
                          copied folder, relative to step_<n>) when the tokenizer was a local folder
    tokenizer/            copy of the tokenizer files (``hf_mapping.TOKENIZER_FILES``) when the
                          tokenizer is a local folder that has them

Atomicity: every rank writes into ``step_<n>.tmp``; only when all ranks are done does rank 0 write
the JSON files, fsync and ``os.rename`` the folder to ``step_<n>``. A folder named ``step_<n>``
(with training_info.json) is therefore always complete; ``*.tmp`` leftovers of a killed save are
ignored by resume and deleted by the next save. Assumes a file system shared by all ranks.

Retention (``checkpoints_to_keep``): the latest checkpoint is always kept (resume); of the
checkpoints that HAVE the metric, the k best are kept (ties: the newer wins); a checkpoint WITHOUT
the metric (saved on a step with no validation, e.g. val_period=3, save_period=2) is kept only
while it is the latest. With no metric name configured, the k most recent are kept. (When
val_period does not divide save_period few checkpoints carry the metric: a trainer may also save on
validation steps to give the top-k candidates.)

Loading runs no code from the checkpoint (a folder from someone else must not be able to run code
when it is resumed or converted): every ``torch.load`` here is ``weights_only=True`` (tensors,
numbers, strings, lists, dicts; anything else is refused with one line naming the file), and the
pickled index of the dist checkpoint (``model_optim/.metadata``) and its ``common.pt`` are checked
the same way before megatron reads them. Format 1 (before this) pickled numpy arrays into rng/: such
a checkpoint is refused; delete its rng/ folder to resume it without the RNG state.

Use: ``save_checkpoint(policy, dir, step, metrics=..., data_state=..., config=..., keep_top_k=...,
metric_name=...)``; resume with ``load_checkpoint(resolve_resume(cfg.resume, dir), policy)``; export
with ``build_model_for_export(step_dir)`` (any TP/PP) + ``read_run_config(step_dir)["tokenizer_dir"]``
+ ``models.hf_mapping.save_hf_checkpoint``. Tested with megatron-core 0.16.1 and 0.19.2.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import logging
import math
import os
import pickle
import random
import re
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from megatron_grpo.config import UserError

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: rng/ holds tensors and numbers only (loads with weights_only=True)
_STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be found, read or matched to the current run; names the path."""


# HF config fields that fix the shapes of the Megatron shards: a checkpoint only loads into the same
SHAPE_FIELDS = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "head_dim", "tie_word_embeddings")


def check_model_shape(step_dir: str | os.PathLike, hf_config: Any) -> None:
    """Raise CheckpointError naming the first differing field when ``step_dir`` holds another model."""
    saved = read_run_config(step_dir).get("hf_config", {})
    here = hf_config.to_dict() if hasattr(hf_config, "to_dict") else dict(hf_config)
    for name in SHAPE_FIELDS:
        if name in saved and saved.get(name) != here.get(name):
            raise CheckpointError(
                f"{step_dir} holds a model with {name}={saved.get(name)} but policy.model_name gives "
                f"{name}={here.get(name)}; resume it with the model it was trained from, or start fresh "
                f"with checkpointing.resume=none or another checkpointing.checkpoint_dir"
            )


# ---------------------------------------------------------------------- retention (pure)


def checkpoints_to_keep(
    entries: list[tuple[int, float | None]], k: int | None, higher_is_better: bool = True
) -> set[int]:
    """Steps to keep among ``entries`` = [(step, metric or None)].

    The latest step is always kept. Of the entries with a metric (NaN counts as missing), the ``k``
    best are kept, ties broken in favour of the newer step. Entries without a metric are kept only
    while they are the latest. ``k=None`` keeps everything.
    """
    if not entries:
        return set()
    if k is None:
        return {step for step, _ in entries}
    if k < 0:
        raise ValueError(f"checkpointing.keep_top_k must be >= 0 or null, got {k}")
    latest = max(step for step, _ in entries)
    scored = [(m, s) for s, m in entries if m is not None and not math.isnan(m)]
    sign = -1.0 if higher_is_better else 1.0
    scored.sort(key=lambda ms: (sign * ms[0], -ms[1]))  # best first; equal metric -> newer first
    return {latest} | {s for _, s in scored[:k]}


# ---------------------------------------------------------------------- listing / resume


def list_checkpoints(checkpoint_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints (``step_<n>`` with training_info.json) as [(step, path)], oldest first."""
    root = Path(checkpoint_dir)
    if not root.is_dir():
        return []
    out = []
    for child in root.iterdir():
        m = _STEP_DIR.match(child.name)
        if m and (child / "training_info.json").is_file():
            out.append((int(m.group(1)), child))
    return sorted(out)


def find_resume_checkpoint(checkpoint_dir: str | os.PathLike) -> Path | None:
    """The latest complete checkpoint under ``checkpoint_dir`` (``checkpointing.resume=auto``)."""
    found = list_checkpoints(checkpoint_dir)
    return found[-1][1] if found else None


def resolve_resume(resume: str, checkpoint_dir: str | os.PathLike) -> Path | None:
    """``checkpointing.resume``: "auto" -> latest (or None), "none" -> None, else a step folder."""
    if resume in ("none", "", None):
        return None
    if resume == "auto":
        return find_resume_checkpoint(checkpoint_dir)
    path = Path(resume)
    if not (path / "training_info.json").is_file():
        raise CheckpointError(
            f"checkpointing.resume={resume!r} is not a complete checkpoint folder (no training_info.json); "
            f"use 'auto', 'none' or a {checkpoint_dir}/step_<n> folder"
        )
    return path


def read_training_info(step_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(step_dir) / "training_info.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; {step_dir} is not a complete checkpoint") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None


# ---------------------------------------------------------------------- save


def save_checkpoint(
    policy: Any,
    checkpoint_dir: str | os.PathLike,
    step: int,
    *,
    metrics: dict[str, float] | None = None,
    data_state: dict[str, Any] | None = None,
    config: Any = None,
    tokenizer_dir: str | None = None,
    keep_top_k: int | None = None,
    metric_name: str | None = None,
    higher_is_better: bool = True,
) -> Path:
    """Write ``<checkpoint_dir>/step_<step>`` atomically, then apply retention. Collective: every
    rank calls it with the same arguments. ``policy`` is a ``MegatronPolicy``; ``config`` the
    trainer's config (dataclass or dict); ``data_state`` and ``metrics`` JSON-serializable. Retention
    (``keep_top_k`` by ``metrics[metric_name]``, see the module docstring) runs after the rename.
    Returns the final folder."""
    from megatron.core import dist_checkpointing, parallel_state

    root = Path(checkpoint_dir)
    final = root / f"step_{step}"
    tmp = root / f"step_{step}.tmp"
    rank = dist.get_rank()
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob("step_*.tmp"):  # leftovers of killed saves
            shutil.rmtree(stale, ignore_errors=True)
        (tmp / "model_optim").mkdir(parents=True)
        (tmp / "rng").mkdir()
    dist.barrier()

    dist_checkpointing.save(policy.sharded_state_dict(), str(tmp / "model_optim"),
                            sharded_strategy=("torch_dist", 1))
    torch.save(_rng_state(), tmp / "rng" / f"rank_{rank}.pt")
    dist.barrier()

    if rank == 0:
        info = {
            "format": FORMAT_VERSION,
            "step": int(step),
            "metrics": dict(metrics or {}),
            "data_state": dict(data_state or {}),
            "layout": {
                "world_size": dist.get_world_size(),
                "tp": parallel_state.get_tensor_model_parallel_world_size(),
                "pp": parallel_state.get_pipeline_model_parallel_world_size(),
                "dp": parallel_state.get_data_parallel_world_size(),
            },
            "saved_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        if dataclasses.is_dataclass(config):
            config = dataclasses.asdict(config)
        _write_json(tmp / "config.json", config or {})
        _write_json(tmp / "run_config.json", _run_config(policy, tmp, tokenizer_dir))
        _write_json(tmp / "training_info.json", info)  # written last: marks the content complete
        _fsync_tree(tmp)
        _publish(tmp, final)
        apply_retention(root, keep_top_k, metric_name, higher_is_better)
    dist.barrier()
    log.info("saved checkpoint %s", final)
    return final


def _run_config(policy: Any, tmp: Path, tokenizer_dir: str | None) -> dict[str, Any]:
    from megatron_grpo.models.hf_mapping import TOKENIZER_FILES

    tok = tokenizer_dir or getattr(policy, "hf_dir", None)
    files = [Path(tok) / name for name in TOKENIZER_FILES] if tok is not None else []
    if any(f.is_file() for f in files):
        dst = tmp / "tokenizer"
        dst.mkdir()
        for f in files:
            if f.is_file():
                shutil.copy2(f, dst / f.name)
        tok = "tokenizer"
    dtype = next(policy.model.parameters()).dtype
    return {
        "hf_config": policy.hf_config.to_dict(),
        "tokenizer_dir": tok,
        "params_dtype": str(dtype).removeprefix("torch."),
    }


def _publish(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``; an existing ``final`` (a re-save of the same step) is moved
    aside first and removed after, so a complete ``step_<n>`` exists at every moment but one rename."""
    old = None
    if final.exists():
        old = final.with_name(final.name + ".old.tmp")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
    os.rename(tmp, final)
    _fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def apply_retention(
    checkpoint_dir: str | os.PathLike, k: int | None, metric_name: str | None, higher_is_better: bool = True
) -> list[int]:
    """Delete the complete checkpoints that ``checkpoints_to_keep`` does not keep; return their steps.
    The metric is ``training_info.json["metrics"][metric_name]``; no ``metric_name``: by recency."""
    found = list_checkpoints(checkpoint_dir)
    entries = []
    for step, path in found:
        if metric_name:
            value = read_training_info(path).get("metrics", {}).get(metric_name)
            entries.append((step, float(value) if isinstance(value, (int, float)) else None))
        else:  # no metric: rank by recency
            entries.append((step, float(step)))
    keep = checkpoints_to_keep(entries, k, higher_is_better if metric_name else True)
    removed = []
    for step, path in found:
        if step not in keep:
            log.info("removing checkpoint %s (retention: top-%s by %s + latest)", path, k, metric_name)
            shutil.rmtree(path, ignore_errors=True)
            removed.append(step)
    return removed


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
        f.flush()
        os.fsync(f.fileno())


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------- RNG


def _rng_state() -> dict[str, Any]:
    """Every RNG this process uses, as tensors / numbers / strings (``torch.load(weights_only=True)``
    reads it back; nothing in it needs code to be rebuilt)."""
    from megatron.core import tensor_parallel

    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "torch": torch.get_rng_state(),
        "megatron_tracker": dict(tensor_parallel.get_cuda_rng_tracker().get_states()),
    }
    try:
        import numpy as np

        key, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = {"key": str(key), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                          "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    except ImportError:
        pass
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    from megatron.core import tensor_parallel

    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    torch.set_rng_state(state["torch"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["megatron_tracker"])
    if "numpy" in state:
        import numpy as np

        npst = state["numpy"]
        np.random.set_state((npst["key"], npst["keys"].numpy().astype(np.uint32), npst["pos"],
                             npst["has_gauss"], npst["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ---------------------------------------------------------------------- loading without running code


def _refusal(path: Path, what: str) -> CheckpointError:
    return CheckpointError(
        f"{path}: refused to load: it holds {what}, not only tensors/numbers/strings, and unpickling it "
        f"could run code (nothing from it was run); use a checkpoint from a source you trust"
        + ("" if path.parent.name != "rng" else f", or delete {path.parent} to resume without its RNG state")
    )


def safe_torch_load(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU; a file that needs anything else is refused
    with a CheckpointError naming the file and the Python object it asks for."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        m = re.search(r"GLOBAL ([\w.]+)", str(exc))
        raise _refusal(path, f"a reference to {m.group(1) if m else 'a Python object'}") from None
    except (OSError, RuntimeError, EOFError) as exc:
        raise CheckpointError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from None


def _dcp_metadata_global(module: str, name: str) -> Any:
    """The only globals a torch dist-checkpoint index (``.metadata``) refers to: the dataclasses and
    enums of torch.distributed.checkpoint's metadata/planner, torch.Size, dtypes and layouts."""
    import torch.distributed.checkpoint.filesystem as dcp_fs
    import torch.distributed.checkpoint.metadata as dcp_meta
    import torch.distributed.checkpoint.planner as dcp_planner

    if "." not in name:
        mods = {m.__name__: m for m in (dcp_meta, dcp_planner)}
        if module in mods:
            obj = getattr(mods[module], name, None)
            if isinstance(obj, type) and obj.__module__ == module and (
                    dataclasses.is_dataclass(obj) or issubclass(obj, enum.Enum)):
                return obj
        if (module, name) == (dcp_fs.__name__, "_StorageInfo"):
            return dcp_fs._StorageInfo
        if module == "torch":
            obj = getattr(torch, name, None)
            if obj is torch.Size or isinstance(obj, (torch.dtype, torch.layout, torch.memory_format)):
                return obj
        if (module, name) == ("torch.serialization", "_get_layout"):
            return torch.serialization._get_layout
        if (module, name) == ("collections", "OrderedDict"):
            import collections

            return collections.OrderedDict
    raise pickle.UnpicklingError(f"GLOBAL {module}.{name}")


class _DcpMetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        return _dcp_metadata_global(module, name)


def check_dist_checkpoint(path: str | os.PathLike) -> None:
    """Refuse a ``model_optim`` folder whose pickled parts could run code when megatron loads them.

    torch's dist-checkpoint index ``.metadata`` is a plain pickle that torch unpickles without
    restrictions; it is read here first with an unpickler that knows only the classes such an
    index is made of. ``common.pt`` must load with ``weights_only=True``.
    """
    path = Path(path)
    meta = path / ".metadata"
    if meta.is_file():
        try:
            with open(meta, "rb") as f:
                _DcpMetadataUnpickler(f).load()
        except pickle.UnpicklingError as exc:
            m = re.search(r"GLOBAL ([\w.]+)", str(exc))
            raise _refusal(meta, f"a reference to {m.group(1) if m else 'a Python object'}") from None
        except (EOFError, ValueError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{meta}: not a dist-checkpoint index ({type(exc).__name__}: {exc})") from None
    if (path / "common.pt").is_file():
        safe_torch_load(path / "common.pt")


# ---------------------------------------------------------------------- load


def load_checkpoint(step_dir: str | os.PathLike, policy: Any) -> dict[str, Any]:
    """Restore model, optimizer, LR schedule and (same world size only) RNG into ``policy``.
    Collective. Returns {"step", "metrics", "data_state", "rng_restored", "path"}."""
    from megatron.core import dist_checkpointing, parallel_state

    step_dir = Path(step_dir)
    info = read_training_info(step_dir)
    saved = info.get("layout", {})
    here = (parallel_state.get_tensor_model_parallel_world_size(),
            parallel_state.get_pipeline_model_parallel_world_size())
    if (saved.get("tp"), saved.get("pp")) != here:
        raise CheckpointError(
            f"{step_dir} was saved with TP={saved.get('tp')} PP={saved.get('pp')} but this run has "
            f"TP={here[0]} PP={here[1]}: the optimizer state only reshards over DP; resume with the "
            f"saved policy.tensor_model_parallel_size/pipeline_model_parallel_size (convert-to-hf "
            f"works at any TP/PP)"
        )
    if (step_dir / "run_config.json").is_file() and getattr(policy, "hf_config", None) is not None:
        check_model_shape(step_dir, policy.hf_config)
    # everything pickled is checked before anything is loaded: a refused file stops the resume
    rng_file = step_dir / "rng" / f"rank_{dist.get_rank()}.pt"
    rng_state = safe_torch_load(rng_file) if rng_file.is_file() else None
    path = step_dir / "model_optim"
    check_dist_checkpoint(path)
    try:
        state = dist_checkpointing.load(policy.sharded_state_dict(is_loading=True), str(path))
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot load ({type(exc).__name__}: {exc})") from exc
    policy.load_sharded_state_dict(state)

    restored = saved.get("world_size") == dist.get_world_size() and rng_state is not None
    if restored:
        _set_rng_state(rng_state)
    else:
        log.warning("%s: RNG state not restored (saved at world size %s, now %s)",
                    step_dir, saved.get("world_size"), dist.get_world_size())
    dist.barrier()
    return {
        "step": int(info["step"]),
        "metrics": info.get("metrics", {}),
        "data_state": info.get("data_state", {}),
        "rng_restored": bool(restored),
        "path": str(step_dir),
    }


def read_run_config(step_dir: str | os.PathLike) -> dict[str, Any]:
    """run_config.json with ``tokenizer_dir`` made absolute when it points into the checkpoint."""
    path = Path(step_dir) / "run_config.json"
    try:
        rc = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; {step_dir} is not a checkpoint of this trainer") from None
    tok = rc.get("tokenizer_dir")
    if tok and not os.path.isabs(tok) and (Path(step_dir) / tok).is_dir():
        rc["tokenizer_dir"] = str(Path(step_dir) / tok)
    return rc


def build_model_for_export(step_dir: str | os.PathLike) -> tuple[Any, Any]:
    """The checkpoint's model weights in a fresh GPTModel for THIS rank at the CURRENT TP/PP.

    Call after ``init_distributed`` (any TP/PP; the model weights reshard). Returns
    ``(model, hf_config)``; pass them to ``models.hf_mapping.save_hf_checkpoint`` together with
    ``read_run_config(step_dir)["tokenizer_dir"]``. The model has the dtype it was trained in.
    """
    from megatron.core import dist_checkpointing, parallel_state
    from transformers import AutoConfig

    from megatron_grpo.models.qwen3 import build_qwen3_model, transformer_config_from_hf

    rc = read_run_config(step_dir)
    hf_dict = dict(rc["hf_config"])
    hf_config = AutoConfig.for_model(hf_dict.pop("model_type"), **hf_dict)
    dtype = getattr(torch, rc.get("params_dtype", "float32"))
    config = transformer_config_from_hf(
        hf_config,
        tp=parallel_state.get_tensor_model_parallel_world_size(),
        pp=parallel_state.get_pipeline_model_parallel_world_size(),
        sequence_parallel=False,
        params_dtype=dtype,
    )
    model = build_qwen3_model(hf_config, config)
    if dtype != torch.float32:
        model = model.to(dtype)  # local-spec torch norms are built fp32
    path = Path(step_dir) / "model_optim"
    check_dist_checkpoint(path)
    try:
        state = dist_checkpointing.load({"model": model.sharded_state_dict()}, str(path))
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot load the model ({type(exc).__name__}: {exc})") from exc
    model.load_state_dict(state["model"], strict=True)
    return model, hf_config
