#!/usr/bin/env bash
# Builds the release relay binary exactly as the Dockerfile's build stage does (same command,
# same lockfile), for machines without a Docker engine. Prints the binary's path.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked --release -p ghostwire-relay
echo "$(pwd)/target/release/ghostwire-relay"
