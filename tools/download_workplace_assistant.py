"""Thin wrapper: same as `megatron-grpo download` (see megatron_grpo/data/download.py)."""

import sys

from megatron_grpo.data.download import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
