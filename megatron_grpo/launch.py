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
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
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
    """The job's Ray ports from the GCS port up. ``os_picks_node_ports``: the node's own ports (all
    but the head's GCS and client ports) are left to the OS, for a worker whose planned ports are
    taken on its host (two nodes of one job on the same machine: Ray listens on every interface)."""

    gcs: int
    os_picks_node_ports: bool = False

    def node_ports(self) -> list[int]:
        return list(range(self.gcs + 2, self.gcs + 8))

    def flags(self, head: bool) -> list[str]:
        ports = [0] * 6 if self.os_picks_node_ports else self.node_ports()
        names = ("node-manager-port", "object-manager-port", "dashboard-agent-listen-port",
                 "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port")
        out = [f"--{name}={p}" for name, p in zip(names, ports)]
        if head:
            out = [f"--port={self.gcs}", f"--ray-client-server-port={self.gcs + 1}"] + out
        return out


def resolve_ip(host: str) -> str:
    """IPv4 address of ``host`` as the other nodes see it (SLURM node names resolve on clusters)."""
    try:
        return socket.getaddrinfo(host, None, socket.AF_INET)[0][4][0]
    except OSError:
        return socket.gethostbyname(socket.gethostname())


def slurm_node_addr(node: str) -> str:
    """The IPv4 address SLURM reaches ``node`` at: its ``NodeAddr`` (``scontrol show node``), which
    is what slurmd listens on, rather than whatever the host name resolves to. Clusters with several
    interfaces set NodeAddr to the compute network; several nodes on one host differ only there.
    Falls back to resolving the node name (NodeAddr unset, or no scontrol in a container)."""
    try:
        out = subprocess.run(["scontrol", "show", "node", "-o", node], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    match = re.search(r"\bNodeAddr=(\S+)", out)
    return resolve_ip(match.group(1) if match else node)


def ports_free(ip: str, ports: Sequence[int]) -> bool:
    """True when every port can be bound on ``ip`` right now (a hint, not a reservation)."""
    for port in ports:
        with socket.socket() as sock:
            try:
                sock.bind((ip, port))
            except OSError:
                return False
    return True


def worker_needs_os_ports(head_ip: str, node_ip: str | None, port: int) -> bool:
    """A worker node leaves its Ray ports to the OS when the head runs on the same host (Ray listens
    on every interface, so the head's planned ports are taken there too; the head's address is then
    one of this host's) or when its planned ports are taken anyway."""
    same_host = ports_free(head_ip, [0])  # binding the head's address works only on the head's host
    return same_host or not ports_free(node_ip or "0.0.0.0", RayPorts(port).node_ports())


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
    node_ip: str | None = None,
    os_picks_node_ports: bool = False,
    temp_dir: str | None = None,
    num_cpus: int | None = None,
    object_store_bytes: int | None = None,
) -> list[str]:
    """``ray start --block`` for the head (role="head") or a worker of the cluster at head_ip:port.

    ``node_ip``: the address this node's Ray advertises (a worker's own SLURM NodeAddr; the head
    always uses head_ip). No GPUs are offered to Ray (``--num-gpus=0``): the environment actors run
    on CPU and the GPUs belong to the trainer ranks. The dashboard is off (it is a web server nobody
    reads on a batch job).
    """
    if role not in ("head", "worker"):
        raise ValueError(f"ray node role must be head or worker, got {role!r}")
    ports = RayPorts(port, os_picks_node_ports=os_picks_node_ports and role == "worker")
    argv = [ray_executable(), "start", "--block", "--num-gpus=0", f"--node-name={node_name}", "--disable-usage-stats"]
    if role == "head":
        argv += ["--head", f"--node-ip-address={head_ip}", "--include-dashboard=false"]
        if temp_dir:
            argv.append(f"--temp-dir={temp_dir}")
    else:
        argv.append(f"--address={head_ip}:{port}")
        if node_ip:
            argv.append(f"--node-ip-address={node_ip}")
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

    while True:  # the GCS port can accept connections before the GCS answers (a busy node)
        try:
            ray.init(address=address, log_to_driver=False, logging_level="ERROR", configure_logging=False)
            break
        except ConnectionError as exc:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"Ray head {address} did not answer within {timeout_s:.0f} s ({exc}); "
                                   f"see the ray-head log of {expected[0] if expected else '?'}") from None
            time.sleep(poll_s)
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


RAY_UP_LINE = "will now block forever"  # `ray start --block` prints it once every Ray process is up
RAY_START_ATTEMPTS = 3


def _become_subreaper() -> bool:
    """Linux: orphaned descendants are re-parented to this process (so it can find and stop them)."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def _stop_descendants(timeout_s: float = 15.0) -> None:
    import psutil

    procs = psutil.Process().children(recursive=True)
    for proc in procs:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass


def run_ray_node(argv: Sequence[str], env: Mapping[str, str] | None = None,
                 attempts: int = RAY_START_ATTEMPTS) -> int:
    """Run ``ray start --block`` (``argv``) in the foreground; its output goes to this stdout.

    Returns Ray's exit code, or 0 when this process got SIGTERM / SIGINT / SIGUSR2 (Ray is stopped
    then). SIGUSR1 (SLURM's preemption warning, meant for the trainer) is ignored here and in Ray.

    Why a supervisor: on a busy node Ray can fail to start (the raylet gives its dashboard agent
    15 s to come up and aborts otherwise). A start that fails before Ray says it is up is retried,
    up to ``attempts`` times; a Ray that was up and then died is not (the job fails fast instead).
    This process is a child subreaper, so Ray processes left over by a failed or stopped start are
    found and stopped: nothing outlives it.
    """
    env = dict(os.environ if env is None else env)
    stopping = False
    child: subprocess.Popen | None = None

    def on_stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2):
        signal.signal(sig, on_stop)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    _become_subreaper()
    rc = 1
    for attempt in range(1, attempts + 1):
        up = False
        child = subprocess.Popen(list(argv), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True, errors="replace")
        assert child.stdout is not None
        for line in child.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            up = up or RAY_UP_LINE in line
        rc = child.wait()
        _stop_descendants()
        if stopping:
            return 0
        if up or attempt == attempts:
            return rc
        print(f"ray-node: Ray did not start (exit {rc}), attempt {attempt}/{attempts}; starting it again",
              flush=True)
    return rc


class RayNode:
    """A Ray node as a child process (submitit path: one per node, started by local rank 0):
    ``python -m megatron_grpo.launch ray-run -- <ray start --block ...>`` (``run_ray_node``).

    ``env`` (default os.environ) must carry the job's Ray token (ray_auth): a Ray node is never
    started without authentication. ``stop()`` sends SIGTERM, which stops every Ray process of the
    node, then waits.
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
        cmd = [sys.executable, "-m", "megatron_grpo.launch", "ray-run", "--", *self.argv]
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
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
        head_ip = "127.0.0.1" if local else slurm_node_addr(hosts[0])
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
                    node_ip = head_ip if role == "head" else slurm_node_addr(hosts[job.node])
                    os_ports = role == "worker" and worker_needs_os_ports(head_ip, node_ip, port)
                    argv = ray_start_argv(role, head_ip, port, hosts[job.node], node_ip=node_ip,
                                          os_picks_node_ports=os_ports, num_cpus=spec.ray_num_cpus,
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
    node = sub.add_parser("ray-node", help="run `ray start --block` for this node (run_ray_node)")
    node.add_argument("role", choices=("head", "worker"))
    node.add_argument("--head-ip", required=True)
    node.add_argument("--port", type=int, required=True)
    node.add_argument("--node-name", default=os.environ.get("SLURMD_NODENAME") or socket.gethostname())
    node.add_argument("--node-ip", default=None, help="worker: this node's address (default: its SLURM NodeAddr)")
    node.add_argument("--temp-dir", default=None)
    node.add_argument("--num-cpus", type=int, default=None)
    node.add_argument("--object-store-bytes", type=int, default=None)
    node.add_argument("--timeout", type=float, default=600.0, help="worker: seconds to wait for the head")
    run = sub.add_parser("ray-run", help="run_ray_node on a given `ray start --block` command line")
    run.add_argument("ray_argv", nargs=argparse.REMAINDER)
    addr = sub.add_parser("node-addr", help="print a SLURM node's address (NodeAddr)")
    addr.add_argument("node")
    wait = sub.add_parser("ray-wait", help="wait until every node joined the Ray cluster")
    wait.add_argument("--address", required=True)
    wait.add_argument("--nodes", required=True, help="comma-separated node names")
    wait.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)

    if args.cmd == "ray-wait":
        expected = [n for n in args.nodes.split(",") if n]
        # ray.init can block well past the deadline when the head died while starting (its client
        # retries the GCS inside Ray's C++ core): a watchdog keeps the wait bounded.
        grace_s = min(30.0, max(5.0, args.timeout))

        def give_up() -> None:
            print(f"ray-wait: Ray head {args.address} did not answer within {args.timeout + grace_s:.0f} s; "
                  f"see the ray-head log of {expected[0] if expected else '?'}", file=sys.stderr, flush=True)
            os._exit(1)

        watchdog = threading.Timer(args.timeout + grace_s, give_up)
        watchdog.daemon = True
        watchdog.start()
        try:
            alive = wait_for_ray_nodes(args.address, expected, args.timeout)
        except (TimeoutError, RuntimeError) as exc:
            print(f"ray-wait: {exc}", file=sys.stderr)
            return 1
        finally:
            watchdog.cancel()
        print(f"ray-wait: {len(alive)} node(s) joined {args.address}: {', '.join(alive)}", flush=True)
        return 0

    if args.cmd == "node-addr":
        print(slurm_node_addr(args.node))
        return 0
    os.environ.update(RAY_ENV)
    try:
        ray_auth.use_token(_require_token(os.environ, "start a Ray node"))
    except RuntimeError as exc:
        print(f"{args.cmd}: {exc}", file=sys.stderr)
        return 2
    if args.cmd == "ray-run":
        ray_argv = args.ray_argv[1:] if args.ray_argv[:1] == ["--"] else args.ray_argv
        return run_ray_node(ray_argv)

    node_ip, os_ports = None, False
    if args.role == "worker":
        if not wait_for_tcp(args.head_ip, args.port, args.timeout):
            print(f"ray-node: head {args.head_ip}:{args.port} not reachable after {args.timeout:.0f} s from "
                  f"{args.node_name}", file=sys.stderr)
            return 1
        node_ip = args.node_ip or (slurm_node_addr(args.node_name) if os.environ.get("SLURMD_NODENAME") else None)
        os_ports = worker_needs_os_ports(args.head_ip, node_ip, args.port)
        if os_ports:
            print(f"ray-node: {args.node_name} shares its host with the head, or ports {args.port + 2}-"
                  f"{args.port + 7} are taken there: this node's Ray ports are left to the OS", flush=True)
    cmd = ray_start_argv(args.role, args.head_ip, args.port, args.node_name, node_ip=node_ip,
                         os_picks_node_ports=os_ports, temp_dir=args.temp_dir, num_cpus=args.num_cpus,
                         object_store_bytes=args.object_store_bytes)
    print(f"ray-node: {shlex.join(cmd)}", flush=True)
    return run_ray_node(cmd)


if __name__ == "__main__":
    sys.exit(_cli(sys.argv[1:]))
