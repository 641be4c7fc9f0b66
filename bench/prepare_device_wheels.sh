#!/usr/bin/env bash
# Download the cp312 wheels that the GPU device machine lacks into .device_wheels/ (run HERE, on a
# machine with PyPI access), plus a copy of the Workplace sandbox CSVs the GRPO smoke test needs.
#
# Why: the device machine (one H100/H200, Python 3.12, torch 2.11, transformers, safetensors, numpy,
# psutil, pyyaml, pytest, rich, tensorboard, pandas; ../.library/device/KINDS.md) has no network and
# no megatron-core. Everything else this repo imports on the GPU paths is already in its image, so
# only megatron-core travels (no ray: the GPU tests use the in-process env pool, env.num_actors=0;
# no vllm / transformer-engine: far over the 64 MiB that a call may carry).
#
#   bash bench/prepare_device_wheels.sh            # then: run(command="bash bench/device_check.sh",
#                                                  #           carry=[".device_wheels"])
#
# .device_wheels/ must be git-ignored (the device tool only carries ignored paths named in `carry`);
# this script adds it to .git/info/exclude when .gitignore does not already list it.
# Env: PYTHON (default .venv/bin/python, else python3), MCORE_VERSION (default 0.16.1: the version CI
# tests on CPU; 0.19.x also has cp312 wheels and is in the supported range).
set -euo pipefail

cd "$(dirname "$0")/.."
DEST=.device_wheels
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
MCORE_VERSION=${MCORE_VERSION:-0.16.1}
SANDBOX_SRC=${WORKPLACE_DATA_DIR:-../shared/data/workplace_assistant/csv_data}

if ! git check-ignore -q "$DEST/x.whl" 2>/dev/null; then
    echo "/$DEST/" >> .git/info/exclude
    echo "note: added /$DEST/ to .git/info/exclude (ask the lead to add it to .gitignore)"
fi

rm -rf "$DEST"
mkdir -p "$DEST"
# one version of each wheel only (two of the same package stop the install there)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$DEST" "megatron-core==${MCORE_VERSION}"

# the sandbox databases for the 3-step GRPO test (../shared does not travel to the device machine)
if [ -d "$SANDBOX_SRC/processed" ]; then
    mkdir -p "$DEST/csv_data"
    cp -r "$SANDBOX_SRC/processed" "$SANDBOX_SRC/raw" "$DEST/csv_data/"
else
    echo "warning: no sandbox at $SANDBOX_SRC (set WORKPLACE_DATA_DIR); the GRPO GPU test will fail" >&2
fi

echo "== $DEST"
ls -l "$DEST"
carried=$(du -sb "$DEST" | cut -f1)
tree=$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
total=$((carried + tree))
printf 'carried %.1f MiB + working tree %.1f MiB = %.1f MiB (limit 64 MiB)\n' \
    "$(echo "$carried / 1048576" | bc -l)" "$(echo "$tree / 1048576" | bc -l)" "$(echo "$total / 1048576" | bc -l)"
if [ "$total" -ge $((64 * 1048576)) ]; then
    echo "error: over the 64 MiB a device call may carry" >&2
    exit 1
fi
