#!/usr/bin/env bash
# A real one-node SLURM on this machine, for the launch tests (`make slurm-up`; `make test` runs it).
#
# Installs Debian's slurmctld/slurmd/slurm-client and munge with apt-get when missing, writes a
# one-node slurm.conf for localhost (no GPUs, CPUs = nproc) under $SLURM_LOCAL_DIR
# (default /tmp/megatron_grpo_slurm), starts munged, slurmctld and slurmd and waits until `sinfo`
# shows the node idle. Idempotent: with the daemons already up it returns at once.
#
# Contract with the tests (tests/test_launch_slurm.py):
#   $SLURM_LOCAL_DIR/env.sh          `export SLURM_CONF=...` (also printed on stdout)
#   $SLURM_LOCAL_DIR/unavailable.txt why SLURM could not be brought up (then the SLURM tests FAIL
#                                    with that text). The script itself exits 0 in that case so that
#                                    `make test` still runs every other test; set SLURM_UP_STRICT=1
#                                    to exit 1 instead.
set -uo pipefail

D=${SLURM_LOCAL_DIR:-/tmp/megatron_grpo_slurm}
CONF=$D/slurm.conf
mkdir -p "$D/state" "$D/spool" "$D/log"
rm -f "$D/unavailable.txt"

unavailable() {
    echo "slurm_up: SLURM is not available: $*" >&2
    echo "$*" >"$D/unavailable.txt"
    [ "${SLURM_UP_STRICT:-0}" = 1 ] && exit 1
    exit 0
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

node_state() { SLURM_CONF=$CONF timeout 5 sinfo -h -o %t 2>/dev/null | head -n1; }

print_env() {
    echo "export SLURM_CONF=$CONF" >"$D/env.sh"
    echo "export SLURM_CONF=$CONF"
}

# ---------------------------------------------------------------- fast path: already up
if pid_alive "$D/slurmctld.pid" && pid_alive "$D/slurmd.pid"; then
    case "$(node_state)" in
        idle|mix|alloc|comp) print_env; exit 0 ;;
    esac
fi

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
cat >"$CONF" <<CONF
# one-node test cluster written by slurm/local/slurm_up.sh
ClusterName=megatron-grpo-local
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# requeued jobs wait cred_expire+1 s before they are eligible again (default 120 s); keep tests fast
AuthInfo=cred_expire=${SLURM_CRED_EXPIRE:-5}
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
SlurmctldPort=${SLURMCTLD_PORT:-6817}
SlurmdPort=${SLURMD_PORT:-6818}
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
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF

# ---------------------------------------------------------------- daemons
# A stale pair from an earlier run (other conf, dead node): stop it first.
for f in "$D/slurmd.pid" "$D/slurmctld.pid"; do
    if pid_alive "$f"; then kill "$(cat "$f")" 2>/dev/null; fi
done
for _ in $(seq 50); do
    pid_alive "$D/slurmd.pid" || pid_alive "$D/slurmctld.pid" || break; sleep 0.1
done
# -c: start from a clean job table (no jobs left over from an earlier test run)
/usr/sbin/slurmctld -c -f "$CONF" || unavailable "slurmctld did not start (see $D/log/slurmctld.log)"
/usr/sbin/slurmd -f "$CONF" || unavailable "slurmd did not start (see $D/log/slurmd.log)"

state=""
for _ in $(seq 60); do
    state=$(node_state)
    [ "$state" = idle ] && break
    sleep 0.5
done
if [ "$state" != idle ]; then
    reason=$(SLURM_CONF=$CONF scontrol show node "$HOST" 2>/dev/null | grep -o 'Reason=.*')
    unavailable "node $HOST is '${state:-unknown}' not idle after 30 s ${reason} (logs in $D/log)"
fi
SLURM_CONF=$CONF sinfo >&2
print_env
