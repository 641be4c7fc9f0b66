"""Thin wrapper: same as `megatron-grpo convert-to-hf` (see megatron_grpo/convert.py)."""

import sys

from megatron_grpo.convert import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
