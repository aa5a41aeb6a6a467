# Starting and stopping `arbor agent` processes from scripts; sourced by
# tools/demo.sh, tools/reflection_check.sh and tools/bench/agents.sh.
#
#   arbor_agents_init BIN DIR    the arbor binary and a work dir (configs inside)
#   arbor_agent_start NAME       starts `arbor agent --config NAME.toml` in DIR
#   arbor_agent_address NAME     waits for and prints its listen address
#   arbor_agent_pid NAME         its process id
#   arbor_agents_stop            SIGTERM to every agent started, then waits

ARBOR_AGENTS_BIN=""
ARBOR_AGENTS_DIR=""
declare -A ARBOR_AGENT_PIDS=()

arbor_agents_init() {
  ARBOR_AGENTS_BIN=$1
  ARBOR_AGENTS_DIR=$2
}

arbor_agent_start() {
  local name=$1
  (cd "$ARBOR_AGENTS_DIR" && exec "$ARBOR_AGENTS_BIN" agent --config "$name.toml" >"$name.out" 2>"$name.log") &
  ARBOR_AGENT_PIDS[$name]=$!
}

arbor_agent_address() {
  local name=$1 i
  for i in $(seq 1 600); do
    if grep -q '^listening on ' "$ARBOR_AGENTS_DIR/$name.out" 2>/dev/null; then
      sed -n 's/^listening on //p' "$ARBOR_AGENTS_DIR/$name.out"
      return 0
    fi
    sleep 0.1
  done
  echo "the $name agent did not start:" >&2
  cat "$ARBOR_AGENTS_DIR/$name.log" >&2
  return 1
}

arbor_agent_pid() {
  echo "${ARBOR_AGENT_PIDS[$1]}"
}

arbor_agents_stop() {
  local p
  for p in "${ARBOR_AGENT_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${ARBOR_AGENT_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  ARBOR_AGENT_PIDS=()
}
