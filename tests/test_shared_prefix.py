"""Shared-prefix layout (policy.shared_prefix) against the unshared policy on real gloo processes.

Each launch builds the tiny Qwen3 twice on every rank, unshared and shared, and compares logprobs
(within 1e-5, fp32) and one train step (loss, grad norm, updated weights) on a batch of GRPO-shaped
groups: a prompt sampled G times, rests of different lengths (multi-turn: a shared first turn,
then divergence), rows diverging at the first sampled token, a row that is a prefix of another,
a 1-token row, G=1, and groups split across micro-batches by the token budget.
"""

from __future__ import annotations

import copy

import pytest
import torch
from dist_utils import run_distributed
from test_policy import VOCAB, hf_weights, policy_config, test_loss
from test_trainer import _metrics, _train, tiny_run  # noqa: F401 - tiny_run is a fixture

G = 4


def grouped_batch() -> dict[str, torch.Tensor]:
    """8 rows = 2 groups of 4, right-padded to 24 tokens, plus what test_loss needs."""
    g = torch.Generator().manual_seed(5)
    tok = lambda n: torch.randint(2, VOCAB, (n,), generator=g)  # noqa: E731
    rows = []
    prompt = tok(10)  # group 0: diverges at the first sampled token, rests of 3, 7, 1, 5 tokens
    for i, n in enumerate([3, 7, 1, 5]):
        rest = tok(n)
        rest[0] = 2 + i  # distinct first sampled tokens
        rows.append(torch.cat([prompt, rest]))
    prompt, turn = tok(5), tok(3)  # group 1: a shared first turn, then different tool results
    a = torch.cat([prompt, turn, tok(2)])
    rows += [torch.cat([prompt, turn, tok(9)]), a, torch.cat([a, tok(6)]), torch.cat([prompt, tok(4)])]
    return _padded(rows, g)


def prefix_batch() -> dict[str, torch.Tensor]:
    """Groups of 2: a row that is a prefix of its sibling, and a 1-token row with a 5-token one."""
    g = torch.Generator().manual_seed(6)
    a = torch.randint(2, VOCAB, (7,), generator=g)
    b = torch.randint(2, VOCAB, (5,), generator=g)
    return _padded([a, torch.cat([a, torch.randint(2, VOCAB, (4,), generator=g)]), b[:1], b], g)


def _padded(rows: list[torch.Tensor], g: torch.Generator, width: int = 24) -> dict[str, torch.Tensor]:
    n = len(rows)
    ids = torch.ones((n, width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
    lengths = torch.tensor([len(r) for r in rows])
    t = torch.arange(width)[None, :]
    mask = ((t >= 1) & (t < lengths[:, None])).float()
    return {
        "input_ids": ids,
        "lengths": lengths,
        "mask": mask,
        "old_logprobs": -3.0 + 0.3 * torch.randn((n, width), generator=g),
        "advantages": torch.randn(n, generator=g),
        "inv_tokens": torch.full((n,), 1.0 / float(mask.sum())),
        "loss_weights": mask / mask.sum(),
    }


def _compare_layouts(hf_dir: str, tp: int, pp: int, sp: bool, distopt: bool, recompute: bool = False,
                     precision: str = "float32") -> dict:
    """Unshared vs shared on this rank: logprob errors, train-step metrics, weight differences."""
    from megatron_grpo.distributed import init_distributed
    from megatron_grpo.policy import MegatronPolicy

    layout = init_distributed(tp=tp, pp=pp)
    batch, small = grouped_batch(), prefix_batch()
    out: dict = {}
    runs = {}
    for shared in (False, True):
        # budget: 2 rows x 24 tokens per train micro-batch, 1 x 24 for logprobs (splits group 0)
        cfg = policy_config(tp, pp, mbs=2, lbs=1, distopt=distopt, sp=sp, max_len=24, recompute=recompute)
        cfg.shared_prefix = shared
        cfg.precision = precision
        policy = MegatronPolicy(cfg, layout, hf_dir)
        before = hf_weights(policy)
        r = {
            "logprobs": policy.logprobs(batch["input_ids"], batch["lengths"], group_size=G),
            "logprobs_g1": policy.logprobs(batch["input_ids"], batch["lengths"], group_size=1),
            "logprobs_small": policy.logprobs(small["input_ids"], small["lengths"], group_size=2),
        }
        policy.temperature = 0.7
        r["logprobs_t07"] = policy.logprobs(batch["input_ids"], batch["lengths"], group_size=G)
        r["tokens_logprobs"] = policy.tokens_processed
        policy.temperature = 1.0
        r["metrics"] = policy.train_step(copy.deepcopy(batch), test_loss, group_size=G)
        after = hf_weights(policy)
        r["update"] = {k: v - before[k] for k, v in after.items()}
        # a second step with G=1: every row its own packed row (prefix = all but the last token)
        r["metrics_g1"] = policy.train_step(copy.deepcopy(batch), test_loss, group_size=1)
        r["update_g1"] = {k: v - after[k] for k, v in hf_weights(policy).items()}
        runs[shared] = r
    base, shared = runs[False], runs[True]
    for key in ("logprobs", "logprobs_g1", "logprobs_small", "logprobs_t07"):
        out[key] = float((shared[key] - base[key]).abs().max())
    out["logprob_scale"] = float(base["logprobs"].abs().max())
    out["raw"] = (base["logprobs"], shared["logprobs"])
    out["metrics"] = (base["metrics"], shared["metrics"])
    out["tokens"] = (base["tokens_logprobs"], shared["tokens_logprobs"])
    out["metrics_g1"] = (base["metrics_g1"], shared["metrics_g1"])
    # relative L2 error of the whole update (max-abs ratios of Adam's first step amplify float noise
    # in gradients near eps)
    for key in ("update", "update_g1"):
        diff = sum(float(((shared[key][k] - u) ** 2).sum()) for k, u in base[key].items())
        scale = sum(float((u**2).sum()) for u in base[key].values())
        out[f"{key}_rel"] = (diff / scale) ** 0.5
        out[f"{key}_max_abs"] = max(float((shared[key][k] - u).abs().max()) for k, u in base[key].items())
        out[f"{key}_scale"] = scale**0.5
    return out


def _check(results: list[dict]) -> None:
    for r in results:
        assert r["logprob_scale"] > 1.0  # real logprobs, not zeros
        for key in ("logprobs", "logprobs_g1", "logprobs_small", "logprobs_t07"):
            assert r[key] < 1e-5, (key, r[key])
        for step in ("metrics", "metrics_g1"):
            base, shared = r[step]
            assert shared["loss"] == pytest.approx(base["loss"], rel=1e-5, abs=1e-7), step
            assert shared["grad_norm"] == pytest.approx(base["grad_norm"], rel=1e-5), step
            assert shared["tokens"] == base["tokens"]
        assert 0 < r["tokens"][1] < r["tokens"][0]  # the shared layout really ran, with fewer tokens
        for key in ("update", "update_g1"):
            assert r[f"{key}_scale"] > 1e-3
            assert r[f"{key}_rel"] < 1e-5, (key, r[f"{key}_rel"])
            assert r[f"{key}_max_abs"] < 1e-6, (key, r[f"{key}_max_abs"])  # as test_policy against transformers


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from megatron_grpo.models.tiny import save_tiny_qwen3

    return save_tiny_qwen3(str(tmp_path_factory.mktemp("tiny_qwen3_sp")), VOCAB, seed=3)


def test_shared_prefix_matches_unshared_tp1(hf_dir):
    _check(run_distributed(_compare_layouts, 1, hf_dir, 1, 1, False, False))


def test_shared_prefix_matches_unshared_tp2_sp(hf_dir):
    _check(run_distributed(_compare_layouts, 2, hf_dir, 2, 1, True, False))


def test_shared_prefix_matches_unshared_pp2_recompute(hf_dir):
    """PP=2 (1F1B, packed rows padded to one length) with activation recompute."""
    _check(run_distributed(_compare_layouts, 2, hf_dir, 1, 2, False, False, True))


def test_shared_prefix_matches_unshared_dp2_distributed_optimizer(hf_dir):
    _check(run_distributed(_compare_layouts, 2, hf_dir, 1, 1, False, True))


# ---------------------------------------------------------------------- a GRPO run


@pytest.mark.slow
def test_grpo_run_with_shared_prefix_reproduces_the_unshared_run(tiny_run):  # noqa: F811 - the fixture
    """Two GRPO steps on the tiny CPU config (hf engine, multi-turn episodes, G=4), once per layout:
    the same rewards, sequence lengths, loss and grad norm step for step."""
    root, overrides = tiny_run
    common = [*overrides, "policy.tensor_model_parallel_size=1", "grpo.max_num_steps=2",
              "grpo.num_generations_per_prompt=4", "policy.train_global_batch_size=8", "grpo.val_period=0",
              "checkpointing.enabled=false"]
    runs = {}
    for shared in ("false", "true"):
        run_dir = root / f"shared_prefix_{shared}"
        _train(run_dir, [*common, f"policy.shared_prefix={shared}"], nproc=1)
        runs[shared] = _metrics(run_dir)
    assert sorted(runs["true"]) == sorted(runs["false"]) == [1, 2]
    for step in (1, 2):
        base, shared = runs["false"][step], runs["true"][step]
        for key in ("train:reward_mean", "train:mean_seq_len", "train:mean_turns"):
            assert shared[key] == base[key], (step, key)
        for key in ("policy_loss", "grad_norm", "gen_train_logprob_error"):
            assert shared[key] == pytest.approx(base[key], rel=1e-4, abs=1e-6), (step, key)


# ---------------------------------------------------------------------- GPU


def _on_gpu(hf_dir: str) -> dict:
    """fp32 and bf16 on one GPU (the flash / memory-efficient kernels, causal_lower_right's GPU path)."""
    fp32 = _compare_layouts(hf_dir, 1, 1, False, False)
    bf16 = _compare_layouts(hf_dir, 1, 1, False, False, precision="bfloat16")
    return {"fp32": fp32, "bf16": bf16, "device": torch.cuda.get_device_name()}


@pytest.mark.gpu
def test_shared_prefix_matches_unshared_on_gpu(hf_dir):
    """fp32 on the GPU: as exact as on CPU. bf16: the shared layout is as close to the fp32
    logprobs as the unshared one is (both differ from fp32 by bf16 rounding only)."""
    assert torch.cuda.is_available(), "this test needs a CUDA GPU (run with -m gpu on a GPU machine)"
    (r,) = run_distributed(_on_gpu, 1, hf_dir, start_method="spawn")
    _check([r["fp32"]])
    ref = r["fp32"]["raw"][0]
    mask = ref != 0
    base, shared = (float((x - ref)[mask].abs().mean()) for x in r["bf16"]["raw"])
    assert shared <= 1.5 * base + 1e-3, (shared, base)
    assert r["bf16"]["update_rel"] < 0.05, r["bf16"]["update_rel"]
