"""Run a test function on N real gloo processes and bring back each rank's result or traceback.

Why: TP, PP and DP are only tested for real when several processes exchange tensors. Each child
gets the torchrun variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), so the
function under test calls ``megatron_grpo.distributed.init_distributed`` exactly as in a job.

Usage (the function must be defined at module top level, it is pickled by name):

    def _check_tp2(tmp_dir):
        layout = init_distributed(tp=2)
        ...
        return some_picklable_value

    def test_tp2(tmp_path):
        results = run_distributed(_check_tp2, 2, str(tmp_path))   # [rank0 value, rank1 value]

A failure on any rank raises ``DistributedTestError`` carrying that rank's traceback; the other
ranks (which may be stuck in a collective) are killed at once. Children are forked by default
(fast: megatron is already imported); set MEGATRON_GRPO_TEST_START=spawn to use fresh
interpreters instead (a test whose child uses Ray must spawn: a child forked from a process that
already ran Ray can hang in its gRPC threads). Each child runs torch with one thread (CI has 2 cores).
"""

from __future__ import annotations

import faulthandler
import multiprocessing as mp
import os
import pickle
import queue
import time
import traceback
from collections.abc import Callable
from typing import Any


class DistributedTestError(AssertionError):
    """A rank raised, died or timed out; the message holds the child's traceback."""


def free_port() -> int:
    from megatron_grpo.distributed import free_port as free

    return free()


def _child(
    fn: Callable, rank: int, world_size: int, port: int, results, args, kwargs, cpu_only: bool, timeout_s: float
) -> None:
    # A child still running near the parent's deadline prints every thread's stack to stderr (pytest
    # shows it with the failure), so that a hang says where it is.
    faulthandler.dump_traceback_later(max(1.0, timeout_s - 10.0), exit=False)
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )
    if cpu_only:
        os.environ["MEGATRON_GRPO_DEVICE"] = "cpu"  # gloo + CPU even on a GPU machine
    import torch

    torch.set_num_threads(1)
    try:
        value = fn(*args, **kwargs)
        results.put((rank, "ok", pickle.dumps(value)))
    except BaseException:  # noqa: BLE001 - reported to the parent verbatim
        results.put((rank, "error", traceback.format_exc()))
    finally:
        results.close()
        results.join_thread()  # deliver before a teardown that may block on dead peers
        try:
            from megatron_grpo.distributed import destroy_distributed

            destroy_distributed()
        except Exception:  # noqa: BLE001 - teardown after a failure must not mask it
            pass


def _preimport() -> None:
    """Import megatron-core once in the parent so that forked children start in milliseconds."""
    import megatron.core.models.gpt  # noqa: F401
    import megatron.core.parallel_state  # noqa: F401
    import megatron.core.pipeline_parallel  # noqa: F401
    import megatron.core.tensor_parallel  # noqa: F401


def run_distributed(
    fn: Callable,
    world_size: int,
    *args: Any,
    timeout_s: float = 240.0,
    start_method: str | None = None,
    cpu_only: bool | None = None,
    **kwargs: Any,
) -> list[Any]:
    """Run ``fn(*args, **kwargs)`` on ``world_size`` processes; return the values in rank order.

    ``cpu_only`` (default: True for forked children, False for spawned ones, which GPU tests use)
    sets MEGATRON_GRPO_DEVICE=cpu in the children so that they take the gloo/CPU path even on a
    GPU machine (a forked child must never initialise CUDA).
    """
    method = start_method or os.environ.get("MEGATRON_GRPO_TEST_START", "fork")
    if cpu_only is None:
        cpu_only = method == "fork"
    if method == "fork":
        _preimport()
    ctx = mp.get_context(method)
    results = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_child, args=(fn, rank, world_size, port, results, args, kwargs, cpu_only, timeout_s),
                    daemon=False)
        for rank in range(world_size)
    ]
    for p in procs:
        p.start()
    values: dict[int, Any] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(values) < world_size:
            try:
                rank, status, payload = results.get(timeout=0.5)
            except queue.Empty:
                dead = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0) and r not in values]
                if dead:
                    raise DistributedTestError(
                        f"{fn.__name__}: rank {dead[0]} died with exit code {procs[dead[0]].exitcode} "
                        "without reporting (segfault, OOM kill or os._exit)"
                    ) from None
                if time.monotonic() > deadline:
                    missing = sorted(set(range(world_size)) - set(values))
                    raise DistributedTestError(
                        f"{fn.__name__}: ranks {missing} did not finish within {timeout_s:.0f}s "
                        "(a hang in a collective?)"
                    ) from None
                continue
            if status == "error":
                raise DistributedTestError(f"{fn.__name__} failed on rank {rank} of {world_size}:\n{payload}")
            values[rank] = pickle.loads(payload)
        for p in procs:
            p.join(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
    return [values[r] for r in range(world_size)]
