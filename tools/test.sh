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
echo "test: licences, banned crates and sources (cargo-deny, offline)"
# cargo-deny reads every package of the graph, dev-dependencies included,
# which a build of the binaries has not downloaded.
cargo fetch --locked >/dev/null
cargo deny --offline --log-level error check licenses bans sources
echo "test: every decoder of outside bytes under AFL++, ${ARBOR_FUZZ_SECONDS:=15} s each (tools/fuzz.sh)"
tools/fuzz.sh --seconds "$ARBOR_FUZZ_SECONDS"
echo "test: the workspace tests"
log=$(mktemp)
set -o pipefail
# Database restarts cut every session of the servers: the suite runs
# without them, then they run alone, one at a time.
cargo test --workspace --locked -- --skip restarts:: 2>&1 | tee "$log"
echo "test: database restarts under capture, alone"
cargo test --locked --test agents -- --test-threads=1 restarts:: 2>&1 | tee -a "$log"
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
