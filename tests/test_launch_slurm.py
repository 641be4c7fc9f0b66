"""The launch path against real SLURM clusters on this machine (slurm/local/slurm_up.sh: one node,
and two nodes n1/n2 on 127.0.0.2/127.0.0.3) and real submitit executors.

Jobs run `slurm/grpo_1node.sh` with 2 gloo ranks on CPU (`--gpus-per-node=0 --ntasks-per-node=2`).
Every job gets the same tiny CPU config (configs/tiny_cpu.yaml + the tiny run of tests/test_trainer.py:
generated tasks, a tokenizer trained here, a tiny Qwen3; TP=2). One job runs the real trainer with
its environment actors on the job's Ray cluster. For the other jobs the rank command is TRAIN_CMD,
by default PAYLOAD: a fast stand-in that behaves like
the trainer where the launcher can see it (reads the config, gloo all-reduce across the srun ranks,
the trainer's "step N/M |", "resumed from ... at step N" and "preempted (SIG...): checkpoint saved at
step N" lines, results/<exp>/checkpoints/step_N folders, resume=auto from the latest one,
PreemptionFlag -> save -> exit 75), and, on rank 0, connects to RAY_ADDRESS and runs a remote task.

Switching them all to the real trainer is one line: ``TRAIN_CMD = "megatron-grpo train"`` (slower:
about 40 s of start-up per job run on 2 cores); to try it without editing, run with
``LAUNCH_TEST_TRAIN_CMD="megatron-grpo train"``.

If SLURM cannot run here, slurm_up.sh writes why to $SLURM_LOCAL_DIR/unavailable.txt and every test
in this file FAILS with that reason.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from data_paths import sandbox_dir
from ray_probe import TOKEN_RE, files_containing, gcs_answer

from environment import ray_auth
from megatron_grpo import launch
from megatron_grpo.config import load_config, to_dict
from megatron_grpo.preemption import PREEMPT_EXIT_CODE

REPO = Path(__file__).resolve().parents[1]
SLURM_DIR = Path(os.environ.get("SLURM_LOCAL_DIR", "/tmp/megatron_grpo_slurm"))
SANDBOX = Path(sandbox_dir())
# None -> the PAYLOAD stand-in below; the trainer: "megatron-grpo train" (or set LAUNCH_TEST_TRAIN_CMD)
TRAIN_CMD = os.environ.get("LAUNCH_TEST_TRAIN_CMD") or None

PAYLOAD = r'''
"""Stand-in for `megatron-grpo train --config CFG [overrides]` (see tests/test_launch_slurm.py)."""
import argparse, json, os, time
from pathlib import Path

import torch
import torch.distributed as dist

from megatron_grpo.config import load_config
from megatron_grpo.preemption import PreemptionFlag

parser = argparse.ArgumentParser()
parser.add_argument("--config", required=True)
parser.add_argument("overrides", nargs="*")
args = parser.parse_args()
cfg = load_config(args.config, args.overrides)
flag = PreemptionFlag().install()
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
ckpt = Path(cfg.checkpointing.checkpoint_dir)
start = 1
if cfg.checkpointing.resume == "auto" and ckpt.is_dir():
    start = max((int(p.name.split("_")[1]) for p in ckpt.glob("step_*")), default=0) + 1
restart = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
if start > 1:
    print(f"resumed from {ckpt / f'step_{start - 1}'} at step {start - 1}", flush=True)
print(f"rank {rank}/{world} restart {restart}", flush=True)
if rank == 0 and os.environ.get("RAY_ADDRESS"):
    import ray
    ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
    answer = ray.get(ray.remote(lambda x: x * 2).remote(21))
    nodes = [n["NodeName"] for n in ray.nodes() if n["Alive"]]
    ray.shutdown()
    Path(cfg.logger.log_dir).mkdir(parents=True, exist_ok=True)
    Path(cfg.logger.log_dir, "ray_result.json").write_text(json.dumps({"answer": answer, "nodes": nodes}))
step_s = float(os.environ.get("PAYLOAD_STEP_S", "0"))
for step in range(start, cfg.grpo.max_num_steps + 1):
    t = torch.tensor([float(rank + 1)])
    dist.all_reduce(t)
    print(f"step {step}/{cfg.grpo.max_num_steps} | allreduce {t.item():g} world {world}", flush=True)
    time.sleep(step_s)
    stop = flag.should_stop_all()
    save = stop or step % cfg.checkpointing.save_period == 0 or step == cfg.grpo.max_num_steps
    if rank == 0 and save:
        (ckpt / f"step_{step}").mkdir(parents=True, exist_ok=True)
        (ckpt / f"step_{step}" / "state.json").write_text(json.dumps({"step": step, "allreduce": t.item()}))
    dist.barrier()
    if stop:
        print(f"preempted ({flag.reason}): checkpoint saved at step {step}; exiting for requeue", flush=True)
        dist.destroy_process_group()
        flag.exit_for_requeue(step)
dist.destroy_process_group()
print(f"rank {rank} finished", flush=True)
'''


# ----------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def slurm_clusters() -> dict[str, str]:
    """Bring the local SLURM clusters up (idempotent, fast when up): {"one": SLURM_CONF, "two": ...};
    FAIL if impossible."""
    proc = subprocess.run(["bash", str(REPO / "slurm/local/slurm_up.sh")], capture_output=True, text=True,
                          timeout=300)
    reason = SLURM_DIR / "unavailable.txt"
    if reason.exists():
        pytest.fail(f"SLURM is not available on this machine: {reason.read_text().strip()}")
    one = re.search(r"export SLURM_CONF=(\S+)", proc.stdout)
    two = re.search(r"export SLURM_CONF_TWO_NODES=(\S+)", proc.stdout)
    assert proc.returncode == 0 and one and two, f"slurm_up.sh failed:\n{proc.stdout}\n{proc.stderr}"
    return {"one": one.group(1), "two": two.group(1)}


@pytest.fixture(scope="module")
def slurm_conf(slurm_clusters) -> str:
    return slurm_clusters["one"]


@pytest.fixture(scope="module")
def slurm_conf_two(slurm_clusters) -> str:
    return slurm_clusters["two"]


def job_env(slurm_conf: str, **extra: str) -> dict[str, str]:
    """The environment sbatch exports to the job: no stray SLURM_* of an outer job, our venv first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    env.update(SLURM_CONF=slurm_conf, PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
               PYTHON=sys.executable, MEGATRON_GRPO_ROOT=str(REPO), WORKPLACE_DATA_DIR=str(SANDBOX),
               OMP_NUM_THREADS="1",
               # a submitting shell's settings never switch the job's Ray authentication off
               RAY_AUTH_MODE="disabled", RAY_AUTH_TOKEN="0" * 64)
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def tiny_assets(tmp_path_factory) -> dict[str, Path]:
    """The tiny run of tests/test_trainer.py: generated tasks, a tokenizer trained here, a tiny Qwen3."""
    from environment.workplace.tasks import generate_tasks
    from megatron_grpo.data.samples import write_jsonl
    from megatron_grpo.demo import DEMO_TEMPLATES
    from megatron_grpo.models.tiny import save_tiny_qwen3
    from megatron_grpo.models.tiny_tokenizer import sample_texts, train_tiny_tokenizer

    root = tmp_path_factory.mktemp("tiny_assets")
    tasks = generate_tasks(40, seed=3, data_dir=str(SANDBOX), templates=DEMO_TEMPLATES)
    write_jsonl(root / "train.jsonl", tasks[:32])
    write_jsonl(root / "validation.jsonl", tasks[32:])
    tokenizer = train_tiny_tokenizer(sample_texts(tasks), vocab_size=512)
    model = save_tiny_qwen3(root / "model", len(tokenizer), tokenizer=tokenizer, num_layers=2, hidden=64,
                            max_position_embeddings=4096, init_std=0.02, seed=1)
    return {"model": Path(model), "train": root / "train.jsonl", "validation": root / "validation.jsonl"}


@pytest.fixture
def job_config(tmp_path, tiny_assets) -> Path:
    """configs/tiny_cpu.yaml for 2 gloo ranks (TP=2), results under tmp_path/results/exp."""
    overrides = [
        f"policy.model_name={tiny_assets['model']}", f"data.train_path={tiny_assets['train']}",
        f"data.validation_path={tiny_assets['validation']}", "policy.tensor_model_parallel_size=2",
        "grpo.num_prompts_per_step=2", "grpo.num_generations_per_prompt=2", "policy.train_global_batch_size=4",
        "policy.train_micro_batch_size=2", "policy.logprob_batch_size=2", "generation.max_new_tokens=12",
        "grpo.max_rollout_turns=2", "grpo.max_val_samples=2", "grpo.val_period=2", "grpo.val_at_start=false",
        "grpo.max_num_steps=4", "checkpointing.save_period=2", "checkpointing.resume=auto",
        "env.num_actors=2",  # the environment actors run on the job's Ray cluster (RAY_ADDRESS)
        f"env.data_dir={SANDBOX}",
        f"checkpointing.checkpoint_dir={tmp_path / 'results/exp/checkpoints'}",
        f"logger.log_dir={tmp_path / 'results/exp/logs'}",
    ]
    cfg = to_dict(load_config(REPO / "configs/tiny_cpu.yaml", overrides))
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def train_cmd(tmp_path: Path) -> str:
    if TRAIN_CMD is not None:
        return TRAIN_CMD
    payload = tmp_path / "payload.py"
    payload.write_text(PAYLOAD)
    return f"{sys.executable} {payload}"


_SUBMITTED: list[tuple[str, dict[str, str]]] = []


@pytest.fixture(autouse=True)
def _cancel_leftover_jobs():
    """A failing test must not leave its job running (it would hold the node's CPUs)."""
    yield
    while _SUBMITTED:
        job_id, env = _SUBMITTED.pop()
        subprocess.run(["scancel", job_id], env=env, capture_output=True, check=False)


ONE_NODE = ("--gpus-per-node=0", "--ntasks-per-node=2", "slurm/grpo_1node.sh")
# the 8-node script scaled down by sbatch flags: 2 nodes x 1 CPU rank
TWO_NODES = ("-N", "2", "--gpus-per-node=0", "--ntasks-per-node=1", "slurm/grpo_8node.sh")


def sbatch(env: dict[str, str], tmp_path: Path, *args: str, shape: tuple[str, ...] = ONE_NODE) -> str:
    cmd = ["sbatch", "--parsable", f"--output={tmp_path}/slurm-%j.out", *shape, *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip().split(";")[0]
    _SUBMITTED.append((job_id, env))
    return job_id


def job_info(env: dict[str, str], job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], env=env, capture_output=True, text=True,
                         timeout=30).stdout
    return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)


def wait_job(env: dict[str, str], job_id: str, timeout_s: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout_s
    while True:
        info = job_info(env, job_id)
        if info.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            return info
        if time.monotonic() > deadline:
            subprocess.run(["scancel", job_id], env=env, check=False)
            pytest.fail(f"job {job_id} still {info.get('JobState')} after {timeout_s} s")
        time.sleep(0.5)


def wait_for_text(path: Path, pattern: str, timeout_s: float) -> re.Match:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and (m := re.search(pattern, path.read_text(), re.M)):
            return m
        time.sleep(0.3)
    pytest.fail(f"{pattern!r} not in {path} after {timeout_s} s:\n{path.read_text() if path.exists() else '-'}")


def leftover_ray(tag: str) -> list[str]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if tag in cmd:
            out.append(f"{p.pid} {cmd[:120]}")
    return out


def steps_logged(log: str, rank: int) -> list[int]:
    return [int(s) for s in re.findall(rf"^{rank}: step (\d+)/\d+ \|", log, re.M)]


# ----------------------------------------------------------------------------- sbatch


@pytest.mark.slow
def test_sbatch_1node_tiny_trainer_two_gloo_ranks_with_ray(slurm_conf, job_config, tmp_path):
    """The real `megatron-grpo train` (TP=2 over 2 srun ranks, gloo), env actors on the job's Ray."""
    env = job_env(slurm_conf, TRAIN_CMD="megatron-grpo train")
    job = sbatch(env, tmp_path, str(job_config), "grpo.max_num_steps=2")
    info = wait_job(env, job, 400)
    log_dir = tmp_path / "results/exp/logs"
    log = (log_dir / f"job-{job}.log").read_text()
    assert info["JobState"] == "COMPLETED", log[-5000:]
    assert "preflight: all checks passed" in log and "1 node(s) joined" in log
    assert re.search(r"^0: .*Connected to Ray cluster", log, re.M)  # the env pool used the job's Ray
    assert re.search(r"^0: step 2/2 \|", log, re.M)
    steps = [json.loads(line)["step"] for line in (log_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    assert (tmp_path / "results/exp/checkpoints/step_2").is_dir()
    assert "stopped" in (log_dir / f"ray-head-{job}.log").read_text()
    assert leftover_ray(f"ray_mg_{job}") == []
    shutil.rmtree(f"/tmp/ray_mg_{job}", ignore_errors=True)


def job_ray_token(job_id: str, timeout_s: float) -> str:
    """The token in the environment of the job's Ray head (read from /proc, as root can)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for p in psutil.process_iter(["cmdline"]):
            if f"ray_mg_{job_id}" in " ".join(p.info["cmdline"] or []):
                try:
                    token = ray_auth.token_from_env(p.environ())
                except psutil.Error:
                    continue
                if token:
                    return token
        time.sleep(0.3)
    pytest.fail(f"no Ray process of job {job_id} with a token after {timeout_s} s")


@pytest.mark.slow
def test_job_ray_refuses_clients_without_the_job_token(slurm_conf, job_config, tmp_path):
    """The job's Ray answers only its own token; the job works with it; the token is in no file
    under the run folder, not in the job's output and not in the home folder."""
    home_token = Path.home() / ".ray" / "auth_token"
    had_home_token = home_token.exists()
    env = job_env(slurm_conf, TRAIN_CMD=train_cmd(tmp_path), PAYLOAD_STEP_S="1")
    job = sbatch(env, tmp_path, str(job_config), "grpo.max_num_steps=3", "env.num_actors=0")
    log_path = tmp_path / f"results/exp/logs/job-{job}.log"
    address = wait_for_text(log_path, r"Ray head on \S+ \((\S+)\)", 300).group(1)
    token = job_ray_token(job, 300)
    wait_for_text(log_path, r"^0: step 1/", 300)  # the ranks are connected and running
    assert gcs_answer(address, None) == "UNAUTHENTICATED"
    assert gcs_answer(address, ray_auth.new_token()) == "UNAUTHENTICATED"
    assert gcs_answer(address, "0" * 64) == "UNAUTHENTICATED"  # the one the submitting shell had
    assert gcs_answer(address, token) == "OK"
    info = wait_job(env, job, 240)
    log = log_path.read_text()
    assert info["JobState"] == "COMPLETED", log
    assert json.loads((tmp_path / "results/exp/logs/ray_result.json").read_text())["answer"] == 42
    assert files_containing(tmp_path, token) == []  # run folder, job log, slurm-<id>.out, checkpoints
    assert files_containing(tmp_path, token[:16]) == []
    assert home_token.exists() == had_home_token
    assert leftover_ray(f"ray_mg_{job}") == []
    shutil.rmtree(f"/tmp/ray_mg_{job}", ignore_errors=True)


@pytest.mark.slow
def test_signal_to_batch_shell_is_forwarded_to_ranks(slurm_conf, job_config, tmp_path):
    """--signal=B:USR1 / scancel -b: only the batch shell gets it; the script passes it on."""
    env = job_env(slurm_conf, TRAIN_CMD=train_cmd(tmp_path), RAY="0", PAYLOAD_STEP_S="0.5", REQUEUE="0")
    job = sbatch(env, tmp_path, str(job_config), "grpo.max_num_steps=100", "env.num_actors=0")
    log_path = tmp_path / f"results/exp/logs/job-{job}.log"
    wait_for_text(log_path, r"^0: step 1/", 300)
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], env=env, check=True)
    info = wait_job(env, job, 120)
    log = log_path.read_text()
    assert info["JobState"] == "FAILED" and info["ExitCode"] == f"{PREEMPT_EXIT_CODE}:0", log
    assert "got SIGUSR1: asking the trainer ranks to save and exit" in log
    assert re.search(r"^1: .*preempted \(SIGUSR1\): checkpoint saved at step \d+", log, re.M)
    assert "signal seen here: 1" in log and "requeue job" not in log


@pytest.mark.slow
def test_one_rank_dying_fails_the_job_fast(slurm_conf, job_config, tmp_path):
    # rank 1 dies at once, rank 0 would run for 5 minutes: srun --kill-on-bad-exit must stop it
    cmd = "bash -c 'if [ $RANK = 1 ]; then exit 3; fi; sleep 300' rank"
    env = job_env(slurm_conf, TRAIN_CMD=cmd, RAY="0")
    start = time.monotonic()
    job = sbatch(env, tmp_path, str(job_config))
    info = wait_job(env, job, 90)
    log = (tmp_path / f"results/exp/logs/job-{job}.log").read_text()
    assert info["JobState"] == "FAILED", log
    assert time.monotonic() - start < 60
    assert "trainer exited with" in log


@pytest.mark.slow
def test_preflight_failure_stops_job_before_launch(slurm_conf, job_config, tmp_path):
    env = job_env(slurm_conf, TRAIN_CMD=train_cmd(tmp_path))
    job = sbatch(env, tmp_path, str(job_config), "policy.tensor_model_parallel_size=4")
    info = wait_job(env, job, 90)
    log = (tmp_path / f"results/exp/logs/job-{job}.log").read_text()
    assert info["JobState"] == "FAILED"
    assert "FAIL  layout" in log and "preflight failed" in log
    assert "launching" not in log and "Ray head" not in log


def test_ray_wait_names_unreachable_head():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        rc = subprocess.run([sys.executable, "-m", "megatron_grpo.launch", "ray-wait", "--address",
                             f"127.0.0.1:{port}", "--nodes", "headnode,node2", "--timeout", "1"],
                            capture_output=True, text=True, timeout=60)
    assert rc.returncode == 1
    assert "headnode did not start Ray" in rc.stderr


def test_ray_wait_gives_up_on_a_head_that_never_answers():
    """The GCS port accepts connections but no Ray answers (a head that died while starting):
    ray-wait still ends, after its timeout plus a grace period, with one line naming the head."""
    env = ray_auth.apply_token(dict(os.environ), ray_auth.new_token())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        port = s.getsockname()[1]
        start = time.monotonic()
        rc = subprocess.run([sys.executable, "-m", "megatron_grpo.launch", "ray-wait", "--address",
                             f"127.0.0.1:{port}", "--nodes", "headnode", "--timeout", "3"],
                            capture_output=True, text=True, timeout=120, env=env)
    assert rc.returncode == 1 and time.monotonic() - start < 60, rc.stderr
    assert re.search(r"ray-wait: Ray head 127\.0\.0\.1:\d+ did not answer within \d+ s; see the ray-head log of "
                     r"headnode", rc.stderr), rc.stderr


def free_port_block(n: int = 8) -> int:
    for base in range(23000, 30000, 10):
        try:
            socks = []
            for port in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port block")


@pytest.mark.slow
def test_ray_node_and_wait_name_the_missing_node(tmp_path):
    """A real Ray head via RayNode; ray-wait finds it, names a node that never joined, and stopping
    the head leaves no Ray process behind."""
    port = free_port_block()
    tag = f"/tmp/ray_mg_t{os.getpid()}"
    argv = launch.ray_start_argv("head", "127.0.0.1", port, "testhead", temp_dir=tag, num_cpus=1)
    with pytest.raises(RuntimeError, match="no Ray token in the environment"):
        launch.RayNode(argv, env={"PATH": os.environ["PATH"]}).start()  # never without authentication
    env = ray_auth.apply_token(dict(os.environ), ray_auth.new_token())
    head = launch.RayNode(argv, tmp_path / "ray-head.log", env=env).start()
    try:
        wait = [sys.executable, "-m", "megatron_grpo.launch", "ray-wait", "--address", f"127.0.0.1:{port}"]
        ok = subprocess.run([*wait, "--nodes", "testhead", "--timeout", "120"], capture_output=True,
                            text=True, timeout=180, env=env)
        assert ok.returncode == 0, ok.stderr + (tmp_path / "ray-head.log").read_text()
        assert "1 node(s) joined" in ok.stdout and "testhead" in ok.stdout
        missing = subprocess.run([*wait, "--nodes", "testhead,node-07", "--timeout", "2"], capture_output=True,
                                 text=True, timeout=120, env=env)
        assert missing.returncode == 1
        assert "missing node-07" in missing.stderr and "joined: testhead" in missing.stderr
    finally:
        rc = head.stop()
    assert rc is not None
    assert leftover_ray(tag) == []
    shutil.rmtree(tag, ignore_errors=True)


def test_ray_start_argv_ports_do_not_overlap_between_jobs():
    a, b = launch.default_ray_port(1001), launch.default_ray_port(1002)
    assert abs(a - b) >= 8 and a < 9000 and b < 9000
    head = launch.ray_start_argv("head", "10.0.0.1", a, "n1", temp_dir="/tmp/x")
    worker = launch.ray_start_argv("worker", "10.0.0.1", a, "n2")
    assert "--head" in head and f"--port={a}" in head and "--num-gpus=0" in head
    assert f"--address=10.0.0.1:{a}" in worker and "--head" not in worker
    used = {int(x.split("=")[1]) for x in head if x.split("=")[0].endswith("port")}
    assert used == set(range(a, a + 8))


# ----------------------------------------------------------------------------- submitit


def submitit_results(job, timeout_s: float, tmp_path: Path) -> list:
    """job.results(), or a failure after ``timeout_s`` (no hang): with cluster="local", a task that
    fails leaves the others waiting in the rendezvous until the job's time limit, so the job is
    cancelled and every process started from this test's folder is killed."""
    deadline = time.monotonic() + timeout_s
    while not job.done():
        if time.monotonic() > deadline:
            job.cancel(check=False)
            for p in psutil.process_iter(["cmdline"]):
                if str(tmp_path) in " ".join(p.info["cmdline"] or []):
                    try:
                        p.kill()
                    except psutil.Error:
                        pass
            logs = "".join(f"{f.name}:\n{f.read_text()[-2000:]}"
                           for f in sorted((tmp_path / "submitit").glob("*_log.*")))
            pytest.fail(f"submitit job {job.job_id} not done after {timeout_s} s:\n{logs}")
        time.sleep(1.0)
    return job.results()


def submitit_env(monkeypatch, slurm_conf: str, tmp_path: Path) -> None:
    """A submitting shell for ``slurm_conf``'s cluster: no SLURM variables of an enclosing job, this
    venv's python first on PATH (the job runs it), the test folder as working directory."""
    for key in list(os.environ):
        if key.startswith(("SLURM_", "SBATCH_", "SRUN_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("SLURM_CONF", slurm_conf)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)


@pytest.mark.slow
def test_submitit_slurm_executor(slurm_conf, job_config, tmp_path, monkeypatch):
    submitit_env(monkeypatch, slurm_conf, tmp_path)
    job = launch.submit(job_config, ["grpo.max_num_steps=3"], nodes=1, gpus_per_node=0, ntasks_per_node=2,
                        cluster="slurm", time_min=10, train_cmd=train_cmd(tmp_path).split(), ray=False,
                        folder=tmp_path / "submitit")
    assert submitit_results(job, 480, tmp_path) == [0, 0]
    out = "".join(Path(p).read_text() for p in sorted((tmp_path / "submitit").glob(f"{job.job_id}_*_log.out")))
    assert len(re.findall(r"^step 3/3 \| allreduce 3 world 2$", out, re.M)) == 2  # both tasks, all-reduced
    assert (tmp_path / "results/exp/checkpoints/step_3").is_dir()


@pytest.mark.slow
def test_submitit_local_executor(job_config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    """cluster=local on this machine, with the per-node Ray bootstrap of GRPOTask (head only here)."""
    job = launch.submit(job_config, ["grpo.max_num_steps=2"], nodes=1, gpus_per_node=0, ntasks_per_node=2,
                        cluster="local", time_min=10, train_cmd=train_cmd(tmp_path).split(), ray=True,
                        ray_join_timeout_s=240, folder=tmp_path / "submitit")
    assert submitit_results(job, 480, tmp_path) == [0, 0]
    assert (tmp_path / "results/exp/checkpoints/step_2").is_dir()
    ray_result = json.loads((tmp_path / "results/exp/logs/ray_result.json").read_text())
    assert ray_result == {"answer": 42, "nodes": [socket.gethostname()]}
    assert leftover_ray(f"ray_mg_{job.job_id}") == []
    shutil.rmtree(f"/tmp/ray_mg_{job.job_id}", ignore_errors=True)
    # the job's Ray token (made by the local controller's shell) is in none of submitit's files
    assert [p for p in (tmp_path / "submitit").rglob("*") if p.is_file() and TOKEN_RE.search(p.read_bytes())] == []


def test_ray_node_cli_refuses_to_start_without_a_token():
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    proc = subprocess.run([sys.executable, "-m", "megatron_grpo.launch", "ray-node", "head", "--head-ip",
                           "127.0.0.1", "--port", "6379"], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("ray-node: cannot start a Ray node: no Ray token")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_submit_refuses_a_config_that_fails_preflight(job_config, tmp_path):
    with pytest.raises(launch.PreflightFailed, match="layout"):
        launch.submit(job_config, ["policy.tensor_model_parallel_size=4"], nodes=1, gpus_per_node=0,
                      ntasks_per_node=2, cluster="local", folder=tmp_path / "submitit")


@pytest.mark.slow
def test_launch_submitit_tool_debug_cluster(job_config, tmp_path, monkeypatch, capsys):
    """tools/launch_submitit.py end to end with cluster=debug (one rank, in this process)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("launch_submitit", REPO / "tools/launch_submitit.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    monkeypatch.chdir(tmp_path)
    rc = tool.main([str(job_config), "grpo.max_num_steps=2", "policy.tensor_model_parallel_size=1",
                    "--cluster", "debug", "--gpus-per-node", "0",
                    "--ntasks-per-node", "1", "--no-ray", "--train-cmd", train_cmd(tmp_path), "--wait",
                    "--folder", str(tmp_path / "submitit")])
    assert rc == 0, capsys.readouterr()
    assert "results: [0]" in capsys.readouterr().out
    assert (tmp_path / "results/exp/checkpoints/step_2").is_dir()
    # a config that fails preflight is not submitted; the fix is printed
    assert tool.main([str(job_config), "policy.tensor_model_parallel_size=4", "--cluster", "debug",
                      "--gpus-per-node", "0", "--ntasks-per-node", "1"]) == 1
    assert "fix:" in capsys.readouterr().err


# ----------------------------------------------------------------------------- two nodes on one host


def job_processes(job_id: str) -> list[str]:
    """Every process of this machine that belongs to SLURM job ``job_id`` (on either node)."""
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if p.environ().get("SLURM_JOB_ID") == job_id:
                out.append(f"{p.pid} {' '.join(p.info['cmdline'] or [])[:120]}")
        except psutil.Error:
            continue
    return out


def assert_nothing_left(job_id: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (left := job_processes(job_id)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert left == [], f"processes of job {job_id} left behind: {left}"


def two_node_env(slurm_conf_two: str, **extra: str) -> dict[str, str]:
    return job_env(slurm_conf_two, RAY_NUM_CPUS="1", RAY_JOIN_TIMEOUT_S="240", **extra)


def _two_node_trainer_job(slurm_conf_two, job_config, tmp_path, *overrides: str) -> str:
    env = two_node_env(slurm_conf_two, TRAIN_CMD="megatron-grpo train")
    job = sbatch(env, tmp_path, str(job_config), "grpo.max_num_steps=1", "checkpointing.save_period=1",
                 "grpo.val_period=0", *overrides, shape=TWO_NODES)
    info = wait_job(env, job, 600)
    log_dir = tmp_path / "results/exp/logs"
    log = (log_dir / f"job-{job}.log").read_text()
    assert info["JobState"] == "COMPLETED", log[-6000:]
    assert "2 node(s) [n1 n2] x 1 rank(s)" in log and "Ray head on n1 (127.0.0.2:" in log
    assert re.search(r"2 node\(s\) joined \S+: n1, n2", log)
    # the worker advertises its own NodeAddr; the environment actors run on both nodes
    assert "Local node IP: 127.0.0.3" in (log_dir / f"ray-workers-{job}.log").read_text()
    # every generating rank (one per data-parallel replica) has its pool; together they use both nodes
    pools = re.findall(r"^\d+: .*env pool: 2 actor\(s\) on Ray node\(s\) (.+)$", log, re.M)
    assert {ip for nodes in pools for ip in nodes.split(", ")} == {"127.0.0.2", "127.0.0.3"}, log[-6000:]
    assert re.search(r"^0: step 1/1 \|", log, re.M)
    assert (tmp_path / "results/exp/checkpoints/step_1").is_dir()
    assert_nothing_left(job)
    return log


@pytest.mark.slow
def test_two_nodes_tp2_across_nodes(slurm_conf_two, job_config, tmp_path):
    """`sbatch -N 2 slurm/grpo_8node.sh`, scaled down: the real trainer, one rank per node, TP=2 across
    the nodes; Ray head on n1, worker on n2, env actors on both; checkpoint written; exit 0."""
    log = _two_node_trainer_job(slurm_conf_two, job_config, tmp_path)
    assert "world 2 = TP 2 x PP 1 x DP 1" in log


@pytest.mark.slow
def test_two_nodes_dp2(slurm_conf_two, job_config, tmp_path):
    """The same with TP=1: the two ranks are data-parallel replicas on two nodes."""
    log = _two_node_trainer_job(slurm_conf_two, job_config, tmp_path, "policy.tensor_model_parallel_size=1")
    assert "world 2 = TP 1 x PP 1 x DP 2" in log
    assert len(re.findall(r"^\d: .*env pool: ", log, re.M)) == 2  # one pool per replica, sharing Ray's CPUs


def rank_pid(job_id: str, node: str, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for p in psutil.process_iter(["cmdline"]):
            try:
                env = p.environ()
                if env.get("SLURM_JOB_ID") == job_id and env.get("SLURMD_NODENAME") == node and \
                        "payload.py" in " ".join(p.info["cmdline"] or []) and "SLURM_PROCID" in env:
                    return p.pid
            except psutil.Error:
                continue
        time.sleep(0.3)
    pytest.fail(f"no rank of job {job_id} on {node}")


@pytest.mark.slow
def test_two_nodes_killed_node_ranks_end_the_job(slurm_conf_two, job_config, tmp_path):
    """The ranks of n2 die mid-step: the job ends within a bounded time with one line naming n2, and
    nothing of the job is left on either node."""
    env = two_node_env(slurm_conf_two, TRAIN_CMD=train_cmd(tmp_path), PAYLOAD_STEP_S="1")
    job = sbatch(env, tmp_path, str(job_config), "grpo.max_num_steps=300", "env.num_actors=0", shape=TWO_NODES)
    log_path = tmp_path / f"results/exp/logs/job-{job}.log"
    wait_for_text(log_path, r"^1: step 2/", 300)
    os.kill(rank_pid(job, "n2", 30), signal.SIGKILL)
    killed = time.monotonic()
    info = wait_job(env, job, 180)
    took = time.monotonic() - killed
    log = log_path.read_text()
    assert info["JobState"] == "FAILED", log
    named = [line for line in log.splitlines() if "ERROR" in line and "node n2" in line]
    assert len(named) == 1 and "the ranks on node n2 failed first" in named[0], log
    assert took < NODE_FAILURE_BOUND_S, f"the job took {took:.0f} s to end after n2's ranks died"
    assert_nothing_left(job)
    print(f"job ended {took:.1f} s after the ranks of n2 were killed")


NODE_FAILURE_BOUND_S = 90  # srun --kill-on-bad-exit (KillWait 10 s) + stopping Ray (<= 30 s) + slack


@pytest.mark.slow
def test_two_nodes_requeue_after_usr1_resumes_on_both_nodes(slurm_conf_two, job_config, tmp_path):
    """`scancel --signal=USR1`: every rank saves and exits 75, the job requeues itself, Ray comes
    back on both nodes and both ranks resume at the saved step."""
    env = two_node_env(slurm_conf_two, TRAIN_CMD=train_cmd(tmp_path), PAYLOAD_STEP_S="1")
    job = sbatch(env, tmp_path, str(job_config), "grpo.max_num_steps=4", "env.num_actors=0", shape=TWO_NODES)
    log_path = tmp_path / f"results/exp/logs/job-{job}.log"
    wait_for_text(log_path, r"^1: step 1/", 300)
    subprocess.run(["scancel", "--signal=USR1", job], env=env, check=True)
    info = wait_job(env, job, 600)
    log = log_path.read_text()
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", log
    saved = int(re.search(r"^0: .*preempted \(SIGUSR1\): checkpoint saved at step (\d+)", log, re.M).group(1))
    assert f"Exited with exit code {PREEMPT_EXIT_CODE}" in log or "ranks saved and exited" in log
    assert f"requeue job {job}" in log and log.count("2 node(s) joined") == 2  # Ray came back on both
    assert (tmp_path / f"results/exp/logs/preempted-{job}-r0").exists()
    for rank in (0, 1):  # rank 0 on n1, rank 1 on n2
        assert re.search(rf"^{rank}: .*resumed from \S+step_{saved} at step {saved}$", log, re.M), log
        assert steps_logged(log, rank) == list(range(1, 5))
    assert saved < 4 and (tmp_path / "results/exp/checkpoints/step_4").is_dir()
    assert_nothing_left(job)


@pytest.mark.slow
def test_submitit_two_nodes(slurm_conf_two, job_config, tmp_path, monkeypatch):
    """submit(nodes=2) on the two-node cluster: a Ray node per node, the ranks meet across nodes."""
    submitit_env(monkeypatch, slurm_conf_two, tmp_path)
    job = launch.submit(job_config, ["grpo.max_num_steps=2", "env.num_actors=0"], nodes=2, gpus_per_node=0,
                        ntasks_per_node=1, cluster="slurm", time_min=10, train_cmd=train_cmd(tmp_path).split(),
                        ray=True, ray_num_cpus=1, ray_join_timeout_s=240, folder=tmp_path / "submitit")
    assert submitit_results(job, 480, tmp_path) == [0, 0]
    out = "".join(Path(p).read_text() for p in sorted((tmp_path / "submitit").glob(f"{job.job_id}_*_log.out")))
    assert len(re.findall(r"^step 2/2 \| allreduce 3 world 2$", out, re.M)) == 2  # both nodes, all-reduced
    ray_result = json.loads((tmp_path / "results/exp/logs/ray_result.json").read_text())
    assert ray_result["answer"] == 42 and sorted(ray_result["nodes"]) == ["n1", "n2"]  # any order
    worker_log = tmp_path / f"results/exp/logs/ray-worker-n2-{job.job_id}-r0.log"
    assert "Local node IP: 127.0.0.3" in worker_log.read_text()
    assert_nothing_left(job.job_id)
