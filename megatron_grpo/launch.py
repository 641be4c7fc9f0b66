"""Launch a GRPO run on SLURM (or this machine) with submitit, and the Ray-cluster helpers the
SLURM scripts share.

Why one module: ``slurm/grpo_*.sh`` and ``submit()`` must start the same topology (one trainer rank
per GPU, MASTER_ADDR/PORT from the first node, a Ray head on the first node and a Ray worker on every
other node for the environment actors), so the Ray command line, the port plan and the
"every node joined" wait live here and both paths use them.

Security: every Ray cluster started here uses token authentication with a fresh per-job token
(environment/ray_auth.py) that reaches every node through the job's environment; see docs/launch.md.

Port plan (all per job, so two jobs sharing a node do not collide; below the 9000 ephemeral floor
that clusters commonly set): Ray GCS ``6379 + (job_id % 250) * 10`` and the next 7 ports for the
client server, node manager, object manager, dashboard agent (http, grpc), runtime-env agent and
metrics; torch MASTER_PORT ``15000 + job_id % 20000`` (as ``distributed.read_launch_env``).

Command line (used by slurm/ray_bootstrap.sh and slurm/common.sh, not meant for users)::

    python -m megatron_grpo.launch ray-node head|worker --head-ip IP --port P [--node-name N] ...
    python -m megatron_grpo.launch ray-wait --address IP:P --nodes n1,n2 [--timeout S]

Users call ``submit()`` or ``tools/launch_submitit.py``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from environment import ray_auth
from megatron_grpo.preemption import PREEMPT_EXIT_CODE, PREEMPT_FILE_ENV

RAY_BASE_PORT = 6379
# Environment for every Ray process we start and every driver that connects (besides the token,
# which ray_auth puts in: RAY_AUTH_MODE=token, RAY_AUTH_TOKEN).
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",  # job end: stop now, nothing to drain
    "RAY_worker_register_timeout_seconds": "120",  # many actors starting at once on a busy node
    "RAY_gcs_rpc_server_reconnect_timeout_s": "120",
}


# ----------------------------------------------------------------------------- ports and addresses


def default_ray_port(job_id: int | str | None) -> int:
    """The Ray GCS port of a job; the 7 ports above it are taken too (see RayPorts)."""
    digits = "".join(ch for ch in str(job_id or "") if ch.isdigit())
    return RAY_BASE_PORT + (int(digits) % 250) * 10 if digits else RAY_BASE_PORT


def default_master_port(job_id: int | str | None) -> int:
    digits = "".join(ch for ch in str(job_id or "") if ch.isdigit())
    return 15000 + int(digits) % 20000 if digits else 29500


@dataclass(frozen=True)
class RayPorts:
    gcs: int

    def flags(self, head: bool) -> list[str]:
        out = [
            f"--node-manager-port={self.gcs + 2}",
            f"--object-manager-port={self.gcs + 3}",
            f"--dashboard-agent-listen-port={self.gcs + 4}",
            f"--dashboard-agent-grpc-port={self.gcs + 5}",
            f"--runtime-env-agent-port={self.gcs + 6}",
            f"--metrics-export-port={self.gcs + 7}",
        ]
        if head:
            out = [f"--port={self.gcs}", f"--ray-client-server-port={self.gcs + 1}"] + out
        return out


def resolve_ip(host: str) -> str:
    """IPv4 address of ``host`` as the other nodes see it (SLURM node names resolve on clusters)."""
    try:
        return socket.getaddrinfo(host, None, socket.AF_INET)[0][4][0]
    except OSError:
        return socket.gethostbyname(socket.gethostname())


def wait_for_tcp(host: str, port: int, timeout_s: float, poll_s: float = 0.5) -> bool:
    """True once ``host:port`` accepts a connection, False after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(2.0, max(timeout_s, 0.1))):
                return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll_s)


# ----------------------------------------------------------------------------- Ray nodes


def ray_start_argv(
    role: str,
    head_ip: str,
    port: int,
    node_name: str,
    *,
    temp_dir: str | None = None,
    num_cpus: int | None = None,
    object_store_bytes: int | None = None,
) -> list[str]:
    """``ray start --block`` for the head (role="head") or a worker of the cluster at head_ip:port.

    No GPUs are offered to Ray (``--num-gpus=0``): the environment actors run on CPU and the GPUs
    belong to the trainer ranks. The dashboard is off (it is a web server nobody reads on a batch job).
    """
    if role not in ("head", "worker"):
        raise ValueError(f"ray node role must be head or worker, got {role!r}")
    ports = RayPorts(port)
    argv = [ray_executable(), "start", "--block", "--num-gpus=0", f"--node-name={node_name}", "--disable-usage-stats"]
    if role == "head":
        argv += ["--head", f"--node-ip-address={head_ip}", "--include-dashboard=false"]
        if temp_dir:
            argv.append(f"--temp-dir={temp_dir}")
    else:
        argv.append(f"--address={head_ip}:{port}")
    argv += ports.flags(head=role == "head")
    if num_cpus is not None:
        argv.append(f"--num-cpus={num_cpus}")
    if object_store_bytes is not None:
        argv.append(f"--object-store-memory={object_store_bytes}")
    return argv


def ray_executable() -> str:
    """The ``ray`` CLI of this interpreter's environment (a venv's bin/ need not be on PATH)."""
    beside = Path(sys.executable).with_name("ray")
    return str(beside) if beside.exists() else "ray"


def wait_for_ray_nodes(address: str, expected: Sequence[str], timeout_s: float, poll_s: float = 1.0) -> list[str]:
    """Block until every node name in ``expected`` is alive in the Ray cluster at ``address``.

    Returns the alive node names. Raises TimeoutError naming the missing nodes (the message says
    where their logs are) after ``timeout_s``.
    """
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout_s
    if not wait_for_tcp(host, int(port), timeout_s):
        raise TimeoutError(f"Ray head {address} not reachable after {timeout_s:.0f} s: the head node "
                           f"{expected[0] if expected else '?'} did not start Ray (see its ray-head log)")
    os.environ.update(RAY_ENV)
    ray_auth.use_token(_require_token(os.environ, "connect to the job's Ray"))
    import ray

    ray.init(address=address, log_to_driver=False, logging_level="ERROR", configure_logging=False)
    try:
        while True:
            alive = sorted({n.get("NodeName", "") for n in ray.nodes() if n.get("Alive")})
            missing = [name for name in expected if name not in alive]
            if not missing:
                return alive
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"Ray nodes did not join {address} within {timeout_s:.0f} s: missing {', '.join(missing)} "
                    f"(joined: {', '.join(alive) or 'none'}); see the ray-workers log of those nodes"
                )
            time.sleep(poll_s)
    finally:
        ray.shutdown()


def _require_token(env: Mapping[str, str], what: str) -> str:
    token = ray_auth.token_from_env(env)
    if token is None:
        raise RuntimeError(
            f"cannot {what}: no Ray token in the environment (RAY_AUTH_MODE=token and RAY_AUTH_TOKEN); "
            f"start jobs with slurm/grpo_*.sh or megatron_grpo.launch.submit, which create one per job"
        )
    return token


class RayNode:
    """A ``ray start --block`` child process (submitit path: one per node, started by local rank 0).

    ``env`` (default os.environ) must carry the job's Ray token (ray_auth): a Ray node is never
    started without authentication. The child ignores SIGUSR1 (the preemption warning is for the
    trainer, and SLURM sends it to every process of the step); ``stop()`` sends SIGTERM, which makes
    ``ray start --block`` stop every Ray process it started, then waits.
    """

    def __init__(self, argv: list[str], log_path: Path | None = None, env: Mapping[str, str] | None = None) -> None:
        self.argv = argv
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen | None = None

    def start(self) -> RayNode:
        env = dict(os.environ if self.env is None else self.env, **RAY_ENV)
        ray_auth.apply_token(env, _require_token(env, "start a Ray node"))
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            self.argv, env=env, stdout=out, stderr=subprocess.STDOUT,
            preexec_fn=lambda: signal.signal(signal.SIGUSR1, signal.SIG_IGN),
        )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


# ----------------------------------------------------------------------------- submitit


class PreflightFailed(RuntimeError):
    """submit() refused to submit: the config does not fit the requested cluster shape."""


@dataclass(frozen=True)
class LaunchSpec:
    """Everything a rank needs to start; pickled by submitit and re-run unchanged after a requeue."""

    config_path: str
    overrides: tuple[str, ...] = ()
    train_cmd: tuple[str, ...] = ("megatron-grpo", "train")
    device: str = "cuda"
    ray: bool = True
    ray_join_timeout_s: float = 600.0
    ray_num_cpus: int | None = None
    log_dir: str = "results/logs"
    workdir: str = field(default_factory=os.getcwd)
    extra_env: tuple[tuple[str, str], ...] = ()


class GRPOTask:
    """The function submitit runs once per task (= one trainer rank).

    Local rank 0 of each node runs that node's Ray process (head on node 0); global rank 0 waits
    until every node joined. Then every task runs the trainer command as a child process with
    RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT / RAY_ADDRESS set. A trainer exit with
    PREEMPT_EXIT_CODE (or submitit's own preemption signal, see ``checkpoint``) requeues the job.
    """

    def __init__(self, spec: LaunchSpec) -> None:
        self.spec = spec
        self._child: subprocess.Popen | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"spec": self.spec, "_child": None}

    def __call__(self) -> int:
        import submitit

        job = submitit.JobEnvironment()
        spec = self.spec
        os.chdir(spec.workdir)
        hosts = list(job.hostnames) or [socket.gethostname()]
        local = job.num_nodes == 1 and "SLURM_JOB_ID" not in os.environ
        head_ip = "127.0.0.1" if local else resolve_ip(hosts[0])
        restart = os.environ.get("SLURM_RESTART_COUNT", "0")
        log_dir = Path(spec.log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, **dict(spec.extra_env), **RAY_ENV)
        env.update(
            RANK=str(job.global_rank), WORLD_SIZE=str(job.num_tasks), LOCAL_RANK=str(job.local_rank),
            LOCAL_WORLD_SIZE=str(job.num_tasks // job.num_nodes), MASTER_ADDR=head_ip,
            MASTER_PORT=str(default_master_port(job.job_id)), MEGATRON_GRPO_DEVICE=spec.device,
        )
        env[PREEMPT_FILE_ENV] = str(log_dir / f"preempted-{job.job_id}")
        ray_node = None
        try:
            if spec.ray:
                if ray_auth.token_from_env() is None and job.num_tasks == 1:
                    ray_auth.use_token(ray_auth.new_token())  # cluster="debug": one task, nobody to share with
                token = _require_token(os.environ, "start the job's Ray")
                ray_auth.use_token(token)
                ray_auth.apply_token(env, token)
                port = default_ray_port(job.job_id)
                env["RAY_ADDRESS"] = f"{head_ip}:{port}"
                if job.local_rank == 0:
                    role = "head" if job.node == 0 else "worker"
                    if role == "worker" and not wait_for_tcp(head_ip, port, spec.ray_join_timeout_s):
                        raise TimeoutError(f"node {hosts[job.node]}: Ray head {head_ip}:{port} never came up")
                    argv = ray_start_argv(role, head_ip, port, hosts[job.node], num_cpus=spec.ray_num_cpus,
                                          temp_dir=f"/tmp/ray_mg_{job.job_id}" if role == "head" else None)
                    log = log_dir / f"ray-{role}-{hosts[job.node]}-{job.job_id}-r{restart}.log"
                    ray_node = RayNode(argv, log, env=env).start()
                if job.global_rank == 0:
                    os.environ.update(RAY_ENV)
                    wait_for_ray_nodes(env["RAY_ADDRESS"], hosts, spec.ray_join_timeout_s)
                elif not wait_for_tcp(head_ip, port, spec.ray_join_timeout_s):
                    raise TimeoutError(f"Ray head {head_ip}:{port} not reachable from {hosts[job.node]}")
                if ray_node is not None and not ray_node.alive():
                    raise RuntimeError(f"Ray on {hosts[job.node]} exited early; see {ray_node.log_path}")
            cmd = [*spec.train_cmd, "--config", spec.config_path, *spec.overrides]
            print(f"[grpo rank {job.global_rank}/{job.num_tasks}] {shlex.join(cmd)}", flush=True)
            self._child = subprocess.Popen(cmd, env=env)
            rc = self._child.wait()
        finally:
            if ray_node is not None:
                ray_node.stop()
        preempted = rc == PREEMPT_EXIT_CODE or Path(env[PREEMPT_FILE_ENV]).exists()
        if preempted and job.global_rank == 0 and "SLURM_JOB_ID" in os.environ:
            print(f"[grpo] trainer saved and exited for preemption: requeue job {job.job_id}", flush=True)
            subprocess.run(["scontrol", "requeue", os.environ["SLURM_JOB_ID"]], check=False)
            return rc
        if rc != 0 and not preempted:
            raise RuntimeError(f"rank {job.global_rank}: `{shlex.join(cmd)}` exited with {rc}")
        return rc

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit's preemption hook (rank 0): let the trainer finish its save, then requeue as is.

        The trainer child got the same signal from SLURM (it is in the same step); it saves and
        exits. The requeued task resumes from that checkpoint (checkpointing.resume=auto).
        """
        import submitit

        if self._child is not None:
            try:
                self._child.wait(timeout=float(os.environ.get("MEGATRON_GRPO_SAVE_TIMEOUT_S", "100")))
            except subprocess.TimeoutExpired:
                pass
        return submitit.helpers.DelayedSubmission(GRPOTask(self.spec))


def submit(
    config_path: str | os.PathLike,
    overrides: Sequence[str] = (),
    *,
    nodes: int = 1,
    gpus_per_node: int = 8,
    cluster: str = "slurm",
    partition: str | None = None,
    account: str | None = None,
    time_min: int = 240,
    ntasks_per_node: int | None = None,
    cpus_per_task: int | None = None,
    device: str | None = None,
    container_image: str | None = None,
    container_mounts: str | None = None,
    train_cmd: Sequence[str] = ("megatron-grpo", "train"),
    ray: bool = True,
    ray_join_timeout_s: float = 600.0,
    ray_num_cpus: int | None = None,
    folder: str | os.PathLike | None = None,
    preflight: bool = True,
    gpu_memory_gb: float = 80.0,
    extra_env: dict[str, str] | None = None,
    slurm_additional_parameters: dict[str, Any] | None = None,
) -> Any:
    """Submit ``megatron-grpo train`` on ``nodes`` x ``gpus_per_node`` with submitit; returns the Job.

    cluster: "slurm" (sbatch through submitit's SlurmExecutor), "local" (processes on this machine,
    nodes must be 1) or "debug" (in this process, one task). ``gpus_per_node=0`` with
    ``ntasks_per_node=N`` runs N CPU (gloo) ranks. Preflight runs here first (on the submit host, no
    GPU held) and raises PreflightFailed listing each failure and its fix.
    Containers (pyxis): ``container_image`` / ``container_mounts`` become srun flags.
    With ``ray``, the job's batch shell (or the local controller) creates the job's Ray token
    (``ray_auth.SHELL_EXPORT_NEW_TOKEN``): it is in no file submitit writes, only in the job's
    environment.
    """
    import submitit

    from megatron_grpo import preflight as pf
    from megatron_grpo.config import load_config

    if cluster not in ("slurm", "local", "debug"):
        raise ValueError(f"cluster must be slurm, local or debug, got {cluster!r}")
    if cluster != "slurm" and nodes != 1:
        raise ValueError(f"cluster={cluster!r} runs on this machine: nodes must be 1, got {nodes}")
    tasks = ntasks_per_node if ntasks_per_node is not None else gpus_per_node
    if tasks < 1:
        raise ValueError("gpus_per_node=0 needs ntasks_per_node >= 1 (CPU ranks)")
    if cluster == "debug" and tasks != 1:
        raise ValueError("cluster='debug' runs one task in this process: use ntasks_per_node=1")
    device = device or ("cuda" if gpus_per_node > 0 else "cpu")
    overrides = tuple(overrides)
    cfg = load_config(config_path, list(overrides))
    if preflight:
        mem = gpu_memory_gb if device == "cuda" else pf._host_memory_gb_per_rank(tasks)
        checks, _ = pf.run_checks(cfg, nodes, tasks, device, mem)
        failed = [c for c in checks if c.status == "fail"]
        if failed:
            raise PreflightFailed("preflight failed:\n" + "\n".join(
                f"  {c.name}: {c.message}\n    fix: {c.fix}" for c in failed))
    log_dir = Path(cfg.logger.log_dir).absolute()
    folder = Path(folder) if folder is not None else log_dir / "submitit"
    spec = LaunchSpec(
        config_path=str(Path(config_path).absolute()), overrides=overrides, train_cmd=tuple(train_cmd),
        device=device, ray=ray, ray_join_timeout_s=ray_join_timeout_s, ray_num_cpus=ray_num_cpus,
        log_dir=str(log_dir), workdir=os.getcwd(), extra_env=tuple((extra_env or {}).items()),
    )
    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    params: dict[str, Any] = {"timeout_min": time_min, "tasks_per_node": tasks, "name": "megatron-grpo"}
    if cluster == "slurm":
        srun_args = []
        if container_image:
            srun_args += [f"--container-image={container_image}", "--no-container-mount-home",
                          f"--container-mounts={container_mounts or f'{os.getcwd()}:{os.getcwd()}'}",
                          f"--container-workdir={os.getcwd()}"]
        extra = {"requeue": True, "signal": "USR1@120"}
        extra.update(slurm_additional_parameters or {})
        params.update(
            nodes=nodes, slurm_partition=partition, slurm_srun_args=srun_args,
            slurm_additional_parameters=extra,
            # submitit's own handler must listen to the same signal as the trainer
            slurm_setup=["export SUBMITIT_PREEMPT_SIGNAL=USR1"] + ([ray_auth.SHELL_EXPORT_NEW_TOKEN] if ray else []),
        )
        if gpus_per_node > 0:
            params["gpus_per_node"] = gpus_per_node
        if account:
            params["slurm_account"] = account
        if cpus_per_task:
            params["cpus_per_task"] = cpus_per_task
    elif cluster == "local":
        if gpus_per_node > 0:
            params["gpus_per_node"] = gpus_per_node
        if ray:
            params["local_setup"] = [ray_auth.SHELL_EXPORT_NEW_TOKEN]
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return executor.submit(GRPOTask(spec))


# ----------------------------------------------------------------------------- CLI for slurm/*.sh


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m megatron_grpo.launch")
    sub = parser.add_subparsers(dest="cmd", required=True)
    node = sub.add_parser("ray-node", help="exec `ray start --block` for this node")
    node.add_argument("role", choices=("head", "worker"))
    node.add_argument("--head-ip", required=True)
    node.add_argument("--port", type=int, required=True)
    node.add_argument("--node-name", default=os.environ.get("SLURMD_NODENAME") or socket.gethostname())
    node.add_argument("--temp-dir", default=None)
    node.add_argument("--num-cpus", type=int, default=None)
    node.add_argument("--object-store-bytes", type=int, default=None)
    node.add_argument("--timeout", type=float, default=600.0, help="worker: seconds to wait for the head")
    wait = sub.add_parser("ray-wait", help="wait until every node joined the Ray cluster")
    wait.add_argument("--address", required=True)
    wait.add_argument("--nodes", required=True, help="comma-separated node names")
    wait.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)

    if args.cmd == "ray-wait":
        expected = [n for n in args.nodes.split(",") if n]
        try:
            alive = wait_for_ray_nodes(args.address, expected, args.timeout)
        except (TimeoutError, RuntimeError) as exc:
            print(f"ray-wait: {exc}", file=sys.stderr)
            return 1
        print(f"ray-wait: {len(alive)} node(s) joined {args.address}: {', '.join(alive)}", flush=True)
        return 0

    if args.role == "worker" and not wait_for_tcp(args.head_ip, args.port, args.timeout):
        print(f"ray-node: head {args.head_ip}:{args.port} not reachable after {args.timeout:.0f} s from "
              f"{args.node_name}", file=sys.stderr)
        return 1
    cmd = ray_start_argv(args.role, args.head_ip, args.port, args.node_name, temp_dir=args.temp_dir,
                         num_cpus=args.num_cpus, object_store_bytes=args.object_store_bytes)
    os.environ.update(RAY_ENV)
    try:
        ray_auth.use_token(_require_token(os.environ, "start a Ray node"))
    except RuntimeError as exc:
        print(f"ray-node: {exc}", file=sys.stderr)
        return 2
    print(f"ray-node: {shlex.join(cmd)}", flush=True)
    os.execvp(cmd[0], cmd)
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(_cli(sys.argv[1:]))
