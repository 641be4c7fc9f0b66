"""torch.distributed + megatron parallel_state, started from torchrun or SLURM variables.

Why: one process per GPU (or per CPU rank in tests) is started by torchrun, srun or a test
harness; each needs the same process group and the same TP x PP x DP grid. This module turns
the launcher's environment into that grid and checks the layout up front, so a bad size fails
with a message that names the fix instead of a shape error deep inside megatron.

Environment read (first match wins):
  torchrun / manual  RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT
  SLURM (srun)       SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID; MASTER_ADDR defaults to the
                     first host of SLURM_JOB_NODELIST (bracket forms like ``node[01-03,07]`` are
                     expanded) and MASTER_PORT to 15000 + SLURM_JOB_ID % 20000
  nothing set        a single process (rank 0 of 1) on 127.0.0.1 and a free port

Backend: nccl when CUDA is used (device = LOCAL_RANK), gloo otherwise (with the CPU patches of
``cpu_compat`` applied). ``MEGATRON_GRPO_DEVICE=cpu`` forces the CPU path on a GPU machine.
"""

from __future__ import annotations

import datetime
import os
import re
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

from megatron_grpo import cpu_compat

_layout: ParallelLayout | None = None


@dataclass(frozen=True)
class ParallelLayout:
    """This process's place in the TP x PP x DP grid (megatron order tp-cp-ep-dp-pp)."""

    tp: int
    pp: int
    dp: int
    sequence_parallel: bool
    rank: int
    world_size: int
    tp_rank: int = 0
    pp_rank: int = 0
    dp_rank: int = 0
    local_rank: int = 0
    backend: str = "gloo"

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp - 1


@dataclass(frozen=True)
class LaunchEnv:
    """What the launcher told this process (see the module docstring for the sources)."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    source: str  # "torchrun" | "slurm" | "single"


def expand_nodelist(nodelist: str) -> list[str]:
    """Expand a SLURM hostlist: ``"a[01-03,07],b5"`` -> ``["a01", "a02", "a03", "a07", "b5"]``.

    Zero padding of range bounds is kept; several bracket groups in one name are expanded as a
    product (``r[1-2]n[1-2]`` -> r1n1, r1n2, r2n1, r2n2).
    """
    hosts: list[str] = []
    for item in _split_top_level(nodelist.strip()):
        hosts.extend(_expand_host(item))
    if not hosts:
        raise ValueError(f"SLURM_JOB_NODELIST={nodelist!r} names no host")
    return hosts


def _split_top_level(text: str) -> list[str]:
    items, depth, cur = [], 0, []
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "," and depth == 0:
            items.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth != 0:
        raise ValueError(f"unbalanced brackets in SLURM_JOB_NODELIST={text!r}")
    items.append("".join(cur))
    return [i.strip() for i in items if i.strip()]


def _expand_host(item: str) -> list[str]:
    m = re.search(r"\[([^\]]*)\]", item)
    if m is None:
        return [item]
    head, tail = item[: m.start()], item[m.end() :]
    out = []
    for part in m.group(1).split(","):
        if "-" in part:
            lo, hi = part.split("-", 1)
            width = len(lo)
            out.extend(f"{head}{n:0{width}d}" for n in range(int(lo), int(hi) + 1))
        else:
            out.append(f"{head}{part}")
    tails = _expand_host(tail)
    return [h + t for h in out for t in tails]


def read_launch_env(environ: dict[str, str] | None = None) -> LaunchEnv:
    """Rank, world size and rendezvous address from torchrun or SLURM variables."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world, local = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
        source = "torchrun"
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        rank, world = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"])
        local, source = int(env.get("SLURM_LOCALID", 0)), "slurm"
    else:
        rank, world, local, source = 0, 1, 0, "single"
    if "MASTER_ADDR" in env:
        addr = env["MASTER_ADDR"]
    elif source == "slurm" and env.get("SLURM_JOB_NODELIST"):
        addr = expand_nodelist(env["SLURM_JOB_NODELIST"])[0]
    else:
        addr = "127.0.0.1"
    if "MASTER_PORT" in env:
        port = int(env["MASTER_PORT"])
    elif source == "slurm" and env.get("SLURM_JOB_ID", "").isdigit():
        port = 15000 + int(env["SLURM_JOB_ID"]) % 20000
    elif source == "single":
        port = 0  # init_distributed picks a free port: nothing else rendezvous with this process
    else:
        port = 29500
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside world size {world} (from {source} variables)")
    return LaunchEnv(rank, world, local, addr, port, source)


def validate_layout(
    world_size: int,
    tp: int,
    pp: int,
    num_attention_heads: int | None = None,
    num_query_groups: int | None = None,
    num_layers: int | None = None,
) -> int:
    """Check a TP x PP layout against the world and the model; return the data-parallel size.

    Pure (no process group needed), so ``preflight`` uses it before a job is launched.
    Raises ValueError whose message says which size to change.
    """
    for name, value in (("world_size", world_size), ("tensor_model_parallel_size", tp),
                        ("pipeline_model_parallel_size", pp)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if world_size % (tp * pp) != 0:
        raise ValueError(
            f"world size {world_size} is not divisible by tensor_model_parallel_size x "
            f"pipeline_model_parallel_size = {tp} x {pp} = {tp * pp}: launch a multiple of {tp * pp} "
            f"processes or choose TP x PP dividing {world_size}"
        )
    if num_attention_heads is not None and num_attention_heads % tp != 0:
        raise ValueError(
            f"num_attention_heads {num_attention_heads} is not divisible by tensor_model_parallel_size "
            f"{tp}: use a TP size dividing {num_attention_heads} ({_divisors(num_attention_heads)})"
        )
    if num_query_groups is not None and num_query_groups % tp != 0:
        raise ValueError(
            f"num_key_value_heads (query groups) {num_query_groups} is not divisible by "
            f"tensor_model_parallel_size {tp}: use a TP size dividing {num_query_groups} "
            f"({_divisors(num_query_groups)})"
        )
    if num_layers is not None and num_layers % pp != 0:
        raise ValueError(
            f"num_hidden_layers {num_layers} is not divisible by pipeline_model_parallel_size {pp}: "
            f"use a PP size dividing {num_layers} ({_divisors(num_layers)})"
        )
    return world_size // (tp * pp)


def _divisors(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)


def init_distributed(
    tp: int = 1,
    pp: int = 1,
    sequence_parallel: bool = False,
    seed: int = 1234,
    timeout_s: int = 600,
) -> ParallelLayout:
    """Start the process group and megatron's TP x PP x DP groups; seed the model-parallel RNG.

    Idempotent: a second call with the same sizes returns the existing layout; different sizes
    raise (call ``destroy_distributed`` first). ``sequence_parallel`` is kept only when tp > 1
    (megatron has nothing to split otherwise), as Megatron-LM does.
    """
    global _layout
    cpu_compat.stub_missing_triton()  # before the first megatron import (megatron-core >= 0.17)
    from megatron.core import parallel_state, tensor_parallel

    if _layout is not None:
        if (_layout.tp, _layout.pp) != (tp, pp) or _layout.sequence_parallel != (sequence_parallel and tp > 1):
            raise RuntimeError(
                f"distributed already initialised with TP={_layout.tp} PP={_layout.pp} "
                f"SP={_layout.sequence_parallel}; call destroy_distributed() before TP={tp} PP={pp}"
            )
        return _layout

    launch = read_launch_env()
    dp = validate_layout(launch.world_size, tp, pp)
    use_cuda = cpu_compat.cuda_enabled()
    if use_cuda:
        torch.cuda.set_device(launch.local_rank % torch.cuda.device_count())
    else:
        cpu_compat.apply()
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        port = launch.master_port or free_port()
        dist.init_process_group(
            backend=backend,
            init_method=f"tcp://{_url_host(launch.master_addr)}:{port}",
            rank=launch.rank,
            world_size=launch.world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=tp,
            pipeline_model_parallel_size=pp,
            distributed_timeout_minutes=max(1, timeout_s // 60),
        )
    tensor_parallel.model_parallel_cuda_manual_seed(seed)
    _layout = ParallelLayout(
        tp=tp,
        pp=pp,
        dp=dp,
        sequence_parallel=bool(sequence_parallel and tp > 1),
        rank=launch.rank,
        world_size=launch.world_size,
        tp_rank=parallel_state.get_tensor_model_parallel_rank(),
        pp_rank=parallel_state.get_pipeline_model_parallel_rank(),
        dp_rank=parallel_state.get_data_parallel_rank(),
        local_rank=launch.local_rank,
        backend=backend,
    )
    return _layout


def free_port() -> int:
    """A TCP port that is free on this host now (for a rendezvous on 127.0.0.1)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _url_host(addr: str) -> str:
    return f"[{addr}]" if ":" in addr and not addr.startswith("[") else addr


def current_layout() -> ParallelLayout | None:
    """The layout set up by ``init_distributed`` in this process, or None."""
    return _layout


def destroy_distributed(keep_process_group: bool = False) -> None:
    """Tear down megatron's groups and the process group (safe to call when not initialised).

    ``keep_process_group=True`` keeps the world group so that ``init_distributed`` can build a
    different TP x PP layout in the same processes (re-creating a TCP rendezvous is racy).
    """
    global _layout
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized() and not keep_process_group:
        dist.destroy_process_group()
    _layout = None


def reduce_loss_metrics(results: list[dict[str, float]], device: torch.device | None) -> dict[str, float]:
    """Sum the per-micro-batch dicts of the last PP stage over micro-batches and DP; share with all
    PP stages (they never ran the loss function)."""
    from megatron.core import parallel_state

    keys: list[str] = []
    if parallel_state.is_pipeline_last_stage():
        keys = sorted({k for r in results for k in r})
    if parallel_state.get_pipeline_model_parallel_world_size() > 1:
        box = [keys]
        dist.broadcast_object_list(
            box,
            src=parallel_state.get_pipeline_model_parallel_last_rank(),
            group=parallel_state.get_pipeline_model_parallel_group(),
            device=device,
        )
        keys = box[0]
    values = torch.zeros(len(keys), dtype=torch.float64, device=device)
    if parallel_state.is_pipeline_last_stage():
        for r in results:
            for i, k in enumerate(keys):
                values[i] += float(r.get(k, 0.0))
        if parallel_state.get_data_parallel_world_size() > 1:
            dist.all_reduce(values, group=parallel_state.get_data_parallel_group())
    if parallel_state.get_pipeline_model_parallel_world_size() > 1:
        dist.broadcast(
            values,
            src=parallel_state.get_pipeline_model_parallel_last_rank(),
            group=parallel_state.get_pipeline_model_parallel_group(),
        )
    return {k: float(v) for k, v in zip(keys, values.tolist())}
