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
LAYOUTS = [(1, 1), (2, 1), (1, 2)]  # (tp, pp) on the same 2 processes (TP=1 is then DP=2)


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
    pos = torch.arange(s)[None].expand(b, -1)
    pp_ranks = dist.get_process_group_ranks(ps.get_pipeline_model_parallel_group())
    stage = ps.get_pipeline_model_parallel_rank()
    with torch.no_grad():
        if stage > 0:
            hidden = torch.empty(s, b, model.config.hidden_size)
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
    for tp, pp in LAYOUTS:
        init_distributed(tp=tp, pp=pp)
        for kind, path in model_dirs.items():
            model = build_qwen3_model(path, transformer_config_from_hf(path, tp=tp, pp=pp)).eval()
            load_hf_checkpoint(model, path)
            results[(kind, tp, pp)] = megatron_logits(model, input_ids)
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
        for tp, pp in LAYOUTS:
            got = [r[(kind, tp, pp)] for r in per_rank if r[(kind, tp, pp)] is not None]
            assert got, f"no rank returned logits for {kind} TP={tp} PP={pp}"
            for logits in got:
                diff = float((logits - ref).abs().max())
                assert diff < 1e-4, f"{kind} TP={tp} PP={pp}: max |megatron - transformers| = {diff:.2e}"
