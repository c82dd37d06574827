#!/usr/bin/env bash
# The benchmark of record: our relay (and with --compare the Python and Node reference relays)
# pinned to core 0, driven by ghostwire-bench pinned to core 1, all in one run, one table.
#
#   ./scripts/bench.sh                 ours only, 3 runs, medians
#   ./scripts/bench.sh --compare       ours, node and python side by side, with ratios
#   ./scripts/bench.sh --runs 5        more runs
#   ./scripts/bench.sh --smoke         a tiny configuration that only checks every scenario runs
#
# GHOSTWIRE_PEERS points at the comparison relays (default ../shared/bench beside the repo).
set -euo pipefail
cd "$(dirname "$0")/.."
peers=${GHOSTWIRE_PEERS:-../shared/bench}

command -v taskset >/dev/null || { echo "bench.sh: taskset (util-linux) is needed to pin processes" >&2; exit 1; }
[ "$(nproc)" -ge 2 ] || echo "bench.sh: fewer than 2 cores; relay and generator will share one" >&2
cargo build --release --quiet -p ghostwire-relay -p ghostwire-bench -p ghostwire
case " $* " in
    *" --compare "*) "$peers/setup.sh" ;;
esac

echo "# Ghostwire benchmark"
echo
echo "- command: \`./scripts/bench.sh $*\`"
echo "- date: $(date -u +%Y-%m-%dT%H:%MZ)"
echo "- machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(free -g | awk '/Mem:/{print $2}') GiB; relay on core 0, generator on core 1"
echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
exec taskset -c 1 ./target/release/ghostwire-bench --relay target/release/ghostwire-relay --peers "$peers" "$@"
