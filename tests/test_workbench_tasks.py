"""The 690 WorkBench tasks: conversion to samples, the 621/69 split, and their ground truths on the
WorkBench sandbox (every call succeeds; each ground truth verifies to 1.0 against itself).
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter

import pytest
from data_paths import workbench_dir

from environment.workplace.env import DOMAINS
from megatron_grpo.data import download
from megatron_grpo.data.workbench import WorkbenchError, convert_call, load_workbench, tool_schemas

WORKBENCH = workbench_dir()  # WorkBench's data/ folder (processed/, raw/)
QA = WORKBENCH / "processed" / "queries_and_answers"

# Ground truths that leave the state unchanged (the customer is already assigned to that rep), so
# the empty trajectory also scores 1.0 on them; found with NeMo-Gym's own is_correct on this sandbox.
NO_OP_QUERIES = {
    "Reassign Morgan Robinson to Sofia in the crm",
    "Raj is taking over Alex Jackson. Can you reassign them in the crm?",
}


@pytest.fixture(scope="module")
def samples() -> list[dict]:
    return load_workbench(QA)


def csv_rows() -> list[tuple[str, dict]]:
    rows = []
    for path in sorted(QA.glob("*_queries_and_answers.csv")):
        with open(path, newline="") as f:
            rows += [(path.name.removesuffix("_queries_and_answers.csv"), row) for row in csv.DictReader(f)]
    return rows


def as_workbench_string(call: dict) -> str:
    """Our ``{"name", "arguments"}`` written back in WorkBench's ``domain.tool.func(k="v")`` form."""
    domain = next(d for d in DOMAINS if call["name"].startswith(d + "_"))
    args = json.loads(call["arguments"])
    body = ", ".join(f'{k}="{v.encode("unicode_escape").decode()}"' for k, v in args.items())
    return f"{domain}.{call['name'][len(domain) + 1 :]}.func({body})"


def test_all_690_convert_back_to_the_csv_answers(samples):
    rows = csv_rows()
    assert len(samples) == len(rows) == 690
    for sample, (domain, row) in zip(samples, rows):
        assert sample["category"] == f"workplace_assistant_{domain}"
        assert sample["responses_create_params"]["input"][1] == {"role": "user", "content": row["query"]}
        assert str([as_workbench_string(c) for c in sample["ground_truth"]]) == row["answer"]
    # Action-count histogram of the WorkBench paper data (research report, section 7).
    lengths = Counter(len(s["ground_truth"]) for s in samples)
    assert lengths == {0: 122, 1: 416, 2: 88, 3: 23, 4: 14, 5: 2, 6: 5, 7: 3, 8: 4, 9: 3, 10: 2, 11: 6, 12: 2}


def test_convert_call_rejects_what_it_cannot_map():
    schemas = {s["name"]: s for s in tool_schemas()}
    ok = convert_call('email.delete_email.func(email_id="00000001")', schemas)
    assert ok == {"name": "email_delete_email", "arguments": '{"email_id": "00000001"}'}
    for text, message in [
        ('email.burn.func(email_id="1")', "unknown tool 'email_burn'"),
        ('email.delete_email.func(mail_id="1")', "has no argument 'mail_id'"),
        ('email.delete_email.func("1")', "keyword arguments only"),
        ("email.delete_email.func(email_id=__import__('os'))", "not a literal"),
        ("email.delete_email(email_id='1')", "<domain>.<tool>.func"),
    ]:
        with pytest.raises(WorkbenchError, match=re.escape(message)):
            convert_call(text, schemas)


def test_workbench_split_is_621_69_and_stratified(tmp_path):
    assert download.main(["--source", str(QA), "--out", str(tmp_path), "--no-sandbox"]) == 0
    train = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    val = [json.loads(line) for line in (tmp_path / "validation.jsonl").read_text().splitlines()]
    assert (len(train), len(val)) == (621, 69)
    per_domain = Counter(f"workplace_assistant_{domain}" for domain, _ in csv_rows())
    # Every domain has a multiple of 10 tasks, so a stratified 10% is exact per category.
    assert Counter(s["category"] for s in val) == {c: n // 10 for c, n in per_domain.items()}
    assert sorted(s["id"] for s in train + val) == list(range(690))


def _succeeded(name: str, output) -> bool:
    """A write tool's success result per the reference: "... successfully.", a new 8-digit id, a plot path."""
    if not isinstance(output, str):
        return False
    if name.endswith(("create_event", "create_task", "add_customer")):
        return re.fullmatch(r"\d{8}", output) is not None
    if name.endswith("create_plot"):
        return output.startswith("plots/") and output.endswith(".png")
    return output.endswith("successfully.")


def test_ground_truths_run_without_tool_errors_on_the_workbench_sandbox(samples):
    from environment.workplace import WorkplaceEnv

    env = WorkplaceEnv(str(WORKBENCH))
    failures = []
    for sample in samples:
        env.reset()
        for call in sample["ground_truth"]:
            output = json.loads(env.call(call["name"], call["arguments"])).get("output")
            if not _succeeded(call["name"], output):
                failures.append((sample["id"], call["name"], output))
    assert failures == []


def test_ground_truths_verify_to_one_against_themselves(samples):
    from environment.workplace import verify_calls

    no_op = []
    for sample in samples:
        truth = sample["ground_truth"]
        assert verify_calls(truth, truth, data_dir=str(WORKBENCH)) == 1.0, sample["id"]
        if truth and verify_calls([], truth, data_dir=str(WORKBENCH)) == 1.0:
            no_op.append(sample["responses_create_params"]["input"][1]["content"])
    # ...and the calls do something: doing nothing fails every non-empty ground truth but the no-ops.
    assert set(no_op) == NO_OP_QUERIES and len(no_op) == 2
