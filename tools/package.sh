#!/usr/bin/env bash
# Builds the Debian package from a release build:
#   $CARGO_TARGET_DIR/debian/arbor_<version>_amd64.deb
# (the binary in /usr/bin, /etc/arbor/agent.toml and agent.env, the disabled
# unit arbor-agent.service, docs). Installs cargo-deb when missing. Prints
# the package's path on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/env.sh

CARGO_DEB_VERSION=3.8.0
tools/setup.sh
# cargo-deb reads dpkg's architecture and compresses with xz; both are in
# Debian's base system. Probe cargo-deb by running it.
if ! cargo deb --version 2>/dev/null | grep -q "$CARGO_DEB_VERSION"; then
  echo "package: installing cargo-deb $CARGO_DEB_VERSION"
  cargo install --locked --quiet cargo-deb --version "$CARGO_DEB_VERSION"
fi
# The reference shipped in /usr/share/doc/arbor must be the code's.
echo "package: release build"
cargo build --release --locked --bin arbor
"$CARGO_TARGET_DIR/release/arbor" config reference | cmp -s - docs/config.md \
  || { echo "package: docs/config.md is stale: run arbor config reference > docs/config.md" >&2; exit 1; }
# Stripped: the release profile keeps line tables (542 MB with RocksDB's),
# which a package need not ship.
deb=$(cargo deb --locked --no-build --strip --output "$CARGO_TARGET_DIR/debian/" | tail -n 1)
echo "package: $("$CARGO_TARGET_DIR/release/arbor" --version)"
echo "$deb"
