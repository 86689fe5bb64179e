#!/usr/bin/env bash
# A real single-node Slurm (munged + slurmctld + slurmd) for the tests and for trying
# examples/slurm/, started without systemd. Everything (config, keys, sockets, state,
# logs) lives under one directory; nothing in /etc is changed.
#
#   bash scripts/services/slurm.sh start    start it (again: only checks it is up)
#   bash scripts/services/slurm.sh stop     stop the daemons this script started
#   bash scripts/services/slurm.sh status   exit 0 when the node is up and idle/allocated
#
# Slurm's commands find the config through SLURM_CONF: `start` prints the line to use,
#   export SLURM_CONF=$CRINC_SLURM_DIR/slurm.conf
# The directory is $CRINC_SLURM_DIR (default /run/crinc-slurm). Needs root and the
# packages scripts/setup.sh installs (slurmctld, slurmd, slurm-client, munge).
set -euo pipefail

DIR=${CRINC_SLURM_DIR:-/run/crinc-slurm}
CONF=$DIR/slurm.conf
MUNGE_SOCKET=$DIR/munge/munge.socket
# The node must answer within this many seconds of starting the daemons.
START_TIMEOUT_S=60
# slurmd waits this long between a job's SIGTERM and its SIGKILL: crinc's final
# checkpoint must fit (a few seconds for a small job; generous for a loaded machine).
KILL_WAIT_S=30

log() { printf '[slurm] %s\n' "$*"; }
die() { printf '[slurm] error: %s\n' "$*" >&2; exit 1; }

pid_alive() { # pidfile: the process it names runs and is not a zombie
  local pid state
  [ -s "$1" ] || return 1
  pid=$(cat "$1" 2>/dev/null) || return 1 # removed meanwhile: the daemon exited
  state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

write_config() {
  local node
  # slurmd -C reports this machine as Slurm sees it (CPUs, sockets, memory).
  node=$(slurmd -C | head -n1)
  cat >"$CONF" <<CONF
ClusterName=crinc
# Addresses given, so that nothing depends on the host name resolving.
SlurmctldHost=$(hostname -s)(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: a requeued job may start again only after its old credential expired
# (default 120 s).
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=5
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/d
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# pgid: Slurm signals the batch step's process group; a crinc job runs in its own
# session, so a SIGTERM reaches crinc (which checkpoints and stops the job), not the job.
ProctrackType=proctrack/pgid
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
KillWait=$KILL_WAIT_S
# Schedule every second, not every minute: a requeued job starts again at once.
SchedulerParameters=sched_interval=1,bf_interval=1
MinJobAge=300
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=crinc Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
  chmod 0600 "$CONF"
  # Slurm's commands read the config as the user that runs them: root here.
}

start_munge() {
  pid_alive "$DIR/munge/munged.pid" && return
  mkdir -p -m 0700 "$DIR/munge"
  [ -s "$DIR/munge/munge.key" ] || { dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none; chmod 0400 "$DIR/munge/munge.key"; }
  munged --force --key-file="$DIR/munge/munge.key" --socket="$MUNGE_SOCKET" \
    --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" \
    --seed-file="$DIR/munge/munged.seed"
}

node_up() {
  local state
  state=$(SLURM_CONF=$CONF sinfo -h -N -o '%t' 2>/dev/null | head -n1) || return 1
  case "$state" in idle|alloc|mix|comp) return 0 ;; *) return 1 ;; esac
}

start() {
  [ "$(id -u)" = 0 ] || die "run as root (slurmd runs jobs as any user)"
  for bin in munged slurmctld slurmd sinfo; do
    command -v "$bin" >/dev/null || die "$bin is missing: run scripts/setup.sh"
  done
  mkdir -p -m 0700 "$DIR" "$DIR/ctld" "$DIR/d"
  if pid_alive "$DIR/slurmctld.pid" && pid_alive "$DIR/slurmd.pid" && node_up; then
    log "already running ($CONF)"
    echo "export SLURM_CONF=$CONF"
    return
  fi
  pid_alive "$DIR/slurmctld.pid" || pid_alive "$DIR/slurmd.pid" || write_config
  start_munge
  # -i: ignore state left by an earlier run (jobs, node states) of this directory.
  pid_alive "$DIR/slurmctld.pid" || slurmctld -f "$CONF" -i
  pid_alive "$DIR/slurmd.pid" || slurmd -f "$CONF"
  local waited=0
  until node_up; do
    [ $waited -lt $START_TIMEOUT_S ] || die "the node did not come up within ${START_TIMEOUT_S}s; see $DIR/slurmctld.log and $DIR/slurmd.log"
    sleep 1
    waited=$((waited + 1))
  done
  log "up after ${waited}s ($CONF)"
  echo "export SLURM_CONF=$CONF"
}

stop_pidfile() {
  local file=$1 pid i
  pid_alive "$file" || return 0
  pid=$(cat "$file" 2>/dev/null) || return 0
  kill "$pid"
  for i in $(seq 50); do pid_alive "$file" || return 0; sleep 0.2; done
  kill -9 "$pid" 2>/dev/null || true
}

stop() {
  stop_pidfile "$DIR/slurmd.pid"
  stop_pidfile "$DIR/slurmctld.pid"
  stop_pidfile "$DIR/munge/munged.pid"
  log "stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) pid_alive "$DIR/slurmctld.pid" && pid_alive "$DIR/slurmd.pid" && node_up ;;
  *) die "usage: $0 start|stop|status" ;;
esac
