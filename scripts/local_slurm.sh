#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for tests and trying the cluster engine without a cluster.
#
#   scripts/local_slurm.sh start DIR   installs slurm-wlm and munge with apt-get when missing, writes DIR/slurm.conf,
#                                      starts munged, slurmctld and slurmd (no systemd), waits until the node is idle
#                                      and prints the line to source: export SLURM_CONF=DIR/slurm.conf
#   scripts/local_slurm.sh stop DIR    cancels every job, stops the three daemons by the PIDs in DIR
#
# Everything it writes (state, spool, logs, the munge key and socket) is under DIR. It needs root (slurmd
# starts jobs as their user) and exits 3 with a message where the daemons cannot start.
set -euo pipefail

usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
action=$1
dir=$(mkdir -p "$2" && cd "$2" && pwd)
conf=$dir/slurm.conf
export SLURM_CONF=$conf

fail() { echo "local_slurm: $*" >&2; exit 3; }

install_packages() {
    command -v slurmctld >/dev/null && command -v munged >/dev/null && return
    [ "$(id -u)" = 0 ] || fail "slurm-wlm and munge are not installed and installing them needs root (apt-get)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null \
        || fail "apt-get install slurm-wlm munge failed"
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

write_config() {
    local host cpus memory
    host=$(hostname -s)
    cpus=$(nproc)
    memory=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 85 / 100 ))  # MiB, leaving the system some
    mkdir -p "$dir/state" "$dir/spool" "$dir/munge"
    cat > "$conf" <<CONF
ClusterName=localhost
SlurmctldHost=$host
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
InactiveLimit=0
KillWait=5
MinJobAge=600
DefMemPerCPU=$(( memory / cpus ))
NodeName=$host CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
}

start() {
    install_packages
    [ "$(id -u)" = 0 ] || fail "the daemons need root"
    write_config
    [ -s "$dir/munge/munge.key" ] || dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
    chmod 700 "$dir/munge"; chmod 400 "$dir/munge/munge.key"
    munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
        --pid-file="$dir/munged.pid" --log-file="$dir/munged.log" --seed-file="$dir/munge/munge.seed" \
        || fail "munged did not start (see $dir/munged.log)"
    slurmctld -f "$conf" || fail "slurmctld did not start (see $dir/slurmctld.log)"
    slurmd -f "$conf" || fail "slurmd did not start (see $dir/slurmd.log)"
    for _ in $(seq 100); do
        if sinfo -h -o %t 2>/dev/null | grep -qx idle; then
            echo "export SLURM_CONF=$conf"
            return
        fi
        sleep 0.2
    done
    fail "the node did not become idle in 20 s (see $dir/slurmctld.log and $dir/slurmd.log)"
}

stop_pid() {
    local file=$1
    [ -s "$file" ] || return 0
    local pid
    pid=$(cat "$file")
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
}

stop() {
    [ -f "$conf" ] || fail "$conf: no cluster was started in $dir"
    scancel --quiet --user="$(id -un)" 2>/dev/null || true
    stop_pid "$dir/slurmd.pid"
    stop_pid "$dir/slurmctld.pid"
    stop_pid "$dir/munged.pid"
}

case $action in
    start) start ;;
    stop) stop ;;
    *) usage ;;
esac
