"""Submit a GRPO run with submitit: the same topology as slurm/grpo_*.sh (see megatron_grpo/launch.py).

    python tools/launch_submitit.py configs/grpo_workplace_assistant_qwen3_4binstruct.yaml \
        --nodes 8 --gpus-per-node 8 --partition gpu --time-min 1440 [section.key=value ...]
    python tools/launch_submitit.py configs/tiny_cpu.yaml --cluster local --gpus-per-node 0 \
        --ntasks-per-node 2 --wait

Preflight runs first, on this host; a failing check stops the submission and prints its fix.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from megatron_grpo.launch import PreflightFailed, submit


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="launch_submitit.py", description=__doc__.split("\n\n")[0])
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="dotted config overrides")
    p.add_argument("--cluster", choices=("slurm", "local", "debug"), default="slurm")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=8, help="0: CPU ranks (gloo)")
    p.add_argument("--ntasks-per-node", type=int, default=None, help="ranks per node (default: GPUs)")
    p.add_argument("--cpus-per-task", type=int, default=None)
    p.add_argument("--partition", default=None)
    p.add_argument("--account", default=None)
    p.add_argument("--time-min", type=int, default=240)
    p.add_argument("--container-image", default=None, help="pyxis image or .sqsh")
    p.add_argument("--container-mounts", default=None, help="src:dst[,src:dst] (default: cwd)")
    p.add_argument("--train-cmd", default="megatron-grpo train", help="rank command (gets --config ...)")
    p.add_argument("--folder", default=None, help="submitit folder (default <log_dir>/submitit)")
    p.add_argument("--no-ray", action="store_true", help="do not start a Ray cluster")
    p.add_argument("--no-preflight", action="store_true")
    p.add_argument("--gpu-memory-gb", type=float, default=80.0)
    p.add_argument("--wait", action="store_true", help="block until the job ends; exit 1 if it failed")
    args = p.parse_args(argv)
    try:
        job = submit(
            args.config, args.overrides, nodes=args.nodes, gpus_per_node=args.gpus_per_node,
            ntasks_per_node=args.ntasks_per_node, cpus_per_task=args.cpus_per_task, cluster=args.cluster,
            partition=args.partition, account=args.account, time_min=args.time_min,
            container_image=args.container_image, container_mounts=args.container_mounts,
            train_cmd=shlex.split(args.train_cmd), ray=not args.no_ray, folder=args.folder,
            preflight=not args.no_preflight, gpu_memory_gb=args.gpu_memory_gb,
        )
    except PreflightFailed as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"submitted job {job.job_id} ({args.cluster}); logs: {job.paths.stdout}")
    if args.wait:
        try:
            print(f"results: {job.results()}")
        except Exception as exc:  # submitit raises FailedJobError with the task's traceback
            print(f"job {job.job_id} failed: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
