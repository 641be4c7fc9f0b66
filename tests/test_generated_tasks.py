"""Generated workplace tasks: ground truths run cleanly and verify, determinism, splits, the empty cap.

Reads the reference sandbox (NeMo-Gym's csv_data) from the download cache.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from data_paths import EXAMPLE, sandbox_dir

from environment.workplace import Episode, WorkplaceEnv, load_base_tables, replay, states_equal, verify_calls
from environment.workplace.tasks import WRITE_TOOLS, Sandbox, all_templates, generate_tasks, split_tasks
from environment.workplace.tasks.generate import generate_with_report, main, render

DATA = sandbox_dir()

# What each write tool returns on success (anything else is a validation message or an error).
SUCCESS = re.compile(r"successfully\.$|^\d{8}$|^plots/.+\.png$")


@pytest.fixture(scope="module")
def tasks() -> list[dict]:
    return generate_tasks(2000, seed=0, data_dir=DATA)


def _query(task: dict) -> str:
    return task["responses_create_params"]["input"][1]["content"]


def test_registry_has_enough_templates_and_covers_every_write_tool():
    templates = all_templates()
    assert len(templates) >= 60
    assert len({t.name for t in templates}) == len(templates)
    declared = {w for t in templates for w in t.writes}
    assert declared == set(WRITE_TOOLS)
    categories = Counter(t.category for t in templates)
    assert set(categories) == {
        "email",
        "calendar",
        "analytics",
        "project_management",
        "customer_relationship_manager",
        "multi_domain",
    }
    assert all(len(t.phrasings) >= 2 for t in templates)
    assert sum(t.conditional for t in templates) >= 10


def test_every_phrasing_renders_with_its_templates_parameters():
    sandbox = Sandbox.from_data_dir(DATA)
    for template in all_templates():
        drafts = (template.draw(random.Random(s), sandbox) for s in range(200))
        draft = next(d for d in drafts if d is not None)
        for phrasing in template.phrasings:
            text = phrasing.format(**draft.params)
            assert "{" not in text and "}" not in text, (template.name, text)
        unused = set(draft.params) - {k for p in template.phrasings for k in re.findall(r"{(\w+)}", p)}
        assert not unused, (template.name, unused)


def test_sample_format_matches_the_reference_example(tasks):
    example = json.loads(EXAMPLE.read_text().splitlines()[0])
    allowed = {f"workplace_assistant_{t.category}" for t in all_templates()}
    for i, task in enumerate(tasks):
        assert task["id"] == i
        assert list(task)[:5] == list(example)
        params = task["responses_create_params"]
        assert list(params) == list(example["responses_create_params"])
        assert params["tools"] == example["responses_create_params"]["tools"]
        assert params["input"][0] == example["responses_create_params"]["input"][0]
        assert params["input"][1]["role"] == "user"
        assert params["parallel_tool_calls"] is False and params["temperature"] == 1.0
        assert task["environment_name"] == example["environment_name"]
        assert task["category"] in allowed
        for call in task["ground_truth"]:
            assert set(call) == {"name", "arguments"}
            assert all(isinstance(v, str) for v in json.loads(call["arguments"]).values())
        assert task["difficulty"]["num_calls"] == len(task["ground_truth"])
        assert task["difficulty"]["domains"]
    assert len({_query(t) for t in tasks}) == len(tasks)  # deduplicated


def test_every_ground_truth_runs_cleanly_and_verifies_to_one(tasks):
    base = load_base_tables(DATA)
    initial = replay([], base)
    written = set()
    for task in tasks:
        episode = Episode(base)
        for call in task["ground_truth"]:
            output = episode.call(call["name"], json.loads(call["arguments"]))  # raises ToolError on an error
            assert SUCCESS.search(str(output)), (task["template"], call, output)
            written.add(call["name"])
        if task["ground_truth"]:
            assert not states_equal(episode.state, initial), task["template"]
        assert verify_calls(task["ground_truth"], task["ground_truth"], DATA) == 1.0
    assert written == set(WRITE_TOOLS)
    assert {t["template"] for t in tasks} == {t.name for t in all_templates()}


def test_template_and_seed_reproduce_a_task(tasks):
    sandbox = Sandbox.from_data_dir(DATA)
    by_name = {t.name: t for t in all_templates()}
    for task in tasks[::97]:
        query, calls = render(by_name[task["template"]], task["seed"], sandbox)
        assert query == _query(task)
        assert [{"name": n, "arguments": json.dumps(a)} for n, a in calls] == task["ground_truth"]


def test_empty_ground_truth_rewards_inaction_and_punishes_a_write(tasks):
    empty = [t for t in tasks if not t["ground_truth"]]
    assert empty
    task = empty[0]
    env = WorkplaceEnv(DATA)
    env.call("email_search_emails", {"query": "update"})
    env.call("calendar_search_events", {"query": "sync"})
    assert env.verify(task["ground_truth"]) == 1.0  # reads only
    assert verify_calls([], task["ground_truth"], DATA) == 1.0
    # the write a conditional template makes when its condition holds, made although it does not
    writer = next(t for t in tasks if t["template"] == task["template"] and t["ground_truth"])
    assert verify_calls(writer["ground_truth"], task["ground_truth"], DATA) == 0.0


def test_a_wrong_argument_scores_zero(tasks):
    seen = set()
    for task in tasks:
        if not task["ground_truth"] or task["template"] in seen:
            continue
        seen.add(task["template"])
        for key in json.loads(task["ground_truth"][0]["arguments"]):
            wrong = [dict(c) for c in task["ground_truth"]]
            args = json.loads(wrong[0]["arguments"])
            args[key] = args[key] + "7"
            wrong[0]["arguments"] = json.dumps(args)
            assert verify_calls(wrong, task["ground_truth"], DATA) == 0.0, (task["template"], key)
    # a valid call on the wrong record: the second-newest email instead of the newest
    env = WorkplaceEnv(DATA)
    task = next(t for t in tasks if t["template"] == "email.delete_last_from")
    newest = json.loads(task["ground_truth"][0]["arguments"])["email_id"]
    sender = json.loads(
        env.call("email_get_email_information_by_id", {"email_id": newest, "field": "sender/recipient"})
    )
    found = json.loads(env.call("email_search_emails", {"query": sender["output"]["sender/recipient"]}))["output"]
    older = [e["email_id"] for e in found["emails"] if e["email_id"] != newest]
    assert older
    assert (
        verify_calls([{"name": "email_delete_email", "arguments": {"email_id": older[0]}}], task["ground_truth"], DATA)
        == 0.0
    )


def test_empty_share_cap_is_enforced():
    tasks, report = generate_with_report(600, seed=3, data_dir=DATA, max_empty_share=0.05)
    assert len(tasks) == 600
    assert sum(not t["ground_truth"] for t in tasks) <= 30
    assert report["empty_ground_truth"] == sum(not t["ground_truth"] for t in tasks)
    none = generate_tasks(300, seed=3, data_dir=DATA, max_empty_share=0.0)
    assert all(t["ground_truth"] for t in none)


def test_split_is_stratified_and_holdout_templates_are_disjoint(tasks):
    train, validation, held = split_tasks(tasks, validation_fraction=0.1, holdout_templates=0, seed=0)
    assert held == []
    assert len(train) + len(validation) == len(tasks)
    assert {t["id"] for t in train}.isdisjoint(t["id"] for t in validation)
    counts, val_counts = Counter(t["category"] for t in tasks), Counter(t["category"] for t in validation)
    for category, count in counts.items():
        assert val_counts[category] == round(0.1 * count)

    train, validation, held = split_tasks(tasks, validation_fraction=0.1, holdout_templates=6, seed=1)
    assert len(held) == 6
    train_templates = {t["template"] for t in train}
    assert train_templates.isdisjoint(held)
    assert set(held) <= {t["template"] for t in validation}
    assert {t["category"] for t in train} == set(counts)  # no category lost all its training templates
    assert len({t["category"] for t in tasks if t["template"] in held}) == 6  # spread across categories
    with pytest.raises(ValueError, match="holdout"):
        split_tasks(tasks, holdout_templates=len(all_templates()))


def test_cli_is_byte_identical_for_a_seed(tmp_path):
    runs = []
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        out = tmp_path / name
        argv = ["--n", "300", "--seed", str(seed), "--out", str(out), "--holdout-templates", "3", "--data-dir", DATA]
        assert main(argv) == 0
        runs.append(out)
        report = json.loads((out / "generation_report.json").read_text())
        assert report["generated"] == 300 and len(report["holdout_templates"]) == 3
        assert report["train"]["tasks"] + report["validation"]["tasks"] == 300
        assert report["empty_share"] <= 0.177
    for split in ("train.jsonl", "validation.jsonl"):
        assert (runs[0] / split).read_bytes() == (runs[1] / split).read_bytes()
        assert (runs[0] / split).read_bytes() != (runs[2] / split).read_bytes()
    assert main(["--n", "50", "--out", str(tmp_path / "d"), "--holdout-templates", "999", "--data-dir", DATA]) == 2
    assert main(["--n", "5", "--out", str(tmp_path / "e"), "--templates", "email.nope", "--data-dir", DATA]) == 2
    assert main(["--list-templates"]) == 0
    subset = ["--templates", "email.send_email,analytics.plot_month", "--data-dir", DATA]
    assert main(["--n", "40", "--out", str(tmp_path / "f"), *subset]) == 0
    rows = (tmp_path / "f" / "train.jsonl").read_text().splitlines()
    rows += (tmp_path / "f" / "validation.jsonl").read_text().splitlines()
    assert len(rows) == 40 and {json.loads(r)["template"] for r in rows} == {"email.send_email", "analytics.plot_month"}


def test_output_does_not_depend_on_the_hash_seed(tasks):
    """Another interpreter with a different PYTHONHASHSEED draws the same tasks (no set-order leaks)."""
    code = (
        "import json, sys; from environment.workplace.tasks import generate_tasks; "
        f"tasks = generate_tasks(300, seed=0, data_dir={DATA!r}); "
        "rows = [[t['template'], t['seed'], t['responses_create_params']['input'], t['ground_truth']] for t in tasks]; "
        "json.dump(rows, sys.stdout)"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, check=True)
    mine = generate_tasks(300, seed=0, data_dir=DATA)
    here = [[t["template"], t["seed"], t["responses_create_params"]["input"], t["ground_truth"]] for t in mine]
    assert json.loads(out.stdout) == here
    assert [_query(t) for t in tasks[:50]] != [_query(t) for t in generate_tasks(50, seed=1, data_dir=DATA)]


def test_ten_thousand_tasks_in_under_thirty_seconds():
    started = time.perf_counter()
    tasks = generate_tasks(10_000, seed=11, data_dir=DATA)
    elapsed = time.perf_counter() - started
    assert len(tasks) == 10_000
    assert elapsed < 30.0, f"generating 10k tasks took {elapsed:.1f} s"
    assert sum(not t["ground_truth"] for t in tasks) <= int(0.177 * 10_000)
