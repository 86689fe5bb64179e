#!/usr/bin/env bash
# A throw-away Ceph cluster with a radosgw S3 endpoint, for crinc's S3 tests: one
# monitor, one memstore OSD (data in memory), cephx on, no systemd, no mgr. Idempotent.
#
#   bash scripts/services/ceph-rgw.sh start   start it (or find it running); prints the
#                                             AWS_* variables to export for a client.
#                                             A cluster with a dead daemon is made anew.
#   bash scripts/services/ceph-rgw.sh env     print them again
#   bash scripts/services/ceph-rgw.sh stop    stop it and delete its state
#
# State (config, keys, logs, pid files) lives in $CRINC_CEPH_DIR (default
# /tmp/crinc-ceph); the S3 endpoint listens on 127.0.0.1:$CRINC_RGW_PORT (default 7480).
# The packages (ceph-mon, ceph-osd, radosgw, ceph-common) come from scripts/setup.sh.
set -euo pipefail

DIR=${CRINC_CEPH_DIR:-/tmp/crinc-ceph}
RGW_PORT=${CRINC_RGW_PORT:-7480}
MON_ADDR=127.0.0.1
CONF=$DIR/ceph.conf
ENV_FILE=$DIR/env
RGW_NAME=client.rgw.crinc
S3_USER=crinc-test
# The memstore OSD keeps every object in RAM: room for the tests, bounded.
MEMSTORE_BYTES=$((3 * 1024 * 1024 * 1024))
START_TIMEOUT_S=120

log() { printf '[ceph-rgw] %s\n' "$*" >&2; }
die() { printf '[ceph-rgw] error: %s\n' "$*" >&2; exit 1; }

ceph_() { timeout 60 ceph -c "$CONF" -n client.admin -k "$DIR/admin.keyring" "$@"; }

ceph_quiet() { ceph_ "$@" >/dev/null 2>&1; }

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

endpoint() { echo "http://127.0.0.1:$RGW_PORT"; }

# An HTTP answer of any kind from the endpoint: radosgw is serving.
rgw_answers() { curl -s -o /dev/null -m 2 "$(endpoint)"; }

wait_until() {
  local what=$1; shift
  local deadline=$((SECONDS + START_TIMEOUT_S))
  until "$@"; do
    [ $SECONDS -lt $deadline ] || die "timed out after ${START_TIMEOUT_S}s waiting for $what (logs: $DIR/log)"
    sleep 0.5
  done
}

write_conf() {
  local fsid=$1
  cat >"$CONF" <<EOF
[global]
fsid = $fsid
mon host = v2:$MON_ADDR:3300
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
# Ports for the OSD away from Slurm's 6817/6818.
ms bind port min = 6900
ms bind port max = 7100
run dir = $DIR/run
admin socket = $DIR/run/\$name.asok
pid file = $DIR/run/\$name.pid
log file = $DIR/log/\$name.log
crash dir = $DIR/crash
# One OSD: pools of size 1, placement on that OSD only, few placement groups.
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon warn on pool no redundancy = false
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
keyring = $DIR/admin.keyring
mon data = $DIR/mon
[mon]
keyring = $DIR/mon/keyring
[osd]
osd data = $DIR/osd
keyring = $DIR/osd/keyring
osd objectstore = memstore
memstore device bytes = $MEMSTORE_BYTES
[$RGW_NAME]
keyring = $DIR/rgw.keyring
rgw frontends = beast endpoint=127.0.0.1:$RGW_PORT
EOF
}

create_cluster() {
  log "creating a cluster in $DIR"
  rm -rf "$DIR"
  mkdir -p -m 0700 "$DIR" "$DIR/run" "$DIR/log" "$DIR/crash" "$DIR/mon" "$DIR/osd"
  local fsid
  fsid=$(uuidgen)
  write_conf "$fsid"
  ceph-authtool --create-keyring "$DIR/mon.keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
  ceph-authtool --create-keyring "$DIR/admin.keyring" --gen-key -n client.admin \
    --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' >/dev/null
  ceph-authtool "$DIR/mon.keyring" --import-keyring "$DIR/admin.keyring" >/dev/null
  monmaptool --create --addv a "[v2:$MON_ADDR:3300]" --fsid "$fsid" "$DIR/monmap" >/dev/null
  ceph-mon -c "$CONF" --mkfs -i a --monmap "$DIR/monmap" --keyring "$DIR/mon.keyring"
}

start_mon() {
  ceph-mon -c "$CONF" -i a
  wait_until "the monitor" ceph_quiet mon stat
}

start_osd() {
  local uuid key
  uuid=$(uuidgen)
  key=$(ceph-authtool --gen-print-key)
  printf '{"cephx_secret": "%s"}' "$key" >"$DIR/osd-secret.json"
  [ "$(ceph_ osd new "$uuid" -i "$DIR/osd-secret.json")" = 0 ] || die "the monitor did not give the OSD id 0"
  ceph-osd -c "$CONF" -i 0 --mkfs --no-mon-config --key "$key" --osd-uuid "$uuid" 2>>"$DIR/log/osd-mkfs.log"
  printf '[osd.0]\n\tkey = %s\n' "$key" >"$DIR/osd/keyring"
  ceph-osd -c "$CONF" -i 0 2>>"$DIR/log/osd-start.log"
  wait_until "the OSD to come up" sh -c "ceph -c '$CONF' -n client.admin -k '$DIR/admin.keyring' osd dump 2>/dev/null | grep -q '^osd.0 up'"
}

start_rgw() {
  ceph_ auth get-or-create "$RGW_NAME" mon 'allow rw' osd 'allow rwx' -o "$DIR/rgw.keyring" >/dev/null
  radosgw -c "$CONF" -n "$RGW_NAME"
  wait_until "radosgw on $(endpoint)" rgw_answers
}

create_user() {
  local access secret
  access=$(head -c 10 /dev/urandom | od -An -tx1 | tr -d ' \n' | tr a-f A-F)
  secret=$(head -c 30 /dev/urandom | base64 | tr -d '/+=\n')
  timeout 60 radosgw-admin -c "$CONF" -n client.admin -k "$DIR/admin.keyring" user create \
    --uid "$S3_USER" --display-name "crinc tests" --access-key "$access" --secret-key "$secret" >/dev/null
  cat >"$ENV_FILE.tmp" <<EOF
export AWS_ENDPOINT_URL=$(endpoint)
export AWS_ACCESS_KEY_ID=$access
export AWS_SECRET_ACCESS_KEY=$secret
export AWS_REGION=us-east-1
EOF
  mv "$ENV_FILE.tmp" "$ENV_FILE"
}

running() {
  pid_alive "$DIR/run/mon.a.pid" && pid_alive "$DIR/run/osd.0.pid" && pid_alive "$DIR/run/$RGW_NAME.pid" && [ -f "$ENV_FILE" ] && rgw_answers
}

# A cluster that is not whole (a daemon died; memstore lost its data with it) is made anew:
# it only ever holds test data.
start() {
  command -v ceph-mon >/dev/null && command -v radosgw >/dev/null || die "Ceph is not installed: run scripts/setup.sh"
  if running; then
    cat "$ENV_FILE"
    return
  fi
  stop_daemons
  local t0=$SECONDS
  create_cluster
  start_mon
  start_osd
  start_rgw
  create_user
  log "radosgw serves S3 on $(endpoint) ($((SECONDS - t0)) s)"
  cat "$ENV_FILE"
}

stop_daemons() {
  local name pidfile pid
  for name in "$RGW_NAME" osd.0 mon.a; do
    pidfile="$DIR/run/$name.pid"
    if pid_alive "$pidfile"; then
      pid=$(cat "$pidfile")
      kill "$pid"
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; fi
    fi
  done
}

stop() {
  stop_daemons
  rm -rf "$DIR"
  log "stopped"
}

case "${1:-}" in
  start) start ;;
  env) running || die "not running"; cat "$ENV_FILE" ;;
  stop) stop ;;
  *) echo "usage: $0 start|env|stop" >&2; exit 2 ;;
esac
