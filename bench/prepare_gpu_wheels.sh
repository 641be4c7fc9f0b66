#!/usr/bin/env bash
# Pre-download what a GPU node without network needs for bench/gpu_check.sh into .gpu_wheels/ (run
# it on a machine with PyPI access, then copy the checkout to the node): the cp312 megatron-core
# wheel and a copy of the Workplace sandbox CSVs (for the 3-step GRPO test).
#
# Why only megatron-core: a GPU image with Python 3.12, a CUDA torch, transformers, safetensors, numpy,
# psutil, pyyaml, pytest, rich, tensorboard and pandas has everything else the GPU tests import (no
# Ray: the GPU tests use the in-process env pool, env.num_actors=0; vLLM and transformer-engine come
# with the `vllm`/`gpu` extras on nodes that have network).
#
#   bash bench/prepare_gpu_wheels.sh
#
# Env: PYTHON (default .venv/bin/python, else python3), MCORE_VERSION (default 0.16.1: the version CI
# tests on CPU; 0.19.x also has cp312 wheels and is in the supported range).
set -euo pipefail

cd "$(dirname "$0")/.."
DEST=.gpu_wheels
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
MCORE_VERSION=${MCORE_VERSION:-0.16.1}
# the sandbox: WORKPLACE_DATA_DIR, else the download cache (fetched from PyPI when missing)
if [ -z "${WORKPLACE_DATA_DIR:-}" ]; then
    "$PY" -m environment.workplace.sandbox_fetch >&2
fi
SANDBOX_SRC=${WORKPLACE_DATA_DIR:-$("$PY" -c "from environment.workplace.sandbox_fetch import default_sandbox_dir as d; print(d())")}

rm -rf "$DEST"
mkdir -p "$DEST"
# one version of each wheel only (two of the same package stop the install there)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$DEST" "megatron-core==${MCORE_VERSION}"

# the sandbox databases for the 3-step GRPO test (the node cannot fetch them)
if [ -d "$SANDBOX_SRC/processed" ]; then
    mkdir -p "$DEST/csv_data"
    cp -r "$SANDBOX_SRC/processed" "$SANDBOX_SRC/raw" "$DEST/csv_data/"
else
    echo "warning: no sandbox at $SANDBOX_SRC (set WORKPLACE_DATA_DIR); the GRPO GPU test will fail" >&2
fi

echo "== $DEST ($(du -sh "$DEST" | cut -f1))"
ls -l "$DEST"
