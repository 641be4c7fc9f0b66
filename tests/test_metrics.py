"""Metrics sinks (jsonl, tensorboard, wandb offline), the progress line, the plot command, FLOP counts."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from megatron_grpo import metrics as M
from megatron_grpo.config import LoggerConfig, WandbConfig
from megatron_grpo.flops import (
    DecoderShape,
    forward_flops_per_token,
    mfu,
    peak_flops,
    training_flops,
    training_flops_per_token,
)
from megatron_grpo.metrics import MetricsLogger, progress_line, read_metrics, throughput_metrics
from megatron_grpo.plot import main as plot_main

STEP1 = {
    "train:accuracy": 0.25,
    "train:reward_mean": 0.25,
    "train:advantage_mean": 0.0,
    "train:policy_loss": -0.01,
    "policy_loss": -0.01,
    "grad_norm": torch.tensor(0.5),  # tensors are turned into numbers
    "timing/step": 10.0,
    "timing/generation": 6.0,
    "timing/train": 3.0,
    "note": "text",
}


def test_jsonl_lines_are_flushed_per_step_and_read_back(tmp_path):
    logger = MetricsLogger(LoggerConfig(), tmp_path, total_steps=3, console=False)
    logger.log(0, {"val:accuracy": 0.1})
    logger.log(1, STEP1)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()  # before close: already flushed
    assert [json.loads(x)["step"] for x in lines] == [0, 1]
    assert json.loads(lines[1])["grad_norm"] == 0.5
    assert json.loads(lines[1])["note"] == "text"
    logger.log(1, {"val:accuracy": 0.3, "bad": float("nan")})
    logger.close()
    steps = read_metrics(tmp_path / "metrics.jsonl")
    assert steps[1]["val:accuracy"] == 0.3 and steps[1]["train:accuracy"] == 0.25
    assert steps[1]["bad"] is None


def test_resumed_run_supersedes_old_steps(tmp_path):
    path = tmp_path / "metrics.jsonl"
    for step, acc in ((1, 0.1), (2, 0.2), (3, 0.3), (2, 0.9), (3, 0.8)):  # crash after 3, resume at 2
        with open(path, "a") as f:
            f.write(json.dumps({"step": step, "train:accuracy": acc}) + "\n")
    assert {s: m["train:accuracy"] for s, m in read_metrics(path).items()} == {1: 0.1, 2: 0.9, 3: 0.8}
    with open(path, "a") as f:
        f.write('{"train:accuracy": 1}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:6"):
        read_metrics(path)


def test_only_rank_zero_writes(tmp_path):
    cfg = LoggerConfig(tensorboard=True, wandb=WandbConfig(enabled=True))
    with MetricsLogger(cfg, tmp_path / "r1", rank=1, console=False) as logger:
        logger.log(1, STEP1)
    assert not (tmp_path / "r1").exists()


def test_tensorboard_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = LoggerConfig(tensorboard=True)
    with MetricsLogger(cfg, tmp_path, console=False) as logger:
        logger.log(1, STEP1)
        logger.log(2, {"train:accuracy": 0.5})
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("train:accuracy")] == [(1, 0.25), (2, 0.5)]
    assert acc.Scalars("grad_norm")[0].value == 0.5
    assert "note" not in acc.Tags()["scalars"]


def test_wandb_offline_without_api_key(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = LoggerConfig(jsonl=False, wandb=WandbConfig(enabled=True, project="t", name="offline-test"))
    with MetricsLogger(cfg, tmp_path, config={"grpo": {"seed": 1}}, console=False) as logger:
        assert logger.sinks[0].mode == "offline"
        logger.log(1, {"train:unique_metric_name": 0.75})
    files = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    assert b"train:unique_metric_name" in files[0].read_bytes()


def test_wandb_missing_package_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` fail as if not installed
    cfg = LoggerConfig(wandb=WandbConfig(enabled=True))
    with pytest.raises(ImportError, match="logger.wandb.enabled.*pip install wandb"):
        MetricsLogger(cfg, tmp_path, console=False)


def test_progress_line_and_console(tmp_path, capsys):
    line = progress_line(3, 36, {**STEP1, "grad_norm": 0.5, "train:generation_tokens_per_s": 1234.4}, 330.0)
    assert line.startswith("step 3/36 | reward 0.250 | acc 0.250 |")
    assert "1,234 tok/s" in line and "10.0s (gen 6.0 train 3.0)" in line and line.endswith("ETA 5m30s")
    with MetricsLogger(LoggerConfig(jsonl=False), tmp_path, total_steps=36) as logger:
        logger.log(34, STEP1)  # ETA = 2 remaining steps x timing/step 10 s
    out = capsys.readouterr().out
    assert "step 34/36" in out and "ETA 0m20s" in out


def test_metric_key_names_follow_the_seed():
    for key in ("train:accuracy", "val:accuracy", "train:reward_mean", "train:advantage_mean",
                "train:policy_loss", "policy_loss", "grad_norm", "gen_train_logprob_error"):
        assert key in M.METRIC_KEYS
        assert key in M.__doc__


def test_throughput_metrics():
    got = throughput_metrics(num_samples=256, step_seconds=128.0, generated_tokens=50_000,
                             generation_seconds=100.0, training_flops=8 * 400e12 * 20, training_seconds=20.0,
                             num_gpus=8, peak_flops_per_gpu=1000e12)
    assert got == {"train:e2e_samples_per_s": 2.0, "train:generation_tokens_per_s": 500.0,
                   "train:training_tflops_per_s": 400.0, "train:mfu": 0.4}
    assert "train:mfu" not in throughput_metrics(num_samples=1, step_seconds=1, generated_tokens=1,
                                                 generation_seconds=0, training_flops=1, training_seconds=1,
                                                 num_gpus=1)


# ----------------------------------------------------------------------------- plot


def test_plot_writes_png(tmp_path, capsys):
    from matplotlib.image import imread

    with MetricsLogger(LoggerConfig(), tmp_path / "run" / "logs", console=False) as logger:
        logger.log(0, {"val:accuracy": 0.1})
        for step in range(1, 6):
            logger.log(step, {"train:reward_mean": step / 10, "train:accuracy": step / 10})
        logger.log(5, {"val:accuracy": 0.4})
    out = tmp_path / "curve.png"
    assert plot_main([str(tmp_path / "run"), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert imread(out).shape[:2] == (540, 960)  # 8 x 4.5 in at 120 dpi
    assert str(out) in capsys.readouterr().out


def test_plot_without_metrics_is_a_clear_error(tmp_path, capsys):
    from megatron_grpo.cli import main as cli_main

    assert cli_main(["plot", str(tmp_path)]) == 1
    assert "no metrics.jsonl under" in capsys.readouterr().err
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "timing/step": 3.0}\n')
    assert plot_main([str(tmp_path)]) == 1
    assert "val:accuracy" in capsys.readouterr().err


# ----------------------------------------------------------------------------- FLOPs

TINY = DecoderShape(hidden_size=8, num_layers=2, num_attention_heads=2, num_key_value_heads=1,
                    head_dim=4, ffn_hidden_size=12, vocab_size=16)


def test_flops_hand_count():
    # per layer and token at S = 5, causal (on average 3 attended positions):
    #   qkv 2*8*(2+2)*4 = 256, out 2*8*8 = 128, attention 4*2*4*3 = 96, MLP 6*8*12 = 576 -> 1056
    #   2 layers -> 2112, logits 2*8*16 = 256 -> forward 2368 per token
    assert forward_flops_per_token(TINY, 5) == 2368
    assert forward_flops_per_token(TINY, 5, causal=False) == 2368 + 2 * 4 * 2 * 4 * 2  # 5 positions, not 3
    assert training_flops_per_token(TINY, 5) == 3 * 2368
    assert training_flops_per_token(TINY, 5, recompute=True) == 4 * 2368
    assert training_flops(TINY, [5, 5]) == 10 * 3 * 2368
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12 and peak_flops("cpu") is None
    assert mfu(989e12, 2.0, 2, 989e12) == 0.25 and mfu(1.0, 1.0, 1, None) is None


def test_flops_match_torch_flop_counter_on_a_real_qwen3():
    """Cross-check against torch's FLOP counter on a transformers Qwen3 (eager attention is full S x S)."""
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=8, intermediate_size=24, vocab_size=40, tie_word_embeddings=False)
    cfg._attn_implementation = "eager"
    model = Qwen3ForCausalLM(cfg)
    shape = DecoderShape.from_hf_config(cfg)
    ids = torch.randint(0, 40, (2, 6))
    with FlopCounterMode(display=False) as counter:
        model(ids).logits.sum().backward()
    assert counter.get_total_flops() == 2 * 6 * training_flops_per_token(shape, 6, causal=False)
