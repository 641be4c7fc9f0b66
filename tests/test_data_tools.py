"""Data tools: `megatron-grpo download` (tasks + sandbox) and `megatron-grpo prepare-data`.

Real inputs throughout: the reference example.jsonl, the 690 WorkBench tasks, and the nemo-gym wheel
downloaded from PyPI once per test session.
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path

import pytest
from data_paths import EXAMPLE, sandbox_dir, workbench_dir

from environment.workplace import sandbox_fetch
from megatron_grpo.data import download, prepare
from megatron_grpo.data.samples import SampleError, load_samples
from megatron_grpo.data.split import stratified_split
from megatron_grpo.data.workbench import tool_schemas

REPO = Path(__file__).resolve().parents[1]
NEMO_CSV = Path(sandbox_dir())
WORKBENCH = workbench_dir()
SANDBOX_FILES = [
    "processed/analytics_data.csv",
    "processed/calendar_events.csv",
    "processed/customer_relationship_manager_data.csv",
    "processed/emails.csv",
    "processed/project_tasks.csv",
    "raw/email_addresses.csv",
    "raw/events.csv",
]

# sha256 of NeMo-Gym's csv_data (resources_servers/workplace_assistant/csv_data at commit dd0b610d), recorded
# from a checkout of the NeMo-Gym repository, independently of the pins in sandbox_fetch.py.
REFERENCE_SHA256 = {
    "processed/analytics_data.csv": "4a0df10aabc07980f1cc074dc9ab36406ce98dead7e14fe11f72a9f1ba788688",
    "processed/calendar_events.csv": "6c9df1872d54d0b0d068d1b066766a8ddbc29c3933f1d56c9efd554926312295",
    "processed/customer_relationship_manager_data.csv": (
        "599057e4eec3a7c25ac04b4d655ea2c034b7b7782205dc367a28122756e04c41"
    ),
    "processed/emails.csv": "1809e341a0e4f1fd78cf1b759964a42abd28db8c9b9dca364456efc31f82bb31",
    "processed/project_tasks.csv": "fa0c05d5609f49e905342bd12592b09f23eff6147dcf607b808703f45ddbeaeb",
    "raw/email_addresses.csv": "1f3465b92eb41b90a973a9b00f35757a23d16839652b5e352e9d217d8e404b0b",
    "raw/events.csv": "04ba8c0dddd619bce9683dd3f2565dc0f83ef7ebc07699b62391171df497b548",
}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="session")
def pypi_cache(tmp_path_factory) -> Path:
    """A download cache holding the sandbox fetched from PyPI through the real default code path."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEGATRON_GRPO_CACHE", str(cache))
        assert download.main(["--no-tasks", "--quiet"]) == 0
    return cache


@pytest.fixture
def example_jsonl(tmp_path) -> Path:
    """40 rows made from the 5 reference examples (distinct ids; 8 email, 8 calendar, 24 CRM)."""
    rows = read_jsonl(EXAMPLE)
    out = [dict(rows[i % 5], id=i) for i in range(40)]
    path = tmp_path / "source.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in out))
    return path


# ---------------------------------------------------------------- download: tasks


def test_download_jsonl_source_splits_by_category(example_jsonl, tmp_path, capsys):
    out = tmp_path / "out"
    assert download.main(["--source", str(example_jsonl), "--out", str(out), "--no-sandbox"]) == 0
    source = {r["id"]: r for r in read_jsonl(example_jsonl)}
    train, val = read_jsonl(out / "train.jsonl"), read_jsonl(out / "validation.jsonl")
    assert len(val) == math.ceil(0.1 * len(source)) and len(train) + len(val) == len(source)
    ids = [r["id"] for r in train + val]
    assert sorted(ids) == sorted(source)  # a partition: nothing lost or duplicated
    assert all(row == source[row["id"]] for row in train + val)  # rows unchanged
    n_all = Counter(r["category"] for r in source.values())
    n_val = Counter(r["category"] for r in val)
    for category, n in n_all.items():  # stratified: each category within one row of 10%
        assert abs(n_val[category] - 0.1 * n) <= 1, (category, n_val[category], n)
    assert "train" in capsys.readouterr().out


def test_download_workbench_folder(tmp_path):
    """A WorkBench folder converts to valid samples (the split itself: test_workbench_tasks.py)."""
    out = tmp_path / "wb"
    assert download.main(["--source", str(WORKBENCH), "--out", str(out), "--no-sandbox"]) == 0  # data/ works
    schemas = json.loads((REPO / "environment" / "workplace" / "tool_schemas.json").read_text())
    validation = load_samples(out / "validation.jsonl")  # every line passes the validating loader
    assert len(validation) + len(load_samples(out / "train.jsonl")) == 690
    for row in validation:
        assert row["responses_create_params"]["tools"] == schemas
        assert row["responses_create_params"]["input"][0]["content"].startswith("Today's date is Thursday")
        assert row["environment_name"] == "workplace_assistant"


def test_download_skips_when_present_and_force_redoes(example_jsonl, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--source", str(example_jsonl), "--out", str(out), "--no-sandbox"]
    assert download.main(args) == 0
    first = (out / "train.jsonl").read_bytes()
    (out / "train.jsonl").write_text("edited\n")
    capsys.readouterr()
    assert download.main(args) == 0
    assert "skipping" in capsys.readouterr().out
    assert (out / "train.jsonl").read_text() == "edited\n"
    assert download.main([*args, "--force"]) == 0
    assert (out / "train.jsonl").read_bytes() == first  # same split again (random_state=42)


def test_download_defaults_to_the_config_data_folder(example_jsonl, tmp_path, monkeypatch):
    from megatron_grpo.config import DataConfig

    monkeypatch.chdir(tmp_path)
    assert download.main(["--source", str(example_jsonl), "--no-sandbox"]) == 0
    assert len(read_jsonl(tmp_path / DataConfig().validation_path)) == 4
    assert (tmp_path / DataConfig().train_path).is_file()


def test_download_bad_source_names_file_line_and_field(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    row = read_jsonl(EXAMPLE)[0]
    del row["ground_truth"]
    bad.write_text(json.dumps(row) + "\n")
    assert download.main(["--source", str(bad), "--out", str(tmp_path / "o"), "--no-sandbox"]) == 1
    assert f"{bad}:1: ground_truth: missing required field" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_download_hub_unreachable_names_source_flag(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": ""}
    cmd = [sys.executable, "-m", "megatron_grpo.cli", "download", "--out", str(tmp_path), "--no-sandbox"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert result.returncode == 1
    assert "nvidia/Nemotron-RL-agent-workplace_assistant" in result.stderr
    assert "--source PATH" in result.stderr


# ---------------------------------------------------------------- download: sandbox


def test_sandbox_from_pypi_wheel_matches_reference_files(pypi_cache, capsys, monkeypatch):
    dest = pypi_cache / "workplace_assistant" / "csv_data"
    for rel in SANDBOX_FILES:  # byte-identical to the NeMo-Gym repository's files
        assert hashlib.sha256((dest / rel).read_bytes()).hexdigest() == REFERENCE_SHA256[rel], rel
    assert sandbox_fetch.check_sandbox(dest) == []
    manifest = json.loads((dest / "manifest.json").read_text())
    assert manifest["files"] == REFERENCE_SHA256
    capsys.readouterr()
    assert sandbox_fetch.fetch_sandbox(dest) == dest  # present and intact: skipped
    assert "skipping" in capsys.readouterr().out
    # The environment finds it by default, and the reference examples score 1.0 on it.
    from environment.workplace import default_data_dir, verify_calls

    monkeypatch.setenv("MEGATRON_GRPO_CACHE", str(pypi_cache))
    monkeypatch.delenv("WORKPLACE_DATA_DIR", raising=False)
    assert Path(default_data_dir()) == dest
    for row in read_jsonl(EXAMPLE):
        assert verify_calls(row["ground_truth"], row["ground_truth"]) == 1.0
        assert verify_calls([], row["ground_truth"]) == 0.0


def _fake_wheel(path: Path, corrupt: str | None = None) -> Path:
    """A zip laid out like the nemo-gym wheel's csv_data, built from the reference files."""
    with zipfile.ZipFile(path, "w") as z:
        for rel in SANDBOX_FILES:
            data = (NEMO_CSV / rel).read_bytes()
            if rel == corrupt:
                data = data.replace(b"@atlas.com", b"@atlas.org", 1)
            z.writestr(sandbox_fetch.WHEEL_CSV_PREFIX + rel, data)
    return path


def test_sandbox_from_local_wheel(tmp_path):
    dest = tmp_path / "csv_data"
    wheel = _fake_wheel(tmp_path / "nemo_gym.whl")
    assert download.main(["--no-tasks", "--wheel", str(wheel), "--sandbox-dest", str(dest)]) == 0
    assert all((dest / rel).read_bytes() == (NEMO_CSV / rel).read_bytes() for rel in SANDBOX_FILES)


def test_corrupted_csv_fails_sha_check(tmp_path, capsys):
    dest = tmp_path / "csv_data"
    wheel = _fake_wheel(tmp_path / "nemo_gym.whl", corrupt="processed/emails.csv")
    assert download.main(["--no-tasks", "--wheel", str(wheel), "--sandbox-dest", str(dest)]) == 1
    err = capsys.readouterr().err
    assert "processed/emails.csv fails the sha256 check" in err and str(wheel) in err
    assert not dest.exists()  # nothing half-written


def test_sandbox_local_copy_then_tamper_detected_and_force_restores(tmp_path, capsys):
    dest = tmp_path / "csv_data"
    args = ["--no-tasks", "--sandbox", str(WORKBENCH), "--sandbox-dest", str(dest)]
    assert download.main(args) == 0
    assert "differs from NeMo-Gym" in capsys.readouterr().err  # WorkBench's CRM dates differ
    for rel in SANDBOX_FILES:
        assert (dest / rel).read_bytes() == (WORKBENCH / rel).read_bytes()
    emails = dest / "processed" / "emails.csv"
    emails.write_bytes(emails.read_bytes() + b"tampered\n")
    assert download.main(args) == 1
    err = capsys.readouterr().err
    assert f"{emails} fails the sha256 check" in err and "--force" in err
    assert download.main([*args, "--force"]) == 0
    assert emails.read_bytes() == (WORKBENCH / "processed" / "emails.csv").read_bytes()


def test_sandbox_not_a_csv_data_folder(tmp_path, capsys):
    assert download.main(["--no-tasks", "--sandbox", str(tmp_path), "--sandbox-dest", str(tmp_path / "d")]) == 1
    assert "missing processed/analytics_data.csv" in capsys.readouterr().err


def test_sandbox_download_offline_names_flags(tmp_path, capsys):
    url = "http://127.0.0.1:9/nemo_gym-0.7.0-py3-none-any.whl"  # discard port: connection refused
    args = ["--no-tasks", "--quiet", "--wheel-url", url, "--sandbox-dest", str(tmp_path / "d")]
    assert download.main(args) == 1
    err = capsys.readouterr().err
    assert "--wheel PATH" in err and "--sandbox PATH" in err
    assert not (tmp_path / "d").exists()


# ---------------------------------------------------------------- prepare-data


def test_prepare_data_reports_every_bad_line(tmp_path, capsys):
    good = EXAMPLE.read_text().splitlines()
    rows = [json.loads(line) for line in good]
    missing = dict(rows[1])
    del missing["category"]
    wrong_type = dict(rows[2], ground_truth="delete everything")
    bad_args = json.loads(good[3])
    bad_args["ground_truth"][1]["arguments"] = "{not json"
    unknown_tool = json.loads(good[4])
    unknown_tool["ground_truth"][0]["name"] = "email_burn_inbox"
    lines = [good[0], '{"id": 7, "responses_create_params": ', json.dumps(missing), json.dumps(wrong_type)]
    lines += [
        "",
        json.dumps(bad_args),
        json.dumps(unknown_tool),
        json.dumps(dict(rows[0], temperature="hot")),
    ]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    before = path.read_bytes()

    assert prepare.main(["--data", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:2: <line>: invalid JSON" in err
    assert f"{path}:3: category: missing required field" in err
    assert f"{path}:4: ground_truth: expected a list of calls, got a string" in err
    assert f"{path}:6: ground_truth[1].arguments: not valid JSON" in err
    assert f"{path}:7: ground_truth[0].name: 'email_burn_inbox' is not one of the sample's tools" in err
    assert f"{path}:8: id: duplicate id 0 (first on line 1)" in err
    assert f"{path}:1:" not in err  # the good line is not reported
    assert path.read_bytes() == before  # nothing written
    assert not list(tmp_path.glob("*_metrics.json"))

    with pytest.raises(SampleError) as info:
        load_samples(path)
    assert (str(path), 3, "category", "missing required field") in info.value.problems


def test_prepare_data_metrics_and_agent_ref(tmp_path):
    rows = read_jsonl(EXAMPLE)
    path = tmp_path / "train.jsonl"
    path.write_text(EXAMPLE.read_text())
    assert prepare.main(["--data", str(path)]) == 0
    prepared = read_jsonl(path)
    assert [{k: v for k, v in r.items() if k != "agent_ref"} for r in prepared] == rows
    assert all(
        r["agent_ref"] == {"type": "responses_api_agents", "name": "workplace_assistant_simple_agent"} for r in prepared
    )
    metrics = json.loads((tmp_path / "train_metrics.json").read_text())
    assert metrics["num_samples"] == 5
    assert metrics["categories"] == dict(Counter(r["category"] for r in rows))
    lengths = Counter(len(r["ground_truth"]) for r in rows)  # 1, 1, 3, 4, 5
    assert metrics["ground_truth_length"]["histogram"] == {str(k): lengths.get(k, 0) for k in range(6)}
    assert metrics["ground_truth_length"]["max"] == 5 and metrics["ground_truth_length"]["mean"] == 14 / 5
    assert metrics["tools_per_task"]["min"] == metrics["tools_per_task"]["max"] == 27
    crm = metrics["per_category"]["workplace_assistant_customer_relationship_manager"]
    assert crm["count"] == 3 and crm["ground_truth_length"]["histogram"] == {
        "0": 0,
        "1": 0,
        "2": 0,
        "3": 1,
        "4": 1,
        "5": 1,
    }
    assert metrics["ground_truth_tool_calls"]["customer_relationship_manager_update_customer"] == 8
    # Idempotent: preparing the prepared file again changes nothing.
    once = path.read_bytes()
    assert prepare.main(["--data", str(path)]) == 0
    assert path.read_bytes() == once


def test_prepare_data_out_dir_and_defaults(tmp_path, monkeypatch, example_jsonl):
    monkeypatch.chdir(tmp_path)
    assert download.main(["--source", str(example_jsonl), "--no-sandbox"]) == 0
    tasks = tmp_path / "data" / "workplace_assistant"
    original = (tasks / "train.jsonl").read_bytes()
    assert prepare.main(["--out", str(tmp_path / "prepared")]) == 0  # default --data: the downloaded splits
    assert (tasks / "train.jsonl").read_bytes() == original
    for name in ("train", "validation"):
        assert all("agent_ref" in r for r in read_jsonl(tmp_path / "prepared" / f"{name}.jsonl"))
        assert (tmp_path / "prepared" / f"{name}_metrics.json").is_file()


def test_data_modules_import_no_torch():
    code = (
        "import sys\n"
        "import megatron_grpo.data.download, megatron_grpo.data.prepare, megatron_grpo.data.samples\n"
        "import megatron_grpo.data.split, megatron_grpo.data.workbench, environment.workplace.sandbox_fetch\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)


def test_split_keeps_singleton_categories_in_train(capsys):
    rows = [{"id": i, "category": "a" if i < 20 else "b"} for i in range(40)] + [{"id": 40, "category": "c"}]
    train, val = stratified_split(rows)
    assert [r["id"] for r in val if r["category"] == "c"] == []
    assert len(val) == 4 and Counter(r["category"] for r in val) == {"a": 2, "b": 2}
    assert sorted(r["id"] for r in train + val) == list(range(41))
    assert "single sample" in capsys.readouterr().err
    with pytest.raises(ValueError, match="cannot stratify"):
        stratified_split([{"id": i, "category": str(i % 5)} for i in range(10)])


def test_wrapper_scripts_run(tmp_path):
    for script, args in [
        ("tools/prepare_data.py", ["--check", "--data", str(EXAMPLE)]),
        ("tools/download_workplace_assistant.py", ["--help"]),
    ]:
        result = subprocess.run([sys.executable, script, *args], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
    assert "--source" in result.stdout


def test_download_through_datasets_load_dataset(example_jsonl, tmp_path):
    """The Hugging Face code path, on a local dataset folder (no hub here): rows come back unchanged."""
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "train.jsonl").write_bytes(example_jsonl.read_bytes())
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")}
    cmd = [sys.executable, "-m", "megatron_grpo.cli", "download", "--dataset", str(folder)]
    cmd += ["--out", str(tmp_path / "out"), "--no-sandbox"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    source = {r["id"]: json.dumps(r) for r in read_jsonl(example_jsonl)}
    rows = read_jsonl(tmp_path / "out" / "train.jsonl") + read_jsonl(tmp_path / "out" / "validation.jsonl")
    assert sorted(json.dumps(r) for r in rows) == sorted(source.values())  # same keys, same order


def test_arrow_nulls_and_key_order_are_undone():
    """Parquet-backed datasets give every tool schema the union of all tools' keys, null-filled."""
    row = read_jsonl(EXAMPLE)[2]
    tools = row["responses_create_params"]["tools"]
    union = sorted({k for t in tools for k in t["parameters"]["properties"]})
    mangled = json.loads(json.dumps(row))
    for tool in mangled["responses_create_params"]["tools"]:
        props = tool["parameters"]["properties"]
        tool["parameters"]["properties"] = {k: props.get(k) for k in union}  # null-filled, sorted keys
    mangled["ground_truth"] = json.dumps(mangled["ground_truth"])
    restored = download._from_arrow(mangled, {t["name"]: t for t in tool_schemas()})
    assert json.dumps(restored) == json.dumps(row)
