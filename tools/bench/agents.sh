#!/usr/bin/env bash
# Two agents on loopback, N vs N rows of the demo systems with a given drift:
# index time, compare wall time (median of R runs), round trips, bytes on the
# wire per divergent record and each agent's peak RSS. Release build.
#
#   tools/bench/agents.sh [--rows 1000000] [--drift-each 333] [--runs 5]
set -euo pipefail
cd "$(dirname "$0")/../.."
source tools/env.sh

rows=1000000
drift=333
runs=5
while [ $# -gt 0 ]; do
  case "$1" in
    --rows) rows=$2; shift 2 ;;
    --drift-each) drift=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    *) echo "usage: $0 [--rows N] [--drift-each N] [--runs R]" >&2; exit 2 ;;
  esac
done

cargo build --release --locked --bin arbor >&2
arbor="$CARGO_TARGET_DIR/release/arbor"
source tools/agents.sh
work=$(mktemp -d /tmp/arbor-bench.XXXXXX)
arbor_agents_init "$arbor" "$work"
cleanup() {
  arbor_agents_stop
  rm -rf "$work"
}
trap cleanup EXIT

"$arbor" demo --dir "$work" --rows "$rows" --drift "$drift" >&2
arbor_agent_start crm
arbor_agent_start erp
crm=$(arbor_agent_address crm)
erp=$(arbor_agent_address erp)
for side in crm erp; do
  for i in $(seq 1 6000); do
    grep -q "all datasets indexed" "$work/$side.log" && break
    sleep 0.1
  done
done
index_ms() { # the agent's own log line: "dataset indexed ... elapsed_ms=N"
  sed -n 's/.*dataset indexed.*elapsed_ms=\([0-9]*\).*/\1/p' "$work/$1.log" | tail -n 1
}
times=()
for r in $(seq 1 "$runs"); do
  start=$(date +%s%N)
  set +e
  "$arbor" compare --agent "http://$crm" --dataset customers --peer "http://$erp" --json --limit 1 >"$work/compare.json"
  code=$?
  set -e
  end=$(date +%s%N)
  [ "$code" -le 1 ] || { cat "$work/crm.log" >&2; exit 1; }
  times+=($(( (end - start) / 1000000 )))
done
median=$(printf '%s\n' "${times[@]}" | sort -n | sed -n "$(( (runs + 1) / 2 ))p")
summary=$(head -n 1 "$work/compare.json")
field() { echo "$summary" | python3 -c "import json,sys; d=json.load(sys.stdin); print(eval('d' + sys.argv[1]))" "$1"; }
rss() { awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/$(arbor_agent_pid "$1")/status"; }
drift_total=$(( $(field "['missing_left']") + $(field "['missing_right']") + $(field "['changed']") ))
bytes=$(field "['cost']['peer_bytes']")
cat <<OUT
agents benchmark: $rows vs $rows rows, $drift_total drifting keys ($drift of each kind), $(nproc) cores
  index build (each agent, from SQLite): crm $(index_ms crm) ms, erp $(index_ms erp) ms
  compare wall time (CLI, median of $runs): ${median} ms  [runs: ${times[*]}]
  compare time inside the agent (last run): $(field "['cost']['elapsed_ms']") ms
  round trips: $(field "['cost']['round_trips']"), levels: $(field "['cost']['levels']")
  bytes with the peer: $bytes ($(( bytes / drift_total )) per divergent record)
  peak RSS: crm agent $(rss crm) MiB, erp agent $(rss erp) MiB
OUT
