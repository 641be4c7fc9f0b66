"""Rollout traces, show-rollouts and collect-rollouts with the real Workplace environment.

Traces: a scripted engine plays a right and a wrong trajectory of one GRPO group on generated tasks;
the records must hold the request, the prompt once per group, the calls as parsed, the environment's
real outputs, the rewards and the token counts. collect-rollouts runs a tiny random Qwen3 (hf
engine) on a task file and must write one record per task with the accuracy it prints.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from data_paths import sandbox_dir

from environment.pool import LocalEnvPool
from environment.workplace import WorkplaceEnv
from megatron_grpo.generation.base import SamplingParams
from megatron_grpo.generation.scripted import ScriptedEngine
from megatron_grpo.rollout.agent_loop import run_episodes
from megatron_grpo.rollout.chat import ChatRenderer
from megatron_grpo.rollout.traces import RolloutTraces, read_records, step_path, trace_records

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = sandbox_dir()
TINY = REPO / "configs" / "tiny_cpu.yaml"


@pytest.fixture(scope="module")
def tasks():
    from environment.workplace.tasks import generate_tasks

    return generate_tasks(6, seed=5, data_dir=DATA_DIR, templates=["email.send_email"])


@pytest.fixture(scope="module")
def renderer(tasks):
    from megatron_grpo.models.tiny_tokenizer import sample_texts, train_tiny_tokenizer

    return ChatRenderer(train_tiny_tokenizer(sample_texts(tasks), vocab_size=512))


def _turn(renderer, text):
    return renderer.tokenizer.encode(text + "<|im_end|>", add_special_tokens=False)


def _call_text(call):
    return f'<tool_call>\n{{"name": "{call["name"]}", "arguments": {call["arguments"]}}}\n</tool_call>'


@pytest.fixture(scope="module")
def group(tasks, renderer):
    """One group of two episodes of tasks[0]: the ground-truth call, then a call to the wrong address."""
    task = tasks[0]
    (right,) = task["ground_truth"]
    args = json.loads(right["arguments"])
    wrong = {"name": right["name"], "arguments": json.dumps({**args, "recipient": "nobody@example.com"})}
    scripts = [[_turn(renderer, _call_text(right)), _turn(renderer, "Sent.")],
               [_turn(renderer, _call_text(wrong)), _turn(renderer, "Sent.")]]
    batch = run_episodes(ScriptedEngine(scripts), LocalEnvPool(DATA_DIR), renderer, [task, task],
                         SamplingParams(temperature=1.0, max_new_tokens=256), max_steps=3)
    return task, right, wrong, batch.episodes


def test_trace_records_hold_request_calls_outputs_reward_and_prompt_once(group, renderer):
    task, right, wrong, episodes = group
    records = trace_records(episodes, [task, task], renderer, step=3, phase="train", group_size=2)
    assert [r["reward"] for r in records] == [1.0, 0.0]
    assert [(r["group"], r["sample"]) for r in records] == [(0, 0), (0, 1)]
    for r, call, ep in zip(records, (right, wrong), episodes):
        assert r["step"] == 3 and r["task_id"] == task["id"] and r["category"] == task["category"]
        assert r["template"] == "email.send_email"
        assert r["request"] == task["responses_create_params"]["input"][-1]["content"]
        assert r["stop_reason"] == "no_tool_calls" and r["num_turns"] == 2
        assert r["prompt_tokens"] == ep.prompt_len
        assert r["total_tokens"] == len(ep.token_ids)
        assert r["generated_tokens"] == sum(ep.loss_mask) == sum(m["tokens"] for m in r["messages"]
                                                                if m["role"] == "assistant")
        assert [m["role"] for m in r["messages"] if m["role"] != "prompt"] == ["assistant", "tool", "assistant"]
        assistant = [m for m in r["messages"] if m["role"] == "assistant"]
        assert assistant[0]["tool_calls"] == [{"name": call["name"], "arguments": json.dumps(json.loads(
            call["arguments"]))}]
        assert assistant[1]["content"] == "Sent." and assistant[1]["tool_calls"] == []
        (tool,) = [m for m in r["messages"] if m["role"] == "tool"]
        assert tool["name"] == call["name"]
        assert tool["content"] == WorkplaceEnv(data_dir=DATA_DIR).call(call["name"], call["arguments"])
    # the prompt (system prompt + tool schemas) is written once per group
    assert records[0]["messages"][0] == {"role": "prompt",
                                         "content": renderer.prompt_text(task["responses_create_params"])}
    assert all(m["role"] != "prompt" for m in records[1]["messages"])
    assert trace_records(episodes, [task, task], renderer, step=3, phase="train", group_size=2,
                         max_groups=0) == []


def test_writer_replaces_a_repeated_step_and_show_rollouts_prints_and_filters(group, renderer, tmp_path,
                                                                              monkeypatch, capsys):
    from megatron_grpo import show_rollouts

    task, right, wrong, episodes = group
    log_dir = tmp_path / "run" / "logs"
    for _ in range(2):  # a resumed run repeats step 1: its file is replaced, not duplicated
        traces = RolloutTraces(log_dir, renderer, groups_per_step=1)
        traces.train(1, episodes, [task, task], group_size=2)
        traces.validation_episodes(1, episodes[:1], [task])
    records = read_records(step_path(log_dir, 1))
    assert [(r["phase"], r["sample"]) for r in records] == [("train", 0), ("train", 1), ("validation", 0)]
    assert records[2]["messages"][0]["role"] == "prompt"  # validation: every episode has its prompt
    RolloutTraces(log_dir, renderer, enabled=False).train(2, episodes, [task, task], group_size=2)
    assert not step_path(log_dir, 2).exists()  # ranks other than 0 write nothing

    monkeypatch.setenv("COLUMNS", "300")
    assert show_rollouts.main([str(tmp_path / "run"), "--step", "1", "--phase", "train", "--prompt"]) == 0
    out = capsys.readouterr().out
    assert task["responses_create_params"]["input"][-1]["content"] in out
    assert "reward 1" in out and "reward 0" in out and "nobody@example.com" in out
    assert out.count("Today's date is") == 2  # the group's prompt, shown for both members
    assert "3 episodes, 2 with reward 1; shown 2" in out

    assert show_rollouts.main([str(tmp_path / "run"), "--failed"]) == 0
    out = capsys.readouterr().out
    assert "reward 0" in out and "reward 1 " not in out and "shown 1 (failed only)" in out

    assert show_rollouts.main([str(tmp_path / "run"), "--step", "7"]) == 2
    assert "steps with traces: 1" in capsys.readouterr().err


def test_collect_rollouts_runs_a_tiny_model_on_the_environment(tasks, tmp_path):
    from megatron_grpo.data.samples import write_jsonl
    from megatron_grpo.models.tiny import save_tiny_qwen3
    from megatron_grpo.models.tiny_tokenizer import sample_texts, train_tiny_tokenizer

    tokenizer = train_tiny_tokenizer(sample_texts(tasks), vocab_size=512)
    model = save_tiny_qwen3(tmp_path / "model", len(tokenizer), tokenizer=tokenizer, num_layers=1, hidden=32,
                            head_dim=8, ffn_hidden=64, max_position_embeddings=4096, seed=0)
    write_jsonl(tmp_path / "tasks.jsonl", tasks)
    out = tmp_path / "rollouts.jsonl"
    out.write_text("stale\n")  # replaced, not appended to
    env = dict(os.environ, WORKPLACE_DATA_DIR=DATA_DIR, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("MASTER_PORT", None)
    proc = subprocess.run(
        [sys.executable, "-m", "megatron_grpo.cli", "collect-rollouts", "--model", str(model),
         "--input", str(tmp_path / "tasks.jsonl"), "--output", str(out), "--limit", "4",
         "--config", str(TINY), "env.num_actors=0", "generation.max_new_tokens=6"],
        capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    records = read_records(out)
    assert summary["tasks"] == len(records) == 4
    assert [r["task_id"] for r in records] == [t["id"] for t in tasks[:4]]
    assert summary["accuracy"] == sum(r["reward"] == 1.0 for r in records) / 4
    for r, task in zip(records, tasks):
        assert r["phase"] == "validation" and r["messages"][0]["role"] == "prompt"
        assert r["request"] == task["responses_create_params"]["input"][-1]["content"]
        turns = [m for m in r["messages"] if m["role"] == "assistant"]
        assert len(turns) == r["num_turns"] >= 1 and 1 <= turns[0]["tokens"] <= 6
        assert r["generated_tokens"] == sum(m["tokens"] for m in turns)

    proc = subprocess.run([sys.executable, "-m", "megatron_grpo.cli", "show-rollouts", str(out)],
                          capture_output=True, text=True, timeout=120, env=dict(env, COLUMNS="300"), cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert tasks[0]["responses_create_params"]["input"][-1]["content"] in proc.stdout

    bad = subprocess.run([sys.executable, "-m", "megatron_grpo.cli", "collect-rollouts", "--model", str(model),
                          "--input", str(tmp_path / "missing.jsonl"), "--output", str(out)],
                         capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    assert bad.returncode == 2 and "missing.jsonl: no such file" in bad.stderr
