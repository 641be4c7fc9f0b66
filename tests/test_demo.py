"""The demo's parts that do not need its 10 minutes: the cached warm start and the report.

The warm start (tokenizer, random model, supervised steps) runs once at a tiny size; a second call
with the same settings must come from the cache without training, and other settings must not.
The report must show the held-out accuracy before and after GRPO, the gain, and one task that GRPO
fixed, read from a run's metrics and rollout traces.
"""

from __future__ import annotations

import json
import os

import pytest
from data_paths import sandbox_dir
from dist_utils import run_distributed

from megatron_grpo import demo


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from megatron_grpo.config import load_config

    root = tmp_path_factory.mktemp("demo")
    train, val = demo.demo_tasks(sandbox_dir(), 120, seed=0, n_val=8, templates=("email.send_email",))
    cfg = load_config(demo.CONFIG, [f"logger.log_dir={root / 'run' / 'logs'}", "env.num_actors=0",
                                        "policy.max_total_sequence_length=4096"])
    spec = demo.WarmStart(seed=0, tasks=120, val_tasks=8, templates=("email.send_email",), vocab=600, hidden=32,
                          layers=1, sft_steps=2, sft_lr=1e-3, sft_batch=4, settings="{}")
    return root, cfg, spec, train, val


def _warm_start_in_a_fresh_process(spec, cfg, train, cache: str) -> dict:
    from pathlib import Path

    model, info, cached = demo.warm_start(spec, cfg, train, Path(cache))
    return {"model": str(model), "info": info, "cached": cached}


def test_warm_start_is_cached_by_its_settings(tiny, monkeypatch):
    from dataclasses import replace
    from pathlib import Path

    root, cfg, spec, train, val = tiny
    cache = root / "cache" / spec.key()
    # The supervised steps initialise torch.distributed: in a spawned interpreter, never in this
    # pytest process (children that later tests fork from it would inherit a used gloo state).
    monkeypatch.setenv("WORKPLACE_DATA_DIR", sandbox_dir())
    (first,) = run_distributed(_warm_start_in_a_fresh_process, 1, spec, cfg, train, str(cache),
                               start_method="spawn", cpu_only=True, timeout_s=300)
    model, info = Path(first["model"]), first["info"]
    assert not first["cached"] and model == cache / "model_sft" and (model / "config.json").is_file()
    assert (model / "tokenizer.json").is_file() and info["spec"]["sft_steps"] == 2
    assert not list((root / "cache").glob("*.tmp*"))  # published atomically, nothing left over

    stamp = os.stat(model / "config.json").st_mtime_ns
    again, info2, cached = demo.warm_start(spec, cfg, train, cache)  # from the cache: nothing trains here
    assert cached and again == model and info2["seconds"] == info["seconds"]
    assert os.stat(model / "config.json").st_mtime_ns == stamp  # not rebuilt
    assert replace(spec, sft_steps=3).key() != spec.key() and replace(spec, seed=1).key() != spec.key()


def _record(step: int, task: int, reward: float, recipient: str) -> dict:
    call = {"name": "email_send_email", "arguments": json.dumps({"recipient": recipient})}
    return {"step": step, "phase": "validation", "group": task, "sample": 0, "task_id": task,
            "template": "email.send_email", "reward": reward, "request": f"request {task}",
            "messages": [{"role": "assistant", "content": "", "tokens": 9, "tool_calls": [call]},
                         {"role": "tool", "name": call["name"], "content": f"sent to {recipient}"}]}


def test_report_prints_the_gain_and_a_task_before_and_after(tmp_path, capsys):
    logs = tmp_path / "logs"
    (logs / "rollouts").mkdir(parents=True)
    lines = [{"step": 0, "val:accuracy": 0.25, "val:num_samples": 2},
             {"step": 1, "train:reward_mean": 0.2}, {"step": 2, "train:reward_mean": 0.6, "val:accuracy": 0.75,
                                                     "val:num_samples": 2}]
    (logs / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    before = [_record(0, 7, 1.0, "a@x.com"), _record(0, 8, 0.0, "wrong@x.com")]
    after = [_record(2, 7, 1.0, "a@x.com"), _record(2, 8, 1.0, "right@x.com")]
    for step, records in ((0, before), (2, after)):
        (logs / "rollouts" / f"step_{step}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert demo.report(tmp_path, 12.0, 34.0) == 0
    out = capsys.readouterr().out
    assert "held-out accuracy after the warm start (step 0, n=2)" in out and "0.250" in out and "0.750" in out
    assert "GRPO phase gain" in out and "+0.500" in out
    assert "task 8" in out and "request 8" in out  # the task GRPO fixed, not the one it always solved
    assert out.index("wrong@x.com") < out.index("right@x.com")
    assert (logs / "curves.png").is_file()
