#!/usr/bin/env bash
# arbor against reladiff (hashdiff) on the same PostgreSQL tables, in one
# run: cold (indexes built from nothing + compare), warm (drift through
# change capture, then compare: the nightly case), identical tables, and
# the index build rate against COPY (binary). See tools/bench/run.py.
#
#   tools/bench/run.sh [--rows 1000000[,10000000]] [--drift 0.1] [--runs 5]
#                      [--reladiff-runs 3] [--results results]
#
# Prints one table per N, writes <results>/bench-N.json and a PNG chart of
# time against N over every result in <results>. PostgreSQL comes from
# tools/databases.sh (a private instance unless one listens on :5432; the
# warm case needs wal_level = logical). reladiff is installed with pip into
# a private venv under /var/cache/arbor.
set -euo pipefail
cd "$(dirname "$0")/../.."
source tools/env.sh
source tools/databases.sh

venv=${ARBOR_BENCH_VENV:-/var/cache/arbor/bench-venv}
if [ ! -x "$venv/bin/reladiff" ] || ! "$venv/bin/python" -c 'import matplotlib, psycopg2' 2>/dev/null; then
  echo "bench: installing reladiff into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'reladiff[postgresql]==0.6.0' psycopg2-binary matplotlib
fi
cargo build --release --locked --bin arbor >&2
trap 'arbor_databases_down' EXIT
arbor_databases_up
work=${ARBOR_BENCH_WORK:-/var/tmp}
"$venv/bin/python" tools/bench/run.py --pg "$ARBOR_TEST_POSTGRES_URL" \
  --arbor "$CARGO_TARGET_DIR/release/arbor" --venv "$venv" --work "$work" "$@"
