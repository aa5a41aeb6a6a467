#!/usr/bin/env bash
# The README's first command: two arbor agents on loopback, each beside a
# SQLite system (a CRM and an ERP with different column names), compare them
# and show the drift. Installs what is missing and builds first.
#
#   tools/demo.sh [--rows N] [--drift N]
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/env.sh

rows=200000
drift=300
while [ $# -gt 0 ]; do
  case "$1" in
    --rows) rows=$2; shift 2 ;;
    --drift) drift=$2; shift 2 ;;
    *) echo "usage: tools/demo.sh [--rows N] [--drift N]" >&2; exit 2 ;;
  esac
done

tools/setup.sh
# The dev profile optimises every dependency (RocksDB, SQLite, blake3) and
# shares its build with tools/test.sh, so a fresh machine compiles RocksDB
# once. Use `cargo build --release` for production agents.
echo "demo: building arbor"
cargo build --locked --bin arbor
arbor="$CARGO_TARGET_DIR/debug/arbor"

source tools/agents.sh
work=$(mktemp -d /tmp/arbor-demo.XXXXXX)
arbor_agents_init "$arbor" "$work"
cleanup() {
  arbor_agents_stop
  rm -rf "$work"
}
trap cleanup EXIT

"$arbor" demo --dir "$work" --rows "$rows" --drift "$drift"
arbor_agent_start crm
arbor_agent_start erp
crm=$(arbor_agent_address crm)
erp=$(arbor_agent_address erp)
echo "demo: CRM agent on $crm, ERP agent on $erp (indexing $rows rows each)"
echo

set +e
"$arbor" compare --agent "http://$crm" --dataset customers --peer "http://$erp" --stats --kind changed --limit 5
code=$?
set -e
case $code in
  0) echo "demo: in sync"; exit 0 ;;
  1) ;;
  *) echo "demo: the compare failed (exit code $code)"; tail -20 "$work/crm.log" >&2; exit "$code" ;;
esac
run=$("$arbor" runs list --agent "http://$crm" --limit 1 --json | sed -n 's/.*"run_id":"\([^"]*\)".*/\1/p')
for kind in missing_left missing_right; do
  echo
  echo "demo: the first $kind keys of run $run:"
  "$arbor" runs show --agent "http://$crm" "$run" --kind "$kind" --limit 5 | sed -n '/KIND/,$p' || true
done
echo
echo "demo: drift found and reported (exit code 1); the run is kept on the CRM agent"
"$arbor" runs list --agent "http://$crm" --limit 3
