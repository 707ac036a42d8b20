#!/usr/bin/env bash
# A real single-node SLURM (munge + slurmctld + slurmd, Debian's 22.05 packages) for tests.
#
# Why a script and not only a pytest fixture: `make test`, CI and a human debugging a
# failed test all need the same cluster, started the same way; the fixture calls this.
#
# It installs nothing (apt-get install -y slurmd slurmctld slurm-client munge first).
# Idempotent: `up` on a running cluster with the same configuration is a no-op that
# waits for the node. Daemons are stopped by the pids in their pid files, never by name.
#
#   .ci/slurm-up.sh up            configure, start munge/slurmctld/slurmd, wait for the node
#   .ci/slurm-up.sh down          stop slurmd and slurmctld (munge too, if we started it)
#   .ci/slurm-up.sh acquire PID   `up`, holding a lease for process PID (a test session)
#   .ci/slurm-up.sh release PID   drop PID's lease; the last lease out stops the cluster
#                                 (`down`), unless KEEP_TEST_CLUSTER=1
#   .ci/slurm-up.sh stop-ctld     stop slurmctld only   (fault tests: controller gone)
#   .ci/slurm-up.sh start-ctld    start slurmctld again (it recovers its saved state)
#   .ci/slurm-up.sh restart-ctld  both of the above
#   .ci/slurm-up.sh status        print node state and partitions; exit 1 if not up
#   .ci/slurm-up.sh env           print KEY=VALUE lines the fixture reads
#
# The configuration lives in /etc/slurm (slurm.conf + gres.conf), because every client
# (sbatch over a local transport, or over SSH to this machine as a "login node") finds
# it there without SLURM_CONF; both files carry a marker and a foreign slurm.conf is
# never overwritten. State, spool, logs and pid files live in $LLM_OPS_SLURM_DIR.
set -euo pipefail

STATE_DIR="${LLM_OPS_SLURM_DIR:-/tmp/llm-ops-slurm}"
CONF_DIR=/etc/slurm
MARKER="# managed by llm-ops-mcp .ci/slurm-up.sh"
HOST="$(hostname -s)"
NGPU=2
PARTITIONS=(debug batch)   # first one is the default

log() { echo "slurm-up: $*" >&2; }

# One actor at a time: test sessions share the cluster, and a fault test that has stopped
# slurmctld on purpose must not see another session's `up` start it again under it. A
# caller that already holds the lock (the fixture's controller_down) sets LLM_OPS_SLURM_LOCK_HELD.
lock() {
    [[ -n "${LLM_OPS_SLURM_LOCK_HELD:-}" ]] && return 0
    mkdir -p "$STATE_DIR"
    exec 9>"$STATE_DIR/lock"
    flock 9
}
# Every daemon is started with fd 9 closed (`9>&-`): a daemon that inherited it would hold
# the lock for as long as it runs, and the next `up` or fault test would wait forever.
die() { log "error: $*"; exit 1; }

need_tools() {
    local t
    for t in munged slurmctld slurmd sbatch squeue sinfo scontrol; do
        command -v "$t" >/dev/null 2>&1 || [[ -x /usr/sbin/$t ]] \
            || die "$t not found: apt-get install -y slurmd slurmctld slurm-client munge"
    done
    [[ $(id -u) -eq 0 ]] || die "must run as root (slurmd and munge need it)"
}

# alive PIDFILE EXE: true when the pid in PIDFILE runs EXE (a reused pid is not ours).
alive() {
    local pidfile=$1 exe=$2 pid
    [[ -s $pidfile ]] || return 1
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -d /proc/$pid ]] || return 1
    [[ "$(readlink "/proc/$pid/exe" 2>/dev/null)" == *"$exe"* ]]
}

# stop_pidfile PIDFILE EXE: TERM, wait up to 10 s, then KILL. Only the pid in the file.
stop_pidfile() {
    local pidfile=$1 exe=$2 pid i
    if ! alive "$pidfile" "$exe"; then rm -f "$pidfile"; return 0; fi
    pid=$(<"$pidfile")
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do
        [[ -d /proc/$pid ]] || break
        sleep 0.1
    done
    if [[ -d /proc/$pid ]]; then log "$exe ($pid) ignored TERM; KILL"; kill -KILL "$pid" 2>/dev/null || true; fi
    rm -f "$pidfile"
}

mem_mb() {
    # 90 % of MemTotal, rounded down to 128 MB: stable from run to run (free memory is not),
    # and under what slurmd measures, so the node never goes INVAL for "low RealMemory".
    local kb
    kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
    echo $(( (kb / 1024 * 9 / 10) / 128 * 128 ))
}

render_conf() {
    local cpus mem
    cpus=$(nproc)
    mem=$(mem_mb)
    cat <<EOF
$MARKER
ClusterName=llmops
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$STATE_DIR/state
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$STATE_DIR/slurmctld.log
SlurmdLogFile=$STATE_DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
GresTypes=gpu
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
# Tests: finished jobs stay visible in squeue for 5 min; a time limit kills at once.
MinJobAge=300
KillWait=5
OverTimeLimit=0
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem Gres=gpu:$NGPU State=UNKNOWN
PartitionName=${PARTITIONS[0]} Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
PartitionName=${PARTITIONS[1]} Nodes=$HOST Default=NO MaxTime=INFINITE State=UP
EOF
}

render_gres() {
    cat <<EOF
$MARKER
# 22.05 rejects a count-only gpu gres on a node without GPUs; placeholder devices work.
AutoDetect=off
NodeName=$HOST Name=gpu File=/dev/fakegpu[0-$((NGPU - 1))]
EOF
}

# write_if_changed FILE CONTENT: prints "changed" when it wrote.
write_conf() {
    local file=$1 content=$2
    if [[ -e $file ]] && ! grep -qF "$MARKER" "$file"; then
        die "$file exists and is not ours; refusing to overwrite a real cluster's configuration"
    fi
    if [[ -e $file ]] && [[ "$(cat "$file")" == "$content" ]]; then return 1; fi
    printf '%s\n' "$content" >"$file.tmp.$$"
    mv -f "$file.tmp.$$" "$file"
    return 0
}

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    if munge_ok; then return 0; fi
    if [[ ! -s /etc/munge/munge.key ]]; then
        install -d -o munge -g munge -m 700 /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
    install -d -o munge -g munge -m 755 /run/munge
    install -d -o munge -g munge -m 700 /var/lib/munge /var/log/munge
    runuser -u munge -- /usr/sbin/munged --force 9>&-
    touch "$STATE_DIR/munge.ours"
    local i
    for i in $(seq 1 50); do munge_ok && return 0; sleep 0.1; done
    die "munged did not come up"
}

start_ctld() {
    alive "$STATE_DIR/slurmctld.pid" slurmctld && return 0
    /usr/sbin/slurmctld -i 9>&-   # daemonizes; -i: start even if saved state is partly unreadable
    local i
    for i in $(seq 1 100); do
        scontrol ping 2>/dev/null | grep -q "is UP" && return 0
        sleep 0.1
    done
    tail -20 "$STATE_DIR/slurmctld.log" >&2 || true
    die "slurmctld did not answer scontrol ping"
}

start_slurmd() {
    alive "$STATE_DIR/slurmd.pid" slurmd && return 0
    /usr/sbin/slurmd 9>&-
}

node_state() { sinfo -h -N -n "$HOST" -o %T 2>/dev/null | head -1; }

wait_node() {
    local i st=""
    for i in $(seq 1 300); do
        st=$(node_state || true)
        case $st in
            idle|mixed|allocated|completing) return 0 ;;
            down*|drain*|inval*)
                # left over from an earlier run (ReturnToService=2 fixes most): resume it.
                scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true ;;
        esac
        sleep 0.1
    done
    tail -20 "$STATE_DIR/slurmd.log" >&2 || true
    die "node $HOST not idle after 30 s (state: ${st:-unknown})"
}

cmd_up() {
    need_tools
    mkdir -p "$STATE_DIR/state" "$STATE_DIR/spool" "$CONF_DIR"
    local i
    for i in $(seq 0 $((NGPU - 1))); do
        [[ -e /dev/fakegpu$i ]] || mknod "/dev/fakegpu$i" c 1 3
    done
    local changed=0
    write_conf "$CONF_DIR/slurm.conf" "$(render_conf)" && changed=1
    write_conf "$CONF_DIR/gres.conf" "$(render_gres)" && changed=1
    if [[ $changed -eq 1 ]]; then
        log "configuration written; (re)starting daemons"
        stop_pidfile "$STATE_DIR/slurmd.pid" slurmd
        stop_pidfile "$STATE_DIR/slurmctld.pid" slurmctld
    fi
    start_munge
    start_ctld
    start_slurmd
    wait_node
    log "up: node $HOST $(node_state), partitions: $(sinfo -h -o %P | tr '\n' ' ')"
}

cmd_down() {
    stop_pidfile "$STATE_DIR/slurmd.pid" slurmd
    stop_pidfile "$STATE_DIR/slurmctld.pid" slurmctld
    if [[ -e $STATE_DIR/munge.ours ]]; then
        stop_pidfile /run/munge/munged.pid munged
        rm -f "$STATE_DIR/munge.ours"
    fi
    log "down"
}

# Leases: test sessions share the cluster, so the session that ends must not stop it under
# another one still running; each holds a lease (a file named by its pid) and the last one out
# stops it. A lease whose process is gone (a killed pytest) is dropped at the next release.
cmd_acquire() {
    [[ $1 =~ ^[0-9]+$ ]] || die "acquire: not a pid: $1"
    mkdir -p "$STATE_DIR/leases"
    : > "$STATE_DIR/leases/$1"
    cmd_up
}

cmd_release() {
    [[ $1 =~ ^[0-9]+$ ]] || die "release: not a pid: $1"
    rm -f "$STATE_DIR/leases/$1"
    local f left=()
    for f in "$STATE_DIR"/leases/*; do
        [[ -e $f ]] || continue
        if [[ -d /proc/$(basename "$f") ]]; then left+=("$(basename "$f")"); else rm -f "$f"; fi
    done
    if [[ ${#left[@]} -gt 0 ]]; then
        log "release: still leased by pid ${left[*]}: left running"
    elif [[ ${KEEP_TEST_CLUSTER:-} == 1 ]]; then
        log "release: KEEP_TEST_CLUSTER=1: left running (.ci/slurm-up.sh down stops it)"
    else
        cmd_down
    fi
}

cmd_status() {
    scontrol ping 2>/dev/null | grep -q "is UP" || { log "slurmctld not answering"; return 1; }
    echo "node $HOST: $(node_state)"
    sinfo -h -o '%P %a %D %G'
}

cmd_env() {
    echo "SLURM_NODE=$HOST"
    echo "SLURM_CPUS=$(nproc)"
    echo "SLURM_GPUS=$NGPU"
    echo "SLURM_PARTITIONS=${PARTITIONS[*]}"
    echo "SLURM_STATE_DIR=$STATE_DIR"
    echo "SLURM_CONF_FILE=$CONF_DIR/slurm.conf"
}

case "${1:-up}" in
    up) lock; cmd_up ;;
    down) lock; cmd_down ;;
    acquire) lock; cmd_acquire "${2:-}" ;;
    release) lock; cmd_release "${2:-}" ;;
    stop-ctld) lock; stop_pidfile "$STATE_DIR/slurmctld.pid" slurmctld ;;
    start-ctld) lock; need_tools; start_ctld; wait_node ;;
    restart-ctld) lock; stop_pidfile "$STATE_DIR/slurmctld.pid" slurmctld; start_ctld; wait_node ;;
    status) cmd_status ;;
    env) cmd_env ;;
    *) die "usage: $0 up|down|acquire PID|release PID|stop-ctld|start-ctld|restart-ctld|status|env" ;;
esac
