"""`megatron-grpo preflight`: one passing setup, then one test per failure kind.

Each test starts from a setup that passes every check (a tiny Qwen3 config.json written by
transformers, data files, a sandbox folder) and breaks exactly one thing with a dotted override,
then asserts that check (and only a check of that kind) fails with a fix and exit code 1.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import yaml

from megatron_grpo import preflight


def make_model(folder: Path, **overrides) -> Path:
    from transformers import Qwen3Config

    kwargs = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True)
    kwargs.update(overrides)
    Qwen3Config(**kwargs).save_pretrained(folder)
    return folder


@pytest.fixture
def setup(tmp_path, monkeypatch):
    """A config that passes preflight on 1 node x 4 ranks (TP 2 -> DP 2); returns its path."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    model = make_model(tmp_path / "model")
    (tmp_path / "data").mkdir()
    for name in ("train.jsonl", "validation.jsonl"):
        (tmp_path / "data" / name).write_text('{"id": 0}\n')
    (tmp_path / "sandbox" / "processed").mkdir(parents=True)
    cfg = {
        "grpo": {"num_prompts_per_step": 4, "num_generations_per_prompt": 4},
        "policy": {"model_name": str(model), "tensor_model_parallel_size": 2, "precision": "float32",
                   "train_global_batch_size": 16, "train_micro_batch_size": 2,
                   "max_total_sequence_length": 256},
        "generation": {"backend": "hf", "max_model_len": 256},
        "env": {"data_dir": str(tmp_path / "sandbox")},
        "data": {"train_path": str(tmp_path / "data/train.jsonl"),
                 "validation_path": str(tmp_path / "data/validation.jsonl")},
        "logger": {"log_dir": str(tmp_path / "results/exp/logs"), "wandb": {"enabled": False}},
        "checkpointing": {"checkpoint_dir": str(tmp_path / "results/exp/checkpoints")},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run(capsys, config: Path, *extra: str, nodes: int = 1, per_node: int = 4) -> tuple[int, dict]:
    argv = ["--config", str(config), "--nodes", str(nodes), "--gpus-per-node", str(per_node),
            "--gpu-memory-gb", "80", "--json", *extra]
    rc = preflight.main(argv)
    report = json.loads(capsys.readouterr().out)
    return rc, report


def status(report: dict) -> dict[str, str]:
    return {c["name"]: c["status"] for c in report["checks"]}


def assert_only_failure(rc: int, report: dict, prefix: str) -> None:
    failed = [c for c in report["checks"] if c["status"] == "fail"]
    assert rc == 1 and not report["ok"]
    assert failed, report
    assert all(c["name"].startswith(prefix) for c in failed), failed
    assert all(c["fix"] for c in failed)


def test_passing_setup_and_env_out(setup, capsys, tmp_path):
    env_out = tmp_path / "launch.env"
    rc, report = run(capsys, setup, "--env-out", str(env_out))
    assert rc == 0, report
    assert report["ok"] and "fail" not in status(report).values()
    assert status(report)["layout"] == "ok" and status(report)["memory"] == "ok"
    # the estimate counts the model's real parameters (transformers builds the same shape)
    from transformers import AutoConfig, Qwen3ForCausalLM

    model = Qwen3ForCausalLM(AutoConfig.from_pretrained(tmp_path / "model"))
    n_params = sum(p.numel() for p in model.parameters())
    assert report["memory_estimate_gb"]["params_total_b"] == pytest.approx(n_params / 1e9, abs=1e-3)
    text = env_out.read_text()
    assert f"LOG_DIR='{tmp_path}/results/exp/logs'" in text
    assert f"CHECKPOINT_DIR='{tmp_path}/results/exp/checkpoints'" in text


def test_text_output_names_fix(setup, capsys):
    rc = preflight.main(["--config", str(setup), "--nodes", "1", "--gpus-per-node", "3"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "FAIL  layout" in out and "fix:" in out and "1 failure(s)" in out


def test_layout_tp_pp_not_dividing_gpus(setup, capsys):
    rc, report = run(capsys, setup, per_node=3)  # TP 2 x PP 1 on 3 ranks
    assert_only_failure(rc, report, "layout")
    assert "not divisible" in report["checks"][0]["message"]


def test_heads_not_divisible_by_tp(setup, capsys, tmp_path):
    model = make_model(tmp_path / "m6", num_attention_heads=6, num_key_value_heads=2)
    rc, report = run(capsys, setup, f"policy.model_name={model}", "policy.tensor_model_parallel_size=4",
                     per_node=8)
    assert_only_failure(rc, report, "model.")
    assert status(report)["model.heads"] == "fail"


def test_query_groups_not_divisible_by_tp(setup, capsys):
    rc, report = run(capsys, setup, "policy.tensor_model_parallel_size=4", per_node=8)
    assert_only_failure(rc, report, "model.query_groups")
    assert status(report)["model.heads"] == "ok"


def test_layers_not_divisible_by_pp(setup, capsys, tmp_path):
    model = make_model(tmp_path / "m3", num_hidden_layers=3)
    rc, report = run(capsys, setup, f"policy.model_name={model}", "policy.pipeline_model_parallel_size=2",
                     "policy.tensor_model_parallel_size=1", per_node=4)
    assert_only_failure(rc, report, "model.layers")


def test_missing_model_folder(setup, capsys, tmp_path):
    rc, report = run(capsys, setup, f"policy.model_name={tmp_path}/no/such/model")
    assert_only_failure(rc, report, "model")
    assert status(report)["memory"] == "skip"


def test_hub_id_not_cached_is_reported_unchecked(setup, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_hub"))
    rc, report = run(capsys, setup, "policy.model_name=Qwen/Qwen3-4B-Instruct-2507")
    assert rc == 0
    model = next(c for c in report["checks"] if c["name"] == "model")
    assert model["status"] == "skip" and "not in the HF cache" in model["message"]


def test_hub_id_read_from_hf_cache(setup, capsys, tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    snapshot = hub / "models--org--tiny" / "snapshots" / "abc123"
    make_model(snapshot, num_attention_heads=6, num_key_value_heads=2)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    rc, report = run(capsys, setup, "policy.model_name=org/tiny", "policy.tensor_model_parallel_size=4",
                     per_node=8)
    assert_only_failure(rc, report, "model.")


def test_samples_not_divisible_by_dp_times_micro_batch(setup, capsys):
    rc, report = run(capsys, setup, "grpo.num_prompts_per_step=3", "grpo.num_generations_per_prompt=2",
                     "policy.train_global_batch_size=6", "policy.train_micro_batch_size=1", per_node=8)
    # DP = 8 / TP 2 = 4; 6 samples do not split over 4 ranks
    assert_only_failure(rc, report, "batch.")
    assert status(report)["batch.samples"] == "fail"


def test_global_batch_inconsistent(setup, capsys):
    rc, report = run(capsys, setup, "policy.train_global_batch_size=12")
    assert_only_failure(rc, report, "batch.global")
    fix = next(c["fix"] for c in report["checks"] if c["name"] == "batch.global")
    assert "train_global_batch_size=16" in fix


def test_top_p_cut_fails_the_sampling_check(setup, capsys):
    rc, report = run(capsys, setup, "generation.top_p=0.95")
    assert_only_failure(rc, report, "sampling")
    fix = next(c["fix"] for c in report["checks"] if c["name"] == "sampling")
    assert "generation.top_p=1.0" in fix


def test_memory_over_budget(setup, capsys):
    rc = preflight.main(["--config", str(setup), "--nodes", "1", "--gpus-per-node", "4", "--gpu-memory-gb",
                         "0.0001", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert_only_failure(rc, report, "memory")


def test_memory_grows_with_sequence_and_shrinks_with_tp(setup, capsys):
    _, small = run(capsys, setup)
    _, long = run(capsys, setup, "policy.max_total_sequence_length=4096")
    _, tp1 = run(capsys, setup, "policy.tensor_model_parallel_size=1")
    est = "memory_estimate_gb"
    assert long[est]["activations_gb"] > small[est]["activations_gb"] * 8
    assert tp1[est]["weights_gb"] > small[est]["weights_gb"]


def test_missing_data_file(setup, capsys, tmp_path):
    rc, report = run(capsys, setup, f"data.validation_path={tmp_path}/nope.jsonl")
    assert_only_failure(rc, report, "data.validation_path")


def test_missing_sandbox(setup, capsys, tmp_path):
    rc, report = run(capsys, setup, f"env.data_dir={tmp_path}/no_sandbox")
    assert_only_failure(rc, report, "sandbox")


def test_sandbox_without_databases(setup, capsys, tmp_path):
    (tmp_path / "empty_sandbox").mkdir()
    rc, report = run(capsys, setup, f"env.data_dir={tmp_path}/empty_sandbox")
    assert_only_failure(rc, report, "sandbox")


def test_ray_address_unreachable(setup, capsys):
    with socket.socket() as s:  # a port nobody listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        rc, report = run(capsys, setup, f"cluster.ray_address=127.0.0.1:{port}")
    assert_only_failure(rc, report, "ray")


def test_ray_address_reachable(setup, capsys, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{s.getsockname()[1]}")
        rc, report = run(capsys, setup)
    assert rc == 0 and status(report)["ray"] == "ok"


def test_wandb_online_without_key(setup, capsys, monkeypatch):
    rc, report = run(capsys, setup, "logger.wandb.enabled=true", "logger.wandb.mode=online")
    assert_only_failure(rc, report, "wandb")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    rc, report = run(capsys, setup, "logger.wandb.enabled=true", "logger.wandb.mode=online")
    assert rc == 0
    monkeypatch.delenv("WANDB_API_KEY")
    rc, report = run(capsys, setup, "logger.wandb.enabled=true")  # mode None: offline without a key
    assert rc == 0 and "offline" in next(c["message"] for c in report["checks"] if c["name"] == "wandb")


def test_bad_config_key_is_usage_error(setup, capsys):
    assert preflight.main(["--config", str(setup), "policy.tensor_parallel=2"]) == 2
    assert "tensor_model_parallel_size" in capsys.readouterr().err
