#!/usr/bin/env bash
# Checks that a gRPC client that is not ours (Python grpcio, with server
# reflection and no arbor proto files) can use an agent: two demo agents,
# health, a compare, index status and a refused malformed request.
# Needs a built `arbor` (tools/test.sh builds it first).
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/env.sh

venv=/var/cache/arbor/venv-grpc
if ! "$venv/bin/python" -c "import grpc, grpc_reflection" 2>/dev/null; then
  echo "reflection check: installing grpcio and grpcio-reflection into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "grpcio>=1.60" "grpcio-reflection>=1.60" "protobuf>=5"
fi

arbor="$CARGO_TARGET_DIR/debug/arbor"
source tools/agents.sh
work=$(mktemp -d /tmp/arbor-reflection.XXXXXX)
arbor_agents_init "$arbor" "$work"
cleanup() {
  arbor_agents_stop
  rm -rf "$work"
}
trap cleanup EXIT

"$arbor" demo --dir "$work" --rows 20000 --drift 40 >/dev/null
RUST_LOG=warn arbor_agent_start crm
RUST_LOG=warn arbor_agent_start erp
crm=$(arbor_agent_address crm)
erp=$(arbor_agent_address erp)
# Wait until both agents have indexed (health SERVING: the response bytes
# 08 01) before comparing.
for i in $(seq 1 300); do
  if "$venv/bin/python" -c "
import sys, grpc
def serving(addr):
    check = grpc.insecure_channel(addr).unary_unary(
        '/grpc.health.v1.Health/Check', request_serializer=lambda b: b, response_deserializer=lambda b: b)
    return check(b'', timeout=5) == b'\\x08\\x01'
sys.exit(0 if all(serving(a) for a in sys.argv[1:]) else 1)
" "$crm" "$erp" 2>/dev/null; then
    break
  fi
  sleep 0.2
done
"$venv/bin/python" tests/clients/reflection_client.py "$crm" "$erp" 40 40 40
