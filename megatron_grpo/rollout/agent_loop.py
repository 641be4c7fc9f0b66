"""The multi-step agent loop: NeMo-Gym ``simple_agent`` semantics, batched, token-in/token-out.

Semantics (those of NeMo-Gym's ``simple_agent`` with its Workplace resources server), per episode:

1. A step is one model call. The model sees the prompt and every earlier turn (as ids, never
   re-tokenized; rollout/chat.py).
2. The turn is cut by the sampler at a stop id (``<|im_end|>`` ends a turn, ``<|endoftext|>`` ends
   the sequence) or at the token budget.
3. Stop reasons, checked in this order:
   - ``max_new_tokens``: the budget ran out mid-turn (the reference's "incomplete" response); the
     turn's calls are *not* executed, as in the reference.
   - ``context_limit``: the turn was cut because the context (``context_limit`` ids) is full, or the
     next tool turn would not fit with at least one new token after it (it is then not appended).
   - ``no_tool_calls``: a turn without ``<tool_call>`` blocks (the final answer).
   - ``malformed_tool_call`` (``on_malformed_tool_call="plain_text"``, the default): a block is not
     valid tool-call JSON (rollout/hermes.py, ``ParsedTurn.malformed``). The reference's hermes
     parser then turns the whole turn into plain text: no call of the turn runs and the episode
     ends, as simple_agent ends on an assistant message without function calls. With
     ``on_malformed_tool_call="error_output"`` such a turn is executed like any other instead (the
     malformed block returns the reference's ``{"error": "Invalid tool call arguments: ..."}``
     text) and the model gets another step.
   - otherwise every call of the turn is executed, in order (a call whose arguments are not a JSON
     object returns that error text), then
   - ``eos``: the turn ended with ``<|endoftext|>`` instead of ``<|im_end|>``: the model closed the
     sequence, the conversation cannot continue in the template;
   - ``max_steps``: ``max_steps`` model calls were made (default 6; the 6th call's tools still run).
4. The reward is the verifier's on every call the episode made (the reference replays all
   ``function_call`` items, invalid ones fail and are skipped there as here).

Sampling: a seeded ``SamplingParams`` is reproducible; each turn gets its own derived seed.

Batching: all live episodes advance in lock-step; each turn is ONE ``engine.generate`` call over all
of them, and one environment ``step`` over every episode with calls.

The environment is anything with the pool interface of environment/pool.py (``LocalEnvPool`` or
``RayEnvPool``): ``open(n) -> ids``, ``step(ids, calls_per_episode) -> outputs_per_episode``,
``rewards(ids, ground_truths) -> list[float]``, ``close(ids)``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from megatron_grpo.generation.base import GenerationEngine, SamplingParams
from megatron_grpo.rollout.chat import ChatRenderer, Trajectory
from megatron_grpo.rollout.hermes import parse_tool_calls

PHASES = ("generation", "env", "tokenization")
STOP_REASONS = ("no_tool_calls", "malformed_tool_call", "eos", "max_new_tokens", "context_limit", "max_steps")
MALFORMED_TOOL_CALL_MODES = ("plain_text", "error_output")


class EpisodeEnv(Protocol):
    def open(self, n: int) -> list[Any]: ...

    def step(self, episode_ids: Sequence[Any], calls_per_episode: Sequence[list[dict]]) -> list[list[str]]:
        ...

    def rewards(self, episode_ids: Sequence[Any], ground_truths: Sequence[list[dict]]) -> list[float]: ...

    def close(self, episode_ids: Sequence[Any]) -> None: ...


@dataclass
class EpisodeResult:
    """One finished episode. ``token_ids``, ``loss_mask``, ``logprobs`` are aligned, length S;
    ``logprobs`` are the engine's logprobs of sampled ids (under the sampling distribution,
    generation/base.py), 0.0 where ``loss_mask`` is 0."""

    token_ids: list[int]
    loss_mask: list[int]
    logprobs: list[float]
    prompt_len: int
    reward: float
    calls: list[dict]  # {"name", "arguments"} in execution order (what the verifier replays)
    tool_outputs: list[str]
    num_turns: int
    stop_reason: str
    timing: dict[str, float] = field(default_factory=dict)  # this episode's share, seconds
    # one entry per model call, for people reading rollouts (rollout/traces.py): {"text": the decoded
    # turn without its end token, "tokens": ids sampled, "tool_calls": [{"name", "arguments",
    # "error"?}] as parsed, "tool_outputs": [str] when the calls ran}
    turns: list[dict] = field(default_factory=list)


@dataclass
class RolloutBatch:
    episodes: list[EpisodeResult]
    timing: dict[str, float]  # batch totals: generation, env, tokenization, total (seconds)


@dataclass
class _Episode:
    traj: Trajectory
    prompt_len: int
    calls: list[dict] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    turns: int = 0
    stop_reason: str | None = None
    turn_records: list[dict] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))


def run_episodes(
    engine: GenerationEngine,
    env: EpisodeEnv,
    renderer: ChatRenderer,
    samples: Sequence[dict],
    sampling: SamplingParams,
    *,
    max_steps: int = 6,
    context_limit: int = 32768,
    on_malformed_tool_call: str = "plain_text",
) -> RolloutBatch:
    """Roll out one episode per sample (a sample is a dataset row with ``responses_create_params``
    and ``ground_truth``; repeat a row G times for a GRPO group). ``on_malformed_tool_call``:
    ``plain_text`` (the reference) or ``error_output`` (see the module docstring)."""
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    if on_malformed_tool_call not in MALFORMED_TOOL_CALL_MODES:
        raise ValueError(f"env.on_malformed_tool_call must be one of {', '.join(MALFORMED_TOOL_CALL_MODES)}, "
                         f"got {on_malformed_tool_call!r}")
    stops = tuple(sorted(set(sampling.stop_token_ids) | set(renderer.eos_token_ids)))
    sampling = replace(sampling, stop_token_ids=stops)
    totals = dict.fromkeys(PHASES, 0.0)
    started = time.perf_counter()

    t0 = time.perf_counter()
    ids = env.open(len(samples))
    totals["env"] += time.perf_counter() - t0
    t0 = time.perf_counter()
    episodes = []
    for sample in samples:
        prompt = renderer.prompt_ids(sample["responses_create_params"])
        episodes.append(_Episode(Trajectory(list(prompt)), len(prompt)))
    _account(time.perf_counter() - t0, episodes, totals, "tokenization")
    for ep in episodes:
        if len(ep.traj) >= context_limit:
            ep.stop_reason = "context_limit"

    step = 0
    live = [i for i, ep in enumerate(episodes) if ep.stop_reason is None]
    while live:
        step += 1
        budgets = [min(sampling.max_new_tokens, context_limit - len(episodes[i].traj)) for i in live]
        t0 = time.perf_counter()
        prompts = [episodes[i].traj.token_ids for i in live]
        generations = engine.generate(prompts, _turn_params(sampling, step), max_new_tokens=budgets)
        _account(time.perf_counter() - t0, [episodes[i] for i in live], totals, "generation")

        t0 = time.perf_counter()
        with_calls: list[int] = []
        turn_calls: list[list[dict]] = []
        end_ids: dict[int, int | None] = {}
        for i, gen, budget in zip(live, generations, budgets):
            ep = episodes[i]
            ep.traj.append_generated(gen.token_ids, gen.logprobs)
            ep.turns += 1
            body = gen.token_ids[:-1] if gen.token_ids and gen.token_ids[-1] in stops else gen.token_ids
            text = renderer.tokenizer.decode(body, skip_special_tokens=False)
            record = {"text": text, "tokens": len(gen.token_ids), "tool_calls": [], "tool_outputs": []}
            ep.turn_records.append(record)
            if gen.finish_reason != "stop":
                cut_by_context = budget < sampling.max_new_tokens
                ep.stop_reason = "context_limit" if cut_by_context else "max_new_tokens"
                continue
            turn = parse_tool_calls(text)
            if not turn.calls:
                ep.stop_reason = "no_tool_calls"
                continue
            if turn.malformed and on_malformed_tool_call == "plain_text":
                ep.stop_reason = "malformed_tool_call"
                continue
            calls = [
                {"name": c.name, "arguments": c.arguments, **({"error": c.error} if c.error else {})}
                for c in turn.calls
            ]
            record["tool_calls"] = calls
            with_calls.append(i)
            turn_calls.append(calls)
            end_ids[i] = gen.token_ids[-1]
        _account(time.perf_counter() - t0, [episodes[i] for i in live], totals, "tokenization")

        if with_calls:
            t0 = time.perf_counter()
            outputs = env.step([ids[i] for i in with_calls], turn_calls)
            _account(time.perf_counter() - t0, [episodes[i] for i in with_calls], totals, "env")
            t0 = time.perf_counter()
            for i, calls, outs in zip(with_calls, turn_calls, outputs):
                ep = episodes[i]
                ep.calls.extend({"name": c["name"], "arguments": c["arguments"]} for c in calls)
                ep.outputs.extend(outs)
                ep.turn_records[-1]["tool_outputs"] = list(outs)
                if end_ids[i] != renderer.im_end_id:
                    ep.stop_reason = "eos"
                elif step >= max_steps:
                    ep.stop_reason = "max_steps"
                else:
                    tool_ids = renderer.tool_turn_ids(outs)
                    if len(ep.traj) + len(tool_ids) + 1 > context_limit:
                        ep.stop_reason = "context_limit"
                    else:
                        ep.traj.append_context(tool_ids)
            _account(time.perf_counter() - t0, [episodes[i] for i in with_calls], totals, "tokenization")
        live = [i for i in live if episodes[i].stop_reason is None]

    t0 = time.perf_counter()
    rewards = env.rewards(ids, [s.get("ground_truth", []) for s in samples])
    env.close(ids)
    _account(time.perf_counter() - t0, episodes, totals, "env")
    totals["total"] = time.perf_counter() - started

    results = [
        EpisodeResult(
            token_ids=ep.traj.token_ids,
            loss_mask=ep.traj.loss_mask,
            logprobs=ep.traj.logprobs,
            prompt_len=ep.prompt_len,
            reward=float(reward),
            calls=ep.calls,
            tool_outputs=ep.outputs,
            num_turns=ep.turns,
            stop_reason=ep.stop_reason or "no_tool_calls",
            timing=ep.timing,
            turns=ep.turn_records,
        )
        for ep, reward in zip(episodes, rewards)
    ]
    return RolloutBatch(episodes=results, timing=totals)


def _turn_params(sampling: SamplingParams, step: int) -> SamplingParams:
    """A seeded rollout draws fresh randomness every turn (turn t: seed + t - 1 scaled by a prime),
    instead of replaying the first turn's random stream."""
    return sampling if sampling.seed is None else replace(sampling, seed=sampling.seed + 1_000_003 * (step - 1))


def _account(seconds: float, episodes: Sequence[_Episode], totals: dict[str, float], key: str) -> None:
    """Add a batched phase's wall time to the totals and an equal share to each episode involved."""
    totals[key] += seconds
    for ep in episodes:
        ep.timing[key] += seconds / len(episodes)
