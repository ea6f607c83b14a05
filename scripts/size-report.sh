#!/usr/bin/env bash
# Stripped sizes of the CLI and the camera_stream example for x86_64, aarch64 and armv7, with the
# size-optimised `firmware` profile (opt-level z, fat LTO, 1 codegen unit, panic=abort, strip)
# and the plain `release` profile for comparison, plus the firmware CLI without the bundled
# Mozilla roots (`--no-default-features --features cli,tls`: default trust is the system's CA
# bundle), and the armv7 firmware CLI in Thumb-2. Prints a Markdown table and writes it to
# target/size-report.md.
#
#   scripts/size-report.sh                  both profiles (cold: ~16 CPU-minutes for 12 builds)
#   scripts/size-report.sh --firmware-only  the firmware profile only
#   scripts/size-report.sh --bloat          also list what takes the space in the armv7
#                                           firmware CLI, by crate (an unstripped rebuild)
#
# Uses the same toolchain as scripts/cross-test.sh (Debian's rustc-web and GNU cross binutils,
# installed by it if missing) and the same target dir, target/cross, for all three targets, so
# the figures come from one compiler. The host build in target/ is not touched.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGETS=(x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)
PROFILES=(firmware release)
BUILD_TIMEOUT=${SIZE_BUILD_TIMEOUT:-2400}
# The figure the firmware budget is checked against: the armv7 CLI, firmware profile.
BUDGET_BYTES=1000000

BLOAT=""
for arg in "$@"; do
    case "$arg" in
        --firmware-only) PROFILES=(firmware) ;;
        --bloat) BLOAT=1 ;;
        *) echo "usage: $0 [--firmware-only] [--bloat]" >&2; exit 2 ;;
    esac
done

log() { printf '== size-report: %s\n' "$*"; }

bash scripts/cross-test.sh --install-only

export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
export CARGO_TARGET_DIR="$PWD/target/cross"
mkdir -p "$CARGO_TARGET_DIR" # a fresh checkout has no target/ yet; the build logs go here
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_LINKER=arm-linux-gnueabihf-gcc
export CC_armv7_unknown_linux_gnueabihf=arm-linux-gnueabihf-gcc
export AR_armv7_unknown_linux_gnueabihf=arm-linux-gnueabihf-ar

strip_for() {
    case "$1" in
        x86_64-*) echo strip ;;
        aarch64-*) echo aarch64-linux-gnu-strip ;;
        armv7-*) echo arm-linux-gnueabihf-strip ;;
    esac
}

short() {
    case "$1" in
        x86_64-*) echo x86_64 ;;
        aarch64-*) echo aarch64 ;;
        armv7-*) echo armv7 ;;
    esac
}

target_args=()
for target in "${TARGETS[@]}"; do
    target_args+=(--target "$target")
done

# One cargo run per profile for all three targets: cargo keeps both cores busy while one
# target's single-threaded LTO link runs.
for profile in "${PROFILES[@]}"; do
    t0=$SECONDS
    log "building connect-tunnel and camera_stream, profile $profile, ${TARGETS[*]}"
    if ! timeout "$BUILD_TIMEOUT" cargo build --profile "$profile" "${target_args[@]}" \
        --bin connect-tunnel --example camera_stream >"$CARGO_TARGET_DIR/size-$profile.log" 2>&1; then
        tail -n 40 "$CARGO_TARGET_DIR/size-$profile.log"
        log "build FAILED (profile $profile)"
        exit 1
    fi
    log "profile $profile built in $((SECONDS - t0)) s"
done

# Strip copies with the target's binutils (both profiles already strip, so this changes nothing
# unless a profile is overridden, e.g. CARGO_PROFILE_RELEASE_STRIP=false) and measure.
STRIPPED="$CARGO_TARGET_DIR/stripped"
mkdir -p "$STRIPPED"
declare -A SIZE
# The CLI's features for the "no bundled roots" row: TLS, but the system's CA bundle instead of
# webpki-roots (Cargo.toml, feature `webpki-roots`).
NO_ROOTS_FEATURES=(--no-default-features --features "cli,tls")
for target in "${TARGETS[@]}"; do
    for profile in "${PROFILES[@]}"; do
        for bin in connect-tunnel camera_stream; do
            src="$CARGO_TARGET_DIR/$target/$profile/$bin"
            if [ "$bin" = camera_stream ]; then
                src="$CARGO_TARGET_DIR/$target/$profile/examples/$bin"
            fi
            out="$STRIPPED/$bin-$(short "$target")-$profile"
            cp "$src" "$out"
            "$(strip_for "$target")" "$out"
            SIZE["$bin/$profile/$target"]=$(stat -c %s "$out")
        done
    done
done

# The firmware CLI without the bundled roots. Built after the copies above were taken, in the
# same target dir (the dependencies are shared; only the CLI is linked again, and the next
# default build links it back).
t0=$SECONDS
log "building connect-tunnel ${NO_ROOTS_FEATURES[*]}, profile firmware, ${TARGETS[*]}"
if ! timeout "$BUILD_TIMEOUT" cargo build --profile firmware "${target_args[@]}" \
    --bin connect-tunnel "${NO_ROOTS_FEATURES[@]}" >"$CARGO_TARGET_DIR/size-no-roots.log" 2>&1; then
    tail -n 40 "$CARGO_TARGET_DIR/size-no-roots.log"
    log "build FAILED (firmware, no bundled roots)"
    exit 1
fi
log "no-bundled-roots firmware CLI built in $((SECONDS - t0)) s"
for target in "${TARGETS[@]}"; do
    out="$STRIPPED/connect-tunnel-$(short "$target")-firmware-no-roots"
    cp "$CARGO_TARGET_DIR/$target/firmware/connect-tunnel" "$out"
    "$(strip_for "$target")" "$out"
    SIZE["connect-tunnel-no-roots/firmware/$target"]=$(stat -c %s "$out")
done

# The armv7 firmware CLI in Thumb-2 (default features): the same ARMv7-A + NEON target, code in
# the 16/32-bit Thumb-2 encoding. `cross` users get it with `--target
# thumbv7neon-unknown-linux-gnueabihf`; Debian's rustc ships std for armv7 only, so here the
# armv7 target compiles with `-C target-feature=+thumb-mode`, and fat LTO compiles std's code
# the same way. Own target dir: the flag would otherwise rebuild the armv7 artifacts above.
THUMB_DIR="$PWD/target/cross-thumb"
t0=$SECONDS
log "building connect-tunnel for armv7 in Thumb-2, profile firmware (target/cross-thumb)"
if ! CARGO_TARGET_DIR="$THUMB_DIR" \
    CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_RUSTFLAGS="-C target-feature=+thumb-mode" \
    timeout "$BUILD_TIMEOUT" cargo build --profile firmware \
    --target armv7-unknown-linux-gnueabihf --bin connect-tunnel \
    >"$CARGO_TARGET_DIR/size-thumb.log" 2>&1; then
    tail -n 40 "$CARGO_TARGET_DIR/size-thumb.log"
    log "build FAILED (armv7 Thumb-2 firmware CLI)"
    exit 1
fi
log "armv7 Thumb-2 firmware CLI built in $((SECONDS - t0)) s"
out="$STRIPPED/connect-tunnel-armv7-firmware-thumb"
cp "$THUMB_DIR/armv7-unknown-linux-gnueabihf/firmware/connect-tunnel" "$out"
arm-linux-gnueabihf-strip "$out"
SIZE["connect-tunnel-thumb/firmware/armv7-unknown-linux-gnueabihf"]=$(stat -c %s "$out")

# The newest glibc symbol version a binary needs: the oldest glibc it runs on.
glibc_needed() {
    local objdump
    objdump="$(strip_for "$1" | sed 's/strip$/objdump/')"
    "$objdump" -T "$2" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -Vu | tail -n1
}

cell() { # bytes -> "1234567 B (1.23 MB)"
    awk -v b="$1" 'BEGIN { printf "%d B (%.2f MB)", b, b / 1000000 }'
}

report="$PWD/target/size-report.md"
{
    echo "Stripped sizes, $(/usr/bin/rustc --version) (Debian rustc-web), MB = 10^6 bytes."
    echo "\`firmware\`: opt-level z, fat LTO, codegen-units 1, panic=abort, strip."
    if [ "${#PROFILES[@]}" -gt 1 ]; then
        echo "\`release\`: opt-level 3, fat LTO, codegen-units 1, unwinding, strip."
    fi
    echo
    echo "| binary | profile | x86_64 | aarch64 | armv7 |"
    echo "|---|---|---:|---:|---:|"
    for bin in connect-tunnel camera_stream; do
        for profile in "${PROFILES[@]}"; do
            row="| \`$bin\` | $profile |"
            for target in "${TARGETS[@]}"; do
                row="$row $(cell "${SIZE["$bin/$profile/$target"]}") |"
            done
            echo "$row"
        done
        if [ "$bin" = connect-tunnel ]; then
            row="| \`connect-tunnel\`, no bundled roots (\`${NO_ROOTS_FEATURES[*]}\`) | firmware |"
            for target in "${TARGETS[@]}"; do
                row="$row $(cell "${SIZE["connect-tunnel-no-roots/firmware/$target"]}") |"
            done
            echo "$row"
            thumb=${SIZE["connect-tunnel-thumb/firmware/armv7-unknown-linux-gnueabihf"]}
            echo "| \`connect-tunnel\`, armv7 in Thumb-2 (thumbv7neon) | firmware | – | – | $(cell "$thumb") |"
        fi
    done
    echo
    row="Oldest glibc the \`connect-tunnel\` binaries run on (newest GLIBC_ symbol version):"
    for target in "${TARGETS[@]}"; do
        row="$row $(short "$target") $(glibc_needed "$target" "$STRIPPED/connect-tunnel-$(short "$target")-firmware"),"
    done
    echo "${row%,}."
} >"$report"
echo
cat "$report"
echo
log "written to target/size-report.md"

for variant in connect-tunnel connect-tunnel-no-roots connect-tunnel-thumb; do
    what="the armv7 firmware CLI"
    case "$variant" in
        connect-tunnel-no-roots) what="$what without bundled roots" ;;
        connect-tunnel-thumb) what="$what in Thumb-2" ;;
    esac
    armv7_cli=${SIZE["$variant/firmware/armv7-unknown-linux-gnueabihf"]}
    if [ "$armv7_cli" -gt "$BUDGET_BYTES" ]; then
        log "note: $what is $armv7_cli bytes, over the $BUDGET_BYTES-byte budget"
        log "      (scripts/size-report.sh --bloat lists what takes the space)"
    else
        log "$what ($armv7_cli bytes) is within the $BUDGET_BYTES-byte budget"
    fi
done

if [ -n "$BLOAT" ]; then
    # Rebuild the armv7 firmware CLI without stripping (same profile otherwise) in its own target
    # dir and attribute its symbols to crates, as cargo-bloat does: code and statics by the first
    # path segment of the demangled name; C code of ring and libc by symbol prefix.
    log "armv7 firmware CLI: where the space goes (unstripped build in target/cross-bloat)"
    CARGO_TARGET_DIR="$PWD/target/cross-bloat" CARGO_PROFILE_FIRMWARE_STRIP=false \
        timeout "$BUILD_TIMEOUT" cargo build --profile firmware \
        --target armv7-unknown-linux-gnueabihf --bin connect-tunnel \
        >"$CARGO_TARGET_DIR/size-bloat.log" 2>&1
    elf="$PWD/target/cross-bloat/armv7-unknown-linux-gnueabihf/firmware/connect-tunnel"
    echo "   sections in the file (bytes):"
    arm-linux-gnueabihf-size -A "$elf" |
        awk '$1 ~ /^\./ && $1 !~ /^\.(debug|comment|symtab|strtab)/ && $2 > 4096 { printf "   %-16s %9d\n", $1, $2 }'
    arm-linux-gnueabihf-nm -S --size-sort -C --defined-only "$elf" | python3 -c '
import collections, re, sys
RING_C = re.compile(r"_?(ring_core_|GFp_|fiat_|bsaes_|vpaes_|aes_|gcm_|k25519|ge_|x25519|sc_|"
                    r"p256|ecp_|nistz|ChaCha20|chacha|poly1305|LIMBS_|LIMB_|limbs_|bn_|"
                    r"CRYPTO_|OPENSSL_)|^Bi$")
by_crate = collections.Counter()
count = collections.Counter()
for line in sys.stdin:
    parts = line.split(None, 3)
    if len(parts) < 4:
        continue
    size, kind, name = int(parts[1], 16), parts[2], parts[3].strip()
    if kind in "bB":
        continue  # .bss takes no space in the file
    # The first path segment names the crate, also inside "<T as crate::Trait>::f".
    m = re.search(r"(?<![A-Za-z0-9_])([A-Za-z_][A-Za-z0-9_]*)::", name)
    if m:
        crate = m.group(1)
    elif RING_C.match(name):
        crate = "ring (C/asm)"
    elif name.startswith("__"):
        crate = "compiler runtime (libgcc, builtins)"
    else:
        crate = "other C / libc (%s)" % ("code" if kind in "tT" else "data")
    by_crate[crate] += size
    count[crate] += 1
total = sum(by_crate.values())
print("\n| crate | bytes | share | symbols |")
print("|---|---:|---:|---:|")
for crate, size in by_crate.most_common(15):
    print("| %s | %d | %.1f%% | %d |" % (crate, size, 100.0 * size / total, count[crate]))
print("| all symbols | %d | | |" % total)
print("(not attributed: unnamed constants in .rodata, e.g. the webpki-roots certificates)")
'
fi
