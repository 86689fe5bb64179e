#!/usr/bin/env bash
# The demo behind `npm run demo`: a sample workload under `crinc run` on the default
# store, three checkpoints, the job killed, restored --at the second checkpoint, and
# shown to run on from there with its memory intact. It calls `crinc` as a user does:
# the one on PATH, which `npm run setup` links (/usr/local/bin/crinc).
set -euo pipefail
cd "$(dirname "$0")/.."

command -v crinc >/dev/null || { echo "demo: crinc is not on PATH: run npm run setup first" >&2; exit 1; }
json() { node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const v=JSON.parse(s);console.log(eval(process.argv[1]))})' "$1"; }
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

JOB="demo-$(date +%Y%m%d-%H%M%S)"
STORE="${CRINC_STORE:-/var/lib/crinc}"
LOG="$STORE/jobs/$JOB/stdout.log"
WORKLOAD=build/workloads/counter
CONTROLLER=
RESTORED=

cleanup() {
  [ -n "$RESTORED" ] && kill -9 "$RESTORED" 2>/dev/null || true
  [ -n "$CONTROLLER" ] && kill "$CONTROLLER" 2>/dev/null || true
}

last_tick() { grep -o '^tick [0-9]*' "$LOG" | tail -n1 | cut -d' ' -f2; }

step "start a sample workload (a counter with a 64 MiB memory region) as job $JOB in store $STORE"
# The controller's own lines are marked, to tell them from the commands' output.
crinc run --job "$JOB" --interval 1h -- "$WORKLOAD" --region-mib 64 --tick-ms 100 \
  > >(sed -u 's/^/  [crinc run] /') 2>&1 &
CONTROLLER=$!
trap cleanup EXIT
for _ in $(seq 100); do [ -s "$LOG" ] && grep -q '^tick' "$LOG" && break; sleep 0.1; done
PID=$(crinc jobs --json | json "v.find(j => j.job === '$JOB').pid")
echo "job $JOB runs as pid $PID; its log: $LOG"

for i in 1 2 3; do
  sleep 2
  step "checkpoint $i (the counter is at $(last_tick))"
  crinc checkpoint "$JOB"
done

step "kill the job (pid $PID) at tick $(last_tick)"
kill -9 "$PID"
wait "$CONTROLLER" || true
CONTROLLER=

SECOND=$(crinc list "$JOB" --json | json "v[1].takenAt")
SECOND_ID=$(crinc list "$JOB" --json | json "v[1].id")
# The job's log as the second checkpoint holds it: its last tick is where the restored job goes on.
SAVED=$(mktemp -d)
crinc export "$JOB" --id "$SECOND_ID" --to "$SAVED/cp" >/dev/null
SAVED_TICK=$(grep -o '^tick [0-9]*' "$SAVED/cp/files$LOG" | tail -n1 | cut -d' ' -f2)
rm -rf "$SAVED"
step "restore it --at $SECOND (the second checkpoint, saved at tick $SAVED_TICK)"
RESTORED=$(crinc restore "$JOB" --at "$SECOND" --json | json "v.pid")
echo "restored as pid $RESTORED"

step "crinc list $JOB"
crinc list "$JOB"

sleep 1
step "the restored job runs on from the second checkpoint's counter: its first ticks after tick $SAVED_TICK"
grep -A 4 "^tick $SAVED_TICK " "$LOG" | tail -n 4
kill -USR1 "$RESTORED"
sleep 0.5
grep '^verify' "$LOG" | tail -n1

step "crinc jobs"
crinc jobs
echo
echo "The restored demo job is stopped as the demo ends; its checkpoints stay in $STORE."
