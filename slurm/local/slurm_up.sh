#!/usr/bin/env bash
# Real SLURM clusters on this machine, for the launch tests (`make slurm-up`; `make test` runs it).
#
# Installs Debian's slurmctld/slurmd/slurm-client and munge with apt-get when missing and starts
# two independent clusters (each its own slurmctld, slurm.conf and state), waiting until `sinfo`
# shows their nodes idle. Idempotent: a cluster already up is left as it is.
#   one node   $SLURM_LOCAL_DIR (default /tmp/megatron_grpo_slurm): node <hostname> at 127.0.0.1,
#              CPUs = nproc, no GPUs; slurmctld port 6817, slurmd 6818
#   two nodes  $SLURM_LOCAL_DIR/two: nodes n1 (127.0.0.2) and n2 (127.0.0.3), one CPU each, both
#              on this host (one `slurmd -N <node>` per node); slurmctld port 6827, slurmd 7821/7822.
#              Every address is on this machine's loopback range (the whole 127/8 is local).
#
# Contract with the tests (tests/test_launch_slurm.py):
#   $SLURM_LOCAL_DIR/env.sh          `export SLURM_CONF=...` of the one-node cluster (also printed)
#   $SLURM_LOCAL_DIR/two/env.sh      the same for the two-node cluster (printed as SLURM_CONF_TWO_NODES)
#   $SLURM_LOCAL_DIR/unavailable.txt why SLURM could not be brought up (then the SLURM tests FAIL
#                                    with that text). The script itself exits 0 in that case so that
#                                    `make test` still runs every other test; set SLURM_UP_STRICT=1
#                                    to exit 1 instead.
set -uo pipefail

D=${SLURM_LOCAL_DIR:-/tmp/megatron_grpo_slurm}
D2=$D/two
mkdir -p "$D/state" "$D/spool" "$D/log" "$D2/state" "$D2/spool" "$D2/log"
rm -f "$D/unavailable.txt"

unavailable() {
    echo "slurm_up: SLURM is not available: $*" >&2
    echo "$*" >"$D/unavailable.txt"
    [ "${SLURM_UP_STRICT:-0}" = 1 ] && exit 1
    exit 0
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# "idle" when every node of the cluster of slurm.conf $1 is usable, else the states seen
nodes_state() {
    local states
    states=$(SLURM_CONF=$1 timeout 5 sinfo -h -N -o %t 2>/dev/null | sort -u)
    if [ -n "$states" ] && ! grep -qvE '^(idle|mix|alloc|comp)$' <<<"$states"; then echo idle
    else echo "${states:-unknown}" | tr '\n' ' '; fi
}

# the daemons of cluster dir $1 (slurmctld + one slurmd per node) are running and its nodes usable
cluster_up() {
    local f
    pid_alive "$1/slurmctld.pid" || return 1
    for f in "$1"/slurmd*.pid; do pid_alive "$f" || return 1; done
    [ "$(nodes_state "$1/slurm.conf")" = idle ]
}

print_env() {
    echo "export SLURM_CONF=$D/slurm.conf" >"$D/env.sh"
    echo "export SLURM_CONF=$D2/slurm.conf" >"$D2/env.sh"
    echo "export SLURM_CONF=$D/slurm.conf"
    echo "export SLURM_CONF_TWO_NODES=$D2/slurm.conf"
}

# ---------------------------------------------------------------- fast path: already up
if cluster_up "$D" && cluster_up "$D2"; then print_env; exit 0; fi

# ---------------------------------------------------------------- install
need_install=0
for bin in /usr/sbin/slurmctld /usr/sbin/slurmd /usr/bin/sbatch /usr/sbin/munged; do
    [ -x "$bin" ] || need_install=1
done
if [ "$need_install" = 1 ]; then
    if [ "$(id -u)" != 0 ]; then
        if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
            unavailable "slurmctld/slurmd/munge are not installed and this user (uid $(id -u)) is not root" \
                "and has no password-less sudo, so apt-get cannot install them"
        fi
    else SUDO=""; fi
    command -v apt-get >/dev/null || unavailable "slurm is not installed and apt-get is missing (not Debian/Ubuntu)"
    pkgs="slurmctld slurmd slurm-client munge"
    echo "slurm_up: installing $pkgs with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    if ! $SUDO apt-get install -y -q $pkgs >"$D/log/apt.log" 2>&1; then
        $SUDO apt-get update -q >>"$D/log/apt.log" 2>&1
        $SUDO apt-get install -y -q $pkgs >>"$D/log/apt.log" 2>&1 || \
            unavailable "apt-get install $pkgs failed: $(tail -n 3 "$D/log/apt.log" | tr '\n' ' ')"
    fi
fi
[ "$(id -u)" = 0 ] || unavailable "the daemons must run as root (uid $(id -u)): slurmd needs root to launch jobs"

# ---------------------------------------------------------------- munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    [ -f /etc/munge/munge.key ] || { /usr/sbin/mungekey -c 2>/dev/null || \
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; }
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    runuser -u munge -- /usr/sbin/munged || unavailable "munged did not start (see /var/log/munge/munged.log)"
    touch "$D/munged.started"
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 || unavailable "munge credentials do not round-trip"
fi

# ---------------------------------------------------------------- slurm.conf
HOST=$(hostname -s)
CPUS=$(nproc)
MEM=$(( $(awk '/MemTotal/{print $2}' /proc/meminfo) / 1024 * 9 / 10 ))

# settings shared by both clusters; $1 = cluster dir, $2 = name, $3 = slurmctld port
common_conf() {
    cat <<CONF
# test cluster written by slurm/local/slurm_up.sh
ClusterName=$2
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# requeued jobs wait cred_expire+1 s before they are eligible again (default 120 s); keep tests fast
AuthInfo=cred_expire=${SLURM_CRED_EXPIRE:-5}
StateSaveLocation=$1/state
SlurmctldPidFile=$1/slurmctld.pid
SlurmctldLogFile=$1/log/slurmctld.log
SlurmctldPort=$3
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=10
MinJobAge=600
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
# poll often: a requeued job becomes eligible on a timer, not on an event
SchedulerParameters=sched_interval=2,bf_interval=2
CONF
}

{
    common_conf "$D" megatron-grpo-local "${SLURMCTLD_PORT:-6817}"
    cat <<CONF
SlurmdSpoolDir=$D/spool
SlurmdPidFile=$D/slurmd.pid
SlurmdLogFile=$D/log/slurmd.log
SlurmdPort=${SLURMD_PORT:-6818}
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
} >"$D/slurm.conf"

# Two nodes on this host: each slurmd is started with -N <node>; %n in the paths is the node name.
# The nodes share this machine's CPUs with the one-node cluster (the tests run one job at a time).
{
    common_conf "$D2" megatron-grpo-local2 "${SLURMCTLD_PORT_TWO_NODES:-6827}"
    cat <<CONF
SlurmdSpoolDir=$D2/spool/%n
SlurmdPidFile=$D2/slurmd-%n.pid
SlurmdLogFile=$D2/log/slurmd-%n.log
# a dead node is noticed after 30 s (default 300 s)
SlurmdTimeout=30
NodeName=n1 NodeHostname=$HOST NodeAddr=127.0.0.2 Port=7821 CPUs=1 RealMemory=$((MEM / 2)) State=UNKNOWN
NodeName=n2 NodeHostname=$HOST NodeAddr=127.0.0.3 Port=7822 CPUs=1 RealMemory=$((MEM / 2)) State=UNKNOWN
PartitionName=two Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
} >"$D2/slurm.conf"

# ---------------------------------------------------------------- daemons
# (Re)start the daemons of cluster dir $1; $2.. = the slurmd node names (-N), "" for the host.
start_cluster() {
    local dir=$1 conf=$1/slurm.conf f node
    shift
    cluster_up "$dir" && return 0
    # A stale set from an earlier run (other conf, dead node): stop it first.
    for f in "$dir"/slurmd*.pid "$dir/slurmctld.pid"; do
        if pid_alive "$f"; then kill "$(cat "$f")" 2>/dev/null; fi
    done
    for _ in $(seq 50); do
        local alive=0
        for f in "$dir"/slurmd*.pid "$dir/slurmctld.pid"; do pid_alive "$f" && alive=1; done
        [ "$alive" = 0 ] && break; sleep 0.1
    done
    rm -f "$dir"/slurmd*.pid
    # -c: start from a clean job table (no jobs left over from an earlier test run)
    /usr/sbin/slurmctld -c -f "$conf" || unavailable "slurmctld did not start (see $dir/log/slurmctld.log)"
    for node in "$@"; do
        if [ -n "$node" ]; then mkdir -p "$dir/spool/$node"; /usr/sbin/slurmd -f "$conf" -N "$node"
        else /usr/sbin/slurmd -f "$conf"; fi || unavailable "slurmd ${node} did not start (see $dir/log)"
    done
    local state=""
    for _ in $(seq 60); do
        state=$(nodes_state "$conf")
        [ "$state" = idle ] && break
        sleep 0.5
    done
    if [ "$state" != idle ]; then
        local reason
        reason=$(SLURM_CONF=$conf scontrol show node 2>/dev/null | grep -o 'Reason=.*' | head -n1)
        unavailable "the nodes of $conf are '${state}' not idle after 30 s ${reason} (logs in $dir/log)"
    fi
    SLURM_CONF=$conf sinfo >&2
}

start_cluster "$D" ""
start_cluster "$D2" n1 n2
print_env
