# Shared settings of the tools/ scripts; sourced, not run.
#
# RocksDB's C++ takes most of an hour to build on two cores, so every script
# builds into one target directory outside the clone, which CI and later
# clones reuse. Override with CARGO_TARGET_DIR.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/arbor/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
mkdir -p "$CARGO_TARGET_DIR"
