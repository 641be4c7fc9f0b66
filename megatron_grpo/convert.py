"""`megatron-grpo convert-to-hf`: a training checkpoint (step folder) -> a Hugging Face folder.

    megatron-grpo convert-to-hf results/<exp>/checkpoints/step_100 --out hf_step_100
    torchrun --nproc_per_node 2 tools/convert_to_hf.py STEP_DIR --out OUT --tp 2   # big models

The step folder's model (megatron dist checkpoint, any training TP x PP) is resharded on load to
the TP x PP of this run (default 1 x 1, one process), then written through the refit stream of
``models.hf_mapping``: config.json, sharded safetensors + index, and the tokenizer files saved
with the checkpoint. ``AutoModelForCausalLM.from_pretrained(OUT)`` loads it.
"""

from __future__ import annotations

import argparse
import re
import sys
import time

_DTYPES = ("auto", "bfloat16", "float16", "float32")


def parse_size(text: str) -> int:
    """``"2GB"`` / ``"500MiB"`` / ``"1000000"`` -> bytes (GB = 10**9, GiB = 2**30)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*", text, flags=re.IGNORECASE)
    if m is None:
        raise argparse.ArgumentTypeError(f"--max-shard-size {text!r}: expected e.g. 2GB, 500MiB or 1000000")
    number, unit, binary = float(m.group(1)), m.group(2).upper(), m.group(3)
    power = "KMGT".index(unit) + 1 if unit else 0
    return int(number * ((1024 if binary else 1000) ** power))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="megatron-grpo convert-to-hf", description=__doc__.split("\n")[0])
    p.add_argument("step_dir", help="checkpoint folder, e.g. results/<exp>/checkpoints/step_100")
    p.add_argument("--out", required=True, help="output folder (replaced if it exists)")
    p.add_argument("--tp", type=int, default=1, help="tensor parallel size of this run (default 1)")
    p.add_argument("--pp", type=int, default=1, help="pipeline parallel size of this run (default 1)")
    p.add_argument("--dtype", choices=_DTYPES, default="auto",
                   help="dtype of the written weights (default: the dtype the model was trained in)")
    p.add_argument("--max-shard-size", type=parse_size, default=parse_size("2GiB"),
                   help="largest safetensors shard (default 2GiB)")
    p.add_argument("--tokenizer-dir", default=None,
                   help="copy tokenizer files from here instead of the checkpoint's tokenizer")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pathlib import Path

    import torch

    from megatron_grpo.checkpoint import build_model_for_export, read_run_config
    from megatron_grpo.distributed import destroy_distributed, init_distributed
    from megatron_grpo.models.hf_mapping import save_hf_checkpoint

    step_dir = Path(args.step_dir)
    if not (step_dir / "run_config.json").exists():
        print(f"convert-to-hf: {step_dir} has no run_config.json; pass a step_<n> folder written by "
              "the trainer", file=sys.stderr)
        return 2
    t0 = time.time()
    layout = init_distributed(tp=args.tp, pp=args.pp)
    try:
        model, hf_config = build_model_for_export(step_dir)
        if args.dtype != "auto":
            model = model.to(getattr(torch, args.dtype))
        tokenizer_dir = args.tokenizer_dir or read_run_config(step_dir).get("tokenizer_dir")
        if tokenizer_dir is not None and not Path(tokenizer_dir).is_dir():
            tokenizer_dir = None
        save_hf_checkpoint(model, args.out, hf_config, tokenizer_dir=tokenizer_dir,
                           max_shard_bytes=args.max_shard_size)
    finally:
        destroy_distributed()
    if layout.rank == 0:
        note = "" if tokenizer_dir else " (no tokenizer files: pass --tokenizer-dir)"
        print(f"convert-to-hf: wrote {args.out} from {step_dir} in {time.time() - t0:.1f}s{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
