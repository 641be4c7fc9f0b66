"""MegatronPolicy on real gloo processes against an independent reference.

The reference is the same tiny Qwen3 loaded by transformers, with torch's AdamW and
clip_grad_norm_: logprobs = log_softmax(HF logits) gathered at the next token; one optimizer step
= the gradient of the whole-batch loss, clipped, AdamW (no weight decay on 1-D params, as megatron).
Every layout (TP=2, PP=2, DP=2 with the distributed optimizer) and every micro-batch size must
reproduce it, which also shows the update is invariant to micro-batching and DP size.
Each test is one multi-process launch that runs several checks (a launch costs ~6-9 s).
"""

from __future__ import annotations

import copy

import pytest
import torch
from dist_utils import run_distributed

VOCAB = 96
SEQ = 12
LR = 1e-2
WD = 0.1
CLIP = 0.05  # small enough that clipping is active
EPS = 1e-4  # Adam eps: keeps the first Adam step (~lr * sign(g)) a smooth function of tiny gradients


# ---------------------------------------------------------------------- shared helpers


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from megatron_grpo.models.tiny import save_tiny_qwen3

    return save_tiny_qwen3(str(tmp_path_factory.mktemp("tiny_qwen3")), VOCAB, seed=3)


@pytest.fixture(scope="module")
def hf_dir_tied(tmp_path_factory):
    from megatron_grpo.models.tiny import save_tiny_qwen3

    return save_tiny_qwen3(str(tmp_path_factory.mktemp("tiny_qwen3_tied")), VOCAB + 1, seed=4,
                           tie_word_embeddings=True)


def make_batch(n: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded sequences of different lengths plus what the test loss needs."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([SEQ, 5, 9, 2, 11, 7, 3, 12][:n])
    ids = torch.randint(2, VOCAB, (n, SEQ), generator=g)
    ids[torch.arange(SEQ)[None, :] >= lengths[:, None]] = 1  # pad id
    mask = ((torch.arange(SEQ)[None, :] >= 1) & (torch.arange(SEQ)[None, :] < lengths[:, None])).float()
    return {
        "input_ids": ids,
        "lengths": lengths,
        "mask": mask,
        "old_logprobs": -3.0 + 0.3 * torch.randn((n, SEQ), generator=g),
        "advantages": torch.randn(n, generator=g),
        "inv_tokens": torch.full((n,), 1.0 / float(mask.sum())),  # global normalizer, per row
        "loss_weights": mask / mask.sum(),  # the GRPO loss's global token weights
    }


def test_loss(logprobs: torch.Tensor, mb: dict[str, torch.Tensor]):
    """Token-level ratio * advantage loss; contribution = sum over the micro-batch / global tokens."""
    s = logprobs.shape[1]
    mask = mb["mask"][:, :s]
    ratio = torch.exp(logprobs - mb["old_logprobs"][:, :s]) * mask
    per_token = -ratio * mb["advantages"][:, None] * mb["inv_tokens"][:, None]
    return (per_token * mask).sum(), {"tokens": float(mask.sum())}


test_loss.__test__ = False  # a loss function, not a pytest test


def _loss_for(variant: dict):
    """The test loss, or the project's GRPO loss (grpo.make_loss_fn) for variants that ask for it."""
    if variant.get("loss") != "grpo":
        return test_loss
    from megatron_grpo.config import LossConfig
    from megatron_grpo.grpo import make_loss_fn

    return make_loss_fn(LossConfig(ratio_clip_min=0.2, ratio_clip_max=0.28))


def hf_reference(hf_dir: str, batch: dict[str, torch.Tensor], temperature: float = 1.0,
                 loss_fn=test_loss) -> dict:
    """logprobs, loss, grad norm and the stepped weights from transformers + torch AdamW."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    logits = model(input_ids=batch["input_ids"]).logits.float() / temperature
    logp = torch.zeros(batch["input_ids"].shape)
    logp[:, 1:] = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
    logp = logp * batch["mask"]
    loss, _ = loss_fn(logp, batch)
    loss.backward()
    params = [p for p in model.parameters()]
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, CLIP))
    loss = loss.detach()
    groups = [
        {"params": [p for p in params if p.dim() > 1], "weight_decay": WD},
        {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0},
    ]
    torch.optim.AdamW(groups, lr=LR, betas=(0.9, 0.999), eps=EPS).step()
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    return {"logprobs": logp.detach(), "loss": float(loss), "grad_norm": grad_norm, "weights": weights}


def policy_config(tp=1, pp=1, mbs=1, lbs=2, distopt=False, sp=False, recompute=False, max_len=64):
    from megatron_grpo.config import OptimizerConfig, PolicyConfig

    return PolicyConfig(
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, sequence_parallel=sp, precision="float32",
        train_micro_batch_size=mbs, logprob_batch_size=lbs, max_total_sequence_length=max_len,
        activation_checkpointing=recompute,
        optimizer=OptimizerConfig(lr=LR, min_lr=0.0, weight_decay=WD, clip_grad=CLIP, adam_eps=EPS,
                                  use_distributed_optimizer=distopt),
    )


def hf_weights(policy) -> dict[str, torch.Tensor]:
    out = {}
    for bucket in policy.weight_stream(1 << 16):
        out.update({n: t.detach().float().clone() for n, t in bucket})
    return out


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert set(a) == set(b), sorted(set(a) ^ set(b))
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _run_layout(tp: int, pp: int, variants: list[dict], check_errors: bool):
    """On each rank, for every variant (hf_dir, mbs, distopt, sp) a fresh policy: logprobs (odd batch
    size, micro-batched) and one train step; optional error checks. Returns plain data."""
    from megatron_grpo.distributed import init_distributed
    from megatron_grpo.policy import MegatronPolicy, PolicyInputError

    layout = init_distributed(tp=tp, pp=pp)
    batch, odd = make_batch(4), make_batch(3, seed=1)
    out: dict = {"variants": []}
    for v in variants:
        cfg = policy_config(tp, pp, mbs=v["mbs"], distopt=v.get("distopt", False), sp=v.get("sp", False),
                            recompute=v.get("recompute", False))
        policy = MegatronPolicy(cfg, layout, v["hf_dir"])
        if "logprobs_t07" not in out:
            policy.temperature = 0.7  # logits / temperature, as the sampler saw them
            out["logprobs_t07"] = policy.logprobs(batch["input_ids"], batch["lengths"])
            policy.temperature = 1.0
        res = {
            "weights_before": hf_weights(policy),
            "logprobs_odd": policy.logprobs(odd["input_ids"], odd["lengths"]),
            "logprobs": policy.logprobs(batch["input_ids"], batch["lengths"]),
            "metrics": policy.train_step(copy.deepcopy(batch), _loss_for(v)),
        }
        res["weights"] = hf_weights(policy)
        res["recompute"] = policy.config.recompute_granularity
        out["variants"].append(res)
    out["token_logprobs"] = _token_logprobs_on_random_shards()
    if check_errors:
        errors = {}
        for name, bad in _bad_inputs(batch, policy.cfg.max_total_sequence_length).items():
            try:
                policy.train_step(bad, test_loss)
                errors[name] = None
            except PolicyInputError as exc:
                errors[name] = str(exc)
        out["errors"] = errors
    return out


def _token_logprobs_on_random_shards() -> dict[str, float]:
    """token_logprobs on this rank's vocab shard vs log_softmax of the gathered logits; the caller's
    logits must survive (vocab_parallel_cross_entropy works in place)."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    from megatron_grpo.policy import token_logprobs

    tp, rank = parallel_state.get_tensor_model_parallel_world_size(), parallel_state.get_tensor_model_parallel_rank()
    full = torch.randn((2, 6, 10 * tp), generator=torch.Generator().manual_seed(7)) * 3
    ids = torch.randint(0, 10 * tp, (2, 6), generator=torch.Generator().manual_seed(8))
    local = full[..., rank * 10 : (rank + 1) * 10].clone()
    before = local.clone()
    logp = token_logprobs(local, ids, temperature=2.0)
    ref = torch.zeros_like(logp)
    ref[:, 1:] = torch.log_softmax(full / 2.0, -1)[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
    dist.barrier()
    return {"err": float((logp - ref).abs().max()), "logits_changed": float((local - before).abs().max())}


def _bad_inputs(batch: dict[str, torch.Tensor], max_len: int) -> dict[str, dict]:
    long_ids = torch.ones((4, max_len + 1), dtype=torch.long)
    too_long = {"input_ids": long_ids, "lengths": torch.tensor([3, max_len + 1, 2, 2])}
    odd = {k: v[:3] for k, v in batch.items()}
    bad_vocab = dict(batch, input_ids=batch["input_ids"].clone())
    bad_vocab["input_ids"][0, 1] = VOCAB + 5
    per_token_wrong = dict(batch, mask=batch["mask"][:2])
    return {"too_long": too_long, "indivisible": odd, "bad_vocab": bad_vocab, "wrong_rows": per_token_wrong,
            "no_lengths": {"input_ids": batch["input_ids"]}}


def _check_against_reference(results: list[dict], variants: list[dict]) -> None:
    refs = {}
    for v in variants:
        key = (v["hf_dir"], v.get("loss"))
        if key not in refs:
            refs[key] = _references(v["hf_dir"], _loss_for(v))
    for r in results:  # every rank returns the same values
        for v, res in zip(variants, r["variants"], strict=True):
            ref, ref_odd, before = refs[(v["hf_dir"], v.get("loss"))]
            assert max_diff(res["weights_before"], before) < 1e-6, v  # import + stream round trip
            assert float((res["logprobs"] - ref["logprobs"]).abs().max()) < 1e-5, v
            assert float((res["logprobs_odd"] - ref_odd["logprobs"]).abs().max()) < 1e-5, v
            assert res["recompute"] == ("full" if v.get("recompute") else None)
            m = res["metrics"]
            assert m["loss"] == pytest.approx(ref["loss"], abs=1e-6), v
            assert m["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-5), v
            assert m["grad_norm"] > CLIP  # clipping was exercised
            if "tokens" in m:  # the test loss's metric, summed over micro-batches and DP
                assert m["tokens"] == float(make_batch(4)["mask"].sum())
            assert m["lr"] == pytest.approx(LR)
            assert max_diff(res["weights"], before) > 1e-3  # the step changed the weights
            assert max_diff(res["weights"], ref["weights"]) < 1e-6, v


def _references(hf_dir: str, loss_fn=test_loss) -> tuple[dict, dict, dict]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    return (hf_reference(hf_dir, make_batch(4), loss_fn=loss_fn), hf_reference(hf_dir, make_batch(3, seed=1)),
            before)


# ---------------------------------------------------------------------- tests


def test_tp2_matches_transformers_and_errors_name_the_fix(hf_dir, hf_dir_tied):
    """TP=2: micro-batch sizes 1 and 2, sequence parallelism, tied embeddings with a vocabulary
    (97) that TP pads."""
    variants = [{"hf_dir": hf_dir, "mbs": 1}, {"hf_dir": hf_dir, "mbs": 2, "sp": True},
                {"hf_dir": hf_dir_tied, "mbs": 2}]
    results = run_distributed(_run_layout, 2, 2, 1, variants, True)
    _check_against_reference(results, variants)
    ref_t = hf_reference(hf_dir, make_batch(4), temperature=0.7)["logprobs"]
    for r in results:
        assert float((r["logprobs_t07"] - ref_t).abs().max()) < 1e-5
        assert r["token_logprobs"]["err"] < 1e-5 and r["token_logprobs"]["logits_changed"] == 0.0
    errors = results[0]["errors"]
    assert "policy.max_total_sequence_length=64" in errors["too_long"]
    assert "not divisible by data-parallel size 1 x policy.train_micro_batch_size 2" in errors["indivisible"]
    assert f"outside the vocabulary [0, {VOCAB + 1})" in errors["bad_vocab"]
    assert "batch['mask'] must be a tensor with first dim B=4" in errors["wrong_rows"]
    assert "needs 'input_ids' and 'lengths'" in errors["no_lengths"]


def test_pp2_matches_transformers(hf_dir, hf_dir_tied):
    """PP=2: the 1F1B schedule (with activation checkpointing), and tied embeddings shared between
    the first and last stage."""
    variants = [{"hf_dir": hf_dir, "mbs": 2, "recompute": True}, {"hf_dir": hf_dir_tied, "mbs": 1}]
    results = run_distributed(_run_layout, 2, 1, 2, variants, False)
    _check_against_reference(results, variants)


def test_dp2_distributed_optimizer_matches_transformers(hf_dir):
    """DP=2 + DistOpt: each rank sees half the rows, yet the update equals the full-batch one; also
    with the project's GRPO loss (grpo.make_loss_fn)."""
    variants = [{"hf_dir": hf_dir, "mbs": 1, "distopt": True}, {"hf_dir": hf_dir, "mbs": 2, "distopt": True},
                {"hf_dir": hf_dir, "mbs": 1, "distopt": True, "loss": "grpo"}]
    results = run_distributed(_run_layout, 2, 1, 1, variants, False)
    _check_against_reference(results, variants)


# ---------------------------------------------------------------------- GPU (bf16)


def _bf16_on_gpu(hf_dir: str, ckpt_dir: str) -> dict:
    from megatron_grpo.checkpoint import load_checkpoint, save_checkpoint
    from megatron_grpo.distributed import init_distributed
    from megatron_grpo.policy import MegatronPolicy

    layout = init_distributed(tp=1)
    cfg = policy_config(mbs=2, distopt=True)
    cfg.precision = "bfloat16"
    policy = MegatronPolicy(cfg, layout, hf_dir)
    out = {"dtype": str(next(policy.model.parameters()).dtype)}
    batch = make_batch(4)
    out["logprobs"] = policy.logprobs(batch["input_ids"], batch["lengths"])
    out["metrics"] = policy.train_step(copy.deepcopy(batch), test_loss)
    out["weights"] = hf_weights(policy)

    def optimizer_tensors() -> list[torch.Tensor]:
        inner = [o.optimizer for o in policy.optimizer.chained_optimizers]
        states = [v.detach().cpu().clone() for opt in inner for st in opt.state.values()
                  for v in st.values() if torch.is_tensor(v) and v.dim() > 0]
        mains = [p.detach().cpu().clone() for opt in inner for g in opt.param_groups for p in g["params"]]
        return states + mains

    before = optimizer_tensors()
    torch.cuda.synchronize()
    allocated = torch.cuda.memory_allocated()
    policy.offload_optimizer()
    out["freed_bytes"] = allocated - torch.cuda.memory_allocated()
    out["expected_freed"] = sum(t.numel() * t.element_size() for t in before)
    policy.onload_optimizer()
    out["roundtrip_diff"] = max(float((a - b).abs().max()) for a, b in zip(before, optimizer_tensors(), strict=True))

    save_checkpoint(policy, ckpt_dir, 1)
    fresh = MegatronPolicy(cfg, layout, hf_dir)
    load_checkpoint(f"{ckpt_dir}/step_1", fresh)
    out["load_diff"] = max_diff(hf_weights(fresh), out["weights"])
    second = make_batch(4, seed=2)
    policy.offload_optimizer()  # train_step onloads by itself
    out["next"] = policy.train_step(copy.deepcopy(second), test_loss)
    out["next_resumed"] = fresh.train_step(copy.deepcopy(second), test_loss)
    return out


@pytest.mark.gpu
def test_bf16_policy_offload_and_checkpoint_on_gpu(hf_dir, tmp_path):
    """bf16 params + fp32 main weights (Float16Module, mixed-precision DistOpt) on one GPU: close to
    the fp32 transformers reference, optimizer offload/onload is lossless and frees memory, and a
    bf16 checkpoint resumes to the same next step."""
    assert torch.cuda.is_available(), "this test needs a CUDA GPU (run with -m gpu on a GPU machine)"
    (r,) = run_distributed(_bf16_on_gpu, 1, hf_dir, str(tmp_path / "ckpts"), start_method="spawn")
    ref, _, before = _references(hf_dir)
    assert r["dtype"] == "torch.bfloat16"
    assert float((r["logprobs"] - ref["logprobs"]).abs().mean()) < 0.05
    assert r["metrics"]["loss"] == pytest.approx(ref["loss"], rel=0.05)
    assert r["metrics"]["grad_norm"] == pytest.approx(ref["grad_norm"], rel=0.05)
    moved = {k: float((r["weights"][k] - before[k]).abs().max()) for k in before}
    assert min(moved.values()) > 1e-3  # every tensor took the step in bf16
    assert r["freed_bytes"] >= 0.9 * r["expected_freed"] > 0
    assert r["roundtrip_diff"] == 0.0
    assert r["load_diff"] == 0.0
    assert r["next_resumed"]["loss"] == pytest.approx(r["next"]["loss"], rel=1e-6)
    assert r["next_resumed"]["grad_norm"] == pytest.approx(r["next"]["grad_norm"], rel=1e-4)
