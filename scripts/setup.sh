#!/usr/bin/env bash
# One idempotent set-up for crinc: system packages, npm dependencies, and the builds
# (wasm codec, eBPF objects, TypeScript). `npm run demo`, `npm test` and `npm run bench`
# all call it; a second run only checks and takes seconds.
#
#   bash scripts/setup.sh               everything, and `crinc` on PATH (/usr/local/bin/crinc)
#   bash scripts/setup.sh --build-only  skip system packages, npm ci and the PATH link
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)

# The CRIU release known to dump and restore on these kernels (see docs/FORMAT.md and
# README: bookworm's 3.17 fails on the vDSO, trixie's 4.1.1 hangs curing the parasite).
CRIU_MIN_VERSION=4.2
SYSTEM_PACKAGES=(clang llvm libbpf-dev bpftool gcc make libc6-dev linux-libc-dev
  libxxhash-dev lz4 util-linux iproute2 procps
  slurmctld slurmd slurm-client munge)
# Slurm and munge run only when scripts/services/slurm.sh starts them, with their own
# config; their package scripts must not start them as system services (slurmd's init
# script fails without /etc/slurm/slurm.conf, and the install with it): see
# apt_install_without_services.
POLICY_RC=/usr/sbin/policy-rc.d
# The S3 tests' endpoint: a local Ceph radosgw (scripts/services/ceph-rgw.sh), from bookworm.
CEPH_PACKAGES=(ceph-mon ceph-osd radosgw ceph-common curl uuid-runtime)
UNSTABLE_SOURCE=/etc/apt/sources.list.d/crinc-unstable.sources
UNSTABLE_PIN=/etc/apt/preferences.d/crinc-unstable
# Where the set-up links the built command line, so that `crinc …` works as the README shows
# (CRINC_CLI_LINK: elsewhere, for the tests).
CLI_LINK=${CRINC_CLI_LINK:-/usr/local/bin/crinc}
CLI_BUILT=dist/src/cli/main.js

log() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

build_only=0
[ "${1:-}" = "--build-only" ] && build_only=1

criu_ok() {
  command -v criu >/dev/null 2>&1 || return 1
  local v
  v=$(criu --version 2>/dev/null | sed -n 's/^Version: *//p')
  [ -n "$v" ] || return 1
  [ "$(printf '%s\n%s\n' "$CRIU_MIN_VERSION" "$v" | sort -V | head -n1)" = "$CRIU_MIN_VERSION" ]
}

missing_system_packages() {
  local p
  for p in "${SYSTEM_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"
  done
}

# The Debian mirror this machine already uses; unstable is added from the same place.
debian_mirror() {
  local uri
  uri=$(grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | awk '{print $2}' | grep -E '/debian/?$' | head -n1 || true)
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri=$(grep -E '^deb ' /etc/apt/sources.list | awk '{print $2}' \
      | grep -E '/debian/?$' | head -n1 || true)
  fi
  [ -n "$uri" ] || die "no Debian mirror found in /etc/apt/sources.list{,.d}: cannot add unstable for CRIU"
  echo "$uri"
}

# apt-get install, with no package's script starting its service (Slurm, munge, Ceph
# run only when the test scripts start them, with their own configuration).
apt_install_without_services() {
  if [ -e "$POLICY_RC" ]; then
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
    return
  fi
  # Exit code 101 of policy-rc.d: "action forbidden", so no service starts.
  printf '#!/bin/sh\nexit 101\n' >"$POLICY_RC"
  chmod 0755 "$POLICY_RC"
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null || { rm -f "$POLICY_RC"; die "apt-get install $* failed"; }
  rm -f "$POLICY_RC"
}

install_system_packages() {
  local missing
  missing=$(missing_system_packages)
  if [ -z "$missing" ] && criu_ok; then
    return
  fi
  [ "$(id -u)" = 0 ] || die "system packages are missing ($missing${missing:+, }criu >= $CRIU_MIN_VERSION?) and only root can install them: run this as root"
  export DEBIAN_FRONTEND=noninteractive
  if ! criu_ok; then
    local mirror
    mirror=$(debian_mirror)
    log "adding Debian unstable (for CRIU only) from $mirror"
    cat >"$UNSTABLE_SOURCE" <<EOF
Types: deb
URIs: $mirror
Suites: unstable
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    # Nothing comes from unstable unless asked for by name (-t below, for CRIU and
    # the dependencies it cannot do without).
    cat >"$UNSTABLE_PIN" <<EOF
Package: *
Pin: release a=unstable
Pin-Priority: 50
EOF
  fi
  log "apt-get update"
  apt-get update -qq
  if [ -n "$missing" ]; then
    log "installing: $(echo $missing)"
    apt_install_without_services $missing
  fi
  if ! criu_ok; then
    log "installing CRIU from unstable"
    apt-get install -y -qq --no-install-recommends -t unstable criu >/dev/null
  fi
  criu_ok || die "CRIU >= $CRIU_MIN_VERSION is still not installed (criu --version: $(criu --version 2>&1 | head -n1))"
}

install_ceph() {
  local p missing=()
  for p in "${CEPH_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  [ "$(id -u)" = 0 ] || die "Ceph packages are missing (${missing[*]}) and only root can install them: run this as root"
  # CRIU's install took libnl from unstable; Ceph's RDMA libraries need libnl-route of
  # the very same version, which then comes from there too (nothing else does).
  local libnl
  libnl=$(dpkg-query -W -f='${Version}' libnl-3-200 2>/dev/null || true)
  log "installing Ceph (mon, memstore OSD, radosgw) for the S3 tests"
  DEBIAN_FRONTEND=noninteractive apt_install_without_services "${missing[@]}" ${libnl:+"libnl-route-3-200=$libnl"}
}

npm_dependencies() {
  local stamp=node_modules/.crinc-lock-sha
  local want
  want=$(sha256sum package-lock.json | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return
  fi
  log "npm ci"
  npm ci --no-audit --no-fund --loglevel=error
  echo "$want" >"$stamp"
}

# Rebuild an output only when one of its inputs is newer.
stale() {
  local out=$1; shift
  [ -e "$out" ] || return 0
  [ -n "$(find "$@" -newer "$out" -print -quit 2>/dev/null)" ]
}

build() {
  mkdir -p build/wasm build/bpf
  if stale build/wasm/codec.wasm wasm asconfig.json; then
    log "building wasm codec"
    npx asc wasm/codec.ts --config asconfig.json --target release
  fi
  # make is incremental: it rebuilds only what is missing or older than its sources.
  make -s -C bpf OUT="$ROOT/build/bpf"
  mkdir -p build/workloads
  for src in test/workloads/*.c; do
    local bin="build/workloads/$(basename "$src" .c)"
    if stale "$bin" "$src"; then
      log "building test workload $bin"
      gcc -O2 -Wall -o "$bin" "$src"
    fi
  done
  if stale dist/.built src bench test tsconfig.json package.json; then
    log "building TypeScript"
    npx tsc -p tsconfig.json
    touch dist/.built
  fi
  # The link below runs it directly (its #! line names node).
  chmod 0755 "$CLI_BUILT"
}

# /usr/local/bin/crinc → this checkout's built CLI. A link to another checkout is moved
# here (and said so); anything else at that path is left alone, and the set-up fails.
link_cli() {
  local target="$ROOT/$CLI_BUILT" current
  if [ -L "$CLI_LINK" ]; then
    current=$(readlink "$CLI_LINK")
    [ "$current" = "$target" ] && return
    log "$CLI_LINK pointed at $current; it now points at $target"
  elif [ -e "$CLI_LINK" ]; then
    die "$CLI_LINK exists and is not a link crinc made: remove it, or run $target directly"
  else
    [ "$(id -u)" = 0 ] || die "only root can link $CLI_LINK: run this as root, or run $target directly"
    log "linking $CLI_LINK → $target"
  fi
  ln -sfn "$target" "$CLI_LINK"
}

if [ $build_only = 0 ]; then
  install_system_packages
  install_ceph
  npm_dependencies
fi
build
[ $build_only = 1 ] || link_cli
log "ready"
