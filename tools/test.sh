#!/usr/bin/env bash
# The README's test command: install what is missing, make PostgreSQL and
# MariaDB reachable (see tools/databases.sh), run the whole workspace's
# tests, and stop any database it started.
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/env.sh
source tools/databases.sh

tools/setup.sh --test
trap arbor_databases_down EXIT
arbor_databases_up
psql "$ARBOR_TEST_POSTGRES_URL" -tAc "select 'postgres reachable: ' || version()"
mariadb --no-defaults -h 127.0.0.1 -P "$(echo "$ARBOR_TEST_MYSQL_URL" | sed -E 's#.*:([0-9]+)/.*#\1#')" \
  -uarbor -parbor -N -e "select concat('mariadb reachable: ', version())"

echo "test: building (target dir $CARGO_TARGET_DIR)"
cargo build --workspace --locked --bins
echo "test: a client that is not ours, through server reflection"
tools/reflection_check.sh
echo "test: the workspace tests"
log=$(mktemp)
set -o pipefail
cargo test --workspace --locked 2>&1 | tee "$log"
# One closing line over every test binary (cargo's last line is a doc-test
# binary's, often with 0 tests).
awk '/^test result:/ {
       for (i = 2; i <= NF; i++) {
         if ($i == "passed;") p += $(i - 1)
         if ($i == "failed;") f += $(i - 1)
         if ($i == "ignored;") s += $(i - 1)
       }
     }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
rm -f "$log"
