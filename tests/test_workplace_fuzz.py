"""Fuzzing the environment with 10k random calls (bad JSON, unknown tools, extra, missing, null and
ill-typed arguments, regex metacharacters, odd dates).

- never raises: every call returns JSON text, the verifier always answers 0.0 or 1.0;
- differential: the same call sequences through NeMo-Gym's own tool code (tests/reference_env.py)
  give byte-identical tool outputs and the same rewards.
"""

import json
import random
import sys
from pathlib import Path

import pytest

from environment.workplace import WorkplaceEnv, verify_calls

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_paths import sandbox_dir
from reference_env import ReferenceEnv, load_reference, reference_reward  # noqa: E402
from workplace_fuzzgen import CallGenerator  # noqa: E402

DATA_DIR = sandbox_dir()
EPISODES, CALLS_PER_EPISODE = 100, 100  # 10k calls


def test_ten_thousand_calls_never_raise():
    env = WorkplaceEnv(DATA_DIR)
    gen = CallGenerator(DATA_DIR, random.Random(1234))
    for episode in range(EPISODES):
        env.reset()
        for _ in range(CALLS_PER_EPISODE):
            name, arguments = gen.call()
            body = json.loads(env.call(name, arguments))
            assert set(body) <= {"output", "error", "detail"} and len(body) == 1
        if episode % 10 == 0:  # replaying costs as much as the calls themselves
            half = len(env.calls) // 2
            assert verify_calls(env.calls[:half], env.calls[half:], DATA_DIR) in (0.0, 1.0)
            assert env.verify(env.calls) == 1.0


@pytest.mark.slow
def test_ten_thousand_calls_match_reference():
    utils, sandbox = load_reference()
    ours, reference = WorkplaceEnv(sandbox), ReferenceEnv(utils)
    gen = CallGenerator(sandbox, random.Random(99), rare=("email_search_emails",))
    mismatches, compared, rewards = [], 0, 0
    for episode in range(EPISODES):
        ours.reset()
        reference.reset()
        for _ in range(CALLS_PER_EPISODE):
            name, arguments = gen.call()
            expected, got = reference.call(name, arguments), ours.call(name, arguments)
            if expected == "<422>":  # valid JSON that is not an object: FastAPI's validation, not modelled
                continue
            compared += 1
            if expected != got and len(mismatches) < 5:
                mismatches.append((name, arguments, expected[:300], got[:300]))
        if episode % 5 == 0:
            calls = ours.calls
            truth = calls[: len(calls) // 3]
            assert verify_calls(calls, truth, sandbox) == reference_reward(utils, calls, truth)
            rewards += 1
    assert not mismatches, mismatches
    assert compared > 9500 and rewards == EPISODES // 5


def _c(tool: str, **args) -> tuple[str, str]:
    return tool, json.dumps(args)


ADD = {"customer_name": "Zed Q", "assigned_to_email": "nadia.moreau@atlas.com", "status": "Lead"}
EVENT = {"event_name": "Sync", "participant_email": "luis.ortiz@atlas.com", "event_start": "2023-12-01 10:00:00"}
LEILA = "leila.azizi@atlas.com"
TARGETED = {
    "non-string cells in project, calendar, CRM and email tables": [
        _c("project_management_create_task", task_name=5, assigned_to_email=LEILA, list_name="Backlog",
           due_date=20231201, board="Design"),
        _c("project_management_search_tasks", task_name="add"), _c("project_management_search_tasks", due_date="2023"),
        _c("project_management_search_tasks", board="Design", task_name="x"),
        _c("project_management_search_tasks", assigned_to_email=LEILA),
        _c("project_management_update_task", task_id="00000300", field="task_name", new_value="Renamed"),
        _c("project_management_update_task", task_id="00000300", field="due_date", new_value=7),
        _c("project_management_update_task", task_id="00000300", field="task_id", new_value="00000001"),
        _c("project_management_get_task_information_by_id", task_id="00000001", field="task_name"),
        _c("project_management_delete_task", task_id="00000001"),
        _c("calendar_create_event", event_name=12, participant_email="a@b.c", event_start="2023-12-01 10:00:00",
           duration="30"),
        _c("calendar_search_events", query="1"), _c("calendar_search_events", query=""),
        _c("customer_relationship_manager_add_customer", customer_name=99, assigned_to_email="x@y.z",
           status=["Lead"], customer_email="Q@W.E", product_interest=True),
        _c("customer_relationship_manager_search_customers", customer_name="9"),
        _c("customer_relationship_manager_search_customers", status="lead"),
        _c("customer_relationship_manager_search_customers", customer_email="q@w"),
        _c("customer_relationship_manager_update_customer", customer_id="00000200", field="status", new_value="Won"),
        _c("customer_relationship_manager_search_customers", status="won", page_size=100),
        _c("customer_relationship_manager_add_customer", customer_name="B", assigned_to_email="x@y.z",
           status="Lead", follow_up_by=5),
        _c("customer_relationship_manager_search_customers", follow_up_by_min="2023-12-01"),
        _c("email_send_email", recipient="a@b.c", subject=5, body=["x"]),
        _c("email_search_emails", query="5"), _c("email_forward_email", email_id="500", recipient="c@d.e"),
        _c("email_reply_email", email_id="501", body="ok"), _c("email_search_emails", query="fw:"),
    ],
    "tied sends then searches": [_c("email_send_email", recipient=f"p{i}@x.com", subject=f"Tie {i}", body="same")
                                 for i in range(4)]
    + [_c("email_search_emails", query=""), _c("email_search_emails", query="same", page=2, page_size=3),
       _c("email_forward_email", email_id="500", recipient="q@x.com"), _c("email_reply_email", email_id="501",
                                                                           body="ok"),
       _c("email_search_emails", query="tie", date_min="2023-11-30")],
    "object columns after a customer without email": [
        _c("customer_relationship_manager_add_customer", **ADD),
        _c("customer_relationship_manager_search_customers", customer_email="atlas"),
        _c("customer_relationship_manager_search_customers", customer_name="zed"),
        _c("customer_relationship_manager_search_customers", customer_name="(?=z)ed"),
        _c("customer_relationship_manager_search_customers", last_contact_date_min="2023-11-01"),
        _c("customer_relationship_manager_update_customer", customer_id="00000200", field="customer_phone",
           new_value="555")],
    "int duration then updates": [
        _c("calendar_create_event", **EVENT, duration=30),
        _c("calendar_update_event", event_id="00000300", field="duration", new_value=45),
        _c("calendar_update_event", event_id="00000300", field="event_name", new_value=7),
        _c("calendar_search_events", query="sync"),
        _c("calendar_get_event_information_by_id", event_id="00000300", field="duration")],
    "tz-aware event then searches": [
        _c("calendar_create_event", **dict(EVENT, event_start="2023-12-01 10:00:00+05:00"), duration="30"),
        _c("calendar_search_events", query="sync"),
        _c("calendar_search_events", query="sync", time_min="2023-11-01 00:00:00"),
        _c("calendar_search_events", query="sync", time_min="2023-11-01T00:00:00Z")],
    "odd dates and types": [
        _c("email_search_emails", query="update", date_min="nan"),
        _c("email_search_emails", query="update", date_min="-1"),
        _c("email_search_emails", query="update", date_max="Nov 30 2023", page_size=2),
        _c("project_management_update_task", task_id="00000149", field="task_name", new_value=5),
        _c("analytics_get_average_session_duration"),
        _c("analytics_get_visitor_information_by_id", visitor_id="0860"),
        _c("analytics_traffic_source_count", time_min="2023-11-28", traffic_source=["direct"]),
        _c("company_directory_find_email_address", name="(?<=a)n"),
        _c("company_directory_find_email_address", name="é"),
        _c("calendar_search_events", query="\\bsync\\s"),
        _c("project_management_search_tasks", task_name="[ab]"),
    ],
}


@pytest.mark.parametrize("sequence", list(TARGETED.values()), ids=list(TARGETED))
def test_targeted_sequences_match_reference(sequence):
    utils, sandbox = load_reference()
    ours, reference = WorkplaceEnv(sandbox), ReferenceEnv(utils)
    for name, arguments in sequence:
        assert ours.call(name, arguments) == reference.call(name, arguments), (name, arguments)
    calls = ours.calls
    for truth in ([], calls[::-1], calls[:1]):
        assert verify_calls(calls, truth, sandbox) == reference_reward(utils, calls, truth)
