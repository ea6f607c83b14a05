#!/usr/bin/env bash
# Runs the latency benchmark (benches/latency.rs): installs the peers it measures against (real
# Squid; Debian's apt, root or sudo), then `cargo bench --bench latency`.
# The table is printed and written to target/bench/latency.md (raw samples: latency-samples.csv).
# Usage: scripts/bench.sh          (CI=true makes a missing Squid a failure, not a skipped row)
# See docs/BENCHMARKS.md for what the figures mean.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== installing peers (squid-openssl, ...)"
bash scripts/install-test-deps.sh

echo "== cargo bench --bench latency"
cargo bench --bench latency
