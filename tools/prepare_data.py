"""Thin wrapper: same as `megatron-grpo prepare-data` (see megatron_grpo/data/prepare.py)."""

import sys

from megatron_grpo.data.prepare import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
