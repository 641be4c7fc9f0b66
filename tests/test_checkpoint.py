"""Checkpoints: retention rule (pure and on disk), save/load/resume on gloo, kill -9 during a save,
loading runs no code from a checkpoint."""

from __future__ import annotations

import ast
import json
import math
import multiprocessing as mp
import os
import pickle
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
from dist_utils import free_port, run_distributed
from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_grpo.checkpoint import (
    CheckpointError,
    apply_retention,
    check_dist_checkpoint,
    checkpoints_to_keep,
    find_resume_checkpoint,
    list_checkpoints,
    resolve_resume,
    safe_torch_load,
)

VOCAB = 80
REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------- retention, pure


def test_keep_top_k_plus_latest_hand_computed():
    entries = [(2, None), (4, None), (6, 0.5), (8, None), (10, None), (12, 0.7), (14, None), (18, 0.6),
               (20, None)]
    assert checkpoints_to_keep(entries, 2, True) == {12, 18, 20}
    assert checkpoints_to_keep(entries, 2, False) == {6, 18, 20}  # lower is better
    assert checkpoints_to_keep(entries, 0, True) == {20}
    assert checkpoints_to_keep(entries, None, True) == {s for s, _ in entries}
    assert checkpoints_to_keep([], 3, True) == set()
    # the latest is kept even when it has a (bad) metric; ties go to the newer step; NaN = missing
    assert checkpoints_to_keep([(1, 0.9), (2, 0.9), (3, 0.1)], 1, True) == {2, 3}
    assert checkpoints_to_keep([(1, 0.2), (2, math.nan), (3, None)], 1, True) == {1, 3}
    with pytest.raises(ValueError, match="keep_top_k"):
        checkpoints_to_keep([(1, 0.0)], -1, True)


def _simulate(num_steps: int, save_period: int, val_period: int, k: int, metric_of):
    """Progressive retention as a run applies it: after every save, on what exists on disk."""
    alive: list[tuple[int, float | None]] = []
    for step in range(1, num_steps + 1):
        if step % save_period:
            continue
        alive.append((step, metric_of(step) if step % val_period == 0 else None))
        keep = checkpoints_to_keep(alive, k, True)
        alive = [e for e in alive if e[0] in keep]
    return {s for s, _ in alive}


def test_odd_periods_val3_save2():
    # saves at 2,4,...,20; validation at 3,6,...: only steps 6, 12, 18 have the metric
    metric = {6: 0.30, 12: 0.80, 18: 0.55}
    assert _simulate(20, 2, 3, 2, metric.get) == {12, 18, 20}
    assert _simulate(18, 2, 3, 2, metric.get) == {12, 18}  # the latest is also a top-k one
    assert _simulate(20, 2, 3, 1, metric.get) == {12, 20}
    # no checkpoint ever has the metric (val_period=7, save_period=2, 10 steps): only the latest
    assert _simulate(10, 2, 7, 3, lambda s: 1.0) == {10}


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.one_of(st.none(), st.floats(0, 1)), min_size=1, max_size=12),
    st.one_of(st.none(), st.integers(0, 4)),
    st.booleans(),
)
def test_retention_invariants(metrics, k, higher):
    entries = [(2 * (i + 1), m) for i, m in enumerate(metrics)]
    keep = checkpoints_to_keep(entries, k, higher)
    latest = entries[-1][0]
    assert latest in keep and keep <= {s for s, _ in entries}
    if k is None:
        assert len(keep) == len(entries)
        return
    scored = {s: m for s, m in entries if m is not None}
    kept_scored = [s for s in keep if s in scored]
    assert len(kept_scored) <= k + 1 and len(keep) <= k + 1
    assert all(s == latest or s in scored for s in keep)  # a metric-less one only while latest
    better = (lambda a, b: a > b) if higher else (lambda a, b: a < b)
    for s, m in scored.items():  # a dropped scored checkpoint: the top-k is full and it beats none of it
        if s not in keep:
            assert len(kept_scored) >= k
            assert not any(better(m, scored[t]) for t in kept_scored if t != latest)


# ---------------------------------------------------------------------- retention on disk


def _fake_checkpoint(root: Path, step: int, metrics: dict) -> None:
    d = root / f"step_{step}"
    d.mkdir(parents=True)
    (d / "training_info.json").write_text(json.dumps({"step": step, "metrics": metrics}))


def test_apply_retention_and_resume_on_disk(tmp_path):
    for step, acc in [(2, None), (4, None), (6, 0.3), (8, None), (10, None), (12, 0.8)]:
        _fake_checkpoint(tmp_path, step, {"val:accuracy": acc} if acc is not None else {"loss": 1.0})
    (tmp_path / "step_14.tmp").mkdir()  # a save that was killed
    (tmp_path / "step_16").mkdir()  # no training_info.json: incomplete, ignored
    assert find_resume_checkpoint(tmp_path) == tmp_path / "step_12"
    removed = apply_retention(tmp_path, 1, "val:accuracy", True)
    assert removed == [2, 4, 6, 8, 10]
    assert [s for s, _ in list_checkpoints(tmp_path)] == [12]
    _fake_checkpoint(tmp_path, 14, {})
    assert apply_retention(tmp_path, 1, "val:accuracy", True) == []  # 12 is top-1, 14 the latest
    _fake_checkpoint(tmp_path, 16 + 2, {})
    assert apply_retention(tmp_path, 1, "val:accuracy", True) == [14]
    assert apply_retention(tmp_path, 1, None, True) == [12]  # no metric name: most recent only
    assert resolve_resume("none", tmp_path) is None
    assert resolve_resume("auto", tmp_path) == tmp_path / "step_18"
    assert resolve_resume(str(tmp_path / "step_18"), tmp_path) == tmp_path / "step_18"
    with pytest.raises(CheckpointError, match="not a complete checkpoint folder"):
        resolve_resume(str(tmp_path / "step_16"), tmp_path)
    assert find_resume_checkpoint(tmp_path / "nowhere") is None


# ---------------------------------------------------------------------- loading runs no code


class _RunsCode:
    """Pickles as a call of ``open(marker, "w")``: unpickling it creates the marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plant_rng_payload(step_dir: Path, marker: Path) -> Path:
    rng = step_dir / "rng" / "rank_0.pt"
    rng.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"python": _RunsCode(str(marker)), "torch": torch.get_rng_state()}, rng)
    return rng


def test_rng_file_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "code_ran"
    rng = _plant_rng_payload(tmp_path / "step_1", marker)
    with pytest.raises(CheckpointError) as exc:
        safe_torch_load(rng)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(f"{rng}: refused to load") and "io.open" in msg
    assert f"delete {rng.parent}" in msg
    assert not marker.exists()
    torch.load(rng, weights_only=False)  # control: the payload is live
    assert marker.exists()


def test_dist_checkpoint_index_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "code_ran"
    model_optim = tmp_path / "step_1" / "model_optim"
    model_optim.mkdir(parents=True)
    (model_optim / ".metadata").write_bytes(pickle.dumps(_RunsCode(str(marker))))
    with pytest.raises(CheckpointError, match=r"\.metadata: refused to load: .*io\.open") as exc:
        check_dist_checkpoint(model_optim)
    assert "\n" not in str(exc.value) and not marker.exists()
    (model_optim / ".metadata").unlink()
    torch.save({"x": _RunsCode(str(marker))}, model_optim / "common.pt")
    with pytest.raises(CheckpointError, match=r"common\.pt: refused to load"):
        check_dist_checkpoint(model_optim)
    assert not marker.exists()


def test_every_torch_load_is_weights_only():
    """No torch.load in the project may unpickle arbitrary objects."""
    offenders = []
    for path in sorted(p for top in ("megatron_grpo", "environment", "tools", "tests", "bench")
                       for p in (REPO / top).glob("**/*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                ok = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                         for k in node.keywords)
                if not ok and not (path.name == "test_checkpoint.py" and "weights_only=False" in ast.unparse(node)):
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert offenders == []


# ---------------------------------------------------------------------- save / load / resume


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from megatron_grpo.models.tiny import save_tiny_qwen3

    return save_tiny_qwen3(str(tmp_path_factory.mktemp("tiny_qwen3_ckpt")), VOCAB, seed=5)


def _batch(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([10, 6, 3, 8])
    ids = torch.randint(2, VOCAB, (4, 10), generator=g)
    mask = ((torch.arange(10)[None] >= 1) & (torch.arange(10)[None] < lengths[:, None])).float()
    return {"input_ids": ids, "lengths": lengths, "mask": mask, "adv": torch.randn(4, generator=g),
            "inv_tokens": torch.full((4,), 1.0 / float(mask.sum()))}


def _loss(logprobs, mb):
    mask = mb["mask"][:, : logprobs.shape[1]]
    return -(logprobs * mask * mb["adv"][:, None] * mb["inv_tokens"][:, None]).sum(), {}


def _config(distopt: bool, tp: int = 1):
    from megatron_grpo.config import OptimizerConfig, PolicyConfig

    return PolicyConfig(
        tensor_model_parallel_size=tp, precision="float32", train_micro_batch_size=1, logprob_batch_size=2,
        max_total_sequence_length=32,
        optimizer=OptimizerConfig(lr=1e-2, min_lr=0.0, weight_decay=0.1, clip_grad=1.0, adam_eps=1e-4,
                                  lr_warmup_steps=3, lr_warmup_init=1e-3,
                                  use_distributed_optimizer=distopt),
    )


def _weights(policy) -> dict[str, torch.Tensor]:
    return {n: t.detach().clone() for bucket in policy.weight_stream(1 << 16) for n, t in bucket}


def _adam_moments(policy) -> list[torch.Tensor]:
    out = []
    for opt in getattr(policy.optimizer, "chained_optimizers", [policy.optimizer]):
        for state in opt.optimizer.state.values():
            out += [state["exp_avg"].clone(), state["exp_avg_sq"].clone()]
    return out


def _max_diff(a, b) -> float:
    assert set(a) == set(b)
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _save_load_resume(hf_dir: str, ckpt_dir: str, distopt: bool) -> dict:
    from megatron_grpo.checkpoint import build_model_for_export, load_checkpoint, save_checkpoint
    from megatron_grpo.distributed import init_distributed
    from megatron_grpo.models.hf_mapping import iter_hf_weights
    from megatron_grpo.policy import MegatronPolicy

    layout = init_distributed(tp=1)
    first = MegatronPolicy(_config(distopt), layout, hf_dir)
    first.train_step(_batch(0), _loss)
    w1, m1 = _weights(first), _adam_moments(first)
    path = save_checkpoint(first, ckpt_dir, 1, metrics={"val:accuracy": 0.25},
                           data_state={"epoch": 0, "pos": 8}, config={"policy": {"lr": 1e-2}},
                           keep_top_k=2, metric_name="val:accuracy")
    rng_after_save = torch.rand(3)
    step2 = first.train_step(_batch(1), _loss)
    w2 = _weights(first)

    fresh = MegatronPolicy(_config(distopt), layout, hf_dir)
    assert _max_diff(_weights(fresh), w1) > 1e-4  # a fresh policy really starts elsewhere
    info = load_checkpoint(find_resume_checkpoint(ckpt_dir), fresh)
    out = {
        "info": info,
        "path": str(path),
        "files": sorted(os.listdir(path)),
        "rng_equal": bool(torch.equal(torch.rand(3), rng_after_save)),
        "weights_diff": _max_diff(_weights(fresh), w1),
        "moments_diff": max(float((a - b).abs().max())
                            for a, b in zip(_adam_moments(fresh), m1, strict=True)),
        "num_moments": len(m1),
    }
    resumed = fresh.train_step(_batch(1), _loss)
    out["step2"], out["resumed"] = step2, resumed
    out["weights2_diff"] = _max_diff(_weights(fresh), w2)
    out["weights2"] = w2
    model, hf_config = build_model_for_export(path)
    exported = {n: t.clone() for bucket in iter_hf_weights(model, 1 << 16) for n, t in bucket}
    out["export_diff"] = _max_diff(exported, w1)
    out["export_vocab"] = hf_config.vocab_size
    return out


def test_save_load_resume_dp2_distributed_optimizer(hf_dir, tmp_path):
    results = run_distributed(_save_load_resume, 2, hf_dir, str(tmp_path / "ckpts"), True)
    for r in results:
        assert r["info"]["step"] == 1 and r["info"]["data_state"] == {"epoch": 0, "pos": 8}
        assert r["info"]["metrics"] == {"val:accuracy": 0.25} and r["info"]["rng_restored"]
        assert r["rng_equal"]
        assert r["weights_diff"] == 0.0
        assert r["num_moments"] > 0 and r["moments_diff"] == 0.0
        assert r["resumed"]["loss"] == r["step2"]["loss"]  # identical next-step loss
        assert r["resumed"]["lr"] == r["step2"]["lr"] != 1e-2  # LR warmup position restored
        assert r["resumed"]["grad_norm"] == pytest.approx(r["step2"]["grad_norm"], rel=1e-6)
        assert r["weights2_diff"] < 1e-7
        assert r["export_diff"] == 0.0 and r["export_vocab"] == VOCAB
    expected_files = {"model_optim", "rng", "training_info.json", "config.json", "run_config.json"}
    assert expected_files <= set(results[0]["files"])
    run_config = json.loads((Path(results[0]["path"]) / "run_config.json").read_text())
    assert run_config["hf_config"]["vocab_size"] == VOCAB and run_config["params_dtype"] == "float32"
    assert not list((tmp_path / "ckpts").glob("*.tmp"))

    # resume the DP=2 distributed-optimizer checkpoint on ONE process (dp_reshardable), and refuse
    # a checkpoint saved at another TP size
    tp2 = run_distributed(_save_at_tp2, 2, hf_dir, str(tmp_path / "tp2"))
    (other,) = run_distributed(_resume_at_dp1, 1, hf_dir, results[0]["path"], str(tmp_path / "fake_tp2"),
                               tp2[0]["path"])
    assert other["step"] == 1 and not other["rng_restored"]  # RNG only restores at the same world size
    assert other["loss"] == pytest.approx(results[0]["step2"]["loss"], abs=1e-7)
    assert _max_diff(other["weights2"], results[0]["weights2"]) < 1e-6
    assert "saved with TP=2 PP=1 but this run has TP=1 PP=1" in other["tp_error"]
    assert "policy.tensor_model_parallel_size" in other["tp_error"]
    assert "rank_0.pt: refused to load" in other["rng_error"] and "\n" not in other["rng_error"]
    assert not other["code_ran"] and other["untouched"] == 0.0
    assert _max_diff(other["exported_tp2"], tp2[0]["weights"]) == 0.0  # TP=2 weights, exported at TP=1


def _save_at_tp2(hf_dir: str, ckpt_dir: str) -> dict:
    from megatron_grpo.checkpoint import save_checkpoint
    from megatron_grpo.distributed import init_distributed
    from megatron_grpo.policy import MegatronPolicy

    layout = init_distributed(tp=2)
    policy = MegatronPolicy(_config(distopt=False, tp=2), layout, hf_dir)
    policy.train_step(_batch(0), _loss)
    path = save_checkpoint(policy, ckpt_dir, 1)
    return {"path": str(path), "weights": _weights(policy)}


def _resume_at_dp1(hf_dir: str, step_dir: str, fake_dir: str, tp2_dir: str) -> dict:
    from megatron_grpo.checkpoint import build_model_for_export, load_checkpoint
    from megatron_grpo.distributed import init_distributed
    from megatron_grpo.models.hf_mapping import iter_hf_weights
    from megatron_grpo.policy import MegatronPolicy

    layout = init_distributed(tp=1)
    policy = MegatronPolicy(_config(distopt=True), layout, hf_dir)
    info = load_checkpoint(step_dir, policy)
    metrics = policy.train_step(_batch(1), _loss)
    fake = Path(fake_dir)
    fake.mkdir()
    saved = json.loads((Path(step_dir) / "training_info.json").read_text())
    saved["layout"]["tp"] = 2
    (fake / "training_info.json").write_text(json.dumps(saved))
    try:
        load_checkpoint(fake, policy)
        tp_error = ""
    except CheckpointError as exc:
        tp_error = str(exc)
    # a copy of the checkpoint whose RNG file would run code: refused before anything is loaded
    evil = Path(fake_dir + "_evil")
    shutil.copytree(step_dir, evil)
    marker = Path(fake_dir + "_code_ran")
    _plant_rng_payload(evil, marker)
    before = _weights(policy)
    try:
        load_checkpoint(evil, policy)
        rng_error = ""
    except CheckpointError as exc:
        rng_error = str(exc)
    model, _ = build_model_for_export(tp2_dir)
    exported = {n: t.clone() for bucket in iter_hf_weights(model, 1 << 16) for n, t in bucket}
    return {"step": info["step"], "rng_restored": info["rng_restored"], "loss": metrics["loss"],
            "weights2": _weights(policy), "tp_error": tp_error, "exported_tp2": exported,
            "rng_error": rng_error, "code_ran": marker.exists(), "untouched": _max_diff(_weights(policy), before)}


# ---------------------------------------------------------------------- kill -9 during a save


def _saver_main(hf_dir: str, ckpt_dir: str, expected: str, port: int, ready) -> None:
    """Forked child in its own session: save step 1, record its weights, then save until killed."""
    os.setsid()  # its own process group, so the kill also reaches any writer processes it starts
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from megatron_grpo.checkpoint import save_checkpoint
    from megatron_grpo.distributed import init_distributed
    from megatron_grpo.policy import MegatronPolicy

    layout = init_distributed(tp=1)
    policy = MegatronPolicy(_config(distopt=False), layout, hf_dir)
    policy.train_step(_batch(0), _loss)
    save_checkpoint(policy, ckpt_dir, 1, metrics={"val:accuracy": 0.5})
    torch.save(_weights(policy), expected)
    ready.set()
    for step in range(2, 1000):
        policy.train_step(_batch(step), _loss)
        save_checkpoint(policy, ckpt_dir, step)


def _verify_after_kill(hf_dir: str, ckpt_dir: str, expected: str) -> dict:
    from megatron_grpo.checkpoint import load_checkpoint, save_checkpoint
    from megatron_grpo.distributed import init_distributed
    from megatron_grpo.policy import MegatronPolicy

    layout = init_distributed(tp=1)
    policy = MegatronPolicy(_config(distopt=False), layout, hf_dir)
    resume = find_resume_checkpoint(ckpt_dir)
    info = load_checkpoint(resume, policy)
    diff = _max_diff(_weights(policy), torch.load(expected, weights_only=True))
    save_checkpoint(policy, ckpt_dir, 3)  # the next save clears the killed save's leftovers
    return {"resume": str(resume), "step": info["step"], "diff": diff, "after": sorted(os.listdir(ckpt_dir))}


def test_kill_during_save_keeps_last_good_checkpoint(hf_dir, tmp_path):
    ckpt_dir, expected = tmp_path / "ckpts", tmp_path / "expected.pt"
    ctx = mp.get_context("fork")
    ready = ctx.Event()
    proc = ctx.Process(target=_saver_main, args=(hf_dir, str(ckpt_dir), str(expected), free_port(), ready))
    proc.start()
    killed_in = None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.is_alive():
            tmp = ckpt_dir / "step_2.tmp" / "model_optim"
            if ready.is_set() and tmp.is_dir() and any(tmp.iterdir()):  # step 2's shards are being written
                os.killpg(proc.pid, signal.SIGKILL)
                killed_in = sorted(os.listdir(tmp))
                break
            time.sleep(0.001)
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join(timeout=10)
    assert killed_in is not None, f"the saver never reached step 2's save (exit code {proc.exitcode})"
    assert proc.exitcode == -signal.SIGKILL
    assert not (ckpt_dir / "step_2").exists(), "the kill came after the rename; the save was not interrupted"
    assert (ckpt_dir / "step_2.tmp").exists()
    (result,) = run_distributed(_verify_after_kill, 1, hf_dir, str(ckpt_dir), str(expected))
    assert result["resume"] == str(ckpt_dir / "step_1") and result["step"] == 1
    assert result["diff"] == 0.0
    assert result["after"] == ["step_1", "step_3"]
