"""PreemptionFlag: real signals to this process and to gloo ranks; marker file and exit code."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from megatron_grpo.preemption import PREEMPT_EXIT_CODE, PREEMPT_FILE_ENV, PreemptionFlag, mark_preempted


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
def test_real_signal_sets_flag_and_handlers_are_restored(sig):
    before = signal.getsignal(sig)
    with PreemptionFlag() as flag:
        assert not flag.should_stop() and flag.reason is None
        os.kill(os.getpid(), sig)  # delivered to the main thread before the next bytecode
        assert flag.should_stop()
        assert flag.reason == sig.name
        os.kill(os.getpid(), sig)  # a second signal is harmless: no exit, flag stays set
        assert flag.should_stop()
        assert flag.should_stop_all()  # no process group: same as should_stop
    assert signal.getsignal(sig) == before


def test_other_signals_are_not_caught():
    with PreemptionFlag(signals=(signal.SIGUSR1,)) as flag:
        previous = signal.signal(signal.SIGUSR2, lambda *_: None)
        try:
            os.kill(os.getpid(), signal.SIGUSR2)
        finally:
            signal.signal(signal.SIGUSR2, previous)
        assert not flag.should_stop()


def test_exit_for_requeue_writes_marker_and_exit_code(tmp_path):
    marker = tmp_path / "sub" / "preempted"
    script = textwrap.dedent("""
        import os, signal
        from megatron_grpo.preemption import PreemptionFlag
        flag = PreemptionFlag().install()
        os.kill(os.getpid(), signal.SIGUSR1)
        assert flag.should_stop()
        flag.exit_for_requeue(step=7)
    """)
    env = dict(os.environ, **{PREEMPT_FILE_ENV: str(marker), "RANK": "3"})
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == PREEMPT_EXIT_CODE, proc.stderr
    text = marker.read_text()
    assert "rank=3" in text and "step=7" in text and "signal=SIGUSR1" in text


def test_mark_preempted_without_env_is_noop(monkeypatch):
    monkeypatch.delenv(PREEMPT_FILE_ENV, raising=False)
    assert mark_preempted(1) is None


def test_should_stop_all_agrees_across_gloo_ranks(tmp_path):
    """Only rank 1 gets the signal; after the all-reduce both ranks stop at the same step."""
    script = textwrap.dedent("""
        import os, signal, sys
        import torch.distributed as dist
        from megatron_grpo.preemption import PreemptionFlag
        dist.init_process_group("gloo")
        rank = dist.get_rank()
        flag = PreemptionFlag().install()
        stopped_at = None
        for step in range(5):
            if step == 2 and rank == 1:
                os.kill(os.getpid(), signal.SIGUSR1)
            if flag.should_stop_all():
                stopped_at = step
                break
        print(f"rank {rank} local={flag.should_stop()} stopped_at={stopped_at}", flush=True)
        dist.destroy_process_group()
    """)
    path = tmp_path / "agree.py"
    path.write_text(script)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, str(path)], env=env, stdout=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert "rank 0 local=False stopped_at=2" in outs[0]
    assert "rank 1 local=True stopped_at=2" in outs[1]
