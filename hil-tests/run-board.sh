#!/usr/bin/env bash
# Hardware-in-the-loop scenarios on a Raspberry Pi: cross-builds the camera program (`hil`) and
# the connect-tunnel CLI for the Pi, copies them over ssh, runs the scenario set there against
# the lab's proxy and media server, collects the results and prints the same summary table as
# run-local.sh. See hil-tests/README.md ("Board mode") for the lab set-up.
#
# Required environment:
#   HIL_PI_HOST       the Pi's address (as this machine reaches it over ssh)
#   HIL_PI_USER       ssh user on the Pi
#   HIL_PI_KEY        private key file for that user
#   HIL_PROXY_URL     proxy URL as the Pi uses it, with the camera's credentials:
#                     http://camera:secret@proxy.lab:3128 (or https://...)
#   HIL_SERVER_ADDR   HOST:PORT of the media server (`hil server`) as the PROXY reaches it
# Optional (see the README for each):
#   HIL_PI_PORT (22), HIL_PI_DIR (/tmp/hil-tests), HIL_PI_SUDO ("sudo -n"; "" when the ssh
#   user is root), HIL_PI_TARGET (auto from `uname -m`), HIL_PI_BIN_DIR (prebuilt hil and
#   connect-tunnel for the Pi: no build), HIL_CROSS (debian | cross), HIL_PROXY_CACERT,
#   HIL_SERVER_CTL (HOST:PORT of the server's control port, from this machine),
#   HIL_PROXY_SSH (user@host of the proxy host), HIL_PROXY_KEY, HIL_PROXY_SUDO ("sudo -n"),
#   HIL_PROXY_STOP_CMD, HIL_PROXY_START_CMD, HIL_PROXY_RECONFIGURE_CMD, HIL_PROXY_PASSWD_FILE,
#   HIL_PROXY_ACCESS_LOG, HIL_SCENARIOS, HIL_LATENCY_BOUND_MS (100), HIL_HEALTHY_LATENCY_MS
#   (200), HIL_SSH_OPTS (extra ssh options, e.g. "-J jumphost"), HIL_MANUAL=1 (guided manual
#   steps where automation is impossible), HIL_PI_EXEC_PREFIX (testing: e.g. qemu-aarch64),
#   HIL_BUILD_TIMEOUT (1800 s per build), HIL_INSTALL=0 (never install the cross toolchain),
#   HIL_DRY_RUN=1 (print the commands, run nothing; HIL_DRY_ARCH: the Pi's `uname -m` to
#   pretend, aarch64).
# Exit status: 0 when no scenario failed (SKIP and MANUAL rows do not fail the run), 1 when one
# did, 2 when the configuration or the lab is wrong (not every scenario could run).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DRY=${HIL_DRY_RUN:-}
ALL_SCENARIOS="cli_smoke normal jitter proxy_restart link_cut slow_link proxy_503 cred_rotation"
SCENARIOS=${HIL_SCENARIOS:-$ALL_SCENARIOS}

log() { printf '== hil-board: %s\n' "$*"; }
q() { printf '%q' "$1"; }
die() {
    log "ERROR: $*" >&2
    exit 2
}

# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------
missing=()
for v in HIL_PI_HOST HIL_PI_USER HIL_PI_KEY HIL_PROXY_URL HIL_SERVER_ADDR; do
    [ -n "${!v:-}" ] || missing+=("$v")
done
if [ "${#missing[@]}" -gt 0 ]; then
    cat >&2 <<EOF
hil-board: missing environment: ${missing[*]}

  HIL_PI_HOST      the Pi's address, e.g. 192.168.1.50
  HIL_PI_USER      ssh user on the Pi, e.g. pi
  HIL_PI_KEY       private key for that user, e.g. ~/.ssh/hil_lab (no passphrase, or in ssh-agent; ssh-copy-id it first)
  HIL_PROXY_URL    the proxy as the Pi uses it, with the camera's credentials,
                   e.g. http://camera:secret@192.168.1.10:3128
  HIL_SERVER_ADDR  the media server as the proxy reaches it, e.g. 192.168.1.20:5004
                   (run there: hil server --listen 0.0.0.0:5004 --control 0.0.0.0:5005)

See hil-tests/README.md, "Board mode". HIL_DRY_RUN=1 prints what would run.
EOF
    exit 2
fi
if [ ! -r "$HIL_PI_KEY" ]; then
    [ -n "$DRY" ] || die "HIL_PI_KEY=$HIL_PI_KEY is not a readable file"
    log "warning: HIL_PI_KEY=$HIL_PI_KEY is not a readable file (a real run stops here)"
fi
[ -z "${HIL_PROXY_KEY:-}" ] || [ -r "$HIL_PROXY_KEY" ] || die "HIL_PROXY_KEY=$HIL_PROXY_KEY is not a readable file"
[ -z "${HIL_PROXY_CACERT:-}" ] || [ -r "$HIL_PROXY_CACERT" ] ||
    die "HIL_PROXY_CACERT=$HIL_PROXY_CACERT is not a readable file"

# need_uint NAME VALUE MIN MAX: a whole number in range, or a clear error.
need_uint() {
    [[ "$2" =~ ^[0-9]{1,9}$ ]] && [ "$((10#$2))" -ge "$3" ] && [ "$((10#$2))" -le "$4" ] ||
        die "$1=$2: expected a whole number from $3 to $4"
}
# need_hostport NAME VALUE: HOST:PORT or [IPv6]:PORT, no scheme, no path.
need_hostport() {
    [[ "$2" =~ ^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):([0-9]+)$ ]] ||
        die "$1=$2: expected HOST:PORT (no http://, no path), e.g. 192.168.1.20:5004"
    need_uint "$1 (port)" "${BASH_REMATCH[2]}" 1 65535
}

# http(s)://[user[:password]@]host[:port][/]
url_re='^(https?)://(([^][:space:]:@/?#[]*)(:([^][:space:]@/?#[]*))?@)?(\[[^]/]+\]|[^][:space:]:@/?#[]+)(:([0-9]+))?/?$'
[[ "$HIL_PROXY_URL" =~ $url_re ]] ||
    die "HIL_PROXY_URL (not shown: it may hold a password): expected http(s)://[user:password@]host[:port]; percent-encode @ : / ? # % [ ] and spaces in the user or password (@ is %40, a space %20)"
P_SCHEME=${BASH_REMATCH[1]}
P_USER=${BASH_REMATCH[3]}
P_PASS_ENC=${BASH_REMATCH[5]}
P_HOST=${BASH_REMATCH[6]}
P_PORT=${BASH_REMATCH[8]}
if [ -z "$P_PORT" ]; then
    if [ "$P_SCHEME" = https ]; then P_PORT=443; else P_PORT=80; fi
fi
need_uint "HIL_PROXY_URL's port" "$P_PORT" 1 65535
# pct_decode TEXT: %XX escapes decoded as the CLI decodes them; every other character (a
# backslash too) is kept as it is.
pct_decode() {
    local in=$1 out="" lit hex
    while [[ "$in" =~ ^([^%]*)%(.?.?)(.*)$ ]]; do
        lit=${BASH_REMATCH[1]} hex=${BASH_REMATCH[2]} in=${BASH_REMATCH[3]}
        [[ "$hex" =~ ^[0-9A-Fa-f]{2}$ ]] ||
            die "HIL_PROXY_URL: a '%' in the credentials is not followed by two hex digits (write % itself as %25)"
        out+="${lit//\\/\\\\}\\x$hex"
    done
    out+="${in//\\/\\\\}"
    printf '%b' "$out"
}
P_PASS=$(pct_decode "$P_PASS_ENC") || exit 2
P_USER=$(pct_decode "$P_USER") || exit 2
PROXY_BARE="$P_SCHEME://$P_HOST:$P_PORT"
need_hostport HIL_SERVER_ADDR "$HIL_SERVER_ADDR"
[ -z "${HIL_SERVER_CTL:-}" ] || need_hostport HIL_SERVER_CTL "$HIL_SERVER_CTL"

PI_PORT=${HIL_PI_PORT:-22}
PI_DIR=${HIL_PI_DIR:-/tmp/hil-tests}
[[ "$PI_DIR" =~ ^/[A-Za-z0-9._/+-]+$ ]] ||
    die "HIL_PI_DIR=$PI_DIR: expected an absolute path of letters, digits and . _ / + - (it goes into shell commands on the Pi)"
PI_SUDO=${HIL_PI_SUDO-sudo -n}
PI_EXEC=${HIL_PI_EXEC_PREFIX:-}
PROXY_SUDO=${HIL_PROXY_SUDO-sudo -n}
PROXY_STOP_CMD=${HIL_PROXY_STOP_CMD:-$PROXY_SUDO systemctl kill --signal=KILL squid}
PROXY_START_CMD=${HIL_PROXY_START_CMD:-$PROXY_SUDO systemctl restart squid}
PROXY_RECONFIGURE_CMD=${HIL_PROXY_RECONFIGURE_CMD:-$PROXY_SUDO squid -k reconfigure}
PROXY_PASSWD_FILE=${HIL_PROXY_PASSWD_FILE:-/etc/squid/hil-passwd}
PROXY_ACCESS_LOG=${HIL_PROXY_ACCESS_LOG:-/var/log/squid/access.log}
LAT_BOUND=${HIL_LATENCY_BOUND_MS:-100}
HEALTHY=${HIL_HEALTHY_LATENCY_MS:-200}
BUILD_TIMEOUT=${HIL_BUILD_TIMEOUT:-1800}
need_uint HIL_PI_PORT "$PI_PORT" 1 65535
need_uint HIL_LATENCY_BOUND_MS "$LAT_BOUND" 1 60000
need_uint HIL_HEALTHY_LATENCY_MS "$HEALTHY" 1 60000
need_uint HIL_BUILD_TIMEOUT "$BUILD_TIMEOUT" 10 86400
case "${HIL_CROSS:-debian}" in debian | cross) ;; *) die "HIL_CROSS=${HIL_CROSS}: expected debian or cross" ;; esac
read -r -a scen_words <<<"$SCENARIOS" || true
if [ "${#scen_words[@]}" -eq 0 ]; then
    die "HIL_SCENARIOS is empty: name scenarios ($ALL_SCENARIOS), or 'none' to only build, copy and check the lab"
elif [ "${scen_words[*]}" = none ]; then
    SCENARIOS=""
fi
for s in $SCENARIOS; do
    [ "$s" != none ] || die "HIL_SCENARIOS: 'none' stands alone (it runs no scenario); drop it or the others"
    case " $ALL_SCENARIOS " in
        *" $s "*) ;;
        *) die "HIL_SCENARIOS: unknown scenario '$s' (known: $ALL_SCENARIOS; or 'none' alone: only build, copy and check the lab)" ;;
    esac
done
DEBIAN_TARGETS="aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf thumbv7neon-unknown-linux-gnueabihf"
if [ -n "${HIL_PI_TARGET:-}" ] && [ "$HIL_PI_TARGET" != auto ] && [ -z "${HIL_PI_BIN_DIR:-}" ] &&
    [ "${HIL_CROSS:-debian}" = debian ]; then
    case " $DEBIAN_TARGETS $(rustc -vV 2>/dev/null | sed -n 's/^host: //p') " in
        *" $HIL_PI_TARGET "*) ;;
        *) die "HIL_PI_TARGET=$HIL_PI_TARGET: this script builds $DEBIAN_TARGETS and this machine's own target (others: HIL_CROSS=cross, or build hil and connect-tunnel yourself and set HIL_PI_BIN_DIR)" ;;
    esac
fi

WORK=$(mktemp -d /tmp/hil-board.XXXXXX)
ROWS="$WORK/rows.tsv"
: >"$ROWS"
log "work dir $WORK${DRY:+ (dry run: commands are printed, not run)}"

# run CMD...: runs it, or prints it in a dry run.
run() {
    if [ -n "$DRY" ]; then
        local line
        # The proxy password never shows: user:password@ in a URL becomes user:***@.
        line=$(printf ' %q' "$@" | sed -E 's#(://[^:/@ ]*:)[^@ ]*@#\1***@#g')
        printf '+%s\n' "$line" >&2
        return 0
    fi
    "$@"
}

# shellcheck disable=SC2206 # HIL_SSH_OPTS is split on purpose (several options)
SSH_OPTS=(-o BatchMode=yes -o ConnectTimeout=10 -o ServerAliveInterval=5 -o ServerAliveCountMax=6
    -o StrictHostKeyChecking=accept-new -o ControlMaster=auto -o "ControlPath=$WORK/cm-%C"
    -o ControlPersist=300 ${HIL_SSH_OPTS:-})
PI_SSH=(ssh -i "$HIL_PI_KEY" -p "$PI_PORT" "${SSH_OPTS[@]}" "$HIL_PI_USER@$HIL_PI_HOST")
PI_SCP=(scp -q -i "$HIL_PI_KEY" -P "$PI_PORT" "${SSH_OPTS[@]}")
PROXY_SSH=()
if [ -n "${HIL_PROXY_SSH:-}" ]; then
    PROXY_SSH=(ssh -i "${HIL_PROXY_KEY:-$HIL_PI_KEY}" "${SSH_OPTS[@]}" "$HIL_PROXY_SSH")
fi

# pi 'SHELL COMMAND': runs it on the Pi (bounded).
pi() { run timeout 60 "${PI_SSH[@]}" "$1"; }
# pi_ask 'SHELL COMMAND': a short question to the Pi (bounded, its errors not shown), for
# polling and fetching logs, never for changing anything; not run(): callers skip it when dry.
pi_ask() { timeout 20 "${PI_SSH[@]}" "$1" 2>/dev/null; }
# proxy_host 'SHELL COMMAND': runs it on the proxy host.
proxy_host() { run timeout 60 "${PROXY_SSH[@]}" "$1"; }
# The ssh command a user can paste to check the Pi by hand.
PI_SSH_HINT="ssh -i $HIL_PI_KEY -p $PI_PORT${HIL_SSH_OPTS:+ $HIL_SSH_OPTS} $HIL_PI_USER@$HIL_PI_HOST true"
# The camera on the Pi runs detached, its pid in $PI_DIR/camera.pid: stopped before a run, after
# a scenario that did not end in time, and on exit, so none is left behind.
pi_stop_camera() {
    pi "cd $(q "$PI_DIR") 2>/dev/null || exit 0; if [ -f camera.pid ]; then kill \$(cat camera.pid) 2>/dev/null; rm -f camera.pid; fi; true" || true
}

# ---------------------------------------------------------------------------------------------
# Clean-up: whatever happens, the lab is left as it was found.
# ---------------------------------------------------------------------------------------------
PI_IMPAIRED=""
PROXY_ROTATED=""
SERVER_OFF=""
PROXY_IP=""
PI_IF=""
pi_unimpair() {
    [ -n "$PROXY_IP" ] || return 0
    pi "$PI_SUDO ip route del blackhole $PROXY_IP/32 2>/dev/null; ${PI_IF:+$PI_SUDO tc qdisc del dev $PI_IF root 2>/dev/null;} true" || true
}
proxy_restore_password() {
    proxy_host "$PROXY_SUDO cp -p $(q "$PROXY_PASSWD_FILE.hil-backup") $(q "$PROXY_PASSWD_FILE") && $PROXY_RECONFIGURE_CMD" ||
        log "WARNING: could not restore $PROXY_PASSWD_FILE on the proxy host (backup: $PROXY_PASSWD_FILE.hil-backup)"
}
CAMERA_STARTED=""
SECRETS_COPIED=""
cleanup() {
    local rc=$?
    set +e
    [ -n "$CAMERA_STARTED" ] && pi_stop_camera
    [ -n "$PI_IMPAIRED" ] && pi_unimpair
    [ -n "$PROXY_ROTATED" ] && proxy_restore_password
    [ -n "$SERVER_OFF" ] && run "$HIL" ctl "$HIL_SERVER_CTL" listen on >/dev/null
    # The credentials do not stay on the Pi (binaries and results do, in HIL_PI_DIR).
    [ -z "$SECRETS_COPIED" ] || pi "cd $(q "$PI_DIR") && rm -f creds creds.new proxy.url proxy.url.new"
    [ "$rc" -ne 130 ] || log "interrupted: the lab was put back as it was"
    if [ -z "$DRY" ]; then
        "${PI_SSH[@]}" -O exit 2>/dev/null
        [ "${#PROXY_SSH[@]}" -gt 0 ] && "${PROXY_SSH[@]}" -O exit 2>/dev/null
    fi
    if [ "$rc" -eq 0 ] && [ -z "${HIL_KEEP:-}" ]; then
        rm -rf "$WORK"
    else
        log "logs and results in $WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------
# 1. The Pi: architecture, root, route to the proxy
# ---------------------------------------------------------------------------------------------
log "connecting to the Pi: $HIL_PI_USER@$HIL_PI_HOST:$PI_PORT"
# One ssh call: architecture, root (or passwordless sudo), the proxy's IPv4 address and the
# interface the Pi reaches it through.
probe="uname -m; if [ \"\$(id -u)\" = 0 ] || $PI_SUDO true 2>/dev/null; then echo root; else echo noroot; fi; ip=\$(getent ahostsv4 $(q "${P_HOST//[\[\]]/}") | awk 'NR==1{print \$1}'); echo \"\$ip\"; dev=\$([ -z \"\$ip\" ] || ip route get \"\$ip\" | sed -n 's/.* dev \\([^ ]*\\).*/\\1/p' | head -n1); echo \"\$dev\"; getconf LONG_BIT"
if [ -n "$DRY" ]; then
    pi "$probe"
    ARCH=${HIL_DRY_ARCH:-aarch64}
    PI_ROOT=1
    PROXY_IP="<proxy's IPv4>"
    PI_IF="<interface>"
    log "dry run: pretending the Pi is $ARCH with root, the proxy at $PROXY_IP via $PI_IF (the real values come from the command above)"
else
    info=$(pi "$probe") ||
        die "cannot run commands on the Pi over ssh (check HIL_PI_HOST/USER/KEY/PORT; try: $PI_SSH_HINT)"
    ARCH=$(sed -n 1p <<<"$info")
    PI_ROOT=$([ "$(sed -n 2p <<<"$info")" = root ] && echo 1 || echo "")
    PROXY_IP=$(sed -n 3p <<<"$info")
    PI_IF=$(sed -n 4p <<<"$info")
    # A 32-bit Raspberry Pi OS on a Pi 3/4/5 runs a 64-bit kernel: uname says aarch64, but its
    # programs (and libraries) are 32-bit armhf.
    if [ "$ARCH" = aarch64 ] && [ "$(sed -n 5p <<<"$info")" = 32 ]; then
        ARCH="armv7l (32-bit user space on an aarch64 kernel)"
    fi
    log "Pi: $ARCH, root: ${PI_ROOT:-no (set up passwordless sudo or HIL_PI_SUDO)}, proxy $P_HOST = ${PROXY_IP:-unresolved} via ${PI_IF:-?}"
fi

if [ "${#PROXY_SSH[@]}" -gt 0 ]; then
    proxy_host true ||
        die "HIL_PROXY_SSH=$HIL_PROXY_SSH: cannot run commands on the proxy host over ssh (key: ${HIL_PROXY_KEY:-$HIL_PI_KEY}; try: ssh -i ${HIL_PROXY_KEY:-$HIL_PI_KEY} ${HIL_SSH_OPTS:+$HIL_SSH_OPTS }$HIL_PROXY_SSH true)"
fi

TARGET=${HIL_PI_TARGET:-auto}
if [ "$TARGET" = auto ]; then
    case "$ARCH" in
        aarch64 | arm64) TARGET=aarch64-unknown-linux-gnu ;;
        armv7l* | armv8l) TARGET=armv7-unknown-linux-gnueabihf ;;
        armv6l) die "ARMv6 (Pi Zero/1) has no Debian Rust std: build hil and connect-tunnel elsewhere, set HIL_PI_BIN_DIR" ;;
        x86_64) TARGET=x86_64-unknown-linux-gnu ;;
        *) die "unknown Pi architecture '$ARCH': set HIL_PI_TARGET" ;;
    esac
fi

# ---------------------------------------------------------------------------------------------
# 2. Build: the runner's own hil (judge, control), and hil + connect-tunnel for the Pi
# ---------------------------------------------------------------------------------------------
HIL="$ROOT/target/hil-tests/release/hil"
log "building the runner's hil (native)"
run timeout "$BUILD_TIMEOUT" cargo build -q --release --manifest-path hil-tests/Cargo.toml --target-dir target/hil-tests ||
    die "building hil for this machine failed (see the cargo output above)"

# The rest of the lab, before anything long: the control port and the proxy host.
if [ -n "${HIL_SERVER_CTL:-}" ]; then
    run timeout 5 "$HIL" ctl "$HIL_SERVER_CTL" status >/dev/null ||
        die "HIL_SERVER_CTL=$HIL_SERVER_CTL: the media server's control port does not answer from this machine within 5 s (the address given to hil server --control, not --listen; a firewall must let this machine in)"
fi

HOST_TARGET=$(rustc -vV 2>/dev/null | sed -n 's/^host: //p')
if [ -n "${HIL_PI_BIN_DIR:-}" ]; then
    PI_BINS=$HIL_PI_BIN_DIR
    log "using prebuilt Pi binaries from $PI_BINS"
elif [ "$TARGET" = "$HOST_TARGET" ]; then
    log "Pi target $TARGET is this machine's: native build"
    run timeout "$BUILD_TIMEOUT" cargo build -q --release --bin connect-tunnel --target-dir target/hil-tests ||
        die "building connect-tunnel failed (see the cargo output above)"
    PI_BINS="$WORK/pi-bin"
    run mkdir -p "$PI_BINS"
    run cp target/hil-tests/release/hil target/hil-tests/release/connect-tunnel "$PI_BINS/"
else
    PI_BINS="$ROOT/target/cross/board/$TARGET/release"
    case "${HIL_CROSS:-debian}" in
        cross)
            log "cross-building for $TARGET with cross (needs Docker or Podman)"
            run timeout "$BUILD_TIMEOUT" cross build --release --target "$TARGET" --bin connect-tunnel --target-dir target/cross/board
            run timeout "$BUILD_TIMEOUT" cross build --release --target "$TARGET" --manifest-path hil-tests/Cargo.toml --target-dir target/cross/board
            ;;
        debian)
            # thumbv7neon: the armv7 target with Thumb-2 code (Debian ships the armv7 std only;
            # `cross` users build thumbv7neon-unknown-linux-gnueabihf itself).
            B_TARGET=$TARGET
            B_FLAGS=""
            if [ "$TARGET" = thumbv7neon-unknown-linux-gnueabihf ]; then
                B_TARGET=armv7-unknown-linux-gnueabihf
                B_FLAGS="-C target-feature=+thumb-mode"
                PI_BINS="$ROOT/target/cross/board-thumb/$B_TARGET/release"
            fi
            case "$B_TARGET" in
                aarch64-*) CC_T=aarch64-linux-gnu-gcc ;;
                *) CC_T=arm-linux-gnueabihf-gcc ;;
            esac
            if [ -z "$DRY" ] && { [ ! -x /usr/bin/rustc ] || ! command -v "$CC_T" >/dev/null ||
                [ ! -d "$(/usr/bin/rustc --print sysroot)/lib/rustlib/$B_TARGET" ]; }; then
                if [ "$(id -u)" = 0 ] && [ "${HIL_INSTALL:-1}" != 0 ]; then
                    log "the cross toolchain for $B_TARGET is missing: installing it with apt (scripts/cross-test.sh --install-only; HIL_INSTALL=0 prevents this)"
                    bash scripts/cross-test.sh --install-only || die "installing the cross toolchain failed (see above)"
                else
                    die "no cross toolchain for $B_TARGET here. As root: scripts/cross-test.sh --install-only (or by hand: dpkg --add-architecture arm64; dpkg --add-architecture armhf; apt-get update; apt-get install -y --no-install-recommends rustc-web libstd-rust-web-dev:arm64 libstd-rust-web-dev:armhf gcc-aarch64-linux-gnu libc6-dev-arm64-cross gcc-arm-linux-gnueabihf libc6-dev-armhf-cross)"
                fi
            fi
            T_UP=$(tr 'a-z-' 'A-Z_' <<<"$B_TARGET")
            T_LOW=${B_TARGET//-/_}
            log "cross-building for $TARGET with Debian's rustc and $CC_T (${PI_BINS#"$ROOT"/})"
            for manifest in Cargo.toml hil-tests/Cargo.toml; do
                what=(--bin connect-tunnel)
                [ "$manifest" = Cargo.toml ] || what=(--bin hil)
                run timeout "$BUILD_TIMEOUT" env RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc \
                    "CARGO_TARGET_${T_UP}_LINKER=$CC_T" "CARGO_TARGET_${T_UP}_RUSTFLAGS=$B_FLAGS" \
                    "CC_${T_LOW}=$CC_T" "AR_${T_LOW}=${CC_T%gcc}ar" \
                    CARGO_INCREMENTAL=0 cargo build -q --release --manifest-path "$manifest" \
                    --target "$B_TARGET" "${what[@]}" --target-dir "${PI_BINS%/"$B_TARGET"/release}" ||
                    die "cross-building ${what[1]} for $TARGET failed (see the cargo output above)"
            done
            ;;
        *) die "HIL_CROSS=${HIL_CROSS}: expected debian or cross" ;;
    esac
fi
for b in hil connect-tunnel; do
    [ -n "$DRY" ] || [ -x "$PI_BINS/$b" ] || die "$PI_BINS/$b missing after the build"
done

# ---------------------------------------------------------------------------------------------
# 3. Copy to the Pi
# ---------------------------------------------------------------------------------------------
log "copying hil and connect-tunnel to $HIL_PI_HOST:$PI_DIR"
# A camera left running by an interrupted run would hold the old binary and its files.
pi_stop_camera
pi "mkdir -p $(q "$PI_DIR") && rm -f $(q "$PI_DIR")/*.result $(q "$PI_DIR")/*.done $(q "$PI_DIR")/*.marks $(q "$PI_DIR")/*.log" ||
    die "cannot create $PI_DIR on the Pi (HIL_PI_DIR must be a directory the ssh user can write)"
# Copied under new names, then renamed: a binary still running there does not block the copy.
run "${PI_SCP[@]}" "$PI_BINS/hil" "$HIL_PI_USER@$HIL_PI_HOST:$PI_DIR/hil.new" &&
    run "${PI_SCP[@]}" "$PI_BINS/connect-tunnel" "$HIL_PI_USER@$HIL_PI_HOST:$PI_DIR/connect-tunnel.new" ||
    die "copying to the Pi failed (scp uses SFTP: the Pi's sshd needs its sftp Subsystem; $PI_DIR needs free space)"
pi "cd $(q "$PI_DIR") && chmod +x hil.new connect-tunnel.new && mv -f hil.new hil && mv -f connect-tunnel.new connect-tunnel"
CAM_TLS=()
if [ -n "${HIL_PROXY_CACERT:-}" ]; then
    run "${PI_SCP[@]}" "$HIL_PROXY_CACERT" "$HIL_PI_USER@$HIL_PI_HOST:$PI_DIR/proxy-ca.pem" ||
        die "copying HIL_PROXY_CACERT to the Pi failed"
    CAM_TLS=(--proxy-cacert proxy-ca.pem)
fi
# put_secret NAME WHAT TEXT: a file only the ssh user can read on the Pi, replaced atomically.
# Secrets go to the Pi in files, never on a command line (ps would show them there).
put_secret() {
    SECRETS_COPIED=1
    if [ -n "$DRY" ]; then
        run scp "($2 in a mode-600 file)" "$HIL_PI_USER@$HIL_PI_HOST:$PI_DIR/$1.new"
    else
        (umask 077 && printf '%s\n' "$3" >"$WORK/$1")
        "${PI_SCP[@]}" "$WORK/$1" "$HIL_PI_USER@$HIL_PI_HOST:$PI_DIR/$1.new"
        local rc=$?
        rm -f "$WORK/$1"
        [ "$rc" -eq 0 ] || return 1
    fi
    pi "chmod 600 $(q "$PI_DIR/$1.new") && mv $(q "$PI_DIR/$1.new") $(q "$PI_DIR/$1")"
}
give_camera() { put_secret creds user:password "$P_USER:$1"; } # the camera's credentials file
give_camera "$P_PASS" || die "copying the camera's credentials file to the Pi failed"
# The CLI on the Pi gets the proxy URL with the credentials from this file, through HTTPS_PROXY.
put_secret proxy.url "the proxy URL" "$HIL_PROXY_URL" || die "copying the proxy URL file to the Pi failed"
# Shell builtins only: an `env VAR=…` command would show the URL in its own arguments.
CLI_ENV="unset NO_PROXY no_proxy; export HTTPS_PROXY=\"\$(cat proxy.url)\";"
if [ -z "$DRY" ]; then
    pi "cd $(q "$PI_DIR") && $PI_EXEC ./connect-tunnel --version" >"$WORK/cli-version.txt" 2>&1 ||
        die "connect-tunnel does not run on the Pi: $(head -c 300 "$WORK/cli-version.txt") (wrong HIL_PI_TARGET? the Pi's glibc must be >= 2.34)"
fi

# One tunnel from the Pi through the proxy to the media server, before any scenario: a wrong
# proxy address, password or server address is a configuration error, named here.
log "checking the path: the Pi -> $PROXY_BARE -> $HIL_SERVER_ADDR (one CONNECT with connect-tunnel)"
rc=0
pi "cd $(q "$PI_DIR") && $CLI_ENV timeout 30 $PI_EXEC ./connect-tunnel ${HIL_PROXY_CACERT:+--proxy-cacert proxy-ca.pem} --connect-timeout 10 $(q "$HIL_SERVER_ADDR") </dev/null >/dev/null 2>preflight.log" || rc=$?
if [ -z "$DRY" ] && [ "$rc" -gt 1 ]; then
    why=$(pi_ask "tail -n 3 $(q "$PI_DIR/preflight.log")" | tr '\n' ' ')
    case "$rc" in
        3) hint="the Pi cannot reach the proxy: check HIL_PROXY_URL's host and port (and HIL_PROXY_CACERT for https://)" ;;
        4) hint="the proxy refused the credentials in HIL_PROXY_URL (and the password file on the proxy host)" ;;
        5) hint="the proxy refused CONNECT to HIL_SERVER_ADDR=$HIL_SERVER_ADDR: 403 is its ACL (address or port not allowed), 502/503 means nothing listens there (is hil server running, on that port?)" ;;
        6) hint="what answers at HIL_PROXY_URL is not an HTTP proxy" ;;
        7) hint="no answer in time: the proxy or the path to the media server is silent" ;;
        *) hint="connect-tunnel exited $rc" ;;
    esac
    die "$hint. connect-tunnel on the Pi said: ${why:-(nothing)}"
fi
# The tunnel opens; a one-second camera run checks that a hil server is what answers there.
pi "cd $(q "$PI_DIR") && timeout 40 $PI_EXEC ./hil camera --proxy $(q "$PROXY_BARE") --credentials-file creds --target $(q "$HIL_SERVER_ADDR") --duration 1 --scenario preflight --result preflight.result ${CAM_TLS[*]} >preflight.camera.log 2>&1" ||
    die "a tunnel opens through the proxy to HIL_SERVER_ADDR=$HIL_SERVER_ADDR, but no hil server answered the camera there: is it the server's --listen address (not --control), and is hil server running? (the Pi's $PI_DIR/preflight.camera.log has the camera's log)"

# ---------------------------------------------------------------------------------------------
# 4. Scenarios
# ---------------------------------------------------------------------------------------------
SCEN=""
R="$PI_DIR" # remote dir, for brevity

skip() { # skip VERDICT NOTE: a row for a scenario that was not run
    printf 'board\t%s\t%s\t-\t-\t-\t-\t-\t-\t-\t%s\n' "$SCEN" "$1" "$2" >>"$ROWS"
    log "$SCEN: $1: $2"
}
mark() { pi "echo $1 \$(date +%s%N) >> $(q "$R/$SCEN.marks")"; }
start_camera() { # start_camera DURATION: the camera on the Pi, detached (survives a broken ssh)
    local args
    args="--proxy $(q "$PROXY_BARE") --credentials-file creds --target $(q "$HIL_SERVER_ADDR") --duration $1 --scenario $SCEN --result $SCEN.result ${CAM_TLS[*]}"
    CAMERA_STARTED=1
    pi "cd $(q "$R") && rm -f $SCEN.result $SCEN.done && touch $SCEN.marks && (nohup sh -c '$PI_EXEC ./hil camera $args > $SCEN.camera.log 2>&1 & echo \$! > camera.pid; wait \$!; echo \$? > $SCEN.done; rm -f camera.pid' </dev/null >/dev/null 2>&1 &)" ||
        log "$SCEN: starting the camera on the Pi failed"
    CAM_DEADLINE=$((SECONDS + $1 + 45))
}
wait_camera() {
    [ -z "$DRY" ] || { run sleep "(until $SCEN.done appears on the Pi)"; return 0; }
    while [ "$SECONDS" -lt "$CAM_DEADLINE" ]; do
        if pi_ask "test -e $(q "$R/$SCEN.done")"; then return 0; fi
        sleep 1
    done
    log "$SCEN: the camera did not finish in time: stopping it"
    pi_stop_camera
}
pi_log_has() { [ -n "$DRY" ] || pi_ask "grep -q $(q "$1") $(q "$R/$SCEN.camera.log")"; }
collect() {
    run "${PI_SCP[@]}" "$HIL_PI_USER@$HIL_PI_HOST:$R/$SCEN.result" "$HIL_PI_USER@$HIL_PI_HOST:$R/$SCEN.marks" \
        "$HIL_PI_USER@$HIL_PI_HOST:$R/$SCEN.camera.log" "$WORK/" 2>/dev/null || true
}
judge() {
    collect
    local rc=0
    run "$HIL" judge --scenario "$SCEN" --mode board --result "$WORK/$SCEN.result" \
        --marks "$WORK/$SCEN.marks" --rows "$ROWS" --healthy-latency-ms "$HEALTHY" \
        --expect "written>=1" --expect "receipt==1" --expect "corrupt==0" --expect "ooo==0" \
        --expect "dup==0" "$@" || rc=$?
    if [ "$rc" -ne 0 ] && [ -f "$WORK/$SCEN.camera.log" ]; then
        tail -n 8 "$WORK/$SCEN.camera.log" | sed 's/^/     /'
    fi
}
sleep_() { run sleep "$1"; }
# abort_scenario REASON: a step of the lab failed; the scenario is a FAIL with that reason and
# the run goes on with the next one.
abort_scenario() {
    pi_stop_camera
    skip FAIL "$1"
}
need_pi_root() {
    if [ -z "$PI_ROOT" ] || [ -z "$PROXY_IP" ] || [ -z "$PI_IF" ]; then
        skip MANUAL "$1 (needs root on the Pi: passwordless sudo, or HIL_PI_SUDO; and the proxy's IPv4 address)"
        return 1
    fi
}
manual_step() { # manual_step PROMPT: waits for Enter (HIL_MANUAL=1 on a terminal only)
    printf '\n>>> %s, then press Enter (120 s) ' "$1"
    read -r -t 120 _ || true
}
can_manual() { [ -n "${HIL_MANUAL:-}" ] && [ -t 0 ] && [ -z "$DRY" ]; }

scenario_cli_smoke() {
    local rc ok=1 notes t
    notes="$(head -n1 "$WORK/cli-version.txt" 2>/dev/null || echo '?')"
    # A wrong password: the proxy must say 407, the CLI exit 4.
    rc=0
    pi "cd $(q "$R") && timeout 30 $PI_EXEC ./connect-tunnel -x $(q "$P_SCHEME://$P_USER:wrong-$RANDOM@$P_HOST:$P_PORT") ${HIL_PROXY_CACERT:+--proxy-cacert proxy-ca.pem} --connect-timeout 10 $(q "$HIL_SERVER_ADDR") </dev/null >/dev/null 2>$SCEN.wrong.log" || rc=$?
    [ -n "$DRY" ] || { [ "$rc" -eq 4 ] || ok=""; }
    notes+="; wrong password: exit $rc (want 4)"
    # The right one: the tunnel opens; the media server closes it after its idle timeout.
    rc=0
    t=$SECONDS
    pi "cd $(q "$R") && $CLI_ENV timeout 40 $PI_EXEC ./connect-tunnel ${HIL_PROXY_CACERT:+--proxy-cacert proxy-ca.pem} --no-half-close --connect-timeout 10 $(q "$HIL_SERVER_ADDR") </dev/null >/dev/null 2>$SCEN.ok.log" || rc=$?
    [ -n "$DRY" ] || { [ "$rc" -eq 0 ] || ok=""; }
    notes+="; tunnel: exit $rc after $((SECONDS - t)) s (want 0 when the server closes)"
    [ -z "$DRY" ] || return 0
    if [ -z "$ok" ]; then
        for f in wrong ok; do
            echo "   connect-tunnel's stderr ($f password):"
            pi_ask "tail -n 5 $(q "$R/$SCEN.$f.log")" | sed 's/^/     /'
        done
    fi
    printf 'board\t%s\t%s\t-\t-\t-\t-\t-\t-\t-\t%s\n' "$SCEN" "$([ -n "$ok" ] && echo PASS || echo FAIL)" "$notes" >>"$ROWS"
    echo "   $notes"
}

scenario_normal() {
    start_camera 10
    wait_camera
    judge --expect "dropped==0" --expect "lost==0" --expect "missing==0" --expect "reconnects==0" \
        --expect "never==0" --expect "p99_ms<=$LAT_BOUND" --expect "losses_outside==0"
}

scenario_jitter() {
    need_pi_root "netem delay on the Pi" || return 0
    PI_IMPAIRED=1
    if ! pi "$PI_SUDO tc qdisc replace dev $PI_IF root netem delay 40ms 20ms"; then
        skip SKIP "the Pi's kernel has no netem (sch_netem): no delay/jitter scenario"
        pi_unimpair
        return 0
    fi
    start_camera 10
    wait_camera
    pi_unimpair
    judge --expect "dropped==0" --expect "reconnects==0" --expect "p50_ms>=20" \
        --expect "p99_ms<=$((LAT_BOUND + 60))" --note "netem 40 ms +- 20 ms on the Pi's egress"
}

scenario_proxy_restart() {
    if [ "${#PROXY_SSH[@]}" -eq 0 ] && ! can_manual; then
        skip MANUAL "set HIL_PROXY_SSH (ssh to the proxy host; HIL_PROXY_STOP_CMD/START_CMD), or HIL_MANUAL=1 to stop and start the proxy by hand"
        return 0
    fi
    start_camera 16
    sleep_ 4
    mark impair_start
    if [ "${#PROXY_SSH[@]}" -gt 0 ]; then
        proxy_host "$PROXY_STOP_CMD" || { abort_scenario "stopping the proxy failed (HIL_PROXY_STOP_CMD over ssh)"; return 0; }
        sleep_ 2
        proxy_host "$PROXY_START_CMD" || { abort_scenario "starting the proxy failed (HIL_PROXY_START_CMD over ssh)"; return 0; }
    else
        manual_step "KILL the proxy now (e.g. systemctl kill --signal=KILL squid)"
        manual_step "START the proxy again"
    fi
    mark impair_end
    wait_camera
    judge --recover-within 6 --expect "reconnects>=1" --expect "never==0" --expect "recover_s<=6" \
        --expect "losses_outside==0" --note "proxy killed, restarted"
}

scenario_link_cut() {
    need_pi_root "black-hole route on the Pi" || return 0
    start_camera 22
    sleep_ 4
    PI_IMPAIRED=1
    # Detached on the Pi and self-restoring: the runner's own ssh may cross the cut.
    pi "nohup $PI_SUDO sh -c 'echo impair_start \$(date +%s%N) >> $R/$SCEN.marks; ip route add blackhole $PROXY_IP/32; sleep 10; ip route del blackhole $PROXY_IP/32; echo impair_end \$(date +%s%N) >> $R/$SCEN.marks' </dev/null >/dev/null 2>&1 &"
    sleep_ 11
    wait_camera
    judge --recover-within 6 --expect "reconnects>=1" --expect "never==0" --expect "recover_s<=6" \
        --expect "losses_outside==0" --note "black-hole route to the proxy on the Pi for 10 s"
}

scenario_slow_link() {
    need_pi_root "tbf rate limit on the Pi" || return 0
    start_camera 18
    sleep_ 4
    PI_IMPAIRED=1
    pi "nohup $PI_SUDO sh -c 'echo impair_start \$(date +%s%N) >> $R/$SCEN.marks; tc qdisc replace dev $PI_IF root tbf rate 400kbit burst 16kbit latency 300ms; sleep 8; tc qdisc del dev $PI_IF root; echo impair_end \$(date +%s%N) >> $R/$SCEN.marks' </dev/null >/dev/null 2>&1 &"
    sleep_ 9
    wait_camera
    judge --recover-within 4 --expect "dropped>=1" --expect "never==0" --expect "reconnects==0" \
        --expect "recover_s<=4" --expect "losses_outside==0" --expect "window_max_ms<=3000" \
        --note "tbf 400 kbit/s on the Pi for 8 s (media ~650)"
}

scenario_proxy_503() {
    if [ -z "${HIL_SERVER_CTL:-}" ] && ! can_manual; then
        skip MANUAL "set HIL_SERVER_CTL (the media server's --control address), or HIL_MANUAL=1 to stop and start the media server by hand"
        return 0
    fi
    start_camera 16
    sleep_ 4
    mark impair_start
    if [ -n "${HIL_SERVER_CTL:-}" ]; then
        SERVER_OFF=1
        run timeout 15 "$HIL" ctl "$HIL_SERVER_CTL" listen off ||
            { abort_scenario "the media server's control port did not take 'listen off' (HIL_SERVER_CTL)"; return 0; }
        sleep_ 6
        run timeout 15 "$HIL" ctl "$HIL_SERVER_CTL" listen on ||
            { abort_scenario "the media server's control port did not take 'listen on' (HIL_SERVER_CTL)"; return 0; }
        SERVER_OFF=""
    else
        manual_step "STOP the media server (Ctrl-C it)"
        manual_step "START the media server again"
    fi
    mark impair_end
    wait_camera
    judge --recover-within 5 --expect "refused_503>=1" --expect "never==0" --expect "reconnects>=1" \
        --expect "recover_s<=5" --expect "losses_outside==0" --note "media server down 6 s: the proxy answers 503"
}

scenario_cred_rotation() {
    if [ "${#PROXY_SSH[@]}" -eq 0 ] || [ -z "$P_USER" ]; then
        skip MANUAL "set HIL_PROXY_SSH (and HIL_PROXY_PASSWD_FILE) and put credentials in HIL_PROXY_URL: the proxy's password file is rewritten, then restored"
        return 0
    fi
    local new="rotated-$RANDOM$RANDOM" hash before="" after="" i
    hash=$(openssl passwd -apr1 "$new")
    proxy_host "grep -q $(q "^$P_USER:") $(q "$PROXY_PASSWD_FILE") || $PROXY_SUDO grep -q $(q "^$P_USER:") $(q "$PROXY_PASSWD_FILE")" ||
        { skip FAIL "$PROXY_PASSWD_FILE on the proxy host has no line for $P_USER"; return 0; }
    [ -n "$DRY" ] || before=$(proxy_host "$PROXY_SUDO grep -c TCP_DENIED/407 $(q "$PROXY_ACCESS_LOG")" 2>/dev/null || true)
    start_camera 18
    sleep_ 4
    mark impair_start
    PROXY_ROTATED=1
    proxy_host "$PROXY_SUDO cp -p $(q "$PROXY_PASSWD_FILE") $(q "$PROXY_PASSWD_FILE.hil-backup") && $PROXY_SUDO sed -i $(q "s|^$P_USER:.*|$P_USER:$hash|") $(q "$PROXY_PASSWD_FILE") && $PROXY_RECONFIGURE_CMD" || {
        proxy_restore_password
        PROXY_ROTATED=""
        abort_scenario "rotating the password on the proxy host failed (HIL_PROXY_PASSWD_FILE, HIL_PROXY_RECONFIGURE_CMD, sudo)"
        return 0
    }
    sleep_ 1
    # Tunnels survive a rotation: end the camera's so it must log in again. `ss -K` needs
    # CONFIG_INET_DIAG_DESTROY in the Pi's kernel; when the camera does not notice within 2 s,
    # the proxy is restarted instead.
    local ended=""
    if [ -n "$PI_ROOT" ] && pi "$PI_SUDO ss -K -tn dst $PROXY_IP dport = :$P_PORT >/dev/null"; then
        for ((i = 0; i < 4; i++)); do
            if pi_log_has 'tunnel_lost'; then ended=1; break; fi
            sleep_ 0.5
        done
    fi
    if [ -z "$ended" ]; then
        log "$SCEN: ss -K on the Pi did not end the tunnel; restarting the proxy instead"
        proxy_host "$PROXY_START_CMD" || log "$SCEN: restarting the proxy failed (HIL_PROXY_START_CMD)"
    fi
    for ((i = 0; i < 15; i++)); do
        pi_log_has 'gave_up retry=never' && break
        sleep_ 1
    done
    sleep_ 2
    mark impair_end
    mark recover_from
    give_camera "$new"
    wait_camera
    [ -n "$DRY" ] || after=$(proxy_host "$PROXY_SUDO grep -c TCP_DENIED/407 $(q "$PROXY_ACCESS_LOG")" 2>/dev/null || true)
    proxy_restore_password
    PROXY_ROTATED=""
    give_camera "$P_PASS"
    local fact=()
    if [[ "$before" =~ ^[0-9]+$ && "$after" =~ ^[0-9]+$ ]]; then
        fact=(--fact "squid_407=$((after - before))" --expect "squid_407<=2")
    fi
    judge --recover-within 3 --expect "never==1" --expect "recover_s<=3" --expect "losses_outside==0" \
        "${fact[@]}" --note "password rotated; camera given the new one 2 s after its Never"
}

start_all=$SECONDS
for s in $SCENARIOS; do
    SCEN=$s
    log "scenario $s"
    t=$SECONDS
    rows_before=$(wc -l <"$ROWS")
    # A failing step ends this scenario, not the run (the function reports what failed).
    "scenario_$s" || true
    if [ -z "$DRY" ] && [ "$(wc -l <"$ROWS")" -eq "$rows_before" ]; then
        abort_scenario "the scenario ended without a result (see its log lines above)"
    fi
    echo "   ($((SECONDS - t)) s)"
    if [ -n "$PI_IMPAIRED" ]; then
        pi_unimpair
        PI_IMPAIRED=""
    fi
done

echo
log "summary ($((SECONDS - start_all)) s; Pi $HIL_PI_HOST (${HIL_PI_BIN_DIR:+binaries from $HIL_PI_BIN_DIR}${HIL_PI_BIN_DIR:-$TARGET}${PI_EXEC:+, run with $PI_EXEC}), proxy $PROXY_BARE, server $HIL_SERVER_ADDR)"
if [ -n "$DRY" ]; then
    log "dry run: no results"
    exit 0
fi
"$HIL" table "$ROWS"
