"""The reward: example tasks, recorded rollouts, the reference's documented cases, and properties.

Ground truths of the recorded rollouts are derived here from the task text and the CSV data (or the
WorkBench answer for the same query), independently of the code under test. Cases marked
differential also run NeMo-Gym's own ``is_correct`` (tests/reference_env.py) and require agreement.
"""

import csv
import json
import random
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from environment.workplace import WorkplaceEnv, verify_calls

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_paths import NEMO_GYM, sandbox_dir, workbench_dir
from reference_env import load_reference, reference_reward  # noqa: E402
from workplace_fuzzgen import PARAMS, WRITE_TOOLS, CallGenerator  # noqa: E402

DATA_DIR = sandbox_dir()
EXAMPLES = NEMO_GYM
WORKBENCH_EMAIL_QA = workbench_dir() / "processed" / "queries_and_answers" / (
    "email_queries_and_answers.csv")


def _rows(name: str) -> list[dict]:
    with open(Path(DATA_DIR) / "processed" / name, newline="") as f:
        return list(csv.DictReader(f))


def c(name: str, **args) -> dict:
    return {"name": name, "arguments": json.dumps(args)}


@pytest.fixture(scope="module")
def reference():
    utils, _ = load_reference()
    return utils


def _examples() -> list[dict]:
    return [json.loads(line) for line in open(EXAMPLES / "example.jsonl")]


def test_example_ground_truths_replay_to_one(reference):
    for example in _examples():
        truth = example["ground_truth"]
        assert verify_calls(truth, truth, DATA_DIR) == 1.0
        assert verify_calls([], truth, DATA_DIR) == 0.0 == reference_reward(reference, [], truth)


def _workbench_answer(query: str) -> list[dict]:
    """Convert a WorkBench answer like ``email.delete_email.func(email_id="1")`` into a call."""
    with open(WORKBENCH_EMAIL_QA, newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["query"] == query)
    calls = []
    for action in eval(row["answer"]):  # a Python-literal list of strings in the WorkBench CSV
        head, args = action.split(".func(")
        kwargs = dict(part.split("=", 1) for part in args.rstrip(")").split(", "))
        calls.append(c(head.replace(".", "_"), **{k: v.strip('"') for k, v in kwargs.items()}))
    return calls


def _rollout_ground_truth(user: str) -> list[dict]:
    crm = _rows("customer_relationship_manager_data.csv")
    directory = [line.strip() for line in open(Path(DATA_DIR) / "raw" / "email_addresses.csv") if line.strip()]
    if user.startswith("Create a bar chart of total visits since November 30"):
        return [c("analytics_create_plot", time_min="2023-11-30", time_max="2023-11-30",
                  value_to_plot="total_visits", plot_type="bar")]
    if "proposal for the consulting product in 3 weeks" in user:
        stale = [r for r in crm if r["status"] == "Proposal" and r["product_interest"] == "Consulting"
                 and r["last_contact_date"][:10] < "2023-11-09"]
        return [c("customer_relationship_manager_update_customer", customer_id=r["customer_id"], field="status",
                  new_value="Lost") for r in stale]
    if user == "Delete Casey Wilson from the crm":
        (casey,) = [r for r in crm if r["customer_name"] == "Casey Wilson"]
        return [c("customer_relationship_manager_delete_customer", customer_id=casey["customer_id"])]
    if user.startswith("Add Dakota Thomas as a new lead"):
        (nadia,) = [a for a in directory if a.startswith("nadia")]
        return [c("customer_relationship_manager_add_customer", customer_name="Dakota Thomas",
                  assigned_to_email=nadia, status="Lead")]
    return _workbench_answer(user)


def test_recorded_rollouts_outputs_and_rewards():
    env = WorkplaceEnv(DATA_DIR)
    rollouts = [json.loads(line) for line in open(EXAMPLES / "example_rollouts.jsonl")]
    assert len(rollouts) == 5
    for rollout in rollouts:
        env.reset()
        recorded = {o["call_id"]: o["output"] for o in rollout["response"]["output"]
                    if o["type"] == "function_call_output"}
        for item in rollout["response"]["output"]:
            if item["type"] == "function_call":
                assert env.call(item["name"], item["arguments"]) == recorded[item["call_id"]]
        truth = _rollout_ground_truth(rollout["responses_create_params"]["input"][1]["content"])
        assert env.verify(truth) == rollout["reward"]


# Cases from the reference's documented behaviour; each also runs NeMo-Gym's is_correct.
UPD = "customer_relationship_manager_update_customer"
SEND = "email_send_email"
PLOT = "analytics_create_plot"
EVENT = "calendar_create_event"
CUSTOMERS = _rows("customer_relationship_manager_data.csv")
EMAILS = _rows("emails.csv")
C1, C2 = CUSTOMERS[3]["customer_id"], CUSTOMERS[8]["customer_id"]
E1 = EMAILS[10]
s1 = c(SEND, recipient="a@b.com", subject="One", body="x")
s2 = c(SEND, recipient="c@d.com", subject="Two", body="y")
u1 = c(UPD, customer_id=C1, field="status", new_value="Lost")
u2 = c(UPD, customer_id=C2, field="customer_name", new_value="New Name")
p1 = c(PLOT, time_min="2023-11-01", time_max="2023-11-29", value_to_plot="total_visits", plot_type="bar")
p2 = c(PLOT, time_min="2023-11-01", time_max="2023-11-29", value_to_plot="user_engaged", plot_type="line")
ev = {"event_name": "Sync", "participant_email": "luis.ortiz@atlas.com", "event_start": "2023-12-01 10:00:00"}
read = c("customer_relationship_manager_search_customers", status="Won")
add = {"customer_name": "Zed", "assigned_to_email": "nadia.moreau@atlas.com", "status": "Lead"}
CASES = [
    ("updates in another order", [u2, u1], [u1, u2], 1.0),
    ("extra read-only calls", [read, u1, read, u2], [u1, u2], 1.0),
    ("update value differs only in case", [c(UPD, customer_id=C2, field="customer_name", new_value="NEW NAME")],
     [u2], 1.0),
    ("repeated idempotent update", [u1, u1], [u1], 1.0),
    ("missing write", [u1], [u1, u2], 0.0),
    ("sends in the opposite order", [s2, s1], [s1, s2], 0.0),
    ("plots in the opposite order", [p2, p1], [p1, p2], 0.0),
    ("duplicated send", [s1, s1], [s1], 0.0),
    ("int duration vs string", [c(EVENT, **ev, duration=30)], [c(EVENT, **ev, duration="30")], 0.0),
    ("empty ground truth, only reads", [read], [], 1.0),
    ("no calls, empty ground truth", [], [], 1.0),
    ("rejected status vs empty ground truth", [c(UPD, customer_id=C1, field="status", new_value="lost")], [], 1.0),
    ("failing and unknown calls are skipped", [{"name": "nope", "arguments": "{}"},
                                               {"name": UPD, "arguments": "{oops"}, u1], [u1], 1.0),
    ("send equal to the reply", [c(SEND, recipient=E1["sender/recipient"], subject="RE: " + E1["subject"],
                                   body="ok")], [c("email_reply_email", email_id=E1["email_id"], body="ok")], 1.0),
    ("forward vs reply", [c("email_forward_email", email_id=E1["email_id"], recipient=E1["sender/recipient"])],
     [c("email_reply_email", email_id=E1["email_id"], body="ok")], 0.0),
    ("delete then send vs send then delete (index labels)",
     [c("email_delete_email", email_id=E1["email_id"]), s1], [s1, c("email_delete_email", email_id=E1["email_id"])],
     0.0),
    ("added then deleted customer vs nothing (column dtype)",
     [c("customer_relationship_manager_add_customer", **add),
      c("customer_relationship_manager_delete_customer", customer_id="00000200")], [], 0.0),
    ("null notes are kept at replay", [c("customer_relationship_manager_add_customer", **add, notes=None)],
     [c("customer_relationship_manager_add_customer", **add)], 0.0),
]


@pytest.mark.parametrize("predicted,truth,expected", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_documented_cases_match_reference(reference, predicted, truth, expected):
    assert verify_calls(predicted, truth, DATA_DIR) == expected
    assert reference_reward(reference, predicted, truth) == expected


def test_random_write_sequences_match_reference(reference):
    """Ground truths of random coherent writes vs shuffled / duplicated / truncated predictions."""
    rng = random.Random(7)
    gen = CallGenerator(DATA_DIR, rng)
    checked = 0
    for _ in range(12):
        truth = [{"name": n, "arguments": json.dumps(gen.coherent(n))}
                 for n in rng.choices(WRITE_TOOLS, k=rng.randint(1, 4))]
        shuffled = rng.sample(truth, len(truth))
        variants = [truth, shuffled, truth + truth[:1], truth[1:], shuffled + [truth[0]]]
        for predicted in variants:
            assert verify_calls(predicted, truth, DATA_DIR) == reference_reward(reference, predicted, truth)
            checked += 1
    assert checked == 60


# ---------------------------------------------------------------- properties (ours only)

UPDATE_TARGETS = [(r["customer_id"], f) for r in CUSTOMERS[:40] for f in ("status", "notes")]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(UPDATE_TARGETS), min_size=1, max_size=6, unique=True), st.randoms())
def test_reordering_updates_and_deletes_keeps_reward(targets, rnd):
    """Updates of distinct cells and deletes commute (the reference keeps row labels on both)."""
    truth = []
    for customer_id, field in targets:
        value = rnd.choice(["Won", "Lost", "Lead"]) if field == "status" else "note " + customer_id
        truth.append(c(UPD, customer_id=customer_id, field=field, new_value=value))
    deleted = {r["customer_id"] for r in CUSTOMERS[40:60]}
    truth += [c("customer_relationship_manager_delete_customer", customer_id=i) for i in sorted(deleted)[:3]]
    assert verify_calls(rnd.sample(truth, len(truth)), truth, DATA_DIR) == 1.0


@settings(max_examples=25, deadline=None)
@given(st.text(min_size=1, max_size=20), st.integers(min_value=0, max_value=3))
def test_duplicating_a_send_changes_reward(subject, position):
    send = c(SEND, recipient="kofi.mensah@atlas.com", subject=subject, body="hello")
    truth = [u1, send, u2]
    predicted = truth[:position] + [send] + truth[position:]
    assert verify_calls(truth, truth, DATA_DIR) == 1.0
    assert verify_calls(predicted, truth, DATA_DIR) == 0.0


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
TOOL_NAMES = st.sampled_from(sorted(PARAMS))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(TOOL_NAMES | st.text(max_size=10),
                          st.dictionaries(st.text(max_size=12), JSON_VALUES, max_size=4) | JSON_VALUES | st.text()),
                max_size=6))
def test_no_input_raises(calls):
    env = WorkplaceEnv(DATA_DIR)
    as_calls = []
    for name, args in calls:
        arguments = json.dumps(args) if not isinstance(args, str) or len(as_calls) % 2 else args
        assert isinstance(env.call(name, arguments), str)
        as_calls.append({"name": name, "arguments": arguments})
    assert verify_calls(as_calls, as_calls[::-1], DATA_DIR) in (0.0, 1.0)
    assert verify_calls(as_calls, as_calls, DATA_DIR) == 1.0
