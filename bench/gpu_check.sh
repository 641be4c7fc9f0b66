#!/usr/bin/env bash
# The single-GPU check in one command: the `gpu` tests plus the four GPU benchmarks, with a summary.
#
# For a GPU node without network (Python 3.12 with a CUDA torch and transformers, no megatron-core):
# pre-download what it lacks on a machine with network, copy the checkout (with .gpu_wheels/) to the
# node and run this script there:
#   bash bench/prepare_gpu_wheels.sh     # with network: .gpu_wheels/ (megatron-core wheel + sandbox CSVs)
#   bash bench/gpu_check.sh              # on the GPU node (OUT=DIR chooses where results go)
# On a node with network where `pip install -e '.[test]'` is done, the install part changes nothing.
#
# What it runs (each part under its own time limit, all inside BUDGET_S seconds; a part that would
# start with less than 20 s left is skipped and reported as such):
#
#   part        what                                                        expected (H100/H200)  limit
#   install     pre-downloaded wheels (.gpu_wheels/*.whl: megatron-core)     ~10 s                 60 s
#               with pip --no-deps --no-index; this repo with
#               pip install --no-deps --no-build-isolation -e . (PYTHONPATH fallback)
#   pytest      pytest -m "gpu and not vllm" on the files with gpu tests:     ~3-4 min              240 s
#               bf16 parity, refit parity, 3-step GRPO (megatron and hf
#               engines), megatron engine bf16, policy offload/checkpoint.
#               None needs Ray (the GRPO test uses env.num_actors=0); the vLLM
#               GPU test runs with -m "gpu and vllm" where vLLM is installed
#   refit       bench/refit.py: Qwen3-4B stream -> hf engine vs copy floor  ~40 s                 75 s
#   train_step  bench/train_step.py: Qwen3-4B seq 4096, ours vs bare mcore  ~50 s                 90 s
#   generation  bench/generation.py: megatron engine (CUDA graphs) at batch ~2 min                150 s
#               16/64/256 vs the hf engine at batch 64, prompt 1024, 256 new
#   shared_prefix  bench/shared_prefix.py --device cuda: logprobs + train step,  ~30 s                60 s
#               one packed row per group vs one row per sample (small Qwen3
#               shape, bf16, prompt 4096, G=16)
#
# Outputs in $OUT (default results/gpu_check/): summary.txt (card, versions, per-part rc and seconds,
# the headline numbers), pytest.log, refit.log, train_step.log, generation.log, shared_prefix.log and the four bench
# JSON files. Rerun only some parts: bash bench/gpu_check.sh refit generation
# Env: BUDGET_S (default 560), WHEELS (default .gpu_wheels), PYTEST_ARGS (extra pytest args,
# e.g. "-x"), PYTHON (default python3).
set -uo pipefail

cd "$(dirname "$0")/.."
REPO=$PWD
OUT=${OUT:-$REPO/results/gpu_check}
mkdir -p "$OUT"
WHEELS=${WHEELS:-.gpu_wheels}
BUDGET_S=${BUDGET_S:-560}
PY=${PYTHON:-python3}
START=$(date +%s)
SUMMARY=$OUT/summary.txt
PARTS=("$@")
[ ${#PARTS[@]} -eq 0 ] && PARTS=(install pytest refit train_step generation shared_prefix)

export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
if [ -d "$WHEELS/csv_data/processed" ]; then
    export WORKPLACE_DATA_DIR=$REPO/$WHEELS/csv_data  # the sandbox for the GRPO test (no network on the node)
fi

say() { echo "$*" | tee -a "$SUMMARY"; }

# run_part NAME LIMIT_S COMMAND: the command in its own process group under `timeout` (which kills
# the whole group, spawned test children included), output to $OUT/NAME.log (install: summary.txt)
run_part() {
    local name=$1 limit=$2 cmd=$3 log="$OUT/$1.log"
    local remaining=$((BUDGET_S - ($(date +%s) - START)))
    if [ "$remaining" -lt 20 ]; then
        say "== $name: SKIPPED (budget of ${BUDGET_S}s spent)"
        return
    fi
    [ "$limit" -gt $((remaining - 5)) ] && limit=$((remaining - 5))
    [ "$name" = install ] && log=$SUMMARY
    local t0=$(date +%s)
    echo "== $name (limit ${limit}s): $cmd" >> "$SUMMARY"
    timeout -k 10 "$limit" bash -c "$cmd" >> "$log" 2>&1
    local rc=$?
    local why=""
    [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && why=" (TIMED OUT)"
    say "== $name: rc=$rc$why in $(($(date +%s) - t0))s"
}

want() { local p; for p in "${PARTS[@]}"; do [ "$p" = "$1" ] && return 0; done; return 1; }

{
    echo "== gpu_check $(date -u +%FT%TZ) parts: ${PARTS[*]} budget ${BUDGET_S}s"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || true
    "$PY" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, \
'cuda', torch.version.cuda, 'gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None)" 2>&1
    echo "pre-downloaded: $(ls "$WHEELS" 2>&1 | tr '\n' ' ')"
    echo "WORKPLACE_DATA_DIR=${WORKPLACE_DATA_DIR:-<unset>}"
} >> "$SUMMARY"

if want install; then
    run_part install 60 "
        set -e
        ls $WHEELS/*.whl >/dev/null
        $PY -m pip install -q --no-index --no-deps --no-cache-dir $WHEELS/*.whl \
          || { $PY -m pip install -q --no-index --no-deps --no-cache-dir --target /tmp/site $WHEELS/*.whl \
               && echo 'installed into /tmp/site (PYTHONPATH)'; }
        $PY -m pip install -q --no-deps --no-build-isolation --no-index -e . \
          || echo 'editable install failed: using PYTHONPATH=$REPO'
        $PY -c 'import megatron.core, megatron_grpo, transformers; print(\"megatron-core\", megatron.core.__version__, \"transformers\", transformers.__version__)'
    "
    [ -d /tmp/site ] && export PYTHONPATH=/tmp/site:$PYTHONPATH
fi

if want pytest; then
    # only the files that hold gpu tests (collecting the CPU suite would import ray/datasets, which a
    # bare GPU image may lack); a collection error in one file must not stop the others
    GPU_TEST_FILES=$(grep -l 'pytest.mark.gpu' tests/test_*.py | tr '\n' ' ')
    run_part pytest 240 "$PY -m pytest -m 'gpu and not vllm' $GPU_TEST_FILES -v -rfE --timeout 200 \
        --continue-on-collection-errors -p no:cacheprovider ${PYTEST_ARGS:-}"
fi
if want refit; then
    run_part refit 75 "$PY bench/refit.py --out $OUT/refit_bench.json"
fi
if want train_step; then
    run_part train_step 90 "$PY bench/train_step.py --shape qwen3-4b --seq 4096 --steps 5 --out $OUT/train_step_bench.json"
fi
if want generation; then
    run_part generation 150 "$PY bench/generation.py --batches 16,64,256 --hf-batches 64 --no-eager \
        --out $OUT/generation_bench.json"
fi
if want shared_prefix; then
    run_part shared_prefix 60 "$PY bench/shared_prefix.py --device cuda --threads 4 --out $OUT/shared_prefix_bench.json"
fi

{
    echo "== headline numbers"
    [ -f "$OUT/pytest.log" ] && grep -h " PASSED\| FAILED\| ERROR\|passed\|failed" "$OUT/pytest.log" | grep -v "^FAILED\|^ERROR" | sed "s/^/pytest: /"
    [ -f "$OUT/refit.log" ] && grep -h '"ratio_refit_over_floor"' "$OUT/refit.log" | sed 's/^/refit: /'
    [ -f "$OUT/train_step.log" ] && grep -h '"path"\|"ratio_ours_over_bare"' "$OUT/train_step.log" | sed 's/^/train_step: /'
    [ -f "$OUT/generation.log" ] && grep -h '"ratio"\|"compare"' "$OUT/generation.log" | sed 's/^/generation: /'
    [ -f "$OUT/shared_prefix.log" ] && grep -h '"tokens_ratio"' "$OUT/shared_prefix.log" | sed 's/^/shared_prefix: /'
    echo "== total $(($(date +%s) - START))s"
} >> "$SUMMARY" 2>&1
cat "$SUMMARY"
