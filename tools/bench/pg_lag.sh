#!/usr/bin/env bash
# Real-time lag of logical capture, commit to index, at a steady commit rate
# (see benches/pg_lag.rs). Uses the test PostgreSQL (tools/databases.sh),
# which runs with wal_level=logical.
#
#   tools/bench/pg_lag.sh [--rate 1000] [--secs 20] [--intervals 100,10]
set -euo pipefail
cd "$(dirname "$0")/../.."
source tools/env.sh
source tools/databases.sh

export ARBOR_LAG_RATE=1000 ARBOR_LAG_SECS=20 ARBOR_LAG_INTERVALS_MS=100,10
while [ $# -gt 0 ]; do
  case "$1" in
    --rate) ARBOR_LAG_RATE=$2; shift 2 ;;
    --secs) ARBOR_LAG_SECS=$2; shift 2 ;;
    --intervals) ARBOR_LAG_INTERVALS_MS=$2; shift 2 ;;
    *) echo "usage: $0 [--rate N] [--secs N] [--intervals MS,MS]" >&2; exit 2 ;;
  esac
done

cargo bench --locked --bench pg_lag --no-run >&2
trap 'arbor_databases_down' EXIT
arbor_databases_up
cargo bench --locked --bench pg_lag
