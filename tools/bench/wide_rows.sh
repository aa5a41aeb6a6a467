#!/usr/bin/env bash
# Memory with wide rows: peak RSS of an index build, a rescan, a compare
# (column digests of the changed rows) and a sync plan (values fetched)
# over PostgreSQL tables of ~1 GB each, for rows of each given width, with
# `COPY ... TO STDOUT (FORMAT binary)` into /dev/null timed in the same run
# as the peer rate. Release build; the test PostgreSQL (tools/databases.sh).
#
#   tools/bench/wide_rows.sh [--widths 50000,1000000] [--bytes 1000000000]
#
# Peak RSS of the CLI's build is `/usr/bin/time -f %M`; of the agents
# (rescan at start, then compare and plan), the kernel's VmHWM read from
# /proc while they run (the same high-water mark, which /usr/bin/time
# reports at exit).
set -euo pipefail
cd "$(dirname "$0")/../.."
source tools/env.sh
source tools/databases.sh
source tools/agents.sh

widths=50000,1000000
total=1000000000
while [ $# -gt 0 ]; do
  case "$1" in
    --widths) widths=$2; shift 2 ;;
    --bytes) total=$2; shift 2 ;;
    *) echo "usage: $0 [--widths W,W] [--bytes N]" >&2; exit 2 ;;
  esac
done
if [ ! -x /usr/bin/time ]; then
  echo "wide_rows: installing GNU time" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q time >&2
fi

cargo build --release --locked --bin arbor >&2
arbor="$CARGO_TARGET_DIR/release/arbor"
work=$(mktemp -d /tmp/arbor-wide.XXXXXX)
arbor_agents_init "$arbor" "$work"
cleanup() {
  arbor_agents_stop
  arbor_databases_down
  rm -rf "$work"
}
trap cleanup EXIT
arbor_databases_up
url=$ARBOR_TEST_POSTGRES_URL

config() { # NAME TABLE PORT: an agent over one table, rescanned at start
  cat >"$work/$1.toml" <<TOML
[agent]
listen = "127.0.0.1:0"
data_dir = "$1-data"
insecure = true
[[dataset]]
name = "wide"
secret = "bench"
serve_values = true
allow_repairs = true
source = { kind = "postgres", url_env = "ARBOR_TEST_POSTGRES_URL", table = "$2" }
key = [{ source = "id", kind = "integer" }]
columns = [{ source = "n", kind = "integer" }, { source = "pad", kind = "text" }]
capture = { mode = "rescan", interval_secs = 3600 }
TOML
}
hwm() { awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/$(arbor_agent_pid "$1")/status"; }
wait_for() { # NAME PATTERN: waits for a line in the agent's log
  local i
  for i in $(seq 1 6000); do
    grep -q "$2" "$work/$1.log" && return 0
    sleep 0.1
  done
  echo "wide_rows: the $1 agent never logged '$2'" >&2
  cat "$work/$1.log" >&2
  return 1
}

report=()
IFS=, read -r -a list <<<"$widths"
for width in "${list[@]}"; do
  rows=$(( total / width ))
  echo "wide_rows: $rows rows of $width bytes" >&2
  # 32 hex digits repeated: incompressible enough to be interesting, fast
  # to make. 1% of the target's rows differ, 0.1% are missing.
  psql "$url" -q -v ON_ERROR_STOP=1 <<SQL
DROP TABLE IF EXISTS wide_src; DROP TABLE IF EXISTS wide_dst;
CREATE UNLOGGED TABLE wide_src (id bigint PRIMARY KEY, n int NOT NULL, pad text NOT NULL);
INSERT INTO wide_src SELECT g, g, left(repeat(md5(g::text), $width / 32 + 1), $width)
FROM generate_series(1, $rows) g;
CREATE UNLOGGED TABLE wide_dst AS SELECT * FROM wide_src;
ALTER TABLE wide_dst ADD PRIMARY KEY (id);
UPDATE wide_dst SET n = n + 1 WHERE id % 100 = 0;
DELETE FROM wide_dst WHERE id % 1000 = 1;
VACUUM ANALYZE wide_src; VACUUM ANALYZE wide_dst;
SQL
  start=$(date +%s%N)
  psql "$url" -q -c "\\copy wide_src TO '/dev/null' WITH (FORMAT binary)"
  copy_ms=$(( ($(date +%s%N) - start) / 1000000 ))

  rm -rf "$work"/src-data "$work"/dst-data
  config src wide_src
  config dst wide_dst
  (cd "$work" && /usr/bin/time -f '%M %e' -o build.time "$arbor" index build --config src.toml --dataset wide >&2)
  read -r build_kib build_s <"$work/build.time"
  (cd "$work" && "$arbor" index build --config dst.toml --dataset wide >&2)

  arbor_agent_start src
  arbor_agent_start dst
  src=$(arbor_agent_address src)
  dst=$(arbor_agent_address dst)
  wait_for src "caught up with its system"
  wait_for dst "caught up with its system"
  rescan_src=$(hwm src)
  rescan_ms=$(sed -n 's/.*elapsed_ms=\([0-9]*\).*caught up.*/\1/p; s/.*caught up.*elapsed_ms=\([0-9]*\).*/\1/p' "$work/src.log" | head -n 1)
  set +e
  "$arbor" compare --agent "http://$src" --dataset wide --peer "http://$dst" --json >"$work/compare.json"
  code=$?
  set -e
  [ "$code" -eq 1 ] || { echo "wide_rows: compare exited $code" >&2; cat "$work/src.log" >&2; exit 1; }
  compare_src=$(hwm src)
  compare_dst=$(hwm dst)
  set +e
  "$arbor" sync plan --source "http://$src" --target "http://$dst" --dataset wide --json >"$work/plan.json"
  code=$?
  set -e
  [ "$code" -le 1 ] || { echo "wide_rows: sync plan exited $code" >&2; cat "$work/src.log" >&2; exit 1; }
  plan_src=$(hwm src)
  plan_dst=$(hwm dst)
  drift=$(head -n 1 "$work/compare.json" | python3 -c \
    "import json,sys; d=json.load(sys.stdin); print(d['missing_left'] + d['missing_right'] + d['changed'])")
  actions=$(( $(wc -l <"$work/plan.json") - 1 ))
  arbor_agents_stop

  copy_rate=$(( rows * 1000 / (copy_ms > 0 ? copy_ms : 1) ))
  build_rate=$(awk -v r="$rows" -v s="$build_s" 'BEGIN { printf "%.0f", r / (s > 0 ? s : 1) }')
  report+=("rows of $width bytes: $rows rows, $(( rows * width / 1000000 )) MB of values
  COPY TO STDOUT (binary) into /dev/null: ${copy_ms} ms (${copy_rate} rows/s)
  arbor index build: ${build_s} s (${build_rate} rows/s, $(awk -v b="$build_rate" -v c="$copy_rate" 'BEGIN { printf "%.2f", b / c }') x COPY), peak RSS $(( build_kib / 1024 )) MiB
  agent's rescan at start: ${rescan_ms} ms, peak RSS ${rescan_src} MiB
  after a compare of $drift drifting keys: source agent ${compare_src} MiB, peer ${compare_dst} MiB
  after a sync plan of $actions actions (values fetched): source agent ${plan_src} MiB, target ${plan_dst} MiB")
done
psql "$url" -q -c "DROP TABLE IF EXISTS wide_src; DROP TABLE IF EXISTS wide_dst"
echo "wide_rows: $(nproc) cores, PostgreSQL $(psql "$url" -tAc 'SHOW server_version'), chunk_bytes default"
printf '%s\n' "${report[@]}"
