#!/usr/bin/env bash
# Shared body of slurm/grpo_1node.sh and slurm/grpo_8node.sh; sourced inside the batch job.
#
# What a job does, in order (each step's failure ends the whole job, with the reason in the log):
#   1. `megatron-grpo preflight` for this allocation (layout, batch math, memory, data, sandbox, ...)
#   2. a Ray head on the first node and one Ray worker on every other node (environment actors),
#      with token authentication (a fresh token per job, in the job's environment only);
#      waits until every node joined, else names the missing node(s) and stops
#   3. one trainer rank per GPU: `srun --kill-on-bad-exit=1 ... megatron-grpo train --config CFG ...`
#      with RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT / RAY_ADDRESS set
#   4. waits on the trainer and the Ray steps together (`wait -n`): any of them dying stops the rest
#   5. preemption: SLURM's SIGUSR1 (--signal=USR1@120) or SIGTERM reaches the ranks; they save and
#      exit with 75 (megatron_grpo/preemption.py) -> `scontrol requeue` -> the requeued job resumes
#      (checkpointing.resume=auto). SLURM_RESTART_COUNT counts the restarts.
#   6. Ray is stopped on every exit path (trap), so no process outlives the job.
# Logs: <dir of logger.log_dir>, i.e. results/<exp>/logs/: job-<id>.log (this script and all ranks,
# prefixed with the rank), ray-head-<id>.log, ray-workers-<id>.log, preflight output at the top.
#
# Environment (all optional; sbatch exports the submitting shell's environment):
#   CONFIG              config file when the first argument is not a .yaml (default: per script)
#   TRAIN_CMD           the rank command, word-split (default "megatron-grpo train"); it gets
#                       "--config CFG overrides..." appended
#   SETUP_COMMAND       eval'd first in the batch shell, e.g. "source .venv/bin/activate"
#   PYTHON              python with megatron_grpo importable (default "python")
#   GPUS_PER_NODE       default from sbatch --gpus-per-node; 0 = CPU ranks (gloo)
#   NTASKS_PER_NODE     ranks per node (default sbatch --ntasks-per-node, else GPUS_PER_NODE)
#   MEGATRON_GRPO_DEVICE cuda | cpu (default cuda when GPUS_PER_NODE > 0)
#   PREFLIGHT=0         skip step 1;  GPU_MEMORY_GB  memory per GPU for the preflight estimate (80)
#   RAY=0               skip step 2 (no environment actors on Ray; a RAY_ADDRESS of yours is used
#                       with your own Ray settings)
#   RAY_PORT            Ray GCS port (default 6379 + (job id % 250) * 10; uses RAY_PORT..RAY_PORT+7)
#   RAY_HEAD_IP         address the workers and ranks use for the head (default: the first node's
#                       SLURM NodeAddr); every Ray node advertises its own NodeAddr
#   RAY_JOIN_TIMEOUT_S  deadline for all nodes to join (600); RAY_NUM_CPUS  CPUs Ray offers per node
#   MASTER_ADDR         torch rendezvous address (default: the first node's NodeAddr)
#   MASTER_PORT         torch rendezvous port (default 15000 + job id % 20000)
#   REQUEUE=0           do not requeue after a preemption exit
#   SRUN_ARGS           extra flags for the trainer srun (e.g. "--cpu-bind=none")
#   LOG_DIR             overrides the log folder taken from the config
# Containers (pyxis/enroot): every srun gets them when CONTAINER_IMAGE is set
#   CONTAINER_IMAGE     image or .sqsh file   -> --container-image
#   CONTAINER_MOUNTS    "src:dst[,src:dst]"   -> --container-mounts (default "$ROOT:$ROOT")
#   CONTAINER_WORKDIR   -> --container-workdir (default the repo root); --no-container-mount-home always
#   Then preflight and the Ray wait run inside the container too (as one-task srun steps).

grpo_log() { printf '[grpo %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# IPv4 address of SLURM node $1: its NodeAddr (what slurmd listens on; the compute network on
# clusters with several interfaces, the only difference between nodes that share a host), else
# whatever its name resolves to.
grpo_node_addr() {
    local addr
    addr=$(scontrol show node -o "$1" 2>/dev/null | grep -o 'NodeAddr=[^ ]*' | cut -d= -f2)
    getent ahostsv4 "${addr:-$1}" | awk 'NR==1{print $1; exit}'
}

# The node whose ranks failed first in this run of the job, from srun's "srun: error: NODE: task.."
grpo_failed_node() {
    sed -n "/job $JOB_ID restart $RESTART:/,\$p" "$JOB_LOG" 2>/dev/null \
        | grep -m1 -oE '^srun: error: [^:]+: tasks? [^:]+: .*' | sed -E 's/^srun: error: //'
}

# Run a python module on the first node: directly, or inside the container as a one-task step.
grpo_py() {
    if [ -n "${CONTAINER_IMAGE:-}" ]; then
        srun --overlap --nodes=1 --ntasks=1 -w "$HEAD_NODE" "${CONTAINER_ARGS[@]}" "$PYTHON" "$@"
    else
        "$PYTHON" "$@"
    fi
}

# Stop the Ray steps: SIGUSR2 -> srun forwards it -> ray_bootstrap.sh stops Ray cleanly.
grpo_stop_ray() {
    [ "${#RAY_PIDS[@]}" -gt 0 ] || return 0
    local pid deadline=$((SECONDS + 30))
    for pid in "${RAY_PIDS[@]}"; do kill -USR2 "$pid" 2>/dev/null; done
    for pid in "${RAY_PIDS[@]}"; do
        while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
        kill -0 "$pid" 2>/dev/null && kill -TERM "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    RAY_PIDS=()
    grpo_log "Ray stopped"
}

grpo_cleanup() {
    local rc=$?
    if [ -n "${TRAIN_PID:-}" ] && kill -0 "$TRAIN_PID" 2>/dev/null; then
        kill -TERM "$TRAIN_PID" 2>/dev/null
        wait "$TRAIN_PID" 2>/dev/null
    fi
    grpo_stop_ray
    [ -n "${PREFLIGHT_TMP:-}" ] && rm -rf "$PREFLIGHT_TMP"
    return $rc
}

# SIGUSR1 (--signal=B:USR1@...) or SIGTERM to this shell: pass the warning on to the ranks.
grpo_on_signal() {
    grpo_log "got SIG$1: asking the trainer ranks to save and exit"
    PREEMPT_SIGNALED=1
    [ -n "${TRAIN_PID:-}" ] && kill -USR1 "$TRAIN_PID" 2>/dev/null
}

grpo_run_job() {
    local default_config=$1
    shift
    set -uo pipefail
    CONFIG=${CONFIG:-$default_config}
    if [ $# -gt 0 ] && [[ "$1" == *.yaml || "$1" == *.yml ]]; then CONFIG=$1; shift; fi
    OVERRIDES=("$@")
    ROOT=$MEGATRON_GRPO_ROOT
    cd "$ROOT" || { echo "cannot cd to $ROOT" >&2; return 1; }
    if [ -n "${SETUP_COMMAND:-}" ]; then eval "$SETUP_COMMAND" || { grpo_log "SETUP_COMMAND failed"; return 1; }; fi
    PYTHON=${PYTHON:-python}
    RAY_PIDS=()
    TRAIN_PID=""
    PREEMPT_SIGNALED=0
    trap grpo_cleanup EXIT
    trap 'grpo_on_signal USR1' USR1
    trap 'grpo_on_signal TERM' TERM

    # ---------------------------------------------------------------- topology
    JOB_ID=${SLURM_JOB_ID:?not inside a SLURM job: submit with sbatch}
    RESTART=${SLURM_RESTART_COUNT:-0}
    NNODES=${SLURM_JOB_NUM_NODES:-1}
    mapfile -t NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
    HEAD_NODE=${NODES[0]}
    local gpus_default=${SLURM_GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-0}}
    GPUS_PER_NODE=${GPUS_PER_NODE:-${gpus_default##*:}}
    if [ -z "${NTASKS_PER_NODE:-}" ]; then
        if [ -n "${SLURM_NTASKS_PER_NODE:-}" ]; then NTASKS_PER_NODE=${SLURM_NTASKS_PER_NODE%%(*}
        elif [ "$GPUS_PER_NODE" -gt 0 ]; then NTASKS_PER_NODE=$GPUS_PER_NODE
        else NTASKS_PER_NODE=$(( ${SLURM_NTASKS:-1} / NNODES )); fi
    fi
    if [ "$GPUS_PER_NODE" -gt 0 ]; then DEVICE=${MEGATRON_GRPO_DEVICE:-cuda}; else DEVICE=${MEGATRON_GRPO_DEVICE:-cpu}; fi
    WORLD_SIZE=$((NNODES * NTASKS_PER_NODE))
    CONTAINER_ARGS=()
    if [ -n "${CONTAINER_IMAGE:-}" ]; then
        CONTAINER_ARGS=(--container-image="$CONTAINER_IMAGE" --container-mounts="${CONTAINER_MOUNTS:-$ROOT:$ROOT}"
                        --container-workdir="${CONTAINER_WORKDIR:-$ROOT}" --no-container-mount-home)
    fi

    # ---------------------------------------------------------------- 1. preflight
    PREFLIGHT_TMP=$(mktemp -d)
    local pf_rc=0
    if [ "${PREFLIGHT:-1}" != 0 ]; then
        grpo_py -m megatron_grpo.cli preflight --config "$CONFIG" --nodes "$NNODES" \
            --gpus-per-node "$NTASKS_PER_NODE" --device "$DEVICE" --gpu-memory-gb "${GPU_MEMORY_GB:-80}" \
            --env-out "$PREFLIGHT_TMP/env" "${OVERRIDES[@]}" >"$PREFLIGHT_TMP/out" 2>&1 || pf_rc=$?
        # shellcheck disable=SC1091
        [ -f "$PREFLIGHT_TMP/env" ] && source "$PREFLIGHT_TMP/env"
    fi
    LOG_DIR=${LOG_DIR:-results/${SLURM_JOB_NAME:-megatron-grpo}/logs}
    mkdir -p "$LOG_DIR"
    JOB_LOG=$LOG_DIR/job-$JOB_ID.log
    exec > >(tee -a "$JOB_LOG") 2>&1
    grpo_log "job $JOB_ID restart $RESTART: $NNODES node(s) [${NODES[*]}] x $NTASKS_PER_NODE rank(s), device $DEVICE"
    grpo_log "config $CONFIG ${OVERRIDES[*]}; logs in $LOG_DIR"
    [ -f "$PREFLIGHT_TMP/out" ] && cat "$PREFLIGHT_TMP/out"
    if [ "$pf_rc" != 0 ]; then
        grpo_log "preflight failed (exit $pf_rc): fix the config or the allocation; nothing was started"
        return 1
    fi

    # ---------------------------------------------------------------- 2. Ray cluster
    HEAD_ADDR=$(grpo_node_addr "$HEAD_NODE")
    HEAD_ADDR=${HEAD_ADDR:-$(hostname -I | awk '{print $1}')}
    export MASTER_ADDR=${MASTER_ADDR:-$HEAD_ADDR}
    export MASTER_PORT=${MASTER_PORT:-$((15000 + JOB_ID % 20000))}
    export RAY_USAGE_STATS_ENABLED=0
    if [ "${RAY:-1}" != 0 ]; then
        # The job's Ray authenticates every client with a token made here, per job (and per requeue),
        # from the kernel's CSPRNG. It reaches the Ray nodes and the ranks only through the job's
        # environment (srun passes it on): never printed, never in a file. RAY=0 + your own
        # RAY_ADDRESS: your Ray settings are left as they are.
        RAY_AUTH_TOKEN=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
        export RAY_AUTH_MODE=token RAY_AUTH_TOKEN
        unset RAY_AUTH_TOKEN_PATH
        export RAY_PORT=${RAY_PORT:-$((6379 + (JOB_ID % 250) * 10))}
        export RAY_HEAD_IP=${RAY_HEAD_IP:-$HEAD_ADDR}
        export RAY_TMP_DIR=${RAY_TMP_DIR:-/tmp/ray_mg_$JOB_ID}
        export RAY_JOIN_TIMEOUT_S=${RAY_JOIN_TIMEOUT_S:-600}
        export PYTHON
        grpo_log "Ray head on $HEAD_NODE ($RAY_HEAD_IP:$RAY_PORT), workers on $((NNODES - 1)) node(s)"
        srun --overlap --nodes=1 --ntasks=1 -w "$HEAD_NODE" --output="$LOG_DIR/ray-head-$JOB_ID.log" \
            --open-mode=append "${CONTAINER_ARGS[@]}" bash "$ROOT/slurm/ray_bootstrap.sh" head &
        RAY_PIDS+=($!)
        if [ "$NNODES" -gt 1 ]; then
            srun --overlap --nodes=$((NNODES - 1)) --ntasks=$((NNODES - 1)) --ntasks-per-node=1 --exclude="$HEAD_NODE" \
                --output="$LOG_DIR/ray-workers-$JOB_ID.log" --open-mode=append "${CONTAINER_ARGS[@]}" \
                bash "$ROOT/slurm/ray_bootstrap.sh" worker &
            RAY_PIDS+=($!)
        fi
        local nodes_csv
        nodes_csv=$(IFS=,; echo "${NODES[*]}")
        grpo_py -m megatron_grpo.launch ray-wait --address "$RAY_HEAD_IP:$RAY_PORT" --nodes "$nodes_csv" \
            --timeout "$RAY_JOIN_TIMEOUT_S" &
        local waiter=$! done_pid="" rc=0
        while :; do
            done_pid=""
            wait -n -p done_pid "$waiter" "${RAY_PIDS[@]}"
            rc=$?
            [ -n "${done_pid:-}" ] && break
        done
        if [ "${done_pid:-}" != "$waiter" ]; then
            grpo_log "ERROR: a Ray step exited (rc $rc) before all nodes joined; see $LOG_DIR/ray-*-$JOB_ID.log"
            kill "$waiter" 2>/dev/null
            return 1
        fi
        if [ "$rc" != 0 ]; then
            grpo_log "ERROR: the Ray cluster did not come up (see above and $LOG_DIR/ray-*-$JOB_ID.log)"
            return 1
        fi
        export RAY_ADDRESS=$RAY_HEAD_IP:$RAY_PORT
    fi

    # ---------------------------------------------------------------- 3. trainer ranks
    export MEGATRON_GRPO_DEVICE=$DEVICE LOCAL_WORLD_SIZE=$NTASKS_PER_NODE
    export MEGATRON_GRPO_PREEMPT_FILE=$LOG_DIR/preempted-$JOB_ID-r$RESTART
    rm -f "$MEGATRON_GRPO_PREEMPT_FILE"
    local -a train_cmd srun_extra
    read -r -a train_cmd <<<"${TRAIN_CMD:-megatron-grpo train}"
    read -r -a srun_extra <<<"${SRUN_ARGS:-}"
    grpo_log "launching $WORLD_SIZE rank(s): ${train_cmd[*]} --config $CONFIG ${OVERRIDES[*]}"
    # shellcheck disable=SC2016
    srun --kill-on-bad-exit=1 --label --nodes="$NNODES" --ntasks-per-node="$NTASKS_PER_NODE" \
        "${CONTAINER_ARGS[@]}" "${srun_extra[@]}" \
        bash -c 'export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS; exec "$@"' rank \
        "${train_cmd[@]}" --config "$CONFIG" "${OVERRIDES[@]}" &
    TRAIN_PID=$!

    # ---------------------------------------------------------------- 4. fail fast
    local train_rc="" done_pid rc
    while [ -z "$train_rc" ]; do
        done_pid=""
        wait -n -p done_pid "$TRAIN_PID" "${RAY_PIDS[@]}"
        rc=$?
        [ -n "${done_pid:-}" ] || continue   # a trapped signal interrupted wait
        if [ "${done_pid:-}" = "$TRAIN_PID" ]; then
            train_rc=$rc
        else
            local keep=() p
            for p in "${RAY_PIDS[@]}"; do [ "$p" != "$done_pid" ] && keep+=("$p"); done
            RAY_PIDS=("${keep[@]}")
            if [ "$rc" != 0 ]; then
                grpo_log "ERROR: a Ray step died (rc $rc) while training; stopping the ranks"
                kill -TERM "$TRAIN_PID" 2>/dev/null
                wait "$TRAIN_PID"
                TRAIN_PID=""
                return 1
            fi
            grpo_log "a Ray step stopped (rc 0, signalled); waiting for the ranks"
        fi
    done
    TRAIN_PID=""
    grpo_stop_ray

    # ---------------------------------------------------------------- 5. preemption -> requeue
    if [ "$train_rc" = 75 ] || [ -f "$MEGATRON_GRPO_PREEMPT_FILE" ]; then
        grpo_log "ranks saved and exited for preemption (rc $train_rc, signal seen here: $PREEMPT_SIGNALED)"
        if [ "${REQUEUE:-1}" != 0 ]; then
            grpo_log "requeue job $JOB_ID (restart $((RESTART + 1)))"
            scontrol requeue "$JOB_ID" && return 0
            grpo_log "ERROR: scontrol requeue failed; resubmit by hand (checkpointing.resume=auto resumes)"
        fi
        return 75
    fi
    if [ "$train_rc" != 0 ]; then
        local failed
        failed=$(grpo_failed_node)
        if [ -n "$failed" ]; then
            grpo_log "ERROR: trainer exited with $train_rc: the ranks on node ${failed%%:*} failed first (${failed#*: }); SLURM stopped the ranks on the other nodes"
        else
            grpo_log "ERROR: trainer exited with $train_rc"
        fi
        return "$train_rc"
    fi
    grpo_log "done"
    return 0
}
