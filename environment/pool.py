"""Episodes of the Workplace Assistant environment, in-process or on a Ray actor pool.

Why a pool: tool calls are pandas work on CPU; at 256 episodes per step they must run beside the
GPUs, not in the trainer's process. Why replay: an actor can die (OOM, node loss); its episodes'
databases die with it. The driver keeps every episode's acknowledged calls (its call log); a
replacement actor re-opens those episodes and re-executes their logs (the tools are deterministic:
fixed clock, databases from CSV), then the step that was in flight is sent again. A call enters the
log only once its step has returned, so nothing is lost and nothing is executed twice.

Both pools have the interface the agent loop uses (megatron_grpo/rollout/agent_loop.py):

    ids = pool.open(n)                                     n fresh episodes (fresh databases)
    outputs = pool.step(ids, calls_per_episode)            every call executed in order -> its output text
    rewards = pool.rewards(ids, ground_truths)             verifier reward on each episode's calls
    pool.close(ids)

A call is ``{"name", "arguments"}`` (arguments: JSON text) and optionally ``"error"`` (the parser's
repr of why the block was unparsable). Execution follows NeMo-Gym simple_agent: arguments that do
not ``json.loads`` (or carry a parse error) are not executed and return
``{"error": "Invalid tool call arguments: <repr>"}``; otherwise the environment's output text.
``data_dir`` is the sandbox folder (None: ``WORKPLACE_DATA_DIR`` or the download cache).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

# environment variables an actor needs (never the whole os.environ: it would leak secrets into actors)
ACTOR_ENV_VARS = ("WORKPLACE_DATA_DIR", "MEGATRON_GRPO_CACHE", "PYTHONWARNINGS", "PYTHONHASHSEED")


def invalid_arguments_output(error_repr: str) -> str:
    return json.dumps({"error": f"Invalid tool call arguments: {error_repr}"})


def execute_call(env: Any, call: dict) -> str:
    """Run one call on one episode's environment the way the reference agent does.

    A call the parser could not read (``"error"`` set) is answered with the reference's
    invalid-arguments text without touching the databases; everything else (including arguments
    that are not valid JSON) goes to ``WorkplaceEnv.call``, which answers as the reference does.
    """
    if call.get("error"):
        return invalid_arguments_output(call["error"])
    return env.call(call["name"], call["arguments"])


class EpisodeWorker:
    """Holds the environments of many episodes (one ``WorkplaceEnv`` each) and runs their calls.

    A plain class: used directly by ``LocalEnvPool`` and wrapped with ``ray.remote`` by ``RayEnvPool``.
    """

    def __init__(self, data_dir: str | None = None):
        self.data_dir = data_dir
        self.envs: dict[Any, Any] = {}
        self.logs: dict[Any, list[dict]] = {}

    def open(self, episode_ids: Sequence[Any]) -> None:
        from environment.workplace import WorkplaceEnv

        for eid in episode_ids:
            self.envs[eid] = WorkplaceEnv(data_dir=self.data_dir)
            self.logs[eid] = []

    def step(self, episode_ids: Sequence[Any], calls_per_episode: Sequence[list[dict]]) -> list[list[str]]:
        outputs = []
        for eid, calls in zip(episode_ids, calls_per_episode):
            env = self.envs[eid]
            outputs.append([execute_call(env, call) for call in calls])
            self.logs[eid].extend(dict(c) for c in calls)
        return outputs

    def replay(self, episode_id: Any, calls: list[dict]) -> None:
        """Re-open ``episode_id`` and re-execute its logged calls (outputs discarded)."""
        self.open([episode_id])
        self.step([episode_id], [calls])

    def rewards(self, episode_ids: Sequence[Any], ground_truths: Sequence[list[dict]]) -> list[float]:
        from environment.workplace import verify_calls

        return [
            float(verify_calls([_plain(c) for c in self.logs[eid]], gt, data_dir=self.data_dir))
            for eid, gt in zip(episode_ids, ground_truths)
        ]

    def close(self, episode_ids: Sequence[Any]) -> None:
        for eid in episode_ids:
            self.envs.pop(eid, None)
            self.logs.pop(eid, None)

    def ping(self) -> int:
        return os.getpid()

    def node_ip(self) -> str:
        """The address of the Ray node this worker runs on (Ray actors only)."""
        import ray

        return ray.util.get_node_ip_address()


def _plain(call: dict) -> dict:
    return {"name": call["name"], "arguments": call["arguments"]}


class LocalEnvPool:
    """All episodes in this process (tests, CPU demo, single-process runs)."""

    def __init__(self, data_dir: str | None = None):
        self.worker = EpisodeWorker(data_dir)
        self._ids = itertools.count()

    def open(self, n: int) -> list[int]:
        ids = [next(self._ids) for _ in range(n)]
        self.worker.open(ids)
        return ids

    def step(self, episode_ids: Sequence[int], calls_per_episode: Sequence[list[dict]]) -> list[list[str]]:
        return self.worker.step(episode_ids, calls_per_episode)

    def rewards(self, episode_ids: Sequence[int], ground_truths: Sequence[list[dict]]) -> list[float]:
        return self.worker.rewards(episode_ids, ground_truths)

    def reward(self, episode_id: int, ground_truth: list[dict]) -> float:
        return self.rewards([episode_id], [ground_truth])[0]

    def close(self, episode_ids: Sequence[int]) -> None:
        self.worker.close(episode_ids)

    def shutdown(self) -> None:
        pass


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to the Ray cluster at ``address`` or ``RAY_ADDRESS`` (SLURM: started by the sbatch
    script), else start a local one (no dashboard).

    A cluster given by address is used with the caller's own Ray settings (its token, if it has
    one, comes from the environment). A local Ray gets a fresh token of its own (token
    authentication, see environment/ray_auth.py), so no other user of the machine can submit work
    to it and nothing is written into the home folder."""
    import ray

    from environment.ray_auth import new_token, use_token

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        use_token(new_token())
        # SLURM signals every process of a job step (--signal=USR1@120 before the time limit); the
        # local Ray's daemons must survive it so the trainer can checkpoint. An ignored signal is
        # inherited by the processes ray.init starts; the caller's handler is restored afterwards.
        previous = signal.signal(signal.SIGUSR1, signal.SIG_IGN) if _on_main_thread() else None
        try:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
        finally:
            if previous is not None:
                signal.signal(signal.SIGUSR1, previous)


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@dataclass
class _Slot:
    actor: Any
    episodes: set = field(default_factory=set)


class RayEnvPool:
    """Episodes spread over ``num_actors`` Ray actors; dead actors are replaced and their episodes
    replayed (see the module docstring). ``replacements`` counts replaced actors.

    ``cpus_per_actor`` defaults to 1, lowered so that all actors fit the cluster's CPUs (an actor
    that cannot be scheduled would make every request wait forever). ``pools_sharing_cluster``: how
    many pools (one per generating trainer rank, e.g. per data-parallel replica) start on the same
    Ray cluster; they split its CPUs. Actors not up within ``start_timeout_s`` fail the start with
    one line (what was asked, what the cluster has) instead of a wait without end."""

    def __init__(
        self,
        num_actors: int = 4,
        data_dir: str | None = None,
        cpus_per_actor: float | None = None,
        ray_address: str | None = None,
        max_restarts_per_step: int = 3,
        pools_sharing_cluster: int = 1,
        start_timeout_s: float = 300.0,
    ):
        import ray
        from ray.exceptions import GetTimeoutError

        ensure_ray(ray_address)
        self._ray = ray
        self.data_dir = data_dir
        self.max_restarts_per_step = max_restarts_per_step
        cluster_cpus = float(ray.cluster_resources().get("CPU", 1.0))
        if cpus_per_actor is None:  # one CPU each, less when the cluster is smaller (all must start)
            cpus_per_actor = min(1.0, cluster_cpus / max(1, num_actors * pools_sharing_cluster))
        env_vars = {k: os.environ[k] for k in ACTOR_ENV_VARS if k in os.environ}
        self._remote_cls = ray.remote(EpisodeWorker).options(
            num_cpus=cpus_per_actor, max_restarts=0, runtime_env={"env_vars": env_vars}
        )
        self.slots = [_Slot(self._new_actor()) for _ in range(num_actors)]
        try:
            nodes = ray.get([slot.actor.node_ip.remote() for slot in self.slots], timeout=start_timeout_s)
        except GetTimeoutError:
            free = float(ray.available_resources().get("CPU", 0.0))
            self.shutdown()
            raise RuntimeError(
                f"env pool: {num_actors} actor(s) x {cpus_per_actor:g} CPU not up on the Ray cluster after "
                f"{start_timeout_s:.0f} s (cluster CPUs {cluster_cpus:g}, free {free:g}, {pools_sharing_cluster} "
                f"pool(s) on it): lower env.num_actors or give Ray more CPUs (RAY_NUM_CPUS)") from None
        log.info("env pool: %d actor(s) on Ray node(s) %s", num_actors, ", ".join(sorted(set(nodes))))
        self.logs: dict[int, list[dict]] = {}
        self.route: dict[int, int] = {}
        self.replacements = 0
        self._ids = itertools.count()

    @property
    def actors(self) -> list[Any]:
        return [slot.actor for slot in self.slots]

    def _new_actor(self):
        return self._remote_cls.remote(self.data_dir)

    # -- interface
    def open(self, n: int) -> list[int]:
        ids = [next(self._ids) for _ in range(n)]
        by_slot: dict[int, list[int]] = {}
        for eid in ids:
            slot = min(range(len(self.slots)), key=lambda s: (len(self.slots[s].episodes), s))
            self.slots[slot].episodes.add(eid)
            self.route[eid] = slot
            self.logs[eid] = []
            by_slot.setdefault(slot, []).append(eid)
        self._run(by_slot, lambda actor, eids: actor.open.remote(eids))
        return ids

    def step(self, episode_ids: Sequence[int], calls_per_episode: Sequence[list[dict]]) -> list[list[str]]:
        calls_of = dict(zip(episode_ids, calls_per_episode))
        by_slot = self._group(episode_ids)
        results = self._run(by_slot, lambda actor, eids: actor.step.remote(eids, [calls_of[e] for e in eids]))
        outputs: dict[int, list[str]] = {}
        for slot, eids in by_slot.items():
            for eid, out in zip(eids, results[slot]):
                outputs[eid] = out
                self.logs[eid].extend(calls_of[eid])  # acknowledged: now part of the episode's history
        return [outputs[eid] for eid in episode_ids]

    def rewards(self, episode_ids: Sequence[int], ground_truths: Sequence[list[dict]]) -> list[float]:
        gt_of = dict(zip(episode_ids, ground_truths))
        by_slot = self._group(episode_ids)
        results = self._run(by_slot, lambda actor, eids: actor.rewards.remote(eids, [gt_of[e] for e in eids]))
        reward_of = {eid: r for slot, eids in by_slot.items() for eid, r in zip(eids, results[slot])}
        return [reward_of[eid] for eid in episode_ids]

    def reward(self, episode_id: int, ground_truth: list[dict]) -> float:
        return self.rewards([episode_id], [ground_truth])[0]

    def close(self, episode_ids: Sequence[int]) -> None:
        by_slot = self._group(episode_ids)
        self._run(by_slot, lambda actor, eids: actor.close.remote(eids))
        for eid in episode_ids:
            self.slots[self.route.pop(eid)].episodes.discard(eid)
            self.logs.pop(eid, None)

    def shutdown(self) -> None:
        for slot in self.slots:
            self._ray.kill(slot.actor)
        self.slots = []

    # -- routing and recovery
    def _group(self, episode_ids: Sequence[int]) -> dict[int, list[int]]:
        by_slot: dict[int, list[int]] = {}
        for eid in episode_ids:
            if eid not in self.route:
                raise KeyError(f"episode {eid} is not open in this pool")
            by_slot.setdefault(self.route[eid], []).append(eid)
        return by_slot

    def _run(self, by_slot: dict[int, list[int]], submit) -> dict[int, Any]:
        """Submit one request per actor, gather; an actor that died is replaced, its episodes are
        replayed from their logs and its request is submitted again."""
        from ray.exceptions import RayActorError

        result_refs = {slot: submit(self.slots[slot].actor, eids) for slot, eids in by_slot.items()}
        results: dict[int, Any] = {}
        restarts = 0
        while result_refs:
            slot, result_ref = result_refs.popitem()
            try:
                results[slot] = self._ray.get(result_ref)
            except RayActorError as exc:
                restarts += 1
                if restarts > self.max_restarts_per_step:
                    msg = f"env actor {slot} died {restarts} times in one request; giving up"
                    raise RuntimeError(msg) from exc
                self._replace(slot)
                result_refs[slot] = submit(self.slots[slot].actor, by_slot[slot])
        return results

    def _replace(self, slot: int) -> None:
        started = time.perf_counter()
        self._ray.kill(self.slots[slot].actor, no_restart=True)
        actor = self._new_actor()
        replay_refs = [actor.replay.remote(eid, self.logs[eid]) for eid in sorted(self.slots[slot].episodes)]
        self._ray.get(replay_refs)
        self.slots[slot].actor = actor
        self.replacements += 1
        self.last_replacement_s = time.perf_counter() - started
