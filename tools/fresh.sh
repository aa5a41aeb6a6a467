#!/usr/bin/env bash
# Proves the README's two commands on a machine nobody prepared: a freshly
# bootstrapped Debian root (debootstrap --variant=minbase of this machine's
# release), entered with chroot, holding only the host's Rust toolchain
# (mounted read-only), a clone of this repository's HEAD, an empty
# CARGO_TARGET_DIR and, as a decoy, libclang-cpp (the C++ interface library
# that once fooled setup's libclang check). Runs tools/demo.sh, then
# tools/test.sh, and prints each one's exit code and closing lines.
#
#   tools/fresh.sh [--keep] [--ref REV]
#   tools/fresh.sh --package [--keep]
#
# --package builds the .deb on the host (tools/package.sh), installs it into
# a fresh root with dpkg -i, verifies the installed unit with
# systemd-analyze, and starts the agent from the installed files (binary,
# /etc/arbor/agent.toml, agent.env, the arbor user) against an SQLite system.
#
# Too slow for CI (it compiles everything from nothing: ~30-40 min on two
# cores). Run it as root after any change to setup, the scripts or packaging.
# The root shares the host's network: PostgreSQL and MariaDB must not be
# listening on 127.0.0.1:5432/3306 (tools/databases.sh would use them).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

mode=commands
keep=""
ref=HEAD
while [ $# -gt 0 ]; do
  case "$1" in
    --package) mode=package; shift ;;
    --keep) keep=1; shift ;;
    --ref) ref=$2; shift 2 ;;
    *) echo "usage: tools/fresh.sh [--package] [--keep] [--ref REV]" >&2; exit 2 ;;
  esac
done

log() { echo "fresh: $*"; }
[ "$(id -u)" -eq 0 ] || { log "run as root (debootstrap, chroot, mounts)"; exit 2; }

# The release and mirror this machine's apt uses.
. /etc/os-release
suite=${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}
mirror=$(grep -rhoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
  | grep -oE 'https?://[^ ]+' | head -n 1 || true)
mirror=${mirror:-http://deb.debian.org/debian}

if ! command -v debootstrap >/dev/null 2>&1; then
  log "installing debootstrap"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
fi

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in 5432 3306; do
  if port_open "$p"; then
    log "a server listens on 127.0.0.1:$p; the root shares this network and its tests would use it: stop it first"
    exit 2
  fi
done

toolchain=$(dirname "$(dirname "$(rustup which cargo 2>/dev/null || command -v cargo)")")
[ -x "$toolchain/bin/cargo" ] && [ -x "$toolchain/bin/rustc" ] \
  || { log "no Rust toolchain found (rustup which cargo)"; exit 2; }

root=$(mktemp -d /var/tmp/arbor-fresh.XXXXXX)
# mktemp makes 0700: as the root's "/", that would shut out every user but
# root (postgres could not run initdb, apt's _apt could not download).
chmod 0755 "$root"
mounts=()
cleanup() {
  local rc=$?
  # Processes left in the root (a server a failed test did not stop).
  local pid
  for pid in /proc/[0-9]*; do
    if [ "$(readlink "$pid/root" 2>/dev/null)" = "$root" ]; then
      kill -9 "${pid#/proc/}" 2>/dev/null || true
    fi
  done
  local i
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
    umount -R "${mounts[$i]}" 2>/dev/null || umount -lR "${mounts[$i]}" 2>/dev/null || true
  done
  if [ -n "$keep" ]; then
    log "kept the root at $root"
  else
    rm -rf --one-file-system "$root"
  fi
  exit $rc
}
trap cleanup EXIT

mkdir -p /var/cache/arbor/debootstrap
log "debootstrap $suite (minbase) from $mirror into $root"
debootstrap --variant=minbase --cache-dir=/var/cache/arbor/debootstrap "$suite" "$root" "$mirror" \
  >"$root.debootstrap.log" 2>&1 || { tail -n 20 "$root.debootstrap.log"; exit 1; }
rm -f "$root.debootstrap.log"
# The same suites as the host (updates and security give the same versions).
grep -rh '^Suites:\|^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/debian.sources 2>/dev/null | grep -q "$suite-updates" \
  && echo "deb $mirror $suite-updates main" >>"$root/etc/apt/sources.list"
cp /etc/resolv.conf "$root/etc/resolv.conf"

bind() { # bind SRC DST [ro]
  mkdir -p "$2"
  mount --rbind "$1" "$2"
  mounts+=("$2")
  [ "${3:-}" = ro ] && mount -o remount,bind,ro "$2"
  return 0
}
mount -t proc proc "$root/proc" && mounts+=("$root/proc")
mount -t sysfs sys "$root/sys" && mounts+=("$root/sys")
bind /dev "$root/dev"
mount -t tmpfs -o mode=1777,size=8g tmpfs "$root/tmp" && mounts+=("$root/tmp")
bind "$toolchain" "$root/opt/rust" ro

in_root() {
  chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb CI=true \
    PATH=/opt/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    CARGO_HOME=/root/.cargo CARGO_TARGET_DIR=/var/cache/arbor/target \
    "$@"
}

# A fresh image ships libclang-cpp but not libclang: the decoys, in both
# names LLVM uses (libclang-cpp.so.14; LLVM 13's libclang-cpp13.so, which
# even clang-sys's name filter lets through).
log "installing the decoys libclang-cpp14 and libclang-cpp13-dev into the root"
in_root sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libclang-cpp14 libclang-cpp13-dev >/dev/null'
in_root sh -c 'ls /usr/lib/llvm-*/lib/libclang-cpp* && ! ls /usr/lib/llvm-*/lib/libclang.so* /usr/lib/*/libclang-[0-9]*.so* 2>/dev/null'
# The machine's own certificate authorities (a registry proxy's, say) are
# part of any machine here, not of the project: carried into the root, they
# join its trust store when setup installs ca-certificates.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  mkdir -p "$root/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
  log "carried $(ls /usr/local/share/ca-certificates/*.crt | wc -l) local CA certificates into the root"
fi

# Closing lines of a script's log: the last `tail` lines that say something.
closing() { grep -v '^\s*$' "$1" | tail -n "$2" | sed 's/^/  | /'; }

if [ "$mode" = commands ]; then
  log "cloning $ref of $repo into the root"
  git clone -q "$repo" "$root/root/arbor"
  git -C "$root/root/arbor" checkout -q "$(git rev-parse "$ref")"
  log "commit $(git -C "$root/root/arbor" rev-parse --short=12 HEAD); toolchain $(in_root cargo --version)"

  start=$(date +%s)
  set +e
  in_root bash -c 'cd /root/arbor && tools/demo.sh' >"$root/demo.log" 2>&1
  demo_rc=$?
  demo_secs=$(($(date +%s) - start))
  start=$(date +%s)
  in_root bash -c 'cd /root/arbor && tools/test.sh' >"$root/test.log" 2>&1
  test_rc=$?
  test_secs=$(($(date +%s) - start))
  set -e
  log "setup in the root: $(grep -m1 '^setup: ok' "$root/demo.log" || echo 'no setup line')"
  log "tools/demo.sh: exit $demo_rc after ${demo_secs}s; closing lines:"
  closing "$root/demo.log" 3
  log "tools/test.sh: exit $test_rc after ${test_secs}s; closing lines:"
  closing "$root/test.log" 2
  cp "$root/demo.log" /var/tmp/arbor-fresh-demo.log
  cp "$root/test.log" /var/tmp/arbor-fresh-test.log
  log "full logs: /var/tmp/arbor-fresh-demo.log, /var/tmp/arbor-fresh-test.log"
  [ "$demo_rc" -eq 0 ] && [ "$test_rc" -eq 0 ]
  exit $?
fi

# --package
log "building the package on the host"
deb=$(tools/package.sh | tail -n 1)
[ -f "$deb" ] || { log "tools/package.sh made no package"; exit 1; }
log "package $(basename "$deb")"
cp "$deb" "$root/tmp/"
in_root dpkg -i "/tmp/$(basename "$deb")"
log "installed: $(in_root arbor --version)"
in_root sh -c 'stat -c "%n %U:%G %a" /etc/arbor /etc/arbor/agent.toml /etc/arbor/agent.env; getent passwd arbor'
# The unit must verify where it is installed (systemd-analyze is systemd's).
in_root sh -c 'DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null'
unit=$(in_root sh -c 'ls /lib/systemd/system/arbor-agent.service /usr/lib/systemd/system/arbor-agent.service 2>/dev/null | head -n 1')
verify=$(in_root systemd-analyze verify "$unit" 2>&1) || true
if [ -n "$verify" ]; then
  log "systemd-analyze verify $unit:"
  echo "$verify"
  exit 1
fi
log "systemd-analyze verify $unit: clean"
in_root sh -c 'systemctl is-enabled arbor-agent.service 2>/dev/null || true' | sed 's/^/fresh: unit state: /'

# An SQLite system where the example config expects it (the demo's CRM
# table has the example's columns), the secret in agent.env, and the state
# directory systemd's StateDirectory= would make.
in_root sh -c 'arbor demo --dir /tmp/demo --rows 50000 --drift 0 >/dev/null \
  && install -d -m 0755 /srv/arbor && cp /tmp/demo/crm.db /srv/arbor/customers.db \
  && chmod 0644 /srv/arbor/customers.db \
  && echo "ARBOR_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d " \n")" >>/etc/arbor/agent.env \
  && install -d -o arbor -g arbor -m 0750 /var/lib/arbor'
# As the unit runs it: root reads agent.env (0600, as systemd does), then
# the program runs as arbor with that environment.
as_agent() {
  in_root sh -c 'set -a; . /etc/arbor/agent.env; set +a; exec runuser -u arbor -- "$@"' sh "$@"
}
as_agent arbor config check --config /etc/arbor/agent.toml 2>&1 | sed 's/^/fresh: config check: /' \
  || true
as_agent arbor agent --config /etc/arbor/agent.toml --data-dir /var/lib/arbor >"$root/agent.log" 2>&1 &
agent=$!
listening=""
for _ in $(seq 1 120); do
  listening=$(grep -m1 '^listening on' "$root/agent.log" || true)
  [ -n "$listening" ] && break
  kill -0 "$agent" 2>/dev/null || break
  sleep 0.5
done
ready=""
for _ in $(seq 1 240); do
  grep -q 'all datasets indexed' "$root/agent.log" && ready=1 && break
  kill -0 "$agent" 2>/dev/null || break
  sleep 0.5
done
# SIGTERM to the agent itself (runuser would re-raise a signal it got).
agent_pid=""
for pid in /proc/[0-9]*; do
  if [ "$(readlink "$pid/root" 2>/dev/null)" = "$root" ] && [ "$(cat "$pid/comm" 2>/dev/null)" = arbor ]; then
    agent_pid=${pid#/proc/}
  fi
done
[ -n "$agent_pid" ] && kill -TERM "$agent_pid"
set +e
wait "$agent"
agent_rc=$?
set -e
# The index the agent left, read offline as its user.
status=$(as_agent arbor index status --config /etc/arbor/agent.toml --dataset customers 2>&1 | head -n 4 || true)
log "installed agent: ${listening:-never printed listening on}"
log "indexed: $([ -n "$ready" ] && echo yes || echo no); exit on SIGTERM: $agent_rc"
[ -n "$status" ] && echo "$status" | sed 's/^/fresh: /'
log "agent log, last lines:"
closing "$root/agent.log" 4
[ -n "$listening" ] && [ -n "$ready" ] && [ "$agent_rc" -eq 0 ]
