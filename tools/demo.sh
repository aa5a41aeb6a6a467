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

# Repair: one-way from the CRM (the source of truth) to the ERP.
echo
echo "demo: one-way repair plan, CRM -> ERP (a dry run: the SQL the ERP would run)"
# A plan exits 1: there is drift to repair.
plan=$("$arbor" sync plan --source "http://$crm" --target "http://$erp" --dataset customers --extra delete || true)
# sed reads to the end (head would close the pipe early: SIGPIPE under pipefail).
printf '%s\n' "$plan" | sed -n '1,4p'
echo "  ..."
printf '%s\n' "$plan" | tail -n 1
echo "demo: executing it"
"$arbor" sync run --source "http://$crm" --target "http://$erp" --dataset customers --extra delete --execute
"$arbor" compare --agent "http://$crm" --dataset customers --peer "http://$erp" --stats --limit 0

# Two-way: both systems take edits; email belongs to the CRM, the balance to
# the ERP, everything else follows the CRM.
echo
echo "demo: edits on both sides: CRM emails of customers 1-3, ERP credit of 10-12, both on 20"
python3 - "$work" <<'PY'
import sqlite3, sys
crm = sqlite3.connect(f"{sys.argv[1]}/crm.db")
crm.executescript("""
  UPDATE customers SET email = 'new' || customer_id || '@crm.example' WHERE customer_id IN (1, 2, 3, 20);
""")
crm.commit()
erp = sqlite3.connect(f"{sys.argv[1]}/erp.db")
erp.executescript("""
  UPDATE clients SET credit = '777.00' WHERE client_no IN (10, 11, 12, 20);
""")
erp.commit()
PY
# The demo agents run without change capture: restart them to index the edits.
arbor_agents_stop
arbor_agent_start crm
arbor_agent_start erp
crm=$(arbor_agent_address crm)
erp=$(arbor_agent_address erp)
set +e
"$arbor" compare --agent "http://$crm" --dataset customers --peer "http://$erp" --wait 300 --limit 0 >/dev/null
set -e
"$arbor" sync run --source "http://$crm" --target "http://$erp" --dataset customers \
  --policy two-way --rule ownership --owner email=source --owner balance=target --fallback priority:source --execute
echo
"$arbor" compare --agent "http://$crm" --dataset customers --peer "http://$erp" --stats --limit 0
echo "demo: drift found, reported, repaired one way, synchronised two ways: equal roots"
