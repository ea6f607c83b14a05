#!/usr/bin/env bash
# Cross-builds connect-tunnel for the Raspberry Pi targets (aarch64 and armv7) with Debian's own
# Rust toolchain and runs the library's tests and the ARM CLI under qemu user emulation.
#
#   scripts/cross-test.sh                  both targets
#   scripts/cross-test.sh TARGET...        only these (aarch64-unknown-linux-gnu,
#                                          armv7-unknown-linux-gnueabihf)
#   scripts/cross-test.sh --install-only   install the toolchain and stop (used by size-report.sh)
#
# Why not `cross`: it needs a container engine, which CI machines lack. Users with one can use
# `cross` (see Cross.toml and docs/ARM.md); this script is what CI runs.
#
# What it does, idempotently (as root, or with sudo):
#   1. Adds the arm64 and armhf dpkg architectures and installs, with apt, Debian's rustc-web plus
#      its ARM standard libraries (libstd-rust-web-dev:arm64/armhf), the GNU cross compilers and
#      qemu-user. Package state is read with dpkg-query first, so apt runs only when something is
#      missing or too old.
#   2. For each target, in target/cross (the host build in target/ is not touched): builds the
#      library's unit tests, the CLI's unit tests and the daemon-free integration tests listed
#      in TEST_FILES, and the CLI; runs those tests under qemu-aarch64 / qemu-arm.
#   3. Runs the ARM CLI under qemu end to end through a small python3 CONNECT proxy on loopback:
#      1 MiB relayed both ways (compared byte for byte, exit code 0), a 403 (exit 5) and a wrong
#      password (exit 4).
# Every wait is bounded (timeout). The exit status is non-zero if any step failed.
set -euo pipefail
cd "$(dirname "$0")/.."

ALL_TARGETS=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)
# Integration tests that need no daemon (scripted proxies in-process) and pass under qemu. A file
# that does not exist (yet) is skipped with a note.
TEST_FILES=(reply_shapes early_data split_reply hostile_proxies tls_proxy tls_records split_property reconnect
    socket_options type_sizes media_alloc fuzz_corpus)
# Bounds, in seconds. Generous: the machines are shared and qemu runs code ~5-20x slower.
BUILD_TIMEOUT=${CROSS_BUILD_TIMEOUT:-1500}
TEST_TIMEOUT=${CROSS_TEST_TIMEOUT:-900}
APT_TIMEOUT=${CROSS_APT_TIMEOUT:-900}
SMOKE_TIMEOUT=120

log() { printf '== cross-test: %s\n' "$*"; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

# ---------------------------------------------------------------------------------------------
# 1. Toolchain
# ---------------------------------------------------------------------------------------------
FOREIGN_ARCHES=(arm64 armhf)
PACKAGES=(rustc-web libstd-rust-web-dev:arm64 libstd-rust-web-dev:armhf
    gcc-aarch64-linux-gnu libc6-dev-arm64-cross gcc-arm-linux-gnueabihf libc6-dev-armhf-cross
    qemu-user python3)

pkg_version() {
    dpkg-query -W -f='${Status} ${Version}' "$1" 2>/dev/null | sed -n 's/^install ok installed //p' || true
}

# Highest rust-version (MSRV) among the locked dependencies, e.g. "1.88".
required_rustc() {
    cargo metadata --format-version 1 2>/dev/null | python3 -c '
import json, sys
best = (0, 0)
for p in json.load(sys.stdin)["packages"]:
    rv = p.get("rust_version")
    if rv:
        best = max(best, tuple(int(x) for x in rv.split(".")[:2]))
print("%d.%d" % best)'
}

# "1.96.0" from /usr/bin/rustc, empty if absent.
debian_rustc() {
    if [ -x /usr/bin/rustc ]; then
        /usr/bin/rustc --version | awk '{print $2}'
    fi
}

version_ge() { # version_ge A B: A >= B
    [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]
}

toolchain_problems() {
    local problems=() arch pkg have std_version
    for arch in "${FOREIGN_ARCHES[@]}"; do
        if ! dpkg --print-foreign-architectures | grep -qx "$arch"; then
            problems+=("dpkg architecture $arch not added")
        fi
    done
    for pkg in "${PACKAGES[@]}"; do
        if [ -z "$(pkg_version "$pkg")" ]; then
            problems+=("$pkg missing")
        fi
    done
    have="$(pkg_version rustc-web)"
    if [ -n "$have" ]; then
        for arch in "${FOREIGN_ARCHES[@]}"; do
            std_version="$(pkg_version "libstd-rust-web-dev:$arch")"
            if [ -n "$std_version" ] && [ "$std_version" != "$have" ]; then
                problems+=("libstd-rust-web-dev:$arch $std_version != rustc-web $have")
            fi
        done
        if ! version_ge "$(debian_rustc)" "$REQUIRED_RUSTC"; then
            problems+=("Debian rustc $(debian_rustc) older than the dependencies' MSRV $REQUIRED_RUSTC")
        fi
    fi
    if [ "${#problems[@]}" -gt 0 ]; then
        printf '%s\n' "${problems[@]}"
    fi
}

install_toolchain() {
    local t0=$SECONDS problems
    REQUIRED_RUSTC="$(required_rustc)"
    problems="$(toolchain_problems)"
    if [ -z "$problems" ]; then
        log "toolchain present: Debian rustc $(debian_rustc) (dependencies need >= $REQUIRED_RUSTC), $(qemu-aarch64 --version | head -n1)"
        return
    fi
    log "installing the cross toolchain with apt:"
    printf '   %s\n' "${problems//$'\n'/$'\n'   }"
    for arch in "${FOREIGN_ARCHES[@]}"; do
        $SUDO dpkg --add-architecture "$arch"
    done
    # Fresh lists: the new architectures have none yet, and rustc-web's newest version (which the
    # dependencies' MSRV needs) comes from bookworm-security.
    timeout "$APT_TIMEOUT" $SUDO apt-get update -q
    timeout "$APT_TIMEOUT" $SUDO env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"
    problems="$(toolchain_problems)"
    if [ -n "$problems" ]; then
        log "the cross toolchain is still not usable:"
        printf '   %s\n' "${problems//$'\n'/$'\n'   }"
        log "Debian's rustc-web must be at least the locked dependencies' MSRV ($REQUIRED_RUSTC);"
        log "see docs/ARM.md. Nothing is pinned down for the cross build on purpose."
        exit 1
    fi
    log "toolchain installed in $((SECONDS - t0)) s: Debian rustc $(debian_rustc)"
}

INSTALL_ONLY=""
TARGETS=()
for arg in "$@"; do
    case "$arg" in
        --install-only) INSTALL_ONLY=1 ;;
        aarch64-unknown-linux-gnu | armv7-unknown-linux-gnueabihf) TARGETS+=("$arg") ;;
        *) echo "usage: $0 [--install-only] [aarch64-unknown-linux-gnu] [armv7-unknown-linux-gnueabihf]" >&2; exit 2 ;;
    esac
done
if [ "${#TARGETS[@]}" -eq 0 ]; then
    TARGETS=("${ALL_TARGETS[@]}")
fi

start=$SECONDS
install_toolchain
if [ -n "$INSTALL_ONLY" ]; then
    exit 0
fi

# ---------------------------------------------------------------------------------------------
# 2. Build and test under qemu
# ---------------------------------------------------------------------------------------------
# Debian's compiler (the rustup one has no ARM std here) with rustup's cargo; its own target dir.
export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
export CARGO_TARGET_DIR="$PWD/target/cross"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_LINKER=arm-linux-gnueabihf-gcc
export CC_armv7_unknown_linux_gnueabihf=arm-linux-gnueabihf-gcc
export AR_armv7_unknown_linux_gnueabihf=arm-linux-gnueabihf-ar
# Each test binary runs under qemu, bounded. No `-L` (the libraries come from the multiarch
# packages; with -L the test binaries hang).
# The CPU models are those of the boards: Cortex-A72 (Pi 4) for aarch64 (qemu models it with the
# ARMv8 crypto extensions, which the Pi 3/4 lack, so ring's AES/GHASH take the hardware path here
# and the NEON path on those boards); Cortex-A7 (Pi 2; Pi 3/4 with a 32-bit OS have the same
# features that matter here: NEON, no crypto extensions) for armv7.
QEMU_AARCH64=(qemu-aarch64 -cpu cortex-a72)
QEMU_ARMV7=(qemu-arm -cpu cortex-a7)
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="timeout -k 10 $TEST_TIMEOUT ${QEMU_AARCH64[*]}"
export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_RUNNER="timeout -k 10 $TEST_TIMEOUT ${QEMU_ARMV7[*]}"
# Faster cross builds, for this run only (Cargo.toml is not changed): no debug info to compile and
# link, no incremental cache.
export CARGO_PROFILE_DEV_DEBUG=0 CARGO_PROFILE_TEST_DEBUG=0 CARGO_INCREMENTAL=0
# The split property runs 3000 cases per property by default: 2 minutes under qemu. 300 cases
# here (the host run keeps the full count).
export SPLIT_PROPERTY_CASES="${SPLIT_PROPERTY_CASES:-300}"

qemu_for() {
    case "$1" in
        aarch64-*) echo "${QEMU_AARCH64[*]}" ;;
        armv7-*) echo "${QEMU_ARMV7[*]}" ;;
    esac
}

LOG_DIR="$CARGO_TARGET_DIR/logs"
mkdir -p "$LOG_DIR"

test_args=(--lib --bins)
test_names=("lib (unit)" "connect-tunnel bin (unit)")
for name in "${TEST_FILES[@]}"; do
    if [ -f "tests/$name.rs" ]; then
        test_args+=(--test "$name")
        test_names+=("tests/$name.rs")
        if [ "$name" = split_property ]; then
            test_names[-1]="tests/split_property.rs (SPLIT_PROPERTY_CASES=$SPLIT_PROPERTY_CASES)"
        fi
    else
        log "note: tests/$name.rs does not exist, skipped"
    fi
done

# The smoke check's proxy and echo target: python3 standard library only, loopback only.
SMOKE_DIR="$(mktemp -d)"
PROXY_PID=""
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    if [ -n "$PROXY_PID" ]; then
        kill "$PROXY_PID" 2>/dev/null || true
    fi
    rm -rf "$SMOKE_DIR"
}
trap cleanup EXIT

cat >"$SMOKE_DIR/proxy.py" <<'PY'
"""A minimal CONNECT proxy (Basic auth camera:secret, only to its own echo target) and an echo
target, on loopback. Prints 'PROXY_PORT ECHO_PORT', then one line per request. Exits by itself
after 600 s."""
import base64, os, socket, threading

AUTH = "Basic " + base64.b64encode(b"camera:secret").decode()
os_exit_timer = threading.Timer(600, os._exit, args=(3,))
os_exit_timer.daemon = True
os_exit_timer.start()

def listener():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    return s

def serve(ls, fn):
    while True:
        c, _ = ls.accept()
        c.settimeout(60)
        threading.Thread(target=fn, args=(c,), daemon=True).start()

def echo(c):
    try:
        while True:
            b = c.recv(65536)
            if not b:
                break
            c.sendall(b)
    except OSError:
        pass
    finally:
        c.close()

def pump(src, dst, counts, key):
    n = 0
    try:
        while True:
            b = src.recv(65536)
            if not b:
                break
            dst.sendall(b)
            n += len(b)
    except OSError:
        pass
    finally:
        counts[key] = n
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

def refuse(c, status, extra=""):
    c.sendall(("HTTP/1.1 %s\r\n%sContent-Length: 0\r\nConnection: close\r\n\r\n"
               % (status, extra)).encode())
    c.close()
    print("REFUSED %s" % status.split()[0], flush=True)

def proxy(c):
    head = b""
    while b"\r\n\r\n" not in head:
        b = c.recv(4096)
        if not b or len(head) > 16384:
            c.close()
            return
        head += b
    head, _, rest = head.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, authority, _version = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if method != "CONNECT":
        return refuse(c, "405 Method Not Allowed")
    if headers.get("proxy-authorization") != AUTH:
        return refuse(c, "407 Proxy Authentication Required",
                      'Proxy-Authenticate: Basic realm="smoke"\r\n')
    host, _, port = authority.rpartition(":")
    if host != "127.0.0.1" or port != str(ECHO_PORT):
        return refuse(c, "403 Forbidden")
    up = socket.create_connection((host, int(port)), timeout=30)
    up.settimeout(60)
    c.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
    if rest:
        up.sendall(rest)
    counts = {}
    threads = [threading.Thread(target=pump, args=(c, up, counts, "up")),
               threading.Thread(target=pump, args=(up, c, counts, "down"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    c.close()
    up.close()
    print("TUNNEL %s up=%d down=%d" % (authority, counts.get("up", -1) + len(rest),
                                       counts.get("down", -1)), flush=True)

proxy_ls, echo_ls = listener(), listener()
ECHO_PORT = echo_ls.getsockname()[1]
threading.Thread(target=serve, args=(echo_ls, echo), daemon=True).start()
print("%d %d" % (proxy_ls.getsockname()[1], ECHO_PORT), flush=True)
serve(proxy_ls, proxy)
PY

start_proxy() {
    python3 "$SMOKE_DIR/proxy.py" >"$SMOKE_DIR/proxy.out" 2>"$SMOKE_DIR/proxy.err" &
    PROXY_PID=$!
    for _ in $(seq 1 300); do # 30 s
        if [ -s "$SMOKE_DIR/proxy.out" ]; then
            read -r PROXY_PORT ECHO_PORT <"$SMOKE_DIR/proxy.out"
            return 0
        fi
        sleep 0.1
    done
    log "smoke proxy did not start: $(cat "$SMOKE_DIR/proxy.err")"
    return 1
}

# smoke TARGET [BIN]: the ARM CLI (default: the target's debug build) under qemu through the
# python proxy. Prints failures, returns 1 on any.
smoke() {
    local target=$1 bin=${2:-$CARGO_TARGET_DIR/$1/debug/connect-tunnel} rc ok=0 qemu
    read -ra qemu <<<"$(qemu_for "$target")"
    head -c 1048576 /dev/urandom >"$SMOKE_DIR/in"

    rc=0
    timeout -k 5 "$SMOKE_TIMEOUT" "${qemu[@]}" "$bin" -x "http://camera:secret@127.0.0.1:$PROXY_PORT" \
        --connect-timeout 30 "127.0.0.1:$ECHO_PORT" <"$SMOKE_DIR/in" >"$SMOKE_DIR/out" \
        2>"$SMOKE_DIR/err" || rc=$?
    # The proxy reports the tunnel once both of its relay threads are done, which may be just
    # after the CLI has exited: wait for that line (bounded).
    for _ in $(seq 1 100); do # 10 s
        if grep -q "^TUNNEL 127.0.0.1:$ECHO_PORT " "$SMOKE_DIR/proxy.out"; then
            break
        fi
        sleep 0.1
    done
    if [ "$rc" -eq 0 ] && cmp -s "$SMOKE_DIR/in" "$SMOKE_DIR/out" &&
        grep -q "^TUNNEL 127.0.0.1:$ECHO_PORT up=1048576 down=1048576" "$SMOKE_DIR/proxy.out"; then
        echo "   relay: 1048576 bytes up and back, identical, exit 0: ok"
    else
        echo "   relay: FAILED (exit $rc, $(wc -c <"$SMOKE_DIR/out") bytes back; proxy: $(grep '^TUNNEL' "$SMOKE_DIR/proxy.out" || echo 'no tunnel line'); stderr: $(head -c 400 "$SMOKE_DIR/err"))"
        ok=1
    fi

    rc=0
    timeout -k 5 "$SMOKE_TIMEOUT" "${qemu[@]}" "$bin" -x "http://camera:secret@127.0.0.1:$PROXY_PORT" \
        --connect-timeout 30 "127.0.0.1:9" </dev/null >/dev/null 2>"$SMOKE_DIR/err" || rc=$?
    if [ "$rc" -eq 5 ]; then
        echo "   403 Forbidden: exit 5: ok"
    else
        echo "   403 Forbidden: FAILED (exit $rc, expected 5; stderr: $(head -c 400 "$SMOKE_DIR/err"))"
        ok=1
    fi

    rc=0
    timeout -k 5 "$SMOKE_TIMEOUT" "${qemu[@]}" "$bin" -x "http://camera:wrong@127.0.0.1:$PROXY_PORT" \
        --connect-timeout 30 "127.0.0.1:$ECHO_PORT" </dev/null >/dev/null 2>"$SMOKE_DIR/err" || rc=$?
    if [ "$rc" -eq 4 ]; then
        echo "   407 wrong password: exit 4: ok"
    else
        echo "   407 wrong password: FAILED (exit $rc, expected 4; stderr: $(head -c 400 "$SMOKE_DIR/err"))"
        ok=1
    fi
    return $ok
}

# Per test binary, "name: N passed, M failed, K ignored" from a cargo test log.
test_results() {
    awk '
        /^ *Running / { name = $2; if (name == "unittests") name = $3 }
        /^test result:/ {
            sub(/;$/, "", $4); sub(/;$/, "", $6); sub(/;$/, "", $8)
            printf "   %-28s %s passed, %s failed, %s ignored\n", name, $4, $6, $8
        }' "$1"
}

declare -A RESULT
status=0
for target in "${TARGETS[@]}"; do
    t0=$SECONDS
    log "$target: building tests and CLI (Debian rustc $(debian_rustc), target/cross)"
    if ! timeout "$BUILD_TIMEOUT" cargo test --target "$target" --no-run "${test_args[@]}" \
        >"$LOG_DIR/$target-build.log" 2>&1 ||
        ! timeout "$BUILD_TIMEOUT" cargo build --target "$target" --bin connect-tunnel \
            >>"$LOG_DIR/$target-build.log" 2>&1; then
        tail -n 40 "$LOG_DIR/$target-build.log"
        RESULT[$target]="build FAILED (log: $LOG_DIR/$target-build.log)"
        status=1
        continue
    fi
    build_s=$((SECONDS - t0))

    t0=$SECONDS
    log "$target: running tests under $(qemu_for "$target")"
    tests_ok=1
    # Every test in the listed files runs on both targets; none is skipped.
    if ! timeout -k 10 "$TEST_TIMEOUT" cargo test --no-fail-fast --target "$target" \
        "${test_args[@]}" >"$LOG_DIR/$target-test.log" 2>&1; then
        tests_ok=""
        grep -E '^(---- |test .* FAILED|failures:|error)' "$LOG_DIR/$target-test.log" | head -n 40 || true
    fi
    test_s=$((SECONDS - t0))
    results="$(test_results "$LOG_DIR/$target-test.log")"
    echo "$results"

    t0=$SECONDS
    log "$target: CLI end to end under $(qemu_for "$target")"
    smoke_ok=""
    if start_proxy && smoke "$target"; then
        smoke_ok=1
    fi
    kill "$PROXY_PID" 2>/dev/null || true
    wait "$PROXY_PID" 2>/dev/null || true
    PROXY_PID=""
    smoke_s=$((SECONDS - t0))

    verdict="ok"
    if [ -z "$tests_ok" ] || [ -z "$smoke_ok" ]; then
        verdict="FAILED"
        status=1
    fi
    RESULT[$target]="$verdict  (build ${build_s} s, tests ${test_s} s, CLI ${smoke_s} s; tests $([ -n "$tests_ok" ] && echo ok || echo FAILED), CLI $([ -n "$smoke_ok" ] && echo ok || echo FAILED))
$results"
done

# The armv7 firmware CLI in Thumb-2 (what scripts/size-report.sh measures for the smallest
# 32-bit build; `cross` users build it as thumbv7neon-unknown-linux-gnueabihf): built with
# `-C target-feature=+thumb-mode` in its own target dir, then the same CLI checks under qemu.
THUMB_TARGET=armv7-unknown-linux-gnueabihf
if [[ " ${TARGETS[*]} " == *" $THUMB_TARGET "* ]]; then
    t0=$SECONDS
    log "$THUMB_TARGET in Thumb-2: firmware CLI build (target/cross-thumb), CLI end to end"
    thumb_dir="$(dirname "$CARGO_TARGET_DIR")/cross-thumb"
    thumb_ok=""
    if CARGO_TARGET_DIR="$thumb_dir" \
        CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_RUSTFLAGS="-C target-feature=+thumb-mode" \
        timeout "$BUILD_TIMEOUT" cargo build --profile firmware --target "$THUMB_TARGET" \
        --bin connect-tunnel >"$LOG_DIR/thumb-build.log" 2>&1; then
        if start_proxy && smoke "$THUMB_TARGET" "$thumb_dir/$THUMB_TARGET/firmware/connect-tunnel"; then
            thumb_ok=1
        fi
        kill "$PROXY_PID" 2>/dev/null || true
        wait "$PROXY_PID" 2>/dev/null || true
        PROXY_PID=""
    else
        tail -n 40 "$LOG_DIR/thumb-build.log"
    fi
    if [ -n "$thumb_ok" ]; then
        RESULT[thumb]="ok  ($((SECONDS - t0)) s; firmware CLI, Thumb-2)"
    else
        RESULT[thumb]="FAILED  (log: $LOG_DIR/thumb-build.log)"
        status=1
    fi
    TARGETS+=(thumb)
fi

echo
log "summary (total $((SECONDS - start)) s; logs in $LOG_DIR)"
echo "   tests run under qemu: ${test_names[*]}"
for target in "${TARGETS[@]}"; do
    echo " $target: ${RESULT[$target]}"
done
if [ "$status" -ne 0 ]; then
    log "FAILED"
else
    log "all passed"
fi
exit "$status"
