#!/usr/bin/env bash
# Installs what building (and, with --test, testing) arbor needs and is
# missing. Idempotent: a second run installs nothing. Debian/Ubuntu, as root
# (or with sudo).
#
#   tools/setup.sh          what `cargo build` needs (tools/demo.sh)
#   tools/setup.sh --test   also the servers and clients tools/test.sh runs
#
# Every requirement is probed the way its consumer finds it, never by a file
# that merely looks like it: libclang by clang-sys's own search (names,
# directories, `-cpp.` excluded, ELF class), the compilers by compiling, the
# database servers by the binaries tools/databases.sh starts, Chromium by
# running it, Python packages by importing them.
set -euo pipefail

mode=build
# The manifest test validates against this release's bundled schemas.
KUBERNETES_VALIDATE_VERSION=1.37.0
# tools/fuzz.sh (AFL++ through cargo-afl) and the licence and ban checks.
CARGO_AFL_VERSION=0.18.2
CARGO_DENY_VERSION=0.20.2
case "${1:-}" in
  "") ;;
  --test) mode=test ;;
  *) echo "usage: tools/setup.sh [--test]" >&2; exit 2 ;;
esac

need=()
why=()
want() { # want PACKAGE REASON
  need+=("$1")
  why+=("$1 ($2)")
}

# libclang as bindgen finds it (tools/libclang.sh).
source "$(dirname "$0")/libclang.sh"

compiles() { # compiles LANG COMPILER: the cc crate calls $CC/$CXX, else cc/c++
  local lang=$1 compiler=$2 src
  command -v "$compiler" >/dev/null 2>&1 || return 1
  if [ "$lang" = c++ ]; then
    src='#include <string>
int main() { std::string s("arbor"); return s.size() == 5 ? 0 : 1; }'
  else
    src='#include <stdio.h>
int main(void) { return 0; }'
  fi
  local out
  out=$(mktemp)
  printf '%s\n' "$src" | "$compiler" -x "$lang" - -o "$out" >/dev/null 2>&1
  local rc=$?
  rm -f "$out"
  return $rc
}

arbor_libclang >/dev/null || want libclang-dev "bindgen finds no libclang.so for RocksDB's C API"
compiles c "${CC:-cc}" || want gcc "the C compiler builds SQLite, LZ4 and blake3's assembly"
compiles c++ "${CXX:-c++}" || want g++ "the C++ compiler builds RocksDB"
command -v ar >/dev/null 2>&1 || want binutils "ar archives the C and C++ objects"
# cargo reaches crates.io over TLS and verifies it with the system's roots.
[ -s /etc/ssl/certs/ca-certificates.crt ] || want ca-certificates "cargo verifies crates.io over TLS"
command -v python3 >/dev/null 2>&1 || want python3 "the scripts pick free ports and write demo edits"
# build.rs names the commit a binary was built from (arbor --version).
if [ -e "$(dirname "$0")/../.git" ]; then
  command -v git >/dev/null 2>&1 || want git "build.rs records the commit of this checkout"
fi

if [ "$mode" = test ]; then
  # tools/databases.sh starts private instances from these binaries.
  pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  { [ -n "$pg_bin" ] && [ -x "$pg_bin/initdb" ] && [ -x "$pg_bin/pg_ctl" ] && [ -x "$pg_bin/postgres" ]; } \
    || want postgresql "tools/databases.sh runs initdb, pg_ctl and postgres"
  command -v psql >/dev/null 2>&1 || want postgresql-client "tests and scripts run psql"
  { command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ]; } \
    || want mariadb-server "tools/databases.sh runs mariadbd"
  { command -v mariadb-install-db >/dev/null 2>&1 && command -v mariadb-admin >/dev/null 2>&1 \
    && command -v mariadb >/dev/null 2>&1; } \
    || want mariadb-client "tools/databases.sh runs mariadb-install-db, mariadb-admin and mariadb"
  command -v runuser >/dev/null 2>&1 || want util-linux "tools/databases.sh runs servers as their users"
  # The HTML report test renders a report headless; the probe runs it.
  { command -v chromium >/dev/null 2>&1 && chromium --headless --no-sandbox --version >/dev/null 2>&1; } \
    || want chromium "the HTML report test renders in headless Chromium"
  # The packaging test verifies the systemd unit.
  command -v systemd-analyze >/dev/null 2>&1 || want systemd "the packaging test runs systemd-analyze verify"
  # cargo-afl builds AFL++ from its own source with make and cc.
  command -v make >/dev/null 2>&1 || want make "cargo-afl builds AFL++ for tools/fuzz.sh"
  # The reflection check and the manifest test make virtualenvs.
  python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || want python3-venv "python3 -m venv for grpcio and kubernetes-validate"
fi

if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing:"
  printf '  %s\n' "${why[@]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  # policy-rc.d 101: packages must not start services; tests start their own.
  policy=/usr/sbin/policy-rc.d
  created_policy=""
  if [ ! -e "$policy" ] && [ "$(id -u)" -eq 0 ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created_policy=1
  fi
  rc=0
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null || rc=$?
  [ -n "$created_policy" ] && rm -f "$policy"
  [ $rc -eq 0 ] || { echo "setup: apt-get install ${need[*]} failed (exit $rc)" >&2; exit $rc; }
fi

# Python tools in virtualenvs of their own (PyPI), probed by running them.
if [ "$mode" = test ]; then
  k8s_venv=/var/cache/arbor/venv-k8s
  if ! "$k8s_venv/bin/kubernetes-validate" --version >/dev/null 2>&1; then
    echo "setup: installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION into $k8s_venv (the manifest test)"
    rm -rf "$k8s_venv"
    python3 -m venv "$k8s_venv"
    "$k8s_venv/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
  fi
fi

# Cargo tools (crates.io), probed by running them: the pinned version, and
# for cargo-afl the AFL++ it built for this toolchain.
afl_ready() { # afl-fuzz answers through cargo-afl (read whole: no SIGPIPE)
  local out
  out=$(cargo afl fuzz -h 2>&1 || true)
  [[ $out == *afl-fuzz* ]]
}
if [ "$mode" = test ]; then
  cargo_tool() { # cargo_tool CRATE VERSION: installs CRATE@VERSION
    echo "setup: installing $1 $2 (cargo install)"
    cargo install --locked --quiet "$1@$2"
  }
  cargo deny --version 2>/dev/null | grep -qx "cargo-deny $CARGO_DENY_VERSION" \
    || cargo_tool cargo-deny "$CARGO_DENY_VERSION"
  cargo afl --version 2>/dev/null | grep -q "^cargo-afl $CARGO_AFL_VERSION " \
    || cargo_tool cargo-afl "$CARGO_AFL_VERSION"
  # Installing cargo-afl builds AFL++; a newer toolchain needs its own.
  afl_ready || cargo afl config --build --force >/dev/null
fi

# Check again, the same way: an install that did not give the consumer what
# it looks for fails here, not forty minutes into a build.
failed=()
lib=$(arbor_libclang) || failed+=("libclang (clang-sys's search found no libclang.so; set LIBCLANG_PATH)")
compiles c "${CC:-cc}" || failed+=("C compiler ${CC:-cc}")
compiles c++ "${CXX:-c++}" || failed+=("C++ compiler ${CXX:-c++}")
if [ "$mode" = test ]; then
  { command -v chromium >/dev/null 2>&1 && chromium --headless --no-sandbox --version >/dev/null 2>&1; } \
    || failed+=("chromium")
  python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || failed+=("python3 venv")
  "$k8s_venv/bin/kubernetes-validate" --version >/dev/null 2>&1 || failed+=("kubernetes-validate")
  cargo deny --version 2>/dev/null | grep -qx "cargo-deny $CARGO_DENY_VERSION" || failed+=("cargo-deny")
  afl_ready || failed+=("cargo-afl with AFL++")
fi
command -v cargo >/dev/null 2>&1 || failed+=("cargo (install a Rust toolchain with rustup)")
if [ ${#failed[@]} -gt 0 ]; then
  echo "setup: still missing: ${failed[*]}" >&2
  exit 1
fi
echo "setup: ok (libclang: $lib)"
