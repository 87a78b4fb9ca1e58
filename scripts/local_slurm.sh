#!/usr/bin/env bash
# A single-node Slurm cluster on localhost, for running the replicate targets through the Slurm
# launcher on this machine (and for the slurm-marked test).
#
#   scripts/local_slurm.sh run -- CMD ARGS...   start, run CMD with SLURM_CONF/PATH set, stop on exit
#   scripts/local_slurm.sh start [DIR]          start (or reuse) and leave running; prints `export ...` lines
#   scripts/local_slurm.sh stop [DIR]           cancel its jobs, stop the daemons it started, remove DIR
#   scripts/local_slurm.sh status [DIR]         exit 0 when it is up (node idle or busy), 1 otherwise
#
# Everything lives under DIR (default $ZONEOUT_SLURM_DIR or /tmp/zoneout-slurm): a munge key and
# socket of its own, a generated slurm.conf (one node: this machine's CPUs and memory, no GPU gres,
# free ports), state, spool and logs. Nothing under /etc or /run is used, so it does not clash with
# a system Slurm. Jobs run as root (this workplace's user). `start` is idempotent: a cluster already
# up in DIR is reused. A daemon that fails to start gives one error line, then its log's last lines.
#
# The cluster lives as long as the process that started it: for `run`, this script; for `start`, its
# caller (the parent process; ZONEOUT_SLURM_OWNER=PID names another, =none keeps it up until `stop`).
# A watchdog (this script's `_watch`, in a session of its own, so a killed process group spares it)
# checks those owners every second and stops the cluster once none is left, SIGKILL included. If the
# watchdog died too, the next `start` in DIR finds the owners dead and stops that stale instance
# before starting afresh. Only the processes named by DIR's pidfiles whose command lines name DIR are
# ever signalled, never another instance's or a system Slurm's daemons.
#
# This cluster has no accounting database (slurmdbd needs MySQL), so `sacct` would only say
# "accounting storage is disabled"; submitit polls sacct for job states, so DIR/bin holds a small
# `sacct` that answers JobID|State|NodeList from slurmctld (scontrol), first on PATH in the exports.
# Needs: slurm-wlm and munge (Debian: apt-get install -y slurm-wlm munge).
set -euo pipefail

die() {  # one-line error, then the last lines of the logs named after it
    local message=$1; shift
    echo "local_slurm: error: $message" >&2
    for log in "$@"; do
        [[ -s $log ]] && { echo "--- last lines of $log:" >&2; tail -n 15 "$log" >&2; }
    done
    return 1
}

usage() { sed -n '5,8p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

command=${1:-}; [[ -n $command ]] || usage; shift
if [[ $command == run ]]; then
    [[ ${1:-} == -- ]] && shift
    [[ $# -gt 0 ]] || usage
    DIR=${ZONEOUT_SLURM_DIR:-/tmp/zoneout-slurm}
else
    DIR=${1:-${ZONEOUT_SLURM_DIR:-/tmp/zoneout-slurm}}
fi
DIR=$(realpath -m "$DIR")
CONF=$DIR/slurm.conf
SELF=$(realpath "$0")

exports() {
    echo "export SLURM_CONF=$CONF"
    echo "export PATH=$DIR/bin:\$PATH"
}

# ours PID: it runs and belongs to this instance (its command line names DIR): a pid reused by an
# unrelated process after ours died is never taken for, nor signalled as, ours.
ours() {
    local cmdline
    cmdline=$(tr '\0' ' ' 2>/dev/null <"/proc/$1/cmdline") || return 1
    [[ " $cmdline " == *"$DIR/"* || " $cmdline " == *" $DIR "* ]] && ! zombie "$1"
}

# pid_in PIDFILE: the pid it holds; fails quietly once a daemon has removed it on its way out
pid_in() { local pid; pid=$(cat "$1" 2>/dev/null) && [[ $pid =~ ^[0-9]+$ ]] && echo "$pid"; }

alive() { local pid; pid=$(pid_in "$1") && ours "$pid"; }  # alive PIDFILE

zombie() { [[ $(awk '{ sub(/.*\) /, ""); print $1 }' "/proc/$1/stat" 2>/dev/null) == Z ]]; }

start_time() {  # a process's start (clock ticks after boot, /proc/PID/stat field 22): a reused pid has another
    local stat fields
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    read -ra fields <<<"${stat##*) }"  # the fields after the command name, which may hold spaces
    echo "${fields[19]}"
}

add_owner() {  # add_owner PID: the cluster stays up while this process (not a later one with its pid) lives
    local started
    started=$(start_time "$1") || die "owner process $1 does not exist" || return 1
    grep -qsx -- "$1 $started" "$DIR/owners" || echo "$1 $started" >>"$DIR/owners"
}

owned() {  # some owner still runs (always true without an owners file: ZONEOUT_SLURM_OWNER=none)
    [[ -f $DIR/owners ]] || return 0
    local pid started
    while read -r pid started; do
        [[ $(start_time "$pid") == "$started" ]] && return 0
    done <"$DIR/owners"
    return 1
}

is_up() {
    alive "$DIR/munged.pid" && alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd.pid" || return 1
    local state
    state=$(SLURM_CONF=$CONF timeout 10 sinfo -h -N -o %T 2>/dev/null | head -n 1) || return 1
    [[ $state =~ ^(idle|mixed|allocated|completing) ]]
}

stop_daemon() {  # SIGTERM, then SIGKILL after 10 s
    local pid
    pid=$(pid_in "$DIR/$1.pid") && ours "$pid" || return 0
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do ours "$pid" || return 0; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
}

stop_watchdog() {  # unless this is the watchdog: SIGKILL it and what it runs (its process group)
    local pid
    pid=$(pid_in "$DIR/watchdog.pid") && ours "$pid" && [[ $pid != "$$" ]] || return 0
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 50); do ours "$pid" || return 0; sleep 0.1; done
}

spawn_watchdog() {  # in a session of its own, with no stdio of ours (a caller reading our output would wait on it)
    rm -f "$DIR/watchdog.pid"
    setsid "$BASH" "$SELF" _watch "$DIR" </dev/null >>"$DIR/watchdog.log" 2>&1 &
    disown  # not our job: `run` would report it "Killed" when `stop` ends it
    wait_for 10 alive "$DIR/watchdog.pid" || die "the watchdog did not start" "$DIR/watchdog.log"
}

watch() {  # the watchdog: stop the cluster once no owner runs; leave once something else stopped it
    echo $$ >"$DIR/watchdog.pid"
    while [[ -f $CONF ]]; do
        if ! owned; then
            echo "local_slurm: the processes that started $DIR are gone: stopping it" >&2
            stop
            return 0
        fi
        sleep 1
    done
}

stop() {
    [[ -f $CONF ]] || return 0
    stop_watchdog  # first, so that it does not stop (and remove DIR) alongside us
    if alive "$DIR/slurmctld.pid"; then  # jobs first, so slurmd's step daemons end with them
        SLURM_CONF=$CONF timeout 10 scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
        for _ in $(seq 50); do
            [[ -z $(SLURM_CONF=$CONF timeout 5 squeue -h -o %i 2>/dev/null) ]] && break
            sleep 0.2
        done
    fi
    stop_daemon slurmd
    stop_daemon slurmctld
    stop_daemon munged
    # slurmstepd processes left behind by a killed slurmd: only ones whose parent tree is ours are
    # gone with it; report any that still name our config.
    local left
    left=$(pgrep -f -- "$DIR/" || true)
    [[ -z $left ]] || echo "local_slurm: warning: processes still using $DIR: $left" >&2
    [[ ${ZONEOUT_SLURM_KEEP:-0} == 1 ]] || rm -rf "$DIR"
}

free_port() {  # a port nobody listens on, from a range away from the system Slurm's 6817/6818
    local port
    for _ in $(seq 200); do
        port=$((20000 + RANDOM % 20000))
        (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { echo "$port"; return 0; }
    done
    die "no free TCP port found"
}

write_conf() {
    local host cpus mem_mb ctld_port slurmd_port
    host=$(hostname -s)
    cpus=$(nproc)
    # slurmd refuses to register a node with less memory than configured: leave 5% headroom.
    mem_mb=$(awk '/^MemTotal:/ { printf "%d", $2 / 1024 * 0.95 }' /proc/meminfo)
    ctld_port=$(free_port); slurmd_port=$(free_port)
    [[ $ctld_port != "$slurmd_port" ]] || slurmd_port=$((ctld_port + 1))
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/bin"
    cat >"$CONF" <<EOF
# Generated by scripts/local_slurm.sh: one node, this machine's CPUs and memory, no GPUs.
ClusterName=zoneoutlocal
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge.socket
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
ReturnToService=2
# requeued and cancelled jobs are killed 2 s after SIGTERM (submitit ignores SIGTERM)
KillWait=2
# finished jobs stay visible to scontrol (and so to our sacct) for an hour
MinJobAge=3600
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
JobRequeue=1
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    # sacct stand-in for submitit: JobID|State|NodeList (with a header) for the jobs asked with -j.
    cat >"$DIR/bin/sacct" <<'EOF'
#!/usr/bin/env bash
# Written by scripts/local_slurm.sh: this cluster has no accounting database; answer from slurmctld.
ids=""
while [[ $# -gt 0 ]]; do
    case $1 in
        -j) ids=$2; shift 2;;
        -j*) ids=${1#-j}; shift;;
        --jobs=*) ids=${1#--jobs=}; shift;;
        *) shift;;
    esac
done
echo "JobID|State|NodeList"
IFS=, read -ra wanted <<<"$ids"
for id in "${wanted[@]}"; do
    line=$(scontrol -o show job "$id" 2>/dev/null) || continue
    while read -r record; do
        [[ -n $record ]] || continue
        jid=$(grep -o 'JobId=[0-9]*' <<<"$record" | head -n1 | cut -d= -f2)
        aid=$(grep -o 'ArrayJobId=[0-9]*' <<<"$record" | head -n1 | cut -d= -f2)
        tid=$(grep -o 'ArrayTaskId=[0-9]*' <<<"$record" | head -n1 | cut -d= -f2)
        state=$(grep -o 'JobState=[A-Z_]*' <<<"$record" | head -n1 | cut -d= -f2)
        nodes=$(grep -o ' NodeList=[^ ]*' <<<"$record" | head -n1 | cut -d= -f2)
        [[ -n $aid && -n $tid ]] && jid="${aid}_${tid}"
        echo "$jid|$state|$nodes"
    done <<<"$line"
done
EOF
    chmod +x "$DIR/bin/sacct"
}

wait_for() {  # wait_for SECONDS CHECK...: poll CHECK every 0.2 s
    local seconds=$1; shift
    for _ in $(seq $((seconds * 5))); do "$@" && return 0; sleep 0.2; done
    return 1
}

node_idle() { [[ $(SLURM_CONF=$CONF timeout 5 sinfo -h -N -o %T 2>/dev/null | head -n 1) == idle ]]; }

start() {
    for tool in munged slurmctld slurmd sinfo scontrol; do
        command -v "$tool" >/dev/null || die "$tool not found (Debian: apt-get install -y slurm-wlm munge)" || return 1
    done
    local owner=$1  # a pid, or none
    if is_up && owned; then
        echo "local_slurm: already running in $DIR" >&2
        if [[ -f $DIR/owners && $owner != none ]]; then
            add_owner "$owner" || return 1
            alive "$DIR/watchdog.pid" || spawn_watchdog || return 1
        fi
        exports
        return 0
    fi
    if [[ -f $CONF ]] && ! owned; then
        echo "local_slurm: stopping a stale instance in $DIR (the processes that started it are gone)" >&2
    fi
    stop  # a stale instance, or whatever is left of an earlier, broken start
    mkdir -p "$DIR"; chmod 700 "$DIR"
    write_conf
    if [[ $owner != none ]]; then
        # this script too: a caller that dies while we start must not have the watchdog stop it under us
        add_owner $$ && add_owner "$owner" && spawn_watchdog || return 1
    fi
    # munge: its own key and socket; --force lets it run as root in a temp dir
    dd if=/dev/urandom of="$DIR/munge.key" bs=1024 count=1 status=none
    chmod 400 "$DIR/munge.key"
    munged --force --key-file="$DIR/munge.key" --socket="$DIR/munge.socket" --pid-file="$DIR/munged.pid" \
        --log-file="$DIR/munged.log" --seed-file="$DIR/munged.seed" >>"$DIR/munged.log" 2>&1 ||
        die "munged did not start" "$DIR/munged.log" || return 1
    wait_for 10 test -S "$DIR/munge.socket" || die "munged did not open its socket" "$DIR/munged.log" || return 1
    slurmctld -f "$CONF" -i >>"$DIR/slurmctld.log" 2>&1 || die "slurmctld did not start" "$DIR/slurmctld.log" || return 1
    wait_for 20 alive "$DIR/slurmctld.pid" || die "slurmctld exited at start" "$DIR/slurmctld.log" || return 1
    slurmd -f "$CONF" >>"$DIR/slurmd.log" 2>&1 || die "slurmd did not start" "$DIR/slurmd.log" || return 1
    wait_for 20 alive "$DIR/slurmd.pid" || die "slurmd exited at start" "$DIR/slurmd.log" || return 1
    wait_for 60 node_idle || die "the node did not become idle in 60 s (sinfo: $(SLURM_CONF=$CONF sinfo -h -N -o '%T %E' 2>&1 | head -n 1))" \
        "$DIR/slurmd.log" "$DIR/slurmctld.log" || return 1
    echo "local_slurm: up in $DIR ($(SLURM_CONF=$CONF sinfo -h -N -o '%N: %c CPUs, %m MB, %T'))" >&2
    exports
}

case $command in
    start)
        start "${ZONEOUT_SLURM_OWNER:-$PPID}" || { stop; exit 1; }
        ;;
    stop) stop ;;
    status) is_up ;;
    _watch) watch ;;
    run)
        trap 'stop' EXIT
        trap 'exit 130' INT TERM
        start $$ >/dev/null || exit 1
        export SLURM_CONF=$CONF PATH=$DIR/bin:$PATH
        "$@"
        ;;
    *) usage ;;
esac
