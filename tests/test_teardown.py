"""``train()`` releases what it started on every exit path, an exception in a step included.

A training step fails (the train phase raises); afterwards the process that called ``train`` holds
no Ray (the local Ray the run started is shut down, its daemons gone), no process group, and no
child process: a notebook or a sweep driver that catches the error can start the next run cleanly.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from data_paths import sandbox_dir
from dist_utils import run_distributed

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny_cpu.yaml"


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    from environment.workplace.tasks import generate_tasks
    from megatron_grpo.data.samples import write_jsonl
    from megatron_grpo.demo import DEMO_TEMPLATES
    from megatron_grpo.models.tiny import save_tiny_qwen3
    from megatron_grpo.models.tiny_tokenizer import sample_texts, train_tiny_tokenizer

    root = tmp_path_factory.mktemp("teardown")
    tasks = generate_tasks(12, seed=7, data_dir=sandbox_dir(), templates=DEMO_TEMPLATES)
    write_jsonl(root / "train.jsonl", tasks[:8])
    write_jsonl(root / "validation.jsonl", tasks[8:])
    tokenizer = train_tiny_tokenizer(sample_texts(tasks), vocab_size=400)
    model = save_tiny_qwen3(root / "model", len(tokenizer), tokenizer=tokenizer, num_layers=1, hidden=32,
                            max_position_embeddings=4096, seed=1)
    return root, model


def _train_until_the_step_fails(config: str, overrides: list[str]) -> dict:
    import psutil
    import ray
    import torch.distributed as dist

    from megatron_grpo import trainer
    from megatron_grpo.config import load_config

    def failing_train_phase(*args, **kwargs):
        assert ray.is_initialized() and dist.is_initialized()  # the run is fully up when the step fails
        raise RuntimeError("the train phase failed")

    trainer.train_on_rollouts = failing_train_phase
    raised = None
    try:
        trainer.train(load_config(config, overrides))
    except RuntimeError as exc:
        raised = str(exc)
    deadline = time.monotonic() + 30  # Ray's daemons exit asynchronously after ray.shutdown()
    while psutil.Process().children(recursive=True) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = [f"{p.pid} {p.name()}" for p in psutil.Process().children(recursive=True)]
    return {"raised": raised, "ray": ray.is_initialized(), "dist": dist.is_initialized(), "children": left}


def test_a_failing_step_leaves_no_ray_process_group_or_child(tiny_files, tmp_path):
    root, model = tiny_files
    overrides = [
        f"policy.model_name={model}", f"data.train_path={root / 'train.jsonl'}",
        f"data.validation_path={root / 'validation.jsonl'}", f"env.data_dir={sandbox_dir()}",
        "env.num_actors=2", "grpo.num_prompts_per_step=2", "grpo.num_generations_per_prompt=2",
        "policy.train_global_batch_size=4", "generation.max_new_tokens=8", "grpo.val_at_start=false",
        f"checkpointing.checkpoint_dir={tmp_path / 'ckpt'}", f"logger.log_dir={tmp_path / 'logs'}",
    ]
    # A fresh interpreter: this pytest process may already have run Ray (gRPC threads), and a forked
    # child of such a process can hang inside Ray's gRPC.
    (result,) = run_distributed(_train_until_the_step_fails, 1, str(TINY), overrides, timeout_s=300,
                                start_method="spawn", cpu_only=True)
    assert result["raised"] == "the train phase failed"
    assert result["ray"] is False and result["dist"] is False, result
    assert result["children"] == [], result
