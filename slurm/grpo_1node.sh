#!/usr/bin/env bash
# GRPO on 1 node x 8 GPUs: `sbatch slurm/grpo_1node.sh [CONFIG.yaml] [section.key=value ...]`
# Run from the repository root (or set MEGATRON_GRPO_ROOT). Every #SBATCH line below is a default:
# sbatch flags override it. CPU test run (2 gloo ranks, no GPUs):
#   sbatch --gpus-per-node=0 --ntasks-per-node=2 slurm/grpo_1node.sh configs/tiny_cpu.yaml ...
# Environment knobs (TRAIN_CMD, SETUP_COMMAND, CONTAINER_IMAGE, CONTAINER_MOUNTS, RAY_*, ...):
# see slurm/common.sh and docs/launch.md.
#SBATCH --job-name=megatron-grpo-1node
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --time=04:00:00
#SBATCH --requeue
#SBATCH --signal=USR1@120
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
MEGATRON_GRPO_ROOT=${MEGATRON_GRPO_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}
# shellcheck source=slurm/common.sh
source "$MEGATRON_GRPO_ROOT/slurm/common.sh" || { echo "run sbatch from the repository root" >&2; exit 1; }
grpo_run_job configs/grpo_workplace_assistant_1node_quick.yaml "$@"
