#!/usr/bin/env bash
# The Ghostwire demo. Run it in two terminals:
#
#   ./run.sh               makes up a room code and tells you what to run in the second terminal
#   ./run.sh ROOMCODE      joins that room
#
# It builds the release binaries, starts a local relay on 127.0.0.1:${GHOSTWIRE_PORT:-8765} unless
# one is already listening there (a relay started here is stopped when this client exits), and
# starts the client. Nothing is written anywhere but cargo's target/ directory.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v cargo >/dev/null 2>&1; then
    echo "run.sh: cargo (the Rust toolchain) is not installed." >&2
    echo "        Install it from https://rustup.rs and run ./run.sh again." >&2
    exit 1
fi

port=${GHOSTWIRE_PORT:-8765}
admin_port=${GHOSTWIRE_ADMIN_PORT:-$((port + 1000))}
relay_url="ws://127.0.0.1:${port}/"

echo "building (release)..." >&2
# One package at a time: built together, cargo would unify their dependencies' features into
# variants of its own, which scripts/test.sh and scripts/build-release.sh (the image) do not build.
cargo build --release --quiet -p ghostwire
cargo build --release --quiet -p ghostwire-relay

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if listening "$port"; then
    echo "using the relay already listening on 127.0.0.1:${port}" >&2
else
    ./target/release/ghostwire-relay --listen "127.0.0.1:${port}" --admin-listen "127.0.0.1:${admin_port}" \
        >/dev/null 2>&1 &
    relay_pid=$!
    trap 'kill "$relay_pid" 2>/dev/null || true; wait "$relay_pid" 2>/dev/null || true' EXIT
    for _ in $(seq 1 100); do
        listening "$port" && break
        kill -0 "$relay_pid" 2>/dev/null || { echo "run.sh: the relay failed to start on port ${port}" >&2; exit 1; }
        sleep 0.05
    done
    listening "$port" || { echo "run.sh: the relay did not start listening on port ${port}" >&2; exit 1; }
    echo "started a relay on 127.0.0.1:${port} (it stops when this client exits)" >&2
fi

code=${1:-}
if [ -z "$code" ]; then
    # 16 symbols from A-Z and 2-9 without the look-alikes O, I and L (31 symbols: 79 bits),
    # on purpose, so its SIGPIPE must not count as a failure here.
    code=$(set +o pipefail; LC_ALL=C tr -dc 'ABCDEFGHJKMNPQRSTUVWXYZ2-9' </dev/urandom | head -c 16)
    echo "" >&2
    echo "  room code: ${code}" >&2
    echo "  in a second terminal, run:  ./run.sh ${code}" >&2
    echo "" >&2
fi

status=0
./target/release/ghostwire --relay "$relay_url" "$code" || status=$?
exit "$status"
