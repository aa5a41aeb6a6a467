#!/usr/bin/env bash
# Repair throughput, PostgreSQL (source of truth) -> MariaDB (target), in
# one run: N divergent rows inserted into an empty target, then the same N
# rows changed at the source and updated on the target. Each `arbor sync
# run --execute` is timed end to end (compare, fetch values, conditional
# batched writes, verifying compare). Release build.
#
#   tools/bench/repair.sh [--rows 100000] [--batch 1000]
set -euo pipefail
cd "$(dirname "$0")/../.."
source tools/env.sh
source tools/databases.sh

rows=100000
batch=1000
while [ $# -gt 0 ]; do
  case "$1" in
    --rows) rows=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    *) echo "usage: $0 [--rows N] [--batch N]" >&2; exit 2 ;;
  esac
done

cargo build --release --locked --bin arbor >&2
arbor="$CARGO_TARGET_DIR/release/arbor"
source tools/agents.sh
work=$(mktemp -d /tmp/arbor-repairbench.XXXXXX)
arbor_agents_init "$arbor" "$work"
cleanup() {
  arbor_agents_stop
  arbor_databases_down
  rm -rf "$work"
}
trap cleanup EXIT
arbor_databases_up
port=$(echo "$ARBOR_TEST_MYSQL_URL" | sed -E 's#.*:([0-9]+)/.*#\1#')
my() { mariadb --no-defaults -h 127.0.0.1 -P "$port" -uarbor -parbor arbor_test "$@"; }

psql "$ARBOR_TEST_POSTGRES_URL" -q -v ON_ERROR_STOP=1 <<SQL
DROP TABLE IF EXISTS bench_repair;
CREATE TABLE bench_repair (id bigint PRIMARY KEY, customer_id bigint NOT NULL, status text NOT NULL,
  amount numeric(12,2) NOT NULL, note text, updated_at timestamptz NOT NULL);
INSERT INTO bench_repair
SELECT g, g % 100000, (ARRAY['new','paid','shipped','returned'])[1 + g % 4], (g % 100000) / 100.0,
       CASE WHEN g % 7 = 0 THEN NULL ELSE 'deliver to the back door, ring twice' END,
       timestamptz '2024-06-01' + g * interval '1 second'
FROM generate_series(1, $rows) g;
SQL
my -e "DROP TABLE IF EXISTS bench_repair;
  CREATE TABLE bench_repair (id bigint PRIMARY KEY, customer_id bigint NOT NULL, status varchar(10) NOT NULL,
    amount decimal(12,2) NOT NULL, note varchar(60), updated_at datetime(6) NOT NULL) ENGINE=InnoDB;"

columns='key = [{ source = "id", kind = "integer" }]
columns = [
  { source = "customer_id", kind = "integer" }, { source = "status", kind = "text" },
  { source = "amount", kind = "decimal" }, { source = "note", kind = "text" },
  { source = "updated_at", kind = "timestamp" },
]'
cat >"$work/pg.toml" <<TOML
[agent]
insecure = true
listen = "127.0.0.1:0"
data_dir = "pg-data"
[[dataset]]
name = "orders"
secret = "bench"
source = { kind = "postgres", url_env = "ARBOR_TEST_POSTGRES_URL", table = "bench_repair" }
$columns
serve_values = true
TOML
cat >"$work/my.toml" <<TOML
[agent]
insecure = true
listen = "127.0.0.1:0"
data_dir = "my-data"
[[dataset]]
name = "orders"
secret = "bench"
source = { kind = "mysql", url_env = "ARBOR_TEST_MYSQL_URL", table = "bench_repair" }
$columns
allow_repairs = true
TOML

start_agents() {
  arbor_agents_stop
  arbor_agent_start pg
  arbor_agent_start my
  pg=$(arbor_agent_address pg)
  myaddr=$(arbor_agent_address my)
  "$arbor" compare --agent "http://$pg" --dataset orders --peer "http://$myaddr" --wait 600 --limit 0 >/dev/null || true
}

timed_sync() {
  local what=$1 start ms out
  start=$(date +%s%N)
  "$arbor" sync run --source "http://$pg" --target "http://$myaddr" --dataset orders \
    --extra delete --batch "$batch" --execute --json >"$work/sync.json"
  out=$(head -n 1 "$work/sync.json")
  ms=$(( ($(date +%s%N) - start) / 1000000 ))
  echo "  $what: $rows rows in ${ms} ms ($(( rows * 1000 / (ms > 0 ? ms : 1) )) rows/s)"
  echo "    $(echo "$out" | sed -E 's/.*"applied":([0-9]+).*"conflicts":([0-9]+).*"drift_after":([0-9]+).*/applied \1, conflicts \2, drift after \3/')"
}

echo "repair: PostgreSQL -> MariaDB, $rows divergent rows, batches of $batch, $(nproc) cores"
start_agents
timed_sync "inserts into an empty target"
psql "$ARBOR_TEST_POSTGRES_URL" -q -c "UPDATE bench_repair SET amount = amount + 1, updated_at = updated_at + interval '1 day'"
start_agents
timed_sync "updates of every row"
psql "$ARBOR_TEST_POSTGRES_URL" -q -c "DROP TABLE bench_repair"
my -e "DROP TABLE bench_repair"
