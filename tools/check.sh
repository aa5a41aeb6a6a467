#!/usr/bin/env bash
# What "clean" means for arbor: formatting, lints, docs, tests, benches compile.
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/env.sh
source tools/databases.sh
trap arbor_databases_down EXIT
arbor_databases_up

cargo fmt --all --check
python3 tools/module-cycles.py
cargo clippy --workspace --all-targets --locked -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
cargo build --workspace --locked --bins
tools/reflection_check.sh
cargo deny --offline --log-level error check licenses bans sources
cargo test --workspace --locked -- --skip restarts::
cargo test --locked --test agents -- --test-threads=1 restarts::
cargo bench --workspace --no-run --locked
echo "check: clean"
