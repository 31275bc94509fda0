#!/usr/bin/env bash
# A real one-node Slurm cluster on this machine, for testing the sbatch templates (tests/test_slurm.py).
#
#   tools/slurm/local_cluster.sh up     install slurm-wlm + munge if missing, configure, start, wait for idle
#   tools/slurm/local_cluster.sh down   stop the daemons that `up` started (by their pid files)
#
# Needs root and apt-get (Debian/Ubuntu). Nothing leaves the machine: one node named $(hostname -s),
# one partition `debug`, munge authentication with a local key, no accounting database (use
# `scontrol show job` rather than sacct). `up` leaves running daemons alone and only writes
# /etc/slurm/slurm.conf when there is none or it is one this script wrote.
# Environment: LOCAL_SLURM_CPUS (default 2), LOCAL_SLURM_WAIT (seconds to wait for idle, default 60).
set -euo pipefail

CONF=/etc/slurm/slurm.conf
MARKER="# written by tools/slurm/local_cluster.sh"
STATE=/run/lit_align_local_slurm       # one line per daemon this script started: NAME PIDFILE
HOST=$(hostname -s)
CPUS=${LOCAL_SLURM_CPUS:-2}
WAIT=${LOCAL_SLURM_WAIT:-60}

die() { echo "local_cluster.sh: $*" >&2; exit 1; }
say() { echo "local_cluster.sh: $*"; }

# The pid file names a running process (called NAME, when given: a stale pid file may name a reused pid).
alive() {
    [[ -s $1 ]] || return 1
    local pid; pid=$(cat "$1")
    kill -0 "$pid" 2>/dev/null || return 1
    [[ -z ${2:-} || $(cat "/proc/$pid/comm" 2>/dev/null) == "$2" ]]
}

install_packages() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null && return
    command -v apt-get >/dev/null || die "slurmctld is missing and there is no apt-get to install slurm-wlm"
    say "installing slurm-wlm and munge with apt-get"
    # Keep package scripts from starting daemons themselves: this script starts (and stops) them.
    local own_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && own_policy=1
    fi
    local rc=0
    { DEBIAN_FRONTEND=noninteractive apt-get update -qq \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null; } || rc=$?
    (( own_policy )) && rm -f /usr/sbin/policy-rc.d
    (( rc == 0 )) || die "apt-get install slurm-wlm munge failed (exit $rc)"
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null || die "slurm-wlm installed but slurmctld/slurmd not found"
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then say "munge already works"; return; fi
    id munge >/dev/null 2>&1 || die "no 'munge' user (is the munge package installed?)"
    mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge /etc/munge/munge.key /run/munge /var/lib/munge /var/log/munge
    chmod 400 /etc/munge/munge.key
    chmod 700 /etc/munge /var/lib/munge /var/log/munge
    chmod 755 /run/munge
    runuser -u munge -- munged || die "munged did not start (see /var/log/munge/munged.log)"
    echo "munged /run/munge/munged.pid" >> "$STATE/started"
    local out
    for _ in $(seq 20); do
        out=$(munge -n 2>&1 | unmunge 2>&1) && grep -q Success <<<"$out" && { say "munge works"; return; }
        sleep 0.5
    done
    die "munge -n | unmunge does not say Success: $out"
}

write_conf() {
    if [[ -e $CONF ]] && ! grep -qF "$MARKER" "$CONF"; then
        die "$CONF exists and was not written by this script; refusing to replace it"
    fi
    local mem_mb
    mem_mb=$(awk '/MemTotal/ {m = int($2 / 1024 * 0.9); print (m < 20000 ? m : 20000)}' /proc/meminfo)
    mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
    cat > "$CONF" <<EOF
$MARKER: a one-node test cluster on $HOST.
ClusterName=local
SlurmctldHost=$HOST
AuthType=auth/munge
CredType=cred/munge
# A requeued job waits cred_expire seconds (default 120) before it may start again; the scheduler
# passes run every few seconds instead of every 30-60, so a test's requeued job restarts promptly.
AuthInfo=cred_expire=20
SchedulerParameters=sched_interval=5,bf_interval=5
SlurmUser=root
SlurmdUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
NodeName=$HOST CPUs=$CPUS RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
}

start_slurm() {
    if alive /run/slurmctld.pid; then
        say "slurmctld already running"
    else
        # -c: start from a clean state (no jobs left over from an earlier test run).
        slurmctld -c || die "slurmctld did not start (see /var/log/slurm/slurmctld.log)"
        echo "slurmctld /run/slurmctld.pid" >> "$STATE/started"
    fi
    for _ in $(seq 20); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.5; done
    scontrol ping 2>/dev/null | grep -q UP || die "slurmctld does not answer scontrol ping (see /var/log/slurm/slurmctld.log)"
    if alive /run/slurmd.pid; then
        say "slurmd already running"
    else
        slurmd || die "slurmd did not start (see /var/log/slurm/slurmd.log)"
        echo "slurmd /run/slurmd.pid" >> "$STATE/started"
    fi
}

wait_idle() {
    local state="" resumed=0
    for _ in $(seq $((WAIT * 2))); do
        state=$(sinfo -h -N -n "$HOST" -o %t 2>/dev/null | head -n1)
        case $state in
            idle|mix|alloc) say "node $HOST is $state; partition debug is up"; return ;;
            down*|drain*|drng*)
                if (( !resumed )); then scontrol update NodeName="$HOST" State=RESUME 2>/dev/null || true; resumed=1; fi ;;
        esac
        sleep 0.5
    done
    die "node $HOST is '${state:-not listed}' after ${WAIT}s, not idle (see /var/log/slurm/slurmd.log and slurmctld.log)"
}

up() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (installs packages, starts daemons)"
    install_packages
    mkdir -p "$STATE"
    touch "$STATE/started"
    # Forget daemons that have stopped since (e.g. the machine's processes were ended).
    local name pidfile kept=""
    while read -r name pidfile; do
        if alive "$pidfile" "$name"; then kept+="$name $pidfile"$'\n'; fi
    done < "$STATE/started"
    printf '%s' "$kept" > "$STATE/started"
    start_munge
    write_conf
    start_slurm
    wait_idle
}

down() {
    [[ -s $STATE/started ]] || { say "nothing to stop (no daemons started by this script)"; return; }
    # Our cluster: end its jobs first so no job steps outlive the daemons.
    if command -v scancel >/dev/null && grep -q '^slurmctld ' "$STATE/started"; then
        scancel --user=root 2>/dev/null || true
        sleep 1
    fi
    local name pidfile pid
    # Stop in reverse start order: slurmd, slurmctld, munged.
    tac "$STATE/started" | while read -r name pidfile; do
        alive "$pidfile" "$name" || { say "$name is not running"; continue; }
        pid=$(cat "$pidfile")
        kill "$pid"
        for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
        if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
        say "stopped $name (pid $pid)"
    done
    rm -f "$STATE/started"
}

case ${1:-} in
    up) up ;;
    down) down ;;
    *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
