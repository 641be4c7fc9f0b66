#!/usr/bin/env bash
# GRPO on 8 nodes x 8 GPUs: `sbatch slurm/grpo_8node.sh [CONFIG.yaml] [section.key=value ...]`
# Run from the repository root (or set MEGATRON_GRPO_ROOT). Every #SBATCH line below is a default:
# sbatch flags override it (e.g. `sbatch --nodes=4 --time=12:00:00 -p gpu -A myacct slurm/grpo_8node.sh`).
# CPU test run on 2 nodes, 1 gloo rank each (the two-node test cluster of slurm/local/slurm_up.sh):
#   RAY_NUM_CPUS=1 sbatch -N 2 --ntasks-per-node=1 --gpus-per-node=0 slurm/grpo_8node.sh configs/tiny_cpu.yaml ...
# Environment knobs (TRAIN_CMD, SETUP_COMMAND, CONTAINER_IMAGE, CONTAINER_MOUNTS, RAY_*, ...):
# see slurm/common.sh and docs/launch.md.
#SBATCH --job-name=megatron-grpo
#SBATCH --nodes=8
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --signal=USR1@120
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
MEGATRON_GRPO_ROOT=${MEGATRON_GRPO_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}
# shellcheck source=slurm/common.sh
source "$MEGATRON_GRPO_ROOT/slurm/common.sh" || { echo "run sbatch from the repository root" >&2; exit 1; }
grpo_run_job configs/grpo_workplace_assistant_qwen3_4binstruct.yaml "$@"
