#!/usr/bin/env bash
# Index build from MariaDB against streaming the same table with
# `mariadb --quick` into /dev/null, in one run (see tools/bench/pg_build.sh).
#
#   tools/bench/mysql_build.sh [--rows 1000000]
set -euo pipefail
cd "$(dirname "$0")/../.."
source tools/env.sh
source tools/databases.sh

rows=1000000
while [ $# -gt 0 ]; do
  case "$1" in
    --rows) rows=$2; shift 2 ;;
    *) echo "usage: $0 [--rows N]" >&2; exit 2 ;;
  esac
done

cargo build --release --locked --bin arbor >&2
arbor="$CARGO_TARGET_DIR/release/arbor"
work=$(mktemp -d /tmp/arbor-mybench.XXXXXX)
trap 'arbor_databases_down; rm -rf "$work"' EXIT
arbor_databases_up
url=$ARBOR_TEST_MYSQL_URL
port=$(echo "$url" | sed -E 's#.*:([0-9]+)/.*#\1#')
sql() { mariadb --no-defaults -h 127.0.0.1 -P "$port" -uarbor -parbor arbor_test "$@"; }

echo "mysql_build: loading $rows rows" >&2
digits="(SELECT 0 d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4 UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 UNION ALL SELECT 9)"
sql -e "DROP TABLE IF EXISTS bench_orders;
  CREATE TABLE bench_orders (id bigint PRIMARY KEY, customer_id bigint NOT NULL, status varchar(10) NOT NULL,
    amount decimal(12,2) NOT NULL, currency char(3) NOT NULL, created_at datetime(6) NOT NULL,
    updated_at datetime(6) NOT NULL, shipping_address varchar(120) NOT NULL, note varchar(60)) ENGINE=InnoDB;
  INSERT INTO bench_orders
  SELECT n, n % 100000, ELT(1 + n % 4, 'new', 'paid', 'shipped', 'returned'), (n % 100000) / 100, 'EUR',
         TIMESTAMP '2024-01-01 00:00:00' + INTERVAL n SECOND, TIMESTAMP '2024-06-01 00:00:00' + INTERVAL n SECOND,
         CONCAT(n, ' Orchard Lane, Building ', n % 13, ', Springfield Heights, OR 97', LPAD(n % 1000, 3, '0')),
         IF(n % 7 = 0, NULL, 'deliver to the back door, ring twice')
  FROM (SELECT a.d + 10*b.d + 100*c.d + 1000*e.d + 10000*f.d + 100000*g.d + 1000000*h.d + 1 AS n
        FROM $digits a, $digits b, $digits c, $digits e, $digits f, $digits g, $digits h) s
  WHERE n <= $rows;"

start=$(date +%s%N)
sql --quick -N -e "SELECT * FROM bench_orders" >/dev/null
quick_ms=$(( ($(date +%s%N) - start) / 1000000 ))

cat >"$work/agent.toml" <<TOML
[agent]
data_dir = "data"
[[dataset]]
name = "orders"
secret = "bench"
source = { kind = "mysql", url_env = "ARBOR_TEST_MYSQL_URL", table = "bench_orders" }
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
sql -e "DROP TABLE bench_orders"

quick_rate=$(( rows * 1000 / (quick_ms > 0 ? quick_ms : 1) ))
build_rate=$(( rows * 1000 / (build_ms > 0 ? build_ms : 1) ))
cat <<OUT
mysql_build: $rows rows, $(nproc) cores, $(sql -N -e 'SELECT VERSION()')
  mariadb --quick (SELECT * into /dev/null): ${quick_ms} ms (${quick_rate} rows/s)
  arbor index build (keyset chunks, binary protocol, hash, RocksDB): ${build_ms} ms (${build_rate} rows/s)
  ratio build/stream: $(awk -v b="$build_rate" -v c="$quick_rate" 'BEGIN { printf "%.2f", b / c }')
  $(echo "$out" | sed -n 's/.*\(peak RSS [0-9]* MiB\).*/\1/p')
OUT
