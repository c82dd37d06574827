#!/usr/bin/env bash
# Runs every test Ghostwire has, installing what the tests need first.
# Works on a fresh Debian machine with the Rust toolchain (root, or sudo available).
#
#   ./scripts/test.sh            everything: lint, build, all tests
#   ./scripts/test.sh FILTER     only nextest tests matching FILTER (after lint and build)
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n==> %s\n' "$*" >&2; }

# --- what the tests need from outside cargo -------------------------------------------------
need_apt=()
command -v strace >/dev/null 2>&1 || need_apt+=(strace)
# A real NATS server (with JetStream) for the NATS upstream's tests; each test starts its own.
command -v nats-server >/dev/null 2>&1 || need_apt+=(nats-server)
if [ ${#need_apt[@]} -gt 0 ]; then
    say "installing ${need_apt[*]}"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if ! command -v cargo-nextest >/dev/null 2>&1; then
    say "installing cargo-nextest"
    cargo install --locked cargo-nextest >/dev/null
fi

# --- lint ------------------------------------------------------------------------------------
say "cargo fmt --check"
cargo fmt --all -- --check
say "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --all-features --quiet -- -D warnings

# --- build (the process tests run the real binaries; run.sh's test uses the release build) ---
say "cargo build --workspace --bins (debug and release)"
cargo build --workspace --bins --quiet
cargo build --release --quiet -p ghostwire -p ghostwire-relay

# --- tests -----------------------------------------------------------------------------------
if [ $# -eq 0 ]; then
    say "doc tests"
    cargo test --workspace --doc --quiet 2>&1 | grep -E "^test result" | sort | uniq -c >&2
fi
# nextest's summary is the run's closing line.
say "cargo nextest run"
cargo nextest run --workspace --all-features --profile ci "$@"
say "all tests passed"
