#!/usr/bin/env bash
# Index build from PostgreSQL against the raw export rate, in one run:
# an orders-like table of N rows (~200 bytes each) in the test PostgreSQL
# (tools/databases.sh), timed `COPY ... TO STDOUT (FORMAT binary)` into
# /dev/null, then `arbor index build` (release) of the same table.
#
#   tools/bench/pg_build.sh [--rows 10000000]
set -euo pipefail
cd "$(dirname "$0")/../.."
source tools/env.sh
source tools/databases.sh

rows=10000000
while [ $# -gt 0 ]; do
  case "$1" in
    --rows) rows=$2; shift 2 ;;
    *) echo "usage: $0 [--rows N]" >&2; exit 2 ;;
  esac
done

cargo build --release --locked --bin arbor >&2
arbor="$CARGO_TARGET_DIR/release/arbor"
work=$(mktemp -d /tmp/arbor-pgbench.XXXXXX)
trap 'arbor_databases_down; rm -rf "$work"' EXIT
arbor_databases_up
url=$ARBOR_TEST_POSTGRES_URL

echo "pg_build: loading $rows rows" >&2
psql "$url" -q -v ON_ERROR_STOP=1 <<SQL
DROP TABLE IF EXISTS bench_orders;
CREATE UNLOGGED TABLE bench_orders (
  id bigint PRIMARY KEY, customer_id bigint NOT NULL, status text NOT NULL, amount numeric(12,2) NOT NULL,
  currency text NOT NULL, created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL,
  shipping_address text NOT NULL, note text);
INSERT INTO bench_orders
SELECT g, g % 100000, (ARRAY['new','paid','shipped','returned'])[1 + g % 4], (g % 100000) / 100.0, 'EUR',
       timestamptz '2024-01-01' + g * interval '1 second', timestamptz '2024-06-01' + g * interval '1 second',
       g || ' Orchard Lane, Building ' || (g % 13) || ', Springfield Heights, OR 97' || lpad((g % 1000)::text, 3, '0'),
       CASE WHEN g % 7 = 0 THEN NULL ELSE 'deliver to the back door, ring twice' END
FROM generate_series(1, $rows) g;
VACUUM ANALYZE bench_orders;
SQL
bytes=$(psql "$url" -tAc "SELECT pg_size_pretty(pg_relation_size('bench_orders'))")

start=$(date +%s%N)
psql "$url" -q -c "\\copy bench_orders TO '/dev/null' WITH (FORMAT binary)"
copy_ms=$(( ($(date +%s%N) - start) / 1000000 ))

cat >"$work/agent.toml" <<TOML
[agent]
data_dir = "data"
[[dataset]]
name = "orders"
secret = "bench"
source = { kind = "postgres", url_env = "ARBOR_TEST_POSTGRES_URL", table = "bench_orders" }
key = [{ source = "id", kind = "integer" }]
columns = [
  { source = "customer_id", kind = "integer" }, { source = "status", kind = "text" },
  { source = "amount", kind = "decimal" }, { source = "currency", kind = "text" },
  { source = "created_at", kind = "timestamp" }, { source = "updated_at", kind = "timestamp" },
  { source = "shipping_address", kind = "text" }, { source = "note", kind = "text" },
]
TOML
start=$(date +%s%N)
out=$("$arbor" index build --config "$work/agent.toml" --dataset orders)
build_ms=$(( ($(date +%s%N) - start) / 1000000 ))
echo "$out" >&2
psql "$url" -q -c "DROP TABLE bench_orders"

copy_rate=$(( rows * 1000 / (copy_ms > 0 ? copy_ms : 1) ))
build_rate=$(( rows * 1000 / (build_ms > 0 ? build_ms : 1) ))
cat <<OUT
pg_build: $rows rows ($bytes heap), $(nproc) cores, PostgreSQL $(psql "$url" -tAc 'SHOW server_version' 2>/dev/null || echo '?')
  COPY TO STDOUT (binary) into /dev/null: ${copy_ms} ms (${copy_rate} rows/s)
  arbor index build (COPY text chunks, hash, RocksDB): ${build_ms} ms (${build_rate} rows/s)
  ratio build/COPY: $(awk -v b="$build_rate" -v c="$copy_rate" 'BEGIN { printf "%.2f", b / c }')
  $(echo "$out" | sed -n 's/.*\(peak RSS [0-9]* MiB\).*/\1/p')
OUT
