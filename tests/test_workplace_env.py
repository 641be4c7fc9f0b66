"""WorkplaceEnv's surroundings: schemas, data folder resolution, loading, isolation, internal state.

The internal-state test compares our tables (rows, index labels, dtypes) with the reference's pandas
DataFrames after the same writes, which is what its ``DataFrame.equals`` reward looks at.
"""

import copy
import json
import random
import sys
from pathlib import Path

import pandas as pd
import pytest

from environment.workplace import (
    DOMAINS,
    Episode,
    ToolError,
    WorkplaceEnv,
    cache_dir,
    default_data_dir,
    load_base_tables,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_paths import EXAMPLE, sandbox_dir, workbench_dir
from reference_env import ReferenceEnv, load_reference  # noqa: E402
from workplace_fuzzgen import WRITE_TOOLS, CallGenerator  # noqa: E402

DATA_DIR = sandbox_dir()
WORKBENCH_DIR = str(workbench_dir())
FILES = {"emails": "emails.csv", "calendar": "calendar_events.csv", "analytics": "analytics_data.csv",
         "project_tasks": "project_tasks.csv", "crm": "customer_relationship_manager_data.csv"}


def test_tool_schemas_are_the_reference_list():
    env = WorkplaceEnv(DATA_DIR)
    reference_tools = json.loads(EXAMPLE.read_text().splitlines()[0])["responses_create_params"]["tools"]
    assert env.tool_schemas() == reference_tools
    assert len(reference_tools) == 27
    email_only = env.tool_schemas(["email"])
    assert [s["name"] for s in email_only] == [s["name"] for s in reference_tools
                                               if s["name"].startswith(("company_directory_", "email_"))]
    assert len(env.tool_schemas(list(DOMAINS))) == 27
    assert len(env.tool_schemas(["analytics", "calendar"])) == 1 + 6 + 5
    with pytest.raises(ValueError, match="crm"):
        env.tool_schemas(["crm"])


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("MEGATRON_GRPO_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("WORKPLACE_DATA_DIR", raising=False)
    assert cache_dir() == tmp_path / "cache"
    with pytest.raises(FileNotFoundError, match="megatron-grpo download"):
        default_data_dir()
    with pytest.raises(FileNotFoundError, match="megatron-grpo download"):
        WorkplaceEnv()
    cached = tmp_path / "cache" / "workplace_assistant" / "csv_data"
    cached.mkdir(parents=True)
    assert default_data_dir() == str(cached)
    monkeypatch.setenv("WORKPLACE_DATA_DIR", DATA_DIR)
    assert default_data_dir() == DATA_DIR
    assert WorkplaceEnv().call("email_delete_email", "{}") == '{"output":"Email ID not provided."}'
    monkeypatch.setenv("WORKPLACE_DATA_DIR", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="WORKPLACE_DATA_DIR"):
        default_data_dir()
    monkeypatch.delenv("MEGATRON_GRPO_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "megatron_grpo"


@pytest.mark.parametrize("data_dir", [DATA_DIR, WORKBENCH_DIR], ids=["nemo_gym", "workbench"])
def test_loader_matches_pandas_read_csv(data_dir):
    """Our csv parsing gives the cells pandas' ``read_csv(dtype=str)`` gives (NaN for empty cells)."""
    base = load_base_tables(data_dir)
    for attr, file in FILES.items():
        frame = pd.read_csv(Path(data_dir) / "processed" / file, dtype=str)
        if attr == "analytics":
            frame["user_engaged"] = frame["user_engaged"] == "True"
        table = getattr(base, attr)
        assert list(table.columns) == list(frame.columns)
        ours = [{k: (None if isinstance(v, float) else v) for k, v in row.items()} for row in table.rows]
        theirs = [{k: (None if isinstance(v, float) else v) for k, v in row.items()}
                  for row in frame.to_dict(orient="records")]
        assert ours == theirs
    directory = pd.read_csv(Path(data_dir) / "raw" / "email_addresses.csv", header=None, names=["e"])["e"]
    assert list(base.directory) == directory.tolist()


def test_workbench_sandbox_runs_tools():
    env = WorkplaceEnv(WORKBENCH_DIR)
    found = json.loads(env.call("customer_relationship_manager_search_customers",
                                '{"customer_name": "Casey Wilson"}'))["output"]
    assert found["customers"][0]["last_contact_date"].count(" ") == 0  # WorkBench dates have no time suffix
    assert json.loads(env.call("email_send_email", '{"recipient": "a@b.co", "subject": "s", "body": "b"}')) == {
        "output": "Email sent successfully."}


def test_reset_is_isolated_and_never_rereads():
    env, other = WorkplaceEnv(DATA_DIR), WorkplaceEnv(DATA_DIR)
    base = load_base_tables(DATA_DIR)
    snapshot = copy.deepcopy((base.emails.rows, base.calendar.rows, base.crm.rows, base.project_tasks.rows))
    misses = load_base_tables.cache_info().misses
    assignee = base.project_tasks.rows[0]["assigned_to_email"]
    for call in [("email_delete_email", {"email_id": base.emails.rows[0]["email_id"]}),
                 ("calendar_update_event", {"event_id": base.calendar.rows[0]["event_id"], "field": "event_name",
                                            "new_value": "changed"}),
                 ("customer_relationship_manager_delete_customer", {"customer_id": base.crm.rows[0]["customer_id"]}),
                 ("project_management_create_task", {"task_name": "t", "list_name": "Backlog", "board": "Design",
                                                     "due_date": "2023-12-01",
                                                     "assigned_to_email": assignee})]:
        env.call(call[0], call[1])
    assert len(env.episode.state.emails.rows) == len(base.emails.rows) - 1
    assert len(other.episode.state.emails.rows) == len(base.emails.rows)
    for _ in range(100):
        env.reset()
    assert env.episode.state.emails.rows is base.emails.rows  # copy-on-write: nothing copied yet
    assert load_base_tables.cache_info().misses == misses
    assert snapshot == (base.emails.rows, base.calendar.rows, base.crm.rows, base.project_tasks.rows)


def test_episode_api_for_task_generation():
    episode = Episode(load_base_tables(DATA_DIR))
    email_id = episode.state.emails.rows[0]["email_id"]
    assert episode.call("email_get_email_information_by_id", {"email_id": email_id, "field": "email_id"}) == {
        "email_id": email_id}
    assert episode.call("email_delete_email", {"email_id": "nope"}) == "Email not found."
    with pytest.raises(ToolError, match="got an unexpected keyword argument 'x'"):
        episode.call("email_delete_email", {"x": 1})
    with pytest.raises(ToolError, match="'missing_tool'"):
        episode.call("missing_tool", {})


def _frame_state(frame: pd.DataFrame) -> tuple:
    dtypes = ["str" if isinstance(t, pd.StringDtype) else str(t) for t in frame.dtypes]
    rows = [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()}
            for r in frame.to_dict(orient="records")]
    return frame.index.tolist(), dtypes, rows


def _table_state(table) -> tuple:
    rows = [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()} for r in table.rows]
    return table.index_labels(), list(table.dtypes), rows


def test_internal_state_matches_reference_frames():
    """Index labels, dtypes and cells equal the reference's DataFrames after the same random writes."""
    utils, sandbox = load_reference()
    rng = random.Random(3)
    gen = CallGenerator(sandbox, rng)
    for _ in range(6):
        ours, reference = WorkplaceEnv(sandbox), ReferenceEnv(utils)
        for name in rng.choices(WRITE_TOOLS, k=25):
            args = gen.coherent(name)
            if rng.random() < 0.15:  # an ill-typed value the reference may store as-is
                args[rng.choice(list(args))] = rng.choice([7, None, True, 2.5])
            text = json.dumps(args)
            assert ours.call(name, text) == reference.call(name, text)
        containers = reference.tool_env["containers"]
        state = ours.episode.state
        assert _table_state(state.emails) == _frame_state(containers["email"]._emails)
        assert _table_state(state.calendar) == _frame_state(containers["calendar"]._calendar_events)
        assert _table_state(state.project_tasks) == _frame_state(containers["project_management"]._project_tasks)
        assert _table_state(state.crm) == _frame_state(containers["customer_relationship_manager"]._crm_data)
        assert state.plots == containers["analytics"]._plots_data["file_path"].tolist()
