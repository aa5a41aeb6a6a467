#!/usr/bin/env bash
# Installs what building and testing arbor needs and is missing. Idempotent:
# a second run installs nothing. Debian/Ubuntu, as root (or with sudo).
set -euo pipefail

need=()
# bindgen (for RocksDB's C API) needs libclang.
ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || need+=(libclang-dev)
command -v c++ >/dev/null 2>&1 || need+=(g++)
command -v make >/dev/null 2>&1 || need+=(make)
command -v psql >/dev/null 2>&1 || need+=(postgresql-client)
command -v python3 >/dev/null 2>&1 || need+=(python3)

if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

command -v cargo >/dev/null 2>&1 || { echo "setup: cargo not found; install a Rust toolchain (rustup)" >&2; exit 1; }
echo "setup: ok"
