"""A local Ray started by the environment pool survives SLURM's SIGUSR1 (sent to every process of
a job step before the time limit), so the trainer can still checkpoint and requeue; it runs with
a token of its own (a caller's RAY_AUTH_MODE=disabled does not turn that off) and writes nothing
into the home folder."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import os, signal, time
    import psutil, ray
    from environment.pool import ensure_ray

    before = signal.getsignal(signal.SIGUSR1)
    ensure_ray(num_cpus=1)
    assert signal.getsignal(signal.SIGUSR1) == before, "caller's SIGUSR1 handler not restored"
    children = psutil.Process().children(recursive=True)
    assert children, "ray started no processes"
    for child in children:
        try:
            child.send_signal(signal.SIGUSR1)
        except psutil.NoSuchProcess:
            pass
    time.sleep(2)

    @ray.remote
    def square(x):
        return x * x

    assert ray.get(square.remote(7), timeout=60) == 49
    assert os.environ["RAY_AUTH_MODE"] == "token" and len(os.environ["RAY_AUTH_TOKEN"]) == 64
    ray.shutdown()
    print("SURVIVED", len(children))
    """
)


def test_local_ray_survives_sigusr1(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=180,
                          cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "SURVIVED" in proc.stdout
    assert not (tmp_path / ".ray").exists()  # Ray's default token file was never written
