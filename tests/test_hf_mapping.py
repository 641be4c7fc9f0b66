"""HF <-> Megatron mapping: round trip, the refit stream's content and buckets, clear load errors.

One 2-process gloo launch runs every distributed check (TP=2, then PP=2 on the same processes);
the parent compares what came back against the safetensors that transformers wrote.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from dist_utils import run_distributed
from safetensors.torch import load_file

from megatron_grpo.models.tiny import save_tiny_qwen3

VOCAB = 97
BUCKET_BYTES = 20_000  # between the small (norms, k/v) and the large (embedding, MLP) tensors


def _tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>", "<|im_end|>"])
    tok.train_from_iterator(["hello world, the tiny model says hi"] * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def _hf_tensors(folder: str | Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_mapping")
    untied = save_tiny_qwen3(root / "untied", VOCAB, seed=3, tokenizer=_tiny_tokenizer())
    tied = save_tiny_qwen3(root / "tied", VOCAB, tie_word_embeddings=True, seed=4)
    # The same weights under a config whose MLP is narrower: shapes no longer match.
    bad = root / "bad_shape"
    shutil.copytree(untied, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (bad / "config.json").write_text(json.dumps(cfg))
    # A config with one layer fewer than the weights hold.
    extra = root / "extra_layer"
    shutil.copytree(untied, extra)
    cfg = json.loads((extra / "config.json").read_text())
    cfg["num_hidden_layers"] = 1
    (extra / "config.json").write_text(json.dumps(cfg))
    return dict(untied=untied, tied=tied, bad_shape=str(bad), extra_layer=str(extra), out=str(root / "export"),
                step=str(root / "step_3"), converted=str(root / "converted"))


def _build(path: str, tp: int, pp: int):
    from megatron_grpo.models.qwen3 import build_qwen3_model, transformer_config_from_hf

    return build_qwen3_model(path, transformer_config_from_hf(path, tp=tp, pp=pp))


def _stream(model) -> tuple[dict[str, torch.Tensor], list[tuple[int, int]]]:
    from megatron_grpo.models.hf_mapping import iter_hf_weights

    tensors, buckets = {}, []
    for bucket in iter_hf_weights(model, BUCKET_BYTES):
        buckets.append((len(bucket), sum(t.numel() * t.element_size() for _, t in bucket)))
        for name, t in bucket:
            assert name not in tensors, f"{name} streamed twice"
            tensors[name] = t.clone()
    return tensors, buckets


def _error(fn) -> str:
    try:
        fn()
    except ValueError as e:
        return str(e)
    return "no error"


def _write_training_checkpoint(model, step_dir: str, hf_dir: str) -> None:
    """The model part of a trainer checkpoint (checkpoint.py's layout), written at this TP x PP."""
    import torch.distributed as dist
    from megatron.core import dist_checkpointing

    if dist.get_rank() == 0:
        Path(step_dir, "model_optim").mkdir(parents=True)
        cfg = json.loads(Path(hf_dir, "config.json").read_text())
        run_config = {"hf_config": cfg, "tokenizer_dir": hf_dir, "params_dtype": "float32"}
        Path(step_dir, "run_config.json").write_text(json.dumps(run_config))
    dist.barrier()
    dist_checkpointing.save({"model": model.sharded_state_dict()}, str(Path(step_dir, "model_optim")),
                            sharded_strategy=("torch_dist", 1))


def _convert(step_dir: str, out: str) -> int:
    from megatron_grpo.convert import main

    return main([step_dir, "--out", out])  # default 2GiB shards: one shard, fused views side by side


def _mapping_checks(ck: dict[str, str]):
    from megatron_grpo.distributed import destroy_distributed, init_distributed
    from megatron_grpo.models.hf_mapping import load_hf_checkpoint, save_hf_checkpoint

    res: dict = {}
    init_distributed(tp=2, pp=1)
    model = _build(ck["untied"], 2, 1)
    load_hf_checkpoint(model, ck["untied"])
    res["stream_tp2"] = _stream(model)
    save_hf_checkpoint(model, ck["out"], ck["untied"], tokenizer_dir=ck["untied"], max_shard_bytes=50_000)
    _write_training_checkpoint(model, ck["step"], ck["untied"])
    res["bad_shape"] = _error(lambda: load_hf_checkpoint(_build(ck["bad_shape"], 2, 1), ck["bad_shape"]))
    res["extra_layer"] = _error(lambda: load_hf_checkpoint(_build(ck["extra_layer"], 2, 1), ck["extra_layer"]))
    destroy_distributed(keep_process_group=True)

    init_distributed(tp=1, pp=2)
    for kind in ("untied", "tied"):
        model = _build(ck[kind], 1, 2)
        load_hf_checkpoint(model, ck[kind])
        res[f"stream_pp2_{kind}"] = _stream(model)
    return res


@pytest.fixture(scope="module")
def results(checkpoints):
    return run_distributed(_mapping_checks, 2, checkpoints)


def _same_logits(dir_a: str, dir_b: str) -> bool:
    from transformers import AutoModelForCausalLM

    ids = torch.randint(2, VOCAB, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = AutoModelForCausalLM.from_pretrained(dir_a, dtype=torch.float32)(input_ids=ids).logits
        b = AutoModelForCausalLM.from_pretrained(dir_b)(input_ids=ids).logits
    return b.dtype == torch.float32 and torch.equal(a, b)


@pytest.mark.parametrize("key,kind", [("stream_tp2", "untied"), ("stream_pp2_untied", "untied"),
                                      ("stream_pp2_tied", "tied")])
def test_refit_stream_is_the_hf_state_dict(results, checkpoints, key, kind):
    expected = _hf_tensors(checkpoints[kind])
    assert ("lm_head.weight" in expected) == (kind == "untied")
    for rank_result in results:  # every rank yields the same full tensors
        tensors, buckets = rank_result[key]
        assert sorted(tensors) == sorted(expected)
        for name, ref in expected.items():
            assert tensors[name].shape == ref.shape, name
            assert torch.equal(tensors[name], ref), f"{name} differs"
        for count, nbytes in buckets:
            assert nbytes <= BUCKET_BYTES or count == 1, f"bucket of {count} tensors has {nbytes} bytes"
        assert any(nbytes > BUCKET_BYTES for _, nbytes in buckets)  # oversized tensors came alone
        assert any(count > 1 for count, _ in buckets)  # small tensors were packed together


def test_round_trip_through_tp2_gives_identical_hf_folder(results, checkpoints):
    from transformers import AutoTokenizer

    out = Path(checkpoints["out"])
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 1 and set(index["weight_map"].values()) == {s.name for s in shards}
    src, dst = _hf_tensors(checkpoints["untied"]), _hf_tensors(out)
    assert sorted(src) == sorted(dst)
    assert all(torch.equal(src[k], dst[k]) for k in src)
    assert _same_logits(checkpoints["untied"], str(out))
    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok.decode(tok("hello world")["input_ids"]) == "hello world"


def test_convert_to_hf_from_a_tp2_training_checkpoint(results, checkpoints):
    """HF -> Megatron TP=2 -> dist checkpoint -> `convert-to-hf` on one process -> transformers."""
    assert run_distributed(_convert, 1, checkpoints["step"], checkpoints["converted"]) == [0]
    out = Path(checkpoints["converted"])
    assert len(list(out.glob("model-*.safetensors"))) == 1 and (out / "tokenizer.json").exists()
    src, dst = _hf_tensors(checkpoints["untied"]), _hf_tensors(out)
    assert sorted(src) == sorted(dst) and all(torch.equal(src[k], dst[k]) for k in src)
    assert _same_logits(checkpoints["untied"], str(out))


def test_load_errors_name_the_tensor(results):
    msg = results[0]["bad_shape"]
    assert "model.layers.0.mlp.gate_proj.weight" in msg and "[128, 64]" in msg and "[96, 64]" in msg, msg
    msg = results[0]["extra_layer"]
    assert "model.layers.1." in msg and "num_hidden_layers" in msg, msg


def _tp2_pp2_checks(ck: dict[str, str], input_ids: torch.Tensor):
    from test_models_parity import megatron_logits

    from megatron_grpo.distributed import init_distributed
    from megatron_grpo.models.hf_mapping import load_hf_checkpoint

    init_distributed(tp=2, pp=2)
    res = {}
    for kind in ("untied", "tied"):
        model = _build(ck[kind], 2, 2).eval()
        load_hf_checkpoint(model, ck[kind])
        res[f"logits_{kind}"] = megatron_logits(model, input_ids)
        res[f"stream_{kind}"] = _stream(model)
    return res


def test_tp2_pp2_on_four_ranks_logits_and_stream(checkpoints):
    """Gather over TP and broadcast over PP together; the tied output layer lives on the last stage."""
    from transformers import AutoModelForCausalLM

    ids = torch.randint(2, VOCAB, (2, 8), generator=torch.Generator().manual_seed(5))
    per_rank = run_distributed(_tp2_pp2_checks, 4, checkpoints, ids)
    for kind in ("untied", "tied"):
        with torch.no_grad():
            ref = AutoModelForCausalLM.from_pretrained(checkpoints[kind], dtype=torch.float32)(input_ids=ids).logits
        logits = [r[f"logits_{kind}"] for r in per_rank if r[f"logits_{kind}"] is not None]
        assert len(logits) == 1 and float((logits[0] - ref).abs().max()) < 1e-4
        expected = _hf_tensors(checkpoints[kind])
        for r in per_rank:
            tensors, _ = r[f"stream_{kind}"]
            assert sorted(tensors) == sorted(expected)
            assert all(torch.equal(tensors[n], expected[n]) for n in expected)


def test_convert_shard_size_parsing():
    import argparse

    from megatron_grpo.convert import parse_size

    assert parse_size("2GB") == 2 * 10**9 and parse_size("2GiB") == 2 * 2**30
    assert parse_size("500MiB") == 500 * 2**20 and parse_size("40KB") == 40_000 and parse_size("1000") == 1000
    with pytest.raises(argparse.ArgumentTypeError, match="--max-shard-size"):
        parse_size("two gigs")
