"""Errors a user meets on the command line: one line naming the setting and the fix, no traceback.

Each case runs the real ``megatron-grpo`` CLI in a subprocess and checks its stderr and exit code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from data_paths import sandbox_dir

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny_cpu.yaml"


def run_cli(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", WORKPLACE_DATA_DIR=sandbox_dir(),
               HF_HUB_OFFLINE="1", MEGATRON_GRPO_DEVICE="cpu")
    env.pop("RANK", None)
    return subprocess.run([sys.executable, "-m", "megatron_grpo.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The one error line; fails when the command printed a traceback or did not fail cleanly."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Tasks, a tokenizer (with and without a chat template) and a tiny model on disk."""
    from environment.workplace.tasks import generate_tasks
    from megatron_grpo.data.samples import write_jsonl
    from megatron_grpo.demo import DEMO_TEMPLATES
    from megatron_grpo.models.tiny import save_tiny_qwen3
    from megatron_grpo.models.tiny_tokenizer import sample_texts, train_tiny_tokenizer

    root = tmp_path_factory.mktemp("cli_errors")
    tasks = generate_tasks(12, seed=5, data_dir=sandbox_dir(), templates=DEMO_TEMPLATES)
    write_jsonl(root / "train.jsonl", tasks[:8])
    write_jsonl(root / "validation.jsonl", tasks[8:])
    (root / "empty.jsonl").write_text("")
    tokenizer = train_tiny_tokenizer(sample_texts(tasks), vocab_size=400)
    model = save_tiny_qwen3(root / "model", len(tokenizer), tokenizer=tokenizer, num_layers=1, hidden=32,
                            max_position_embeddings=4096, seed=1)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(root / "plain_tokenizer")
    (root / "not_a_model").mkdir()
    return root, Path(model)


def base_overrides(root: Path, model: Path) -> list[str]:
    return [f"policy.model_name={model}", f"data.train_path={root / 'train.jsonl'}",
            f"data.validation_path={root / 'validation.jsonl'}", "env.num_actors=0",
            "grpo.num_prompts_per_step=2", "grpo.num_generations_per_prompt=2", "policy.train_global_batch_size=4",
            f"checkpointing.checkpoint_dir={root / 'ckpt'}", f"logger.log_dir={root / 'logs'}"]


def test_missing_data_names_the_command_that_makes_it(tmp_path):
    line = error_line(run_cli(["train", "--config", str(TINY)], cwd=tmp_path))
    assert "data.train_path=results/tiny/data/train.jsonl: no such file" in line
    assert "megatron-grpo download" in line and "megatron-grpo generate-tasks" in line


def test_enum_typo_is_caught_at_load_with_the_closest_value(tmp_path):
    line = error_line(run_cli(["train", "--config", str(TINY), "generation.backend=vlm"], cwd=tmp_path))
    assert "'generation.backend' must be one of auto, vllm, megatron, hf, got 'vlm'; did you mean 'vllm'?" in line
    line = error_line(run_cli(["train", "--config", str(TINY), "generation.top_p=1.5"], cwd=tmp_path))
    assert "'generation.top_p' must be > 0 and <= 1, got 1.5" in line


def test_missing_model_folder(workspace, tmp_path):
    root, model = workspace
    line = error_line(run_cli(["train", "--config", str(TINY), *base_overrides(root, model),
                               f"policy.model_name={tmp_path / 'nowhere' / 'model'}"], cwd=tmp_path))
    assert f"policy.model_name={tmp_path / 'nowhere' / 'model'}: no such folder" in line


def test_unloadable_model_folder(workspace, tmp_path):
    root, model = workspace
    line = error_line(run_cli(["train", "--config", str(TINY), *base_overrides(root, model),
                               f"policy.model_name={root / 'not_a_model'}"], cwd=tmp_path))
    assert f"policy.model_name={root / 'not_a_model'}: the folder has no config.json" in line


def test_tokenizer_without_chat_template(workspace, tmp_path):
    root, model = workspace
    line = error_line(run_cli(["train", "--config", str(TINY), *base_overrides(root, model),
                               f"policy.tokenizer_name={root / 'plain_tokenizer'}"], cwd=tmp_path))
    assert f"policy.tokenizer_name={root / 'plain_tokenizer'}: the tokenizer has no chat template" in line


def test_data_file_without_rows(workspace, tmp_path):
    root, model = workspace
    line = error_line(run_cli(["train", "--config", str(TINY), *base_overrides(root, model),
                               f"data.validation_path={root / 'empty.jsonl'}"], cwd=tmp_path))
    assert f"{root / 'empty.jsonl'}:0: <file>: no samples" in line and "megatron-grpo download" in line


def test_checkpoint_of_another_model_shape(workspace, tmp_path):
    """A step folder whose run_config.json describes a wider model than policy.model_name."""
    root, model = workspace
    step = tmp_path / "other" / "step_4"
    step.mkdir(parents=True)
    (step / "training_info.json").write_text(json.dumps({"step": 4, "layout": {"tp": 1, "pp": 1, "world_size": 1}}))
    hf_config = json.loads((model / "config.json").read_text())
    (step / "run_config.json").write_text(json.dumps({"hf_config": {**hf_config, "hidden_size": 4096}}))
    line = error_line(run_cli(["train", "--config", str(TINY), *base_overrides(root, model),
                               "policy.tensor_model_parallel_size=1", f"checkpointing.resume={step}"], cwd=tmp_path))
    assert f"{step} holds a model with hidden_size=4096 but policy.model_name gives hidden_size=32" in line
    assert "checkpointing.resume=none" in line
