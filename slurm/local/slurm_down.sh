#!/usr/bin/env bash
# Stop the test clusters started by slurm_up.sh (by pid file; munged only if slurm_up started it).
D=${SLURM_LOCAL_DIR:-/tmp/megatron_grpo_slurm}
pids=()
files=("$D"/slurmd*.pid "$D/slurmctld.pid" "$D"/two/slurmd*.pid "$D/two/slurmctld.pid")
if [ -f "$D/munged.started" ]; then files+=(/run/munge/munged.pid); rm -f "$D/munged.started"; fi
for f in "${files[@]}"; do
    pid=$(cat "$f" 2>/dev/null) || continue
    kill "$pid" 2>/dev/null && pids+=("$pid")
done
for _ in $(seq 50); do
    alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
done
rm -f "$D/env.sh" "$D/two/env.sh"
echo "slurm_down: stopped ${#pids[@]} daemon(s)"
