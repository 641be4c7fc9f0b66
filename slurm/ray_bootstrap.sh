#!/usr/bin/env bash
# One Ray node of the job's Ray cluster; run inside an srun step by slurm/common.sh:
#   srun --overlap -N1 -n1 -w HEAD bash slurm/ray_bootstrap.sh head
#   srun --overlap -N $((N-1)) --ntasks-per-node=1 --exclude=HEAD bash slurm/ray_bootstrap.sh worker
# Environment: RAY_HEAD_IP, RAY_PORT (required); RAY_TMP_DIR, RAY_NUM_CPUS, RAY_OBJECT_STORE_BYTES,
# RAY_JOIN_TIMEOUT_S, PYTHON (optional). The command line and port plan live in megatron_grpo/launch.py.
#
# Signals: SIGUSR1 (SLURM's preemption warning, meant for the trainer) is ignored here and in Ray.
# SIGTERM / SIGUSR2 / SIGINT stop Ray cleanly (`ray start --block` stops the processes it started)
# and exit 0, so the job script can tell "stopped on purpose" (0) from "Ray died" (non-zero).
set -uo pipefail
role=${1:?usage: ray_bootstrap.sh head|worker}
trap '' USR1
args=(--head-ip "${RAY_HEAD_IP:?}" --port "${RAY_PORT:?}" --node-name "${SLURMD_NODENAME:-$(hostname -s)}"
      --timeout "${RAY_JOIN_TIMEOUT_S:-600}")
[ -n "${RAY_TMP_DIR:-}" ] && [ "$role" = head ] && args+=(--temp-dir "$RAY_TMP_DIR")
[ -n "${RAY_NUM_CPUS:-}" ] && args+=(--num-cpus "$RAY_NUM_CPUS")
[ -n "${RAY_OBJECT_STORE_BYTES:-}" ] && args+=(--object-store-bytes "$RAY_OBJECT_STORE_BYTES")

"${PYTHON:-python}" -m megatron_grpo.launch ray-node "$role" "${args[@]}" &
pid=$!
stopping=0
stop() {
    stopping=1
    kill -TERM "$pid" 2>/dev/null
}
trap stop TERM USR2 INT
while :; do
    wait "$pid"
    rc=$?
    kill -0 "$pid" 2>/dev/null || break   # wait returned because of a trapped signal otherwise
done
if [ "$stopping" = 1 ]; then
    echo "ray_bootstrap: $role on ${SLURMD_NODENAME:-$(hostname -s)} stopped"
    exit 0
fi
echo "ray_bootstrap: $role on ${SLURMD_NODENAME:-$(hostname -s)} exited with $rc" >&2
exit "$rc"
