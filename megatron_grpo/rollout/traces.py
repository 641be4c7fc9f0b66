"""Rollout traces: what the agent did, as JSON lines a person (or ``megatron-grpo show-rollouts``) reads.

Why: "did reward go up" is the first question about an RL run, "what did the agent do" the second;
the metrics answer only the first. A training run writes ``<logger.log_dir>/rollouts/step_N.jsonl``:
the first ``logger.rollout_groups_per_step`` GRPO groups of each step (phase ``train``) and every
validation episode (phase ``validation``, also ``step_0.jsonl`` for the validation before training).
``megatron-grpo collect-rollouts`` writes the same records to one file.

One record per episode::

    {"step": 3, "phase": "train", "group": 0, "sample": 2,        # G samples per group (GRPO)
     "task_id": 17, "category": "workplace_assistant_email", "template": "email.send_email" | null,
     "reward": 1.0, "stop_reason": "no_tool_calls", "num_turns": 2,
     "prompt_tokens": 180, "generated_tokens": 41, "total_tokens": 240,
     "request": "the last user message",
     "ground_truth": [{"name", "arguments"}, ...],
     "messages": [
        {"role": "prompt", "content": "<the rendered prompt text>"},  # only in sample 0 of a group
        {"role": "assistant", "content": "<the turn as decoded>", "tokens": 30,
         "tool_calls": [{"name", "arguments", "error"?}]},           # as parsed; empty when cut
        {"role": "tool", "name": "email_send_email", "content": "<output text>"}, ...]}

The prompt (system prompt, tool schemas) is the bulk of an episode and identical within a group,
so it is written once per group. Only rank 0 writes. A file is replaced by the first write of a
process and appended to after that, so a resumed run that repeats a step does not duplicate it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

ROLLOUTS_DIR = "rollouts"


def request_text(sample: dict) -> str:
    """The last user message of a sample's ``responses_create_params.input`` (the task's request)."""
    items = sample.get("responses_create_params", {}).get("input", [])
    if isinstance(items, str):
        return items
    for item in reversed(items):
        if item.get("role") == "user" and item.get("type", "message") == "message":
            content = item.get("content", "")
            if isinstance(content, list):
                return "".join(part.get("text", "") for part in content if isinstance(part, dict))
            return str(content)
    return ""


def episode_record(episode: Any, sample: dict, *, step: int, phase: str, group: int, index: int,
                   prompt_text: str | None) -> dict:
    """One episode (``rollout.agent_loop.EpisodeResult``) of ``sample`` as a trace record.
    ``prompt_text``: the rendered prompt, or None to leave it out (not the first of its group)."""
    messages: list[dict] = []
    if prompt_text is not None:
        messages.append({"role": "prompt", "content": prompt_text})
    for turn in episode.turns:
        messages.append({"role": "assistant", "content": turn["text"], "tokens": turn["tokens"],
                         "tool_calls": turn["tool_calls"]})
        for call, output in zip(turn["tool_calls"], turn["tool_outputs"]):
            messages.append({"role": "tool", "name": call["name"], "content": output})
    generated = int(sum(episode.loss_mask))
    return {
        "step": step,
        "phase": phase,
        "group": group,
        "sample": index,
        "task_id": sample.get("id"),
        "category": sample.get("category"),
        "template": sample.get("template"),
        "reward": float(episode.reward),
        "stop_reason": episode.stop_reason,
        "num_turns": episode.num_turns,
        "prompt_tokens": episode.prompt_len,
        "generated_tokens": generated,
        "total_tokens": len(episode.token_ids),
        "request": request_text(sample),
        "ground_truth": sample.get("ground_truth") or [],
        "messages": messages,
    }


def trace_records(episodes: Sequence[Any], samples: Sequence[dict], renderer: Any, *, step: int, phase: str,
                  group_size: int = 1, max_groups: int | None = None) -> list[dict]:
    """Records of the first ``max_groups`` groups (None: all) of group-major ``episodes``, where
    ``samples[i]`` is the task of ``episodes[i]`` and every ``group_size`` consecutive episodes share one."""
    if len(episodes) != len(samples):
        raise ValueError(f"trace_records: {len(episodes)} episodes for {len(samples)} samples")
    records = []
    n_groups = len(episodes) // group_size if group_size else 0
    for g in range(n_groups if max_groups is None else min(max_groups, n_groups)):
        for j in range(group_size):
            i = g * group_size + j
            prompt = renderer.prompt_text(samples[i]["responses_create_params"]) if j == 0 else None
            records.append(episode_record(episodes[i], samples[i], step=step, phase=phase, group=g, index=j,
                                          prompt_text=prompt))
    return records


def write_records(path: str | Path, records: Iterable[dict], *, append: bool = True) -> Path:
    """Write ``records`` as JSON lines to ``path`` (parents created), appended or replacing it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a" if append else "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def read_records(path: str | Path) -> list[dict]:
    """The records of one trace file; a bad line raises ValueError naming the file and line."""
    path = Path(path)
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not a rollout record ({exc})") from None
    return records


def step_path(log_dir: str | Path, step: int) -> Path:
    return Path(log_dir) / ROLLOUTS_DIR / f"step_{step}.jsonl"


class RolloutTraces:
    """Where a run's traces go. ``groups_per_step``: training groups written per step (None: all,
    0: none); validation episodes are all written when ``validation`` is true. ``enabled`` is false
    on every rank but 0, so callers need no rank checks. ``path``: one file for everything
    (collect-rollouts) instead of ``<log_dir>/rollouts/step_N.jsonl``."""

    def __init__(self, log_dir: str | Path | None, renderer: Any, *, groups_per_step: int | None = 2,
                 validation: bool = True, enabled: bool = True, path: str | Path | None = None):
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.renderer = renderer
        self.groups_per_step = groups_per_step
        self.validation = validation
        self.enabled = enabled
        self.path = Path(path) if path is not None else None
        self._written: set[Path] = set()

    def _target(self, step: int) -> Path:
        if self.path is not None:
            return self.path
        if self.log_dir is None:
            raise ValueError("RolloutTraces needs a log_dir or a path")
        return step_path(self.log_dir, step)

    def _write(self, step: int, records: list[dict]) -> None:
        target = self._target(step)
        write_records(target, records, append=target in self._written)
        self._written.add(target)

    def train(self, step: int, episodes: Sequence[Any], samples: Sequence[dict], group_size: int) -> None:
        """Write the step's first ``groups_per_step`` groups."""
        if not self.enabled or self.groups_per_step == 0:
            return
        self._write(step, trace_records(episodes, samples, self.renderer, step=step, phase="train",
                                        group_size=group_size, max_groups=self.groups_per_step))

    def validation_episodes(self, step: int, episodes: Sequence[Any], samples: Sequence[dict]) -> None:
        """Write every validation episode (each its own group: the prompt is in every record)."""
        if not self.enabled or not self.validation:
            return
        self._write(step, trace_records(episodes, samples, self.renderer, step=step, phase="validation"))
