"""Preemption: turn SLURM's warning signal into a checkpoint, an exit code and a requeue.

Why: SLURM sends SIGUSR1 ``--signal=USR1@120`` seconds before a time limit, and SIGTERM when a job
is preempted or cancelled. A signal handler must not save a checkpoint itself (it would run in the
middle of a collective); it only sets a flag. The training loop polls the flag between steps, all
ranks agree on it (``should_stop_all``), save, and exit with ``PREEMPT_EXIT_CODE``. The launch
script (slurm/common.sh) sees that code (or the marker file, see below) and runs
``scontrol requeue``; the requeued job resumes with ``checkpointing.resume=auto``.

Contract with the trainer::

    flag = PreemptionFlag().install()          # main thread, before the loop
    for step in ...:
        ...one GRPO step...
        if flag.should_stop_all():             # collective: every rank calls it at the same point
            save_checkpoint(step)
            flag.exit_for_requeue(step)        # writes the marker, sys.exit(PREEMPT_EXIT_CODE)

Why a marker file as well as the exit code: with ``srun --kill-on-bad-exit=1`` the first rank to
exit makes SLURM kill the others, and srun then reports 143 (SIGTERM), not the rank's code. The
marker (``$MEGATRON_GRPO_PREEMPT_FILE``, set by the launch script) survives that.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import NoReturn

# EX_TEMPFAIL from sysexits.h: "temporary failure, the user is invited to retry".
PREEMPT_EXIT_CODE = 75
PREEMPT_FILE_ENV = "MEGATRON_GRPO_PREEMPT_FILE"
DEFAULT_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class PreemptionFlag:
    """Signal handlers that set a flag the training loop polls.

    ``install()`` must run on the main thread (Python delivers signals there). The previous
    handlers are kept and restored by ``uninstall()``; the flag never exits the process by itself,
    so a second signal while the checkpoint is being written does not interrupt the save.
    """

    def __init__(self, signals: tuple[signal.Signals, ...] = DEFAULT_SIGNALS) -> None:
        self.signals = tuple(signals)
        self._event = threading.Event()
        self._received: list[tuple[str, float]] = []
        self._previous: dict[signal.Signals, object] = {}

    # -- handlers
    def install(self) -> PreemptionFlag:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("PreemptionFlag.install() must be called from the main thread")
        for sig in self.signals:
            if sig not in self._previous:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)  # type: ignore[arg-type]
        self._previous.clear()

    def __enter__(self) -> PreemptionFlag:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.uninstall()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self._received.append((signal.Signals(signum).name, time.time()))
        self._event.set()

    # -- polling
    def trigger(self, reason: str = "manual") -> None:
        """Set the flag without a signal (e.g. a wall-clock budget in the trainer)."""
        self._received.append((reason, time.time()))
        self._event.set()

    def should_stop(self) -> bool:
        """This process got a stop signal. Local only; see ``should_stop_all`` for SPMD loops."""
        return self._event.is_set()

    def should_stop_all(self, group: object | None = None) -> bool:
        """True on every rank when any rank got a signal (MAX all-reduce over ``group``).

        SLURM signals every task, but not at the same instant: one rank may see the flag a step
        later than another, and ranks that disagree deadlock in the next collective. Without an
        initialised torch.distributed this is ``should_stop()``.
        """
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self.should_stop()
        device = "cuda" if dist.get_backend(group) == "nccl" else "cpu"
        flag = torch.tensor([1 if self.should_stop() else 0], dtype=torch.int32, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
        return bool(flag.item())

    @property
    def reason(self) -> str | None:
        """Name of the first signal received (``SIGUSR1``, ``SIGTERM``), or None."""
        return self._received[0][0] if self._received else None

    # -- exit
    def exit_for_requeue(self, step: int | None = None) -> NoReturn:
        """Write the marker file (when the launcher asked for one) and exit with PREEMPT_EXIT_CODE."""
        mark_preempted(step, self.reason)
        sys.stdout.flush()
        sys.stderr.flush()
        sys.exit(PREEMPT_EXIT_CODE)


def mark_preempted(step: int | None = None, reason: str | None = None) -> Path | None:
    """Create ``$MEGATRON_GRPO_PREEMPT_FILE`` (if set) with the saved step; returns its path."""
    target = os.environ.get(PREEMPT_FILE_ENV)
    if not target:
        return None
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    rank = os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))
    with open(path, "a") as f:
        f.write(f"rank={rank} step={step} signal={reason} time={time.time():.3f}\n")
    return path
