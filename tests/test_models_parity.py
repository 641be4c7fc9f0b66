"""Megatron Qwen3 logits equal the transformers model's at TP=1, TP=2 and PP=2 (fp32, CPU gloo).

The tiny models are made here with transformers (random init, save_pretrained). The vocabulary
(97) is odd, so TP=2 also exercises the padded-vocabulary path.
"""

from __future__ import annotations

import pytest
import torch
from dist_utils import run_distributed

from megatron_grpo.models.tiny import save_tiny_qwen3

VOCAB = 97
# (tp, pp, sequence_parallel) on the same 2 processes (TP=1 is then DP=2)
LAYOUTS = [(1, 1, False), (2, 1, False), (2, 1, True), (1, 2, False)]


def _input_ids() -> torch.Tensor:
    return torch.randint(2, VOCAB, (2, 12), generator=torch.Generator().manual_seed(7))


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_qwen3")
    return {
        "untied": save_tiny_qwen3(root / "untied", VOCAB, tie_word_embeddings=False, seed=1),
        "tied": save_tiny_qwen3(root / "tied", VOCAB, tie_word_embeddings=True, seed=2),
    }


def megatron_logits(model, input_ids: torch.Tensor) -> torch.Tensor | None:
    """Full-vocab logits [b, s, V] of a TP x PP model on the last stage's TP rank 0, else None.

    Pipeline stages pass hidden states with plain send/recv (the test's own schedule).
    """
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    b, s = input_ids.shape
    pos = torch.arange(s, device=input_ids.device)[None].expand(b, -1)
    pp_ranks = dist.get_process_group_ranks(ps.get_pipeline_model_parallel_group())
    stage = ps.get_pipeline_model_parallel_rank()
    with torch.no_grad():
        if stage > 0:
            hidden = torch.empty(s, b, model.config.hidden_size, dtype=model.config.params_dtype,
                                 device=input_ids.device)
            dist.recv(hidden, src=pp_ranks[stage - 1])
            model.set_input_tensor(hidden)
        out = model(input_ids, pos, None)
        if not ps.is_pipeline_last_stage():
            dist.send(out.contiguous(), dst=pp_ranks[stage + 1])
            return None
    tp = ps.get_tensor_model_parallel_world_size()
    parts = [torch.empty_like(out) for _ in range(tp)]
    dist.all_gather(parts, out.contiguous(), group=ps.get_tensor_model_parallel_group())
    full = torch.cat(parts, dim=-1)
    padded = full[..., model.hf_vocab_size:]
    assert padded.numel() == 0 or bool((padded < -1e30).all()), "padded vocab logits must be masked"
    return full[..., : model.hf_vocab_size] if ps.get_tensor_model_parallel_rank() == 0 else None


def _logits_in_all_layouts(model_dirs: dict[str, str], input_ids: torch.Tensor):
    from megatron_grpo.distributed import destroy_distributed, init_distributed
    from megatron_grpo.models.hf_mapping import load_hf_checkpoint
    from megatron_grpo.models.qwen3 import build_qwen3_model, transformer_config_from_hf

    results = {}
    for tp, pp, sp in LAYOUTS:
        init_distributed(tp=tp, pp=pp, sequence_parallel=sp)
        for kind, path in model_dirs.items():
            config = transformer_config_from_hf(path, tp=tp, pp=pp, sequence_parallel=sp)
            model = build_qwen3_model(path, config).eval()
            load_hf_checkpoint(model, path)
            results[(kind, tp, pp, sp)] = megatron_logits(model, input_ids)
        destroy_distributed(keep_process_group=True)
    return results


def test_megatron_logits_match_transformers(tiny_models):
    from transformers import AutoModelForCausalLM

    ids = _input_ids()
    per_rank = run_distributed(_logits_in_all_layouts, 2, tiny_models, ids)
    for kind, path in tiny_models.items():
        hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        with torch.no_grad():
            ref = hf(input_ids=ids).logits
        assert ref.std() > 0.3  # the random model is far from uniform: a wrong mapping shows
        for layout in LAYOUTS:
            got = [r[(kind, *layout)] for r in per_rank if r[(kind, *layout)] is not None]
            assert got, f"no rank returned logits for {kind} (TP, PP, SP)={layout}"
            for logits in got:
                diff = float((logits - ref).abs().max())
                assert diff < 1e-4, f"{kind} (TP, PP, SP)={layout}: max |megatron - transformers| = {diff:.2e}"


def _reference_attention(q, k, v, allowed):
    """Plain softmax attention with GQA by repetition; q [sq,b,n,d], k/v [sk,b,g,d] -> [sq,b,n*d]."""
    rep = q.shape[2] // k.shape[2]
    k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
    scores = torch.einsum("qbnd,kbnd->bnqk", q, k) / q.shape[-1] ** 0.5
    probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    out = torch.einsum("bnqk,kbnd->qbnd", probs, v)
    return out.reshape(q.shape[0], q.shape[1], -1)


def test_sdpa_core_attention_masks():
    from megatron.core.transformer import TransformerConfig
    from megatron.core.transformer.enums import AttnMaskType

    from megatron_grpo.models.qwen3 import SDPAttention

    cfg = TransformerConfig(num_layers=1, hidden_size=32, num_attention_heads=4, num_query_groups=2)
    attn = SDPAttention(cfg, 1, AttnMaskType.causal, "self").eval()
    g = torch.Generator().manual_seed(0)
    q = torch.randn(7, 2, 4, 8, generator=g)
    k, v = torch.randn(7, 2, 2, 8, generator=g), torch.randn(7, 2, 2, 8, generator=g)
    causal = torch.ones(7, 7, dtype=torch.bool).tril()
    torch.testing.assert_close(attn(q, k, v, None), _reference_attention(q, k, v, causal))
    # decoding with a KV cache: the 3 newest queries see every key up to their own position
    torch.testing.assert_close(attn(q[4:], k, v, None), _reference_attention(q[4:], k, v, causal[4:]))
    # an explicit megatron mask (True = masked): block-diagonal causal, as for two packed sequences
    block = causal.clone()
    block[4:, :4] = False
    got = attn(q, k, v, ~block[None, None].expand(2, 1, 7, 7))
    torch.testing.assert_close(got, _reference_attention(q, k, v, block))


def _bf16_logits_on_gpu(model_dirs: dict[str, str], input_ids: torch.Tensor):
    from megatron_grpo.distributed import init_distributed
    from megatron_grpo.models.hf_mapping import load_hf_checkpoint
    from megatron_grpo.models.qwen3 import build_qwen3_model, transformer_config_from_hf

    init_distributed(tp=1, pp=1)
    out = {}
    for kind, path in model_dirs.items():
        config = transformer_config_from_hf(path, tp=1, pp=1, params_dtype=torch.bfloat16)
        model = build_qwen3_model(path, config).eval()
        load_hf_checkpoint(model, path)
        assert next(model.parameters()).is_cuda and next(model.parameters()).dtype == torch.bfloat16
        out[kind] = megatron_logits(model, input_ids.cuda()).float().cpu()
    return out


@pytest.mark.gpu
def test_megatron_bf16_logits_match_transformers_on_gpu(tiny_models):
    """bf16 on one GPU: Megatron's error against the fp32 reference is no worse than transformers' own
    bf16 error (both round differently; the bound is what bf16 itself costs)."""
    from transformers import AutoModelForCausalLM

    assert torch.cuda.is_available(), "the gpu tests need a CUDA device"
    ids = _input_ids()
    (got,) = run_distributed(_bf16_logits_on_gpu, 1, tiny_models, ids, start_method="spawn", timeout_s=600)
    for kind, path in tiny_models.items():
        with torch.no_grad():
            ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()(input_ids=ids).logits
            hf16 = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).cuda().eval()
            hf_err = float((hf16(input_ids=ids.cuda()).logits.float().cpu() - ref).abs().max())
        err = float((got[kind] - ref).abs().max())
        assert err <= 2 * hf_err + 1e-2, f"{kind}: bf16 megatron error {err:.3e} vs transformers bf16 {hf_err:.3e}"
