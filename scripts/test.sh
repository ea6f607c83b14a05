#!/usr/bin/env bash
# Runs every test of connect-tunnel, installing what the tests need first (Debian's apt; root).
# Usage: scripts/test.sh            (CI=true makes a missing proxy daemon a failure, not a skip)
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== installing test peers (squid-openssl, openssh-server, ...)"
bash scripts/install-test-deps.sh
bash scripts/install-media-deps.sh
# The ARM cross toolchain and qemu, now: hil-tests run the camera under qemu-aarch64 too.
bash scripts/cross-test.sh --install-only

echo "== format and lints"
cargo fmt --check
cargo clippy --all-targets -- -D warnings

echo "== every feature combination builds and passes clippy (tls, webpki-roots, tls-log, cli)"
# "cli,tls" is the firmware build without the bundled Mozilla roots (default trust: the system's
# CA bundle); it gets the test targets too, since the tests run with TLS.
for features in "--no-default-features" "--no-default-features --features cli" \
    "--no-default-features --features tls" "--no-default-features --features webpki-roots" \
    "--features tls-log"; do
    # shellcheck disable=SC2086 # the flags are meant to split
    cargo clippy --lib --bins $features -- -D warnings
done
cargo clippy --all-targets --no-default-features --features cli,tls -- -D warnings
cargo test --no-default-features --lib
# Without the bundled roots: the system CA bundle look-up (unit tests) and a TLS proxy under the
# default trust (tls_proxy's default_trust_refuses_a_private_ca).
cargo test --no-default-features --features cli,tls --lib --test tls_proxy

echo "== tests: unit, scripted proxies, real Squid, ssh, examples, doc tests"
cargo test --all-targets
cargo test --doc

echo "== main job, as a test: cargo run --release --example camera_stream"
cargo run --release --example camera_stream -- --duration 3
echo "== hardware-in-the-loop scenarios in namespaces; board mode (run-board.sh) against that lab"
HIL_BOARD_SELFTEST=1 bash hil-tests/run-local.sh

echo "== ARM (aarch64, armv7): Debian's cross toolchain; tests and the CLI under qemu (docs/ARM.md)"
bash scripts/cross-test.sh


echo "== all tests passed"
