"""The GRPO trainer end to end on 2 real gloo processes (TP=2): train, checkpoint, resume, export.

One tiny Qwen3 (random, save_pretrained), a tokenizer trained in-process, generated tasks, the
Megatron policy, the hf engine refit every step, the workplace environment. Run A trains 4 steps and
saves at steps 2 and 4; run B starts from a copy of run A's step-2 checkpoint and must reproduce
run A's steps 3 and 4 exactly (data position, weights, optimizer state and sampling seeds restored).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from data_paths import sandbox_dir

REPO = Path(__file__).resolve().parents[1]
SANDBOX = Path(sandbox_dir())
TINY = REPO / "configs" / "tiny_cpu.yaml"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Tasks, tokenizer and a tiny model on disk; returns (root, base overrides)."""
    from environment.workplace.tasks import generate_tasks
    from megatron_grpo.data.samples import write_jsonl
    from megatron_grpo.demo import DEMO_TEMPLATES
    from megatron_grpo.models.tiny import save_tiny_qwen3
    from megatron_grpo.models.tiny_tokenizer import sample_texts, train_tiny_tokenizer

    root = tmp_path_factory.mktemp("trainer")
    tasks = generate_tasks(40, seed=3, data_dir=str(SANDBOX), templates=DEMO_TEMPLATES)
    write_jsonl(root / "train.jsonl", tasks[:32])
    write_jsonl(root / "validation.jsonl", tasks[32:])
    tokenizer = train_tiny_tokenizer(sample_texts(tasks), vocab_size=512)
    # head_dim 32: the smallest vLLM's CPU attention supports (the vllm runs share this model)
    model = save_tiny_qwen3(root / "model", len(tokenizer), tokenizer=tokenizer, num_layers=2, hidden=64,
                            head_dim=32, max_position_embeddings=4096, init_std=0.02, seed=1)
    overrides = [
        f"policy.model_name={model}",
        f"data.train_path={root / 'train.jsonl'}",
        f"data.validation_path={root / 'validation.jsonl'}",
        "policy.tensor_model_parallel_size=2",
        "grpo.num_prompts_per_step=2",
        "grpo.num_generations_per_prompt=2",
        "policy.train_global_batch_size=4",
        "policy.train_micro_batch_size=2",
        "policy.logprob_batch_size=2",
        "generation.max_new_tokens=12",
        "generation.temperature=0.5",  # rollouts, old and new logprobs all at T=0.5
        "loss_fn.use_importance_sampling_correction=true",
        "loss_fn.reference_policy_kl_penalty=0.05",  # reference = the initial model, also after resume
        "grpo.max_rollout_turns=2",
        "grpo.max_val_samples=2",
        "grpo.val_period=2",
        "grpo.val_at_start=false",
        "env.num_actors=0",
        "checkpointing.save_period=2",
        "checkpointing.keep_top_k=3",
    ]
    return root, overrides


def _train(run_dir: Path, overrides: list[str], nproc: int = 2, command: str = "train") -> subprocess.CompletedProcess:
    from tests.dist_utils import free_port

    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
           f"--master-port={free_port()}", "-m", "megatron_grpo.cli", command, "--config", str(TINY),
           f"checkpointing.checkpoint_dir={run_dir / 'checkpoints'}", f"logger.log_dir={run_dir / 'logs'}",
           *overrides]
    env = dict(os.environ, WORKPLACE_DATA_DIR=str(SANDBOX), OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert proc.returncode == 0, f"train failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def _metrics(run_dir: Path) -> dict[int, dict]:
    lines = (run_dir / "logs" / "metrics.jsonl").read_text().splitlines()
    return {rec["step"]: rec for rec in map(json.loads, lines)}


@pytest.mark.slow
def test_grpo_tp2_trains_checkpoints_resumes_and_exports(tiny_run):
    root, overrides = tiny_run
    run_a = root / "run_a"
    _train(run_a, [*overrides, "grpo.max_num_steps=4", "checkpointing.export_hf_at_end=true"])

    metrics_a = _metrics(run_a)
    assert sorted(metrics_a) == [1, 2, 3, 4]
    for step, rec in metrics_a.items():
        for key in ("train:reward_mean", "train:accuracy", "policy_loss", "grad_norm", "gen_train_logprob_error",
                    "train:generation_tokens_per_s", "timing/generation", "timing/train", "timing/refit"):
            assert key in rec, (step, key)
        # the engine holds the policy's weights after every refit and reports the T=0.5 distribution the
        # policy scores: the logprob mismatch stays tiny
        assert rec["gen_train_logprob_error"] < 1e-4, rec["gen_train_logprob_error"]
        # so the truncated importance weights pi_old / pi_gen are 1 and none is truncated
        assert rec["train:is_weight_mean"] == pytest.approx(1.0, abs=1e-3), rec
        assert rec["train:is_weight_max"] < 1.01 and rec["train:is_truncated_fraction"] == 0.0, rec
        assert rec["train:kl_penalty"] >= 0.0 and "timing/ref_logprobs" in rec, rec
    assert "val:accuracy" in metrics_a[2] and "val:accuracy" in metrics_a[4]

    # rollout traces (rank 0 only): 2 groups x 2 samples per step, every validation episode
    traces = sorted(p.name for p in (run_a / "logs" / "rollouts").iterdir())
    assert traces == ["step_1.jsonl", "step_2.jsonl", "step_3.jsonl", "step_4.jsonl"]
    step2 = [json.loads(line) for line in (run_a / "logs" / "rollouts" / "step_2.jsonl").read_text().splitlines()]
    assert [(r["phase"], r["group"], r["sample"]) for r in step2] == [
        ("train", 0, 0), ("train", 0, 1), ("train", 1, 0), ("train", 1, 1), ("validation", 0, 0), ("validation", 1, 0)]
    assert [r["messages"][0]["role"] == "prompt" for r in step2] == [True, False, True, False, True, True]
    assert sum(r["reward"] == 1.0 for r in step2[4:]) / 2 == metrics_a[2]["val:accuracy"]
    assert sum(r["reward"] for r in step2[:4]) / 4 == pytest.approx(metrics_a[2]["train:reward_mean"])

    ckpts = sorted(p.name for p in (run_a / "checkpoints").glob("step_*"))
    assert ckpts == ["step_2", "step_4"]
    info = json.loads((run_a / "checkpoints" / "step_4" / "training_info.json").read_text())
    assert info["step"] == 4 and info["layout"]["tp"] == 2 and "val:accuracy" in info["metrics"]

    # evaluate the step-4 checkpoint: the same validation as training, so the same accuracy
    _train(run_a, [*overrides, "--checkpoint", str(run_a / "checkpoints" / "step_4"),
                   "--out", str(root / "eval.json")], command="evaluate")
    evaluated = json.loads((root / "eval.json").read_text())
    assert evaluated["step"] == 4
    assert evaluated["val:accuracy"] == metrics_a[4]["val:accuracy"]
    assert evaluated["val:mean_turns"] == pytest.approx(metrics_a[4]["val:mean_turns"])

    # run B: resume from step 2 and reproduce steps 3 and 4 exactly
    run_b = root / "run_b"
    (run_b / "checkpoints").mkdir(parents=True)
    shutil.copytree(run_a / "checkpoints" / "step_2", run_b / "checkpoints" / "step_2")
    _train(run_b, [*overrides, "grpo.max_num_steps=4", "checkpointing.resume=auto"])
    metrics_b = _metrics(run_b)
    assert sorted(metrics_b) == [3, 4]
    for step in (3, 4):
        for key in ("train:reward_mean", "policy_loss", "grad_norm", "train:mean_seq_len", "train:kl_penalty"):
            assert metrics_b[step][key] == pytest.approx(metrics_a[step][key], rel=1e-5, abs=1e-7), (step, key)

    # the end-of-run HF export (TP=2, from the live policy) equals convert-to-hf of the last checkpoint
    # (TP=1, from disk), and transformers loads both
    import torch
    from transformers import AutoModelForCausalLM

    converted = root / "converted"
    proc = subprocess.run([sys.executable, "-m", "megatron_grpo.cli", "convert-to-hf",
                           str(run_a / "checkpoints" / "step_4"), "--out", str(converted)],
                          capture_output=True, text=True, timeout=300, cwd=REPO,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    exported = AutoModelForCausalLM.from_pretrained(run_a / "hf_export", dtype=torch.float32).state_dict()
    from_ckpt = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32).state_dict()
    assert exported.keys() == from_ckpt.keys()
    for key in exported:
        assert torch.equal(exported[key], from_ckpt[key]), key


# ~50 KiB refit buckets: every refit streams several. A random model scores 0 on every task, so
# GRPO's advantages (and gradients) are 0; decoupled weight decay still moves every weight by 1% a
# step, so a refit that failed would show as a logprob error far above the 1e-5 asserted.
VLLM = ["generation.backend=vllm", "generation.cpu_kv_cache_gib=0.25", "generation.refit_bucket_mb=0.05",
        "policy.optimizer.lr=0.01", "policy.optimizer.min_lr=0.01", "policy.optimizer.weight_decay=1.0"]


@pytest.mark.slow
@pytest.mark.vllm
def test_grpo_vllm_tp2_trains_checkpoints_resumes_and_exports(tiny_run):
    """The trainer with vLLM's CPU build (TP=2, external launcher on the trainer's gloo group): the
    engine's logprobs equal the TP=2 policy's at every step (from the model folder at step 1, after a
    bucketed refit later), a resumed run repeats steps 3-4 exactly, the export loads."""
    import torch
    from transformers import AutoModelForCausalLM

    root, overrides = tiny_run
    run_a = root / "vllm_a"
    tempered = "generation.temperature=0.7"  # engine and policy both score softmax(logits / 0.7)
    _train(run_a, [*overrides, *VLLM, tempered, "grpo.max_num_steps=4", "checkpointing.export_hf_at_end=true"])
    metrics_a = _metrics(run_a)
    assert sorted(metrics_a) == [1, 2, 3, 4]
    for step, rec in metrics_a.items():
        assert rec["gen_train_logprob_error"] < 1e-5, (step, rec["gen_train_logprob_error"])
        assert rec["refit/tensors"] > 0 and "val:accuracy" in metrics_a[2]

    run_b = root / "vllm_b"
    (run_b / "checkpoints").mkdir(parents=True)
    shutil.copytree(run_a / "checkpoints" / "step_2", run_b / "checkpoints" / "step_2")
    _train(run_b, [*overrides, *VLLM, tempered, "grpo.max_num_steps=4", "checkpointing.resume=auto"])
    metrics_b = _metrics(run_b)
    assert sorted(metrics_b) == [3, 4]
    for step in (3, 4):
        for key in ("train:reward_mean", "policy_loss", "grad_norm", "train:mean_seq_len",
                    "gen_train_logprob_error"):
            assert metrics_b[step][key] == pytest.approx(metrics_a[step][key], rel=1e-5, abs=1e-7), (step, key)

    exported = AutoModelForCausalLM.from_pretrained(run_a / "hf_export", dtype=torch.float32).state_dict()
    initial = AutoModelForCausalLM.from_pretrained(overrides[0].split("=", 1)[1], dtype=torch.float32).state_dict()
    assert exported.keys() == initial.keys()
    assert any(not torch.equal(exported[k], initial[k]) for k in exported)  # it trained


@pytest.mark.slow
@pytest.mark.vllm
def test_grpo_vllm_dp2_splits_a_group_across_replicas(tiny_run):
    """TP=1 x DP=2 with one prompt x 4 samples per step: each replica rolls out 2 samples of the same
    group; with the data-parallel rank in the sampling seed, the 4 samples all differ."""
    root, overrides = tiny_run
    run = root / "vllm_dp2"
    _train(run, [*overrides, *VLLM, "policy.tensor_model_parallel_size=1", "grpo.num_prompts_per_step=1",
                 "grpo.num_generations_per_prompt=4", "grpo.max_num_steps=2", "grpo.val_period=0",
                 "checkpointing.enabled=false", "generation.temperature=1.0"])
    metrics = _metrics(run)
    assert sorted(metrics) == [1, 2]
    assert all(rec["gen_train_logprob_error"] < 1e-5 for rec in metrics.values())
    for step in (1, 2):
        trace = run / "logs" / "rollouts" / f"step_{step}.jsonl"
        records = [json.loads(line) for line in trace.read_text().splitlines()]
        group = [r for r in records if r["phase"] == "train"]
        assert len(group) == 4
        completions = [json.dumps([m for m in r["messages"] if m["role"] != "prompt"]) for r in group]
        assert len(set(completions)) == 4, completions


def test_bad_config_key_names_the_closest_key(tiny_run):
    root, overrides = tiny_run
    proc = subprocess.run(
        [sys.executable, "-m", "megatron_grpo.cli", "train", "--config", str(TINY), "grpo.num_prompt_per_step=3"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert proc.returncode == 2
    assert "grpo.num_prompt_per_step" in proc.stderr and "did you mean 'num_prompts_per_step'" in proc.stderr


def test_training_sampling_the_policy_cannot_score_is_a_one_line_error():
    for override, field in (("generation.top_p=0.9", "generation.top_p"), ("generation.top_k=20", "generation.top_k"),
                            ("generation.temperature=0", "generation.temperature")):
        proc = subprocess.run(
            [sys.executable, "-m", "megatron_grpo.cli", "train", "--config", str(TINY), override],
            capture_output=True, text=True, timeout=120, cwd=REPO,
        )
        assert proc.returncode == 2, (override, proc.stderr[-2000:])
        assert field in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_bad_data_line_names_file_line_and_field(tiny_run, tmp_path):
    from megatron_grpo.config import load_config
    from megatron_grpo.data.samples import SampleError
    from megatron_grpo.trainer import setup

    root, overrides = tiny_run
    lines = (root / "train.jsonl").read_text().splitlines()
    bad = json.loads(lines[2])
    del bad["ground_truth"]
    lines[2] = json.dumps(bad)
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    cfg = load_config(TINY, [*overrides, f"data.train_path={path}"])
    with pytest.raises(SampleError) as err:
        setup(cfg)  # data is validated before any model is built
    assert f"{path}:3" in str(err.value) and "ground_truth" in str(err.value)


def test_batch_math_error_names_the_fix(tiny_run):
    from megatron_grpo.config import ConfigError, load_config
    from megatron_grpo.trainer import setup

    root, overrides = tiny_run
    cfg = load_config(TINY, [*overrides, "policy.train_global_batch_size=3"])
    with pytest.raises(ConfigError, match="policy.train_global_batch_size"):
        setup(cfg)
