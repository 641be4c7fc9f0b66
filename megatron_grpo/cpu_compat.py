"""Run megatron-core on a CPU-only torch build with the gloo backend.

Why: every parallel layout (TP, PP, DP, sequence parallel) is tested in CI on CPU processes, and
megatron-core assumes CUDA in a handful of places. These runtime patches (no site-packages file
is edited) are the minimal set that makes it run, tested with
megatron-core 0.16.1 and 0.19.2:

  rng        megatron's CUDA RNG tracker (``model_parallel_cuda_manual_seed``, dropout forks)
             uses the CPU generator: ``torch.cuda.get_rng_state`` / ``manual_seed`` and
             ``tensor_parallel.random._get/_set_cuda_rng_state`` map to the CPU ones.
  device     ``torch.cuda.current_device()`` returns ``"cpu"``; ``synchronize``,
             ``current_stream`` and ``default_stream`` are no-ops (GlobalMemoryBuffer, p2p, DDP).
  mode       a ``TorchFunctionMode`` that rewrites ``device="cuda"`` / int devices in factory
             calls to CPU, makes ``Tensor.cuda()`` a no-op, ``.to("cuda")`` a move to CPU, and
             makes ``Tensor.type()`` report ``torch.cuda.*`` (the optimizer's grad-clip asserts).
  triton     megatron-core >= 0.17 imports triton unguarded in ``moe/ops/paged_stash.py``;
             without triton that one module is replaced by a stub (MoE paged stash unusable).

Thread-locality: torch function modes are per thread. ``apply()`` enters the mode on the calling
thread (the main thread in torchrun / SLURM / spawned test processes, which is where megatron
runs). Code that runs megatron on another thread (a thread-pooled actor, a background worker)
must wrap those calls in ``with cpu_device_mode(): ...``; entering it where it is already active
is a no-op. Everything here is a no-op when CUDA is used (see ``cuda_enabled``).

``MEGATRON_GRPO_DEVICE=cpu`` makes a process use the CPU path even where CUDA is available (the
multi-process CPU tests set it, so the default test suite also passes on a GPU machine).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import threading
import types
from collections.abc import Iterator

import torch
from torch.overrides import TorchFunctionMode

_applied = False
_thread_state = threading.local()


class _DummyStream:
    """Stands in for a CUDA stream: every wait/sync is a no-op on CPU."""

    def wait_event(self, *args, **kwargs) -> None:
        pass

    def wait_stream(self, *args, **kwargs) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def record_event(self, *args, **kwargs) -> None:
        return None

    def __enter__(self) -> _DummyStream:
        return self

    def __exit__(self, *exc) -> None:
        return None


def _is_cuda_device(dev: object) -> bool:
    if isinstance(dev, int) and not isinstance(dev, bool):
        return True
    if isinstance(dev, torch.device):
        return dev.type == "cuda"
    return isinstance(dev, str) and dev.startswith("cuda")


class _CudaToCpuMode(TorchFunctionMode):
    """Redirect megatron's hard-coded CUDA placements to the CPU (see the module docstring)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if "device" in kwargs and _is_cuda_device(kwargs["device"]):
            kwargs["device"] = "cpu"
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            return name if ".cuda." in name else name.replace("torch.", "torch.cuda.", 1)
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], "cpu") + tuple(args[2:])
        return func(*args, **kwargs)


def stub_missing_triton() -> None:
    """megatron-core >= 0.17 imports triton unguarded (MoE paged stash); without triton (CPU wheels)
    register a stub module first. Must run before the first ``import megatron.core``."""
    name = "megatron.core.transformer.moe.ops.paged_stash"
    if importlib.util.find_spec("triton") is not None or name in sys.modules:
        return
    stub = types.ModuleType(name)
    stub.GLOBAL_BLOCK_SIZE = 1024

    def _no_triton(*args, **kwargs):
        raise RuntimeError("triton is not installed: MoE paged-stash kernels are unavailable on CPU")

    stub.paged_stash_copy_kernel = _no_triton
    stub.paged_stash_pop_kernel = _no_triton
    sys.modules[name] = stub


def _patch_device_queries() -> None:
    torch.cuda.current_device = lambda: "cpu"
    torch.cuda.synchronize = lambda *args, **kwargs: None
    torch.cuda.current_stream = lambda *args, **kwargs: _DummyStream()
    torch.cuda.default_stream = lambda *args, **kwargs: _DummyStream()


def _patch_rng() -> None:
    from megatron.core.tensor_parallel import random as mrandom

    mrandom._get_cuda_rng_state = lambda *args, **kwargs: torch.get_rng_state()
    mrandom._set_cuda_rng_state = lambda new_state, *args, **kwargs: torch.set_rng_state(new_state)
    torch.cuda.get_rng_state = lambda *args, **kwargs: torch.get_rng_state()
    # Not torch.manual_seed: it calls torch.cuda.manual_seed_all and would recurse.
    torch.cuda.manual_seed = lambda seed: torch.default_generator.manual_seed(int(seed))


def cuda_enabled() -> bool:
    """True when this process runs megatron on CUDA: CUDA is available and not vetoed by
    ``MEGATRON_GRPO_DEVICE=cpu``. Use it instead of ``torch.cuda.is_available()`` for that choice."""
    return os.environ.get("MEGATRON_GRPO_DEVICE", "").lower() != "cpu" and torch.cuda.is_available()


def is_active() -> bool:
    """True when the CPU patches are applied (always False on a CUDA machine)."""
    return _applied


def apply() -> bool:
    """Patch megatron-core for CPU and enter the device mode on the calling thread.

    Idempotent. Returns True when the patches are (now) active, False when CUDA is used and
    nothing is changed. Call before building megatron models (``init_distributed`` does).
    """
    global _applied
    if cuda_enabled():
        return False
    if not _applied:
        stub_missing_triton()
        _patch_device_queries()
        _patch_rng()
        _applied = True
    _enter_mode_on_this_thread()
    return True


def _enter_mode_on_this_thread() -> bool:
    if getattr(_thread_state, "mode", None) is not None:
        return False
    mode = _CudaToCpuMode()
    mode.__enter__()
    _thread_state.mode = mode
    return True


@contextlib.contextmanager
def cpu_device_mode() -> Iterator[None]:
    """Make megatron calls on the current thread CPU-safe; no-op with CUDA or if already active."""
    if not _applied:
        yield
        return
    if getattr(_thread_state, "mode", None) is not None:
        yield
        return
    mode = _CudaToCpuMode()
    with mode:
        _thread_state.mode = mode
        try:
            yield
        finally:
            _thread_state.mode = None
