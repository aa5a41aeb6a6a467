#!/usr/bin/env bash
# The README's test command: install what is missing, then run the whole
# workspace's tests (unit, property, integration, crash and wire tests).
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/env.sh

tools/setup.sh
echo "test: building and running the workspace tests (target dir $CARGO_TARGET_DIR)"
cargo test --workspace --locked
