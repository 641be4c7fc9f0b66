"""The GRPO loop: sample -> rollout -> reward -> old logprobs -> train -> refit -> validate -> save.

``megatron-grpo train --config CFG [section.key=value ...]`` runs it on every rank (SPMD: torchrun,
srun, or a single process). Every rank holds the same global batch of episodes; the policy slices
its data-parallel share (policy.py); the generation engine is refit from the policy's weight stream
after every optimizer step; rank 0 logs.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from megatron_grpo import grpo
from megatron_grpo.config import Config, ConfigError, check_training_sampling, load_config, to_dict

log = logging.getLogger("megatron_grpo.trainer")


# ----------------------------------------------------------------------------- small parts


class PhaseTimer:
    """Wall seconds per named phase of one step (``timing/<phase>`` metrics)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - t0


@dataclass
class Rollouts:
    """One step's episodes (group-major: G consecutive episodes per prompt) and their batch."""

    episodes: list
    batch: dict[str, torch.Tensor]
    rewards: torch.Tensor
    timing: dict[str, float] = field(default_factory=dict)
    dropped_groups: int = 0
    samples: list = field(default_factory=list)  # the task of each episode


# ----------------------------------------------------------------------------- the run


@dataclass
class Run:
    """Everything one training run holds; built once by ``setup`` and passed to the loop."""

    cfg: Config
    layout: Any
    policy: Any
    engine: Any  # None on ranks that do not generate (hf engine, tp/pp rank > 0)
    env: Any
    renderer: Any
    tokenizer: Any
    spmd_engine: bool
    train_samples: list[dict]
    val_samples: list[dict]
    sampler: Any
    total_steps: int
    model_dir: str
    run_dir: Path
    traces: Any = None  # rollout/traces.RolloutTraces: where episodes are written for people to read


@contextmanager
def started(cfg: Config) -> Iterator[Run]:
    """``setup(cfg)`` whose process group, engine and environment pool (with a Ray it started) are
    released on every exit path: normal end, an exception in any step, preemption's SystemExit."""
    with ExitStack() as teardown:
        yield setup(cfg, teardown)


def setup(cfg: Config, teardown: ExitStack | None = None) -> Run:
    """Initialize distributed state and build policy, engine, environment pool and data.

    Everything started here registers its release on ``teardown`` (last started, first released);
    use ``started(cfg)`` rather than calling this directly.
    """
    teardown = teardown if teardown is not None else ExitStack()
    from megatron_grpo.components import (
        SPMD_BACKENDS,
        build_engine,
        build_env_pool,
        load_tokenizer,
        release_engine,
        resolve_backend,
        resolve_model_dir,
    )
    from megatron_grpo.data.sampler import PromptSampler
    from megatron_grpo.data.samples import load_samples
    from megatron_grpo.distributed import destroy_distributed, init_distributed
    from megatron_grpo.policy import MegatronPolicy
    from megatron_grpo.rollout.chat import ChatRenderer
    from megatron_grpo.rollout.spmd import generates_here
    from megatron_grpo.rollout.tool_subset import restrict_tools

    p = cfg.policy
    # cheap checks first: bad data or batch math fail before any process group or model exists
    train_rows = load_samples(cfg.data.train_path, "data.train_path")
    val_rows = load_samples(cfg.data.validation_path, "data.validation_path")
    train_samples = [restrict_tools(s, cfg.env.tool_subset) for s in train_rows]
    val_samples = [restrict_tools(s, cfg.env.tool_subset) for s in val_rows]
    if cfg.grpo.max_val_samples is not None:
        val_samples = val_samples[: cfg.grpo.max_val_samples]
    samples_per_step = cfg.grpo.num_prompts_per_step * cfg.grpo.num_generations_per_prompt
    if samples_per_step % p.train_global_batch_size:
        raise ConfigError(
            f"grpo.num_prompts_per_step x grpo.num_generations_per_prompt = {samples_per_step} samples per "
            f"step is not a multiple of policy.train_global_batch_size={p.train_global_batch_size}; set "
            f"policy.train_global_batch_size to {samples_per_step} (one optimizer step per GRPO step) "
            f"or a divisor"
        )
    total_steps = grpo.total_train_steps(len(train_samples), cfg.grpo.num_prompts_per_step,
                                         cfg.grpo.max_num_epochs, cfg.grpo.max_num_steps)
    model_dir = resolve_model_dir(p.model_name)
    tokenizer = load_tokenizer(cfg)
    layout = init_distributed(p.tensor_model_parallel_size, p.pipeline_model_parallel_size,
                              p.sequence_parallel, seed=cfg.grpo.seed)
    teardown.callback(destroy_distributed)
    torch.manual_seed(cfg.grpo.seed + layout.rank)
    # old and new logprobs under the rollouts' sampling distribution, softmax(logits / T) (generation/base.py)
    policy = MegatronPolicy(p, layout, model_dir, temperature=cfg.generation.temperature, train_iters=total_steps)
    if cfg.loss_fn.reference_policy_kl_penalty:
        policy.keep_reference()  # the initial model, before any resume
    backend = resolve_backend(cfg.generation)
    spmd_engine = backend in SPMD_BACKENDS
    engine = env = None
    if generates_here(layout, spmd_engine):
        engine = build_engine(backend, cfg.generation, policy, model_dir, tokenizer.pad_token_id or 0)
        teardown.callback(release_engine, engine)
        pools = layout.world_size if spmd_engine else layout.dp  # ranks that generate, one pool each
        env = build_env_pool(cfg.env, cfg.cluster.ray_address, teardown, pools=pools)
    sampler = PromptSampler(train_samples, cfg.grpo.num_prompts_per_step, seed=cfg.grpo.seed,
                            shuffle=cfg.data.shuffle)
    return Run(cfg, layout, policy, engine, env, ChatRenderer(tokenizer), tokenizer, spmd_engine,
               train_samples, val_samples, sampler, total_steps, model_dir,
               Path(cfg.checkpointing.checkpoint_dir).parent)


def sampling_params(cfg: Config, *, temperature: float | None = None, seed: int | None = None):
    from megatron_grpo.generation.base import SamplingParams

    g = cfg.generation
    return SamplingParams(
        temperature=g.temperature if temperature is None else temperature,
        top_p=g.top_p,
        top_k=g.top_k,
        max_new_tokens=g.max_new_tokens,
        seed=seed,
    )


def rollout(run: Run, samples: Sequence[dict], *, temperature: float | None = None,
            seed: int | None = None) -> tuple[list, dict[str, float]]:
    """Episodes for ``samples`` (in order) on every rank, plus the rollout timing split."""
    from megatron_grpo.rollout.agent_loop import run_episodes
    from megatron_grpo.rollout.spmd import gather_rollouts, replica_seed

    # each data-parallel replica samples its own share: its own seed, or a GRPO group split across
    # replicas would get the same samples twice
    params = sampling_params(run.cfg, temperature=temperature,
                             seed=None if seed is None else replica_seed(seed, run.layout.dp_rank))

    def run_here(mine: Sequence[dict]):
        return run_episodes(run.engine, run.env, run.renderer, mine, params,
                            max_steps=run.cfg.grpo.max_rollout_turns,
                            context_limit=run.cfg.policy.max_total_sequence_length,
                            on_malformed_tool_call=run.cfg.env.on_malformed_tool_call)

    if run.engine is not None:
        run.engine.wake()
    try:
        return gather_rollouts(run_here, samples, run.layout, run.spmd_engine)
    finally:
        if run.engine is not None:
            run.engine.sleep()


def collect_rollouts(run: Run, step: int) -> Rollouts:
    """G episodes per prompt for one step; with dynamic sampling, only groups whose rewards differ
    (more prompt batches are rolled out until the step is full, at most
    ``grpo.dynamic_sampling_max_gen_batches``)."""
    from megatron_grpo.rollout.batching import episodes_to_batch

    g = run.cfg.grpo
    G = g.num_generations_per_prompt
    episodes: list = []
    kept: list[dict] = []
    timing: dict[str, float] = {}
    dropped = 0
    for attempt in range(g.dynamic_sampling_max_gen_batches if g.use_dynamic_sampling else 1):
        prompts = run.sampler.next_batch()
        samples = [s for s in prompts for _ in range(G)]
        eps, tim = rollout(run, samples, seed=g.seed * 100_003 + step * 101 + attempt)
        for key, value in tim.items():
            timing[key] = timing.get(key, 0.0) + value
        if g.use_dynamic_sampling:
            keep = grpo.dynamic_sampling_keep(torch.tensor([e.reward for e in eps]), G)
            dropped += int((~keep).sum())
            eps = [e for i, e in enumerate(eps) if keep[i // G]]
            samples = [s for i, s in enumerate(samples) if keep[i // G]]
        episodes.extend(eps)
        kept.extend(samples)
        if len(episodes) >= g.num_prompts_per_step * G:
            break
    else:
        if g.use_dynamic_sampling:
            raise RuntimeError(
                f"dynamic sampling: only {len(episodes) // G} of {g.num_prompts_per_step} prompt groups had "
                f"differing rewards after {g.dynamic_sampling_max_gen_batches} batches; raise "
                f"grpo.dynamic_sampling_max_gen_batches or disable grpo.use_dynamic_sampling"
            )
    episodes = episodes[: g.num_prompts_per_step * G]
    batch = episodes_to_batch(episodes, run.tokenizer.pad_token_id or 0)
    rewards = torch.tensor([e.reward for e in episodes], dtype=torch.float32)
    return Rollouts(episodes, batch, rewards, timing, dropped, kept[: len(episodes)])


def train_on_rollouts(run: Run, ro: Rollouts, old_logprobs: torch.Tensor, loss_fn,
                      ref_logprobs: torch.Tensor | None = None) -> dict[str, float]:
    """Optimizer steps over the step's samples in chunks of ``policy.train_global_batch_size``
    (``ref_logprobs``: the reference policy's, when the KL penalty is on)."""
    g = run.cfg.grpo
    advantages = grpo.compute_advantages(ro.rewards, g.num_generations_per_prompt,
                                         leave_one_out=g.use_leave_one_out_baseline,
                                         normalize=g.normalize_rewards)
    gbs = run.cfg.policy.train_global_batch_size
    group = math.gcd(g.num_generations_per_prompt, gbs)  # rows of one prompt within one chunk
    n = ro.rewards.numel()
    lc = run.cfg.loss_fn
    is_weights, is_metrics = None, {}
    if lc.use_importance_sampling_correction:
        is_weights, is_metrics = grpo.truncated_importance_weights(
            old_logprobs, ro.batch["gen_logprobs"], ro.batch["loss_mask"], lc.truncated_importance_sampling_ratio)
    results: list[dict[str, float]] = []
    for lo in range(0, n, gbs):
        sl = slice(lo, lo + gbs)
        mask = ro.batch["loss_mask"][sl]
        batch = {
            "input_ids": ro.batch["input_ids"][sl],
            "lengths": ro.batch["lengths"][sl],
            "old_logprobs": old_logprobs[sl],
            "advantages": advantages[sl],
            "loss_weights": grpo.loss_token_weights(mask, token_level=lc.token_level_loss),
        }
        if is_weights is not None:
            batch["is_weights"] = is_weights[sl]
        if ref_logprobs is not None:
            batch["ref_logprobs"] = ref_logprobs[sl]
        results.append(run.policy.train_step(batch, loss_fn, group_size=group))
    out = {key: sum(r[key] for r in results) / len(results) for key in results[0]}
    out.update(is_metrics)
    out["advantage_mean"] = float(advantages.mean())
    return out


def validate(run: Run, step: int) -> dict[str, float]:
    """val:accuracy on the validation set: one episode per task at ``generation.val_temperature``."""
    if not run.val_samples:
        return {}
    episodes, _ = rollout(run, run.val_samples, temperature=run.cfg.generation.val_temperature,
                          seed=run.cfg.grpo.seed + 7)
    if run.traces is not None:
        run.traces.validation_episodes(step, episodes, run.val_samples)
    rewards = [e.reward for e in episodes]
    return {
        "val:accuracy": sum(r == 1.0 for r in rewards) / len(rewards),
        "val:reward_mean": sum(rewards) / len(rewards),
        "val:num_samples": float(len(rewards)),
        "val:mean_turns": sum(e.num_turns for e in episodes) / len(episodes),
    }


def step_metrics(run: Run, ro: Rollouts, train: dict[str, float], timer: PhaseTimer,
                 mismatch: float) -> dict[str, float]:
    from megatron_grpo import flops, metrics

    mask = ro.batch["loss_mask"]
    lengths = ro.batch["lengths"].tolist()
    shape = flops.DecoderShape.from_hf_config(run.policy.hf_config)
    device_name = torch.cuda.get_device_name() if run.policy.device is not None else "cpu"
    out = {
        metrics.TRAIN_ACCURACY: float((ro.rewards == 1.0).float().mean()),
        metrics.REWARD_MEAN: float(ro.rewards.mean()),
        metrics.ADVANTAGE_MEAN: train.pop("advantage_mean"),
        metrics.TRAIN_POLICY_LOSS: train.get("loss", 0.0),
        metrics.POLICY_LOSS: train.get("loss", 0.0),
        metrics.GRAD_NORM: train.get("grad_norm", 0.0),
        metrics.GEN_TRAIN_LOGPROB_ERROR: mismatch,
        "train:lr": train.get("lr", 0.0),
        "train:mean_turns": sum(e.num_turns for e in ro.episodes) / len(ro.episodes),
        "train:mean_seq_len": sum(lengths) / len(lengths),
        "train:dropped_groups": float(ro.dropped_groups),
        **{f"train:{k}": v for k, v in train.items() if k not in ("loss", "grad_norm", "lr")},
        **metrics.throughput_metrics(
            num_samples=len(ro.episodes),
            step_seconds=sum(timer.seconds.values()),
            generated_tokens=int(mask.sum()),
            generation_seconds=timer.seconds.get("generation", 0.0),
            training_flops=flops.training_flops(shape, lengths),
            training_seconds=timer.seconds.get("train", 0.0),
            num_gpus=run.layout.world_size,
            peak_flops_per_gpu=flops.peak_flops(device_name),
        ),
    }
    for reason in {e.stop_reason for e in ro.episodes}:
        out[f"train:stop/{reason}"] = sum(e.stop_reason == reason for e in ro.episodes) / len(ro.episodes)
    for phase, secs in ro.timing.items():
        out[f"timing/rollout_{phase}"] = secs
    for phase, secs in timer.seconds.items():
        out[f"timing/{phase}"] = secs
    out["timing/step"] = sum(timer.seconds.values())
    return out


def refit_engine(run: Run) -> dict[str, float]:
    """The policy's weights into this rank's engine (``refit.refit``: the one refit path); its metrics."""
    from megatron_grpo.refit import refit

    stats = refit(run.policy.weight_stream(int(run.cfg.generation.refit_bucket_mb * 2**20)), run.engine)
    return stats.as_metrics()


def save(run: Run, step: int, metrics: dict[str, float]) -> Path:
    from megatron_grpo.checkpoint import save_checkpoint

    c = run.cfg.checkpointing
    return save_checkpoint(run.policy, c.checkpoint_dir, step, metrics=metrics,
                           data_state=run.sampler.state_dict(), config=to_dict(run.cfg),
                           tokenizer_dir=run.cfg.policy.tokenizer_name or run.model_dir,
                           keep_top_k=c.keep_top_k, metric_name=c.metric_name,
                           higher_is_better=c.higher_is_better)


def resume(run: Run) -> int:
    """The step to continue after (0 for a fresh run)."""
    from megatron_grpo.checkpoint import load_checkpoint, resolve_resume

    c = run.cfg.checkpointing
    path = resolve_resume(c.resume, c.checkpoint_dir) if c.enabled else None
    if path is None:
        return 0
    info = load_checkpoint(path, run.policy)
    run.sampler.load_state_dict(info["data_state"])
    refit_engine(run)  # the engine must generate with the restored weights
    log.info("resumed from %s at step %d", path, info["step"])
    return int(info["step"])


def train(cfg: Config) -> dict[str, float]:
    """Run GRPO to ``total_steps`` (or until preempted); return the last step's metrics.

    Whatever ends the run (the last step, an exception, preemption), the process group, the engine
    and the environment pool are released (``started``)."""
    from megatron_grpo.metrics import MetricsLogger
    from megatron_grpo.preemption import PreemptionFlag
    from megatron_grpo.refit import logprob_mismatch

    check_training_sampling(cfg)
    loss_fn = grpo.make_loss_fn(cfg.loss_fn)
    ckpt = cfg.checkpointing
    last: dict[str, float] = {}
    stopped_at: int | None = None  # the step a preemption signal ended the run at
    with started(cfg) as run:
        run.traces = _traces(run)
        start = resume(run)
        preempt = PreemptionFlag().install()
        logger = MetricsLogger(cfg.logger, cfg.logger.log_dir, total_steps=run.total_steps, config=to_dict(cfg))
        with logger:
            if start == 0 and cfg.grpo.val_at_start:
                logger.log(0, validate(run, 0))
            for step in range(start + 1, run.total_steps + 1):
                timer = PhaseTimer()
                with timer("generation"):
                    ro = collect_rollouts(run, step)
                    run.traces.train(step, ro.episodes, ro.samples, cfg.grpo.num_generations_per_prompt)
                with timer("logprobs"):
                    old_logprobs = run.policy.logprobs(ro.batch["input_ids"], ro.batch["lengths"],
                                                       group_size=cfg.grpo.num_generations_per_prompt)
                ref_logprobs = None
                if cfg.loss_fn.reference_policy_kl_penalty:
                    with timer("ref_logprobs"):
                        ref_logprobs = run.policy.reference_logprobs(
                            ro.batch["input_ids"], ro.batch["lengths"], group_size=cfg.grpo.num_generations_per_prompt)
                mismatch = logprob_mismatch(ro.batch["gen_logprobs"], old_logprobs, ro.batch["loss_mask"])
                with timer("train"):
                    train_out = train_on_rollouts(run, ro, old_logprobs, loss_fn, ref_logprobs)
                with timer("refit"):
                    refit_metrics = refit_engine(run)
                last = step_metrics(run, ro, train_out, timer, mismatch)
                last.update(refit_metrics)
                is_last = step == run.total_steps
                if cfg.grpo.val_period > 0 and (step % cfg.grpo.val_period == 0 or is_last):
                    with timer("validation"):
                        last.update(validate(run, step))
                stop = preempt.should_stop_all()  # collective: every rank agrees
                if ckpt.enabled and (step % ckpt.save_period == 0 or is_last or stop):
                    with timer("checkpoint"):
                        save(run, step, last)
                last.update({f"timing/{k}": v for k, v in timer.seconds.items()})
                logger.log(step, last)
                if stop:
                    log.warning("preempted (%s): checkpoint saved at step %d; exiting for requeue",
                                preempt.reason, step)
                    stopped_at = step
                    break
        if ckpt.export_hf_at_end and stopped_at is None:
            export_hf(run)
    if stopped_at is not None:
        preempt.exit_for_requeue(stopped_at)  # after the teardown above: nothing of this job keeps running
    return last


def _traces(run: Run):
    from megatron_grpo.rollout.traces import RolloutTraces

    lg = run.cfg.logger
    return RolloutTraces(lg.log_dir, run.renderer, groups_per_step=lg.rollout_groups_per_step,
                         validation=lg.rollout_validation, enabled=run.layout.rank == 0)


def export_hf(run: Run) -> Path:
    """Write the final policy as a Hugging Face folder under ``<run_dir>/hf_export``."""
    from megatron_grpo.models.hf_mapping import save_hf_checkpoint

    out = run.run_dir / "hf_export"
    save_hf_checkpoint(run.policy.model, str(out), run.policy.hf_config,
                       tokenizer_dir=run.cfg.policy.tokenizer_name or run.model_dir)
    log.info("exported the final policy to %s", out)
    return out


# ----------------------------------------------------------------------------- CLI


def ensure_master_port() -> None:
    """A lone process (no torchrun/srun variables) rendezvous on any free port."""
    launched = "RANK" in os.environ or "SLURM_PROCID" in os.environ
    if not launched and "MASTER_PORT" not in os.environ:
        from megatron_grpo.distributed import free_port

        os.environ["MASTER_PORT"] = str(free_port())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="megatron-grpo train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML config (configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. grpo.max_num_steps=5")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config, args.overrides)  # a ConfigError is printed as one line by cli.py
    ensure_master_port()
    train(cfg)
    return 0
