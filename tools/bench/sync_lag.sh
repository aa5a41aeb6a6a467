#!/usr/bin/env bash
# Real-time sync latency PostgreSQL -> MariaDB, commit to write, at steady
# commit rates (see benches/sync_lag.rs). Uses the test databases
# (tools/databases.sh) and a release arbor.
#
#   tools/bench/sync_lag.sh [--rates 100,1000] [--secs 20]
set -euo pipefail
cd "$(dirname "$0")/../.."
source tools/env.sh
source tools/databases.sh

export ARBOR_SYNC_RATES=100,1000 ARBOR_SYNC_SECS=20
while [ $# -gt 0 ]; do
  case "$1" in
    --rates) ARBOR_SYNC_RATES=$2; shift 2 ;;
    --secs) ARBOR_SYNC_SECS=$2; shift 2 ;;
    *) echo "usage: $0 [--rates R,R] [--secs N]" >&2; exit 2 ;;
  esac
done

cargo build --release --locked --bin arbor >&2
export ARBOR_BIN="$CARGO_TARGET_DIR/release/arbor"
cargo bench --locked --bench sync_lag --no-run >&2
trap 'arbor_databases_down' EXIT
arbor_databases_up
cargo bench --locked --bench sync_lag
