#!/usr/bin/env bash
# Hardware-in-the-loop scenarios without a board: three network namespaces on this machine.
#
#   camera ns                 proxy ns                                     server ns
#   hil camera  --veth-->  10.201.1.2:8080 hil relay --> 127.0.0.1:3128 Squid --veth--> 10.201.2.2:5004
#   10.201.1.1             (impairments, control 127.0.0.1:7000)   (Basic auth)       hil server
#                                                                                     (control 127.0.0.1:7001)
#
# The camera (connect-tunnel's Connector::run_reconnecting + Backoff) streams RTP at real-time
# pace through the relay and a real Squid to the media server, which checks every packet. Each
# scenario impairs the path while the camera runs, then `hil judge` checks its pass criteria;
# one summary table is printed at the end. See hil-tests/README.md.
#
#   bash hil-tests/run-local.sh                      all scenarios
#   HIL_SCENARIOS="normal link_cut" bash hil-tests/run-local.sh
#   HIL_QEMU=0 ...      do not run the camera under qemu-aarch64 (default: auto, when Debian's
#                       ARM cross toolchain and qemu-user are installed)
#   HIL_KEEP=1 ...      keep the work directory (logs, results) even when everything passed
#   HIL_BOARD_SELFTEST=1 ...   then also run run-board.sh against this lab: sshd in the camera
#                       namespace plays the Pi (the aarch64 build under qemu when available),
#                       sshd in the proxy namespace the proxy host; the runner runs there too.
#                       HIL_SCENARIOS=none skips the local scenarios.
#
# Needs root (namespaces, Squid as user proxy) and squid-openssl. Under CI=true a missing
# prerequisite is a failure; otherwise the script prints SKIP and exits 0. Every wait is bounded;
# namespaces and processes are removed on exit (trap).
# Functions are called through the trap and by name ("scenario_$s"): not unreachable.
# shellcheck disable=SC2317
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

ALL_SCENARIOS="normal jitter proxy_restart link_cut slow_link proxy_503 cred_rotation"
SCENARIOS=${HIL_SCENARIOS:-$ALL_SCENARIOS}
QEMU_SCENARIOS="normal proxy_restart"
BUILD_TIMEOUT=${HIL_BUILD_TIMEOUT:-1500}

log() { printf '== hil-local: %s\n' "$*"; }
not_possible() {
    if [ "${CI:-}" = "true" ]; then
        log "FAIL: $* (CI=true: a missing prerequisite is a failure)"
        exit 1
    fi
    log "SKIP: $*"
    STATUS=0
    exit 0
}

# ---------------------------------------------------------------------------------------------
# Prerequisites
# ---------------------------------------------------------------------------------------------
SQUID=/usr/sbin/squid
NCSA=/usr/lib/squid/basic_ncsa_auth
[ "$(id -u)" -eq 0 ] || not_possible "needs root (network namespaces)"
for p in ip "$SQUID" "$NCSA" openssl cargo timeout date; do
    command -v "$p" >/dev/null 2>&1 || not_possible "$p not found (scripts/install-test-deps.sh installs squid-openssl)"
done
id proxy >/dev/null 2>&1 || not_possible "user 'proxy' missing (the squid package creates it)"

RUN=$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
NS_CAM="hil-$RUN-cam"
NS_PRX="hil-$RUN-prx"
NS_SRV="hil-$RUN-srv"
WORK=$(mktemp -d "/tmp/hil-local-$RUN.XXXXXX")
chmod 755 "$WORK"
PIDS=()
SQUID_PID=""
STATUS=1

cleanup() {
    local pid ns
    set +e
    # Quiet: bash would report each killed background job.
    exec 2>/dev/null
    for pid in "${PIDS[@]}" $SQUID_PID; do
        kill "$pid" 2>/dev/null
    done
    for ns in "$NS_CAM" "$NS_PRX" "$NS_SRV"; do
        if ip netns list 2>/dev/null | awk '{print $1}' | grep -qx "$ns"; then
            # Only processes this run started live in its namespaces.
            for pid in $(ip netns pids "$ns" 2>/dev/null); do
                kill -KILL "$pid" 2>/dev/null
            done
        fi
    done
    for pid in "${PIDS[@]}" $SQUID_PID; do
        timeout 5 tail --pid="$pid" -f /dev/null 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    for ns in "$NS_CAM" "$NS_PRX" "$NS_SRV"; do
        ip netns del "$ns" 2>/dev/null
    done
    if [ "$STATUS" -eq 0 ] && [ -z "${HIL_KEEP:-}" ]; then
        rm -rf "$WORK"
    else
        log "logs and results kept in $WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Can this machine make network namespaces at all? (Before spending time on the build.)
if ! ip netns add "$NS_CAM" 2>"$WORK/netns.err"; then
    not_possible "cannot create network namespaces: $(cat "$WORK/netns.err")"
fi

# ---------------------------------------------------------------------------------------------
# Build: native, and (optionally) aarch64 for qemu
# ---------------------------------------------------------------------------------------------
log "building hil-tests (release, target/hil-tests)"
t0=$SECONDS
if ! timeout "$BUILD_TIMEOUT" cargo build --locked --release --manifest-path hil-tests/Cargo.toml \
    --target-dir target/hil-tests >"$WORK/build.log" 2>&1; then
    tail -n 30 "$WORK/build.log"
    log "FAIL: build"
    exit 1
fi
HIL="$ROOT/target/hil-tests/release/hil"
if ! timeout "$BUILD_TIMEOUT" cargo test -q --release --manifest-path hil-tests/Cargo.toml \
    --target-dir target/hil-tests >"$WORK/unit-tests.log" 2>&1; then
    tail -n 30 "$WORK/unit-tests.log"
    log "FAIL: the harness's own unit tests"
    exit 1
fi
log "built and unit-tested in $((SECONDS - t0)) s"

QEMU_BIN=""
QEMU_NOTE=""
build_qemu() {
    local target=aarch64-unknown-linux-gnu
    case "${HIL_QEMU:-auto}" in
        0 | no | off) QEMU_NOTE="HIL_QEMU=0"; return ;;
    esac
    if ! command -v qemu-aarch64 >/dev/null || ! command -v aarch64-linux-gnu-gcc >/dev/null ||
        [ ! -x /usr/bin/rustc ] ||
        [ ! -d "$(/usr/bin/rustc --print sysroot 2>/dev/null)/lib/rustlib/$target" ]; then
        QEMU_NOTE="no ARM cross toolchain (scripts/cross-test.sh --install-only installs it)"
        return
    fi
    log "building hil for $target with Debian's rustc (target/cross/hil-tests)"
    t0=$SECONDS
    if timeout "$BUILD_TIMEOUT" env RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc \
        CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
        CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar \
        CARGO_INCREMENTAL=0 \
        cargo build --release --manifest-path hil-tests/Cargo.toml --target "$target" \
        --target-dir target/cross/hil-tests >"$WORK/build-aarch64.log" 2>&1; then
        QEMU_BIN="$ROOT/target/cross/hil-tests/$target/release/hil"
        if timeout 60 qemu-aarch64 "$QEMU_BIN" --help >/dev/null 2>&1; then
            log "aarch64 build in $((SECONDS - t0)) s; runs under qemu-aarch64"
        else
            QEMU_NOTE="the aarch64 binary does not start under qemu-aarch64"
            QEMU_BIN=""
        fi
    else
        tail -n 20 "$WORK/build-aarch64.log"
        QEMU_NOTE="aarch64 build failed (log: build-aarch64.log)"
    fi
}
build_qemu

# ---------------------------------------------------------------------------------------------
# Namespaces and links
# ---------------------------------------------------------------------------------------------
CAM_IP=10.201.1.1
PRX_IP=10.201.1.2
PRX_IP2=10.201.2.1
SRV_IP=10.201.2.2
RELAY_PORT=8080
SQUID_PORT=3128
MEDIA_PORT=5004
RELAY_CTL=127.0.0.1:7000
SERVER_CTL=$SRV_IP:7001

log "namespaces $NS_CAM, $NS_PRX, $NS_SRV (work dir $WORK)"
ip netns add "$NS_PRX"
ip netns add "$NS_SRV"
# veth names must be unique on the host while they are created: the run id is in them.
ip link add "h${RUN}c" type veth peer name "h${RUN}p"
ip link add "h${RUN}q" type veth peer name "h${RUN}s"
ip link set "h${RUN}c" netns "$NS_CAM"
ip link set "h${RUN}p" netns "$NS_PRX"
ip link set "h${RUN}q" netns "$NS_PRX"
ip link set "h${RUN}s" netns "$NS_SRV"
in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
for ns in "$NS_CAM" "$NS_PRX" "$NS_SRV"; do in_ns "$ns" ip link set lo up; done
in_ns "$NS_CAM" ip addr add "$CAM_IP/24" dev "h${RUN}c"
in_ns "$NS_PRX" ip addr add "$PRX_IP/24" dev "h${RUN}p"
in_ns "$NS_PRX" ip addr add "$PRX_IP2/24" dev "h${RUN}q"
in_ns "$NS_SRV" ip addr add "$SRV_IP/24" dev "h${RUN}s"
in_ns "$NS_CAM" ip link set "h${RUN}c" up
in_ns "$NS_PRX" ip link set "h${RUN}p" up
in_ns "$NS_PRX" ip link set "h${RUN}q" up
in_ns "$NS_SRV" ip link set "h${RUN}s" up

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...: until COMMAND succeeds
    local limit=$1 what=$2 i
    shift 2
    for ((i = 0; i < limit * 10; i++)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    log "timed out after ${limit} s waiting for $what"
    return 1
}

# ---------------------------------------------------------------------------------------------
# Squid in the proxy namespace (Basic auth; CONNECT only to the media server)
# ---------------------------------------------------------------------------------------------
SQ="$WORK/squid"
mkdir -p "$SQ"
PASSWORD="first-$RUN"
CREDS="$WORK/camera-credentials"
set_password() { # set_password PASSWORD: the proxy's password file (htpasswd, apr1)
    printf 'camera:%s\n' "$(openssl passwd -apr1 "$1")" >"$SQ/passwd.new"
    chown proxy:proxy "$SQ/passwd.new"
    mv "$SQ/passwd.new" "$SQ/passwd"
}
give_camera() { # give_camera PASSWORD: the camera's credentials file
    printf 'camera:%s\n' "$1" >"$CREDS.new"
    mv "$CREDS.new" "$CREDS"
}
set_password "$PASSWORD"
give_camera "$PASSWORD"
cat >"$SQ/squid.conf" <<EOF
# hil-tests local mode: minimal Squid, no disk cache, quick start and stop
http_port 127.0.0.1:$SQUID_PORT
# For the board-mode self-test (HIL_BOARD_SELFTEST=1): the "Pi" uses Squid directly.
http_port $PRX_IP:$SQUID_PORT
cache_effective_user proxy
pid_filename $SQ/squid.pid
cache_log $SQ/cache.log
access_log stdio:$SQ/access.log
cache_store_log none
netdb_filename none
coredump_dir $SQ
cache deny all
cache_mem 8 MB
shutdown_lifetime 1 seconds
pinger_enable off
visible_hostname hil-local
logfile_rotate 0
auth_param basic program $NCSA $SQ/passwd
auth_param basic children 2 startup=1 idle=1
auth_param basic realm hil
# Squid caches a validated password for credentialsttl (default 2 hours): a rotated password
# would keep working that long. Short here so the rotation scenario sees the change.
auth_param basic credentialsttl 2 seconds
acl authed proxy_auth REQUIRED
acl CONNECT method CONNECT
acl media_port port $MEDIA_PORT
acl media_host dst $SRV_IP
http_access deny !authed
http_access allow CONNECT media_port media_host
http_access deny all
EOF
chown -R proxy:proxy "$SQ"

squid_accepting() {
    grep -q "Accepting HTTP Socket connections at .*local=127.0.0.1:$SQUID_PORT" "$SQ/cache.log" 2>/dev/null &&
        in_ns "$NS_PRX" timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$SQUID_PORT" 2>/dev/null
}
start_squid() {
    : >"$SQ/cache.log"
    chown proxy:proxy "$SQ/cache.log"
    # Not through a shell function: $! must be Squid itself (ip netns exec execs it).
    ip netns exec "$NS_PRX" "$SQUID" -N -f "$SQ/squid.conf" >>"$WORK/squid.out" 2>&1 &
    SQUID_PID=$!
    local i
    for ((i = 0; i < 150; i++)); do
        if ! kill -0 "$SQUID_PID" 2>/dev/null; then
            log "squid exited at start:"; tail -n 20 "$SQ/cache.log" "$WORK/squid.out"
            return 1
        fi
        if squid_accepting; then return 0; fi
        sleep 0.1
    done
    log "squid not ready within 15 s:"; tail -n 20 "$SQ/cache.log"
    return 1
}
kill_squid() { # the hard way: a crash, not a clean shutdown
    {
        kill -KILL "$SQUID_PID"
        wait "$SQUID_PID"
    } 2>/dev/null || true
    SQUID_PID=""
}

t0=$SECONDS
start_squid || { log "FAIL: squid did not start"; exit 1; }
log "squid ready in $((SECONDS - t0)) s"

# ---------------------------------------------------------------------------------------------
# Media server and relay
# ---------------------------------------------------------------------------------------------
ip netns exec "$NS_SRV" "$HIL" server --listen "$SRV_IP:$MEDIA_PORT" --control "$SERVER_CTL" \
    --report-dir "$WORK/server-reports" >"$WORK/server.log" 2>&1 &
PIDS+=($!)
ip netns exec "$NS_PRX" "$HIL" relay --listen "$PRX_IP:$RELAY_PORT" --upstream "127.0.0.1:$SQUID_PORT" \
    --control "$RELAY_CTL" >"$WORK/relay.log" 2>&1 &
PIDS+=($!)
relay_ctl() { in_ns "$NS_PRX" "$HIL" ctl "$RELAY_CTL" "$@"; }
server_ctl() { in_ns "$NS_SRV" "$HIL" ctl "$SERVER_CTL" "$@"; }
wait_for 10 "relay control" relay_ctl status || exit 1
wait_for 10 "server control" server_ctl status || exit 1
tcp_open() { in_ns "$1" timeout 2 bash -c "exec 3<>/dev/tcp/$2/$3"; }
wait_for 10 "camera ns -> relay ($PRX_IP:$RELAY_PORT)" tcp_open "$NS_CAM" "$PRX_IP" "$RELAY_PORT" || exit 1
wait_for 10 "proxy ns -> media server ($SRV_IP:$MEDIA_PORT)" tcp_open "$NS_PRX" "$SRV_IP" "$MEDIA_PORT" || exit 1

# ---------------------------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------------------------
ROWS="$WORK/rows.tsv"
: >"$ROWS"
PROXY_URL="http://$PRX_IP:$RELAY_PORT"
TARGET="$SRV_IP:$MEDIA_PORT"
MODE=native
CAMERA_RUNNER=()
CAM_PID=""
SCEN=""

mark() { echo "$1 $(date +%s%N)" >>"$WORK/$SCEN.marks"; }

start_camera() { # start_camera DURATION [camera options...]
    local duration=$1
    shift
    : >"$WORK/$SCEN.marks"
    rm -f "$WORK/$SCEN.result"
    timeout -k 5 $((duration + 30)) ip netns exec "$NS_CAM" "${CAMERA_RUNNER[@]}" camera \
        --proxy "$PROXY_URL" --credentials-file "$CREDS" --target "$TARGET" \
        --duration "$duration" --scenario "$SCEN" --result "$WORK/$SCEN.result" "$@" \
        >"$WORK/$SCEN.camera.log" 2>&1 &
    CAM_PID=$!
}
wait_camera() {
    local rc=0
    wait "$CAM_PID" || rc=$?
    CAM_PID=""
    if [ "$rc" -ne 0 ]; then
        echo "   camera exit code $rc (log: $WORK/$SCEN.camera.log)"
    fi
}
judge() { # judge [judge options...]: criteria common to every scenario are added here
    local rc=0
    "$HIL" judge --scenario "$SCEN" --mode "$MODE" --result "$WORK/$SCEN.result" \
        --marks "$WORK/$SCEN.marks" --rows "$ROWS" \
        --expect "receipt==1" --expect "corrupt==0" --expect "ooo==0" --expect "dup==0" \
        "$@" || rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "   camera log tail:"
        tail -n 8 "$WORK/$SCEN.camera.log" | sed 's/^/     /'
    fi
}
squid_407s() { grep -c 'TCP_DENIED/407' "$SQ/access.log" 2>/dev/null || true; }
reset_path() { # every scenario starts from a clean path
    relay_ctl clear >/dev/null
    if [ -z "$SQUID_PID" ] || ! kill -0 "$SQUID_PID" 2>/dev/null; then
        start_squid
    fi
    server_ctl listen on >/dev/null
}

scenario_normal() {
    start_camera 8
    wait_camera
    judge --expect "dropped==0" --expect "lost==0" --expect "missing==0" --expect "reconnects==0" \
        --expect "never==0" --expect "p50_ms<=10" --expect "p99_ms<=100" --expect "losses_outside==0"
}

scenario_jitter() {
    relay_ctl delay 40 20 >/dev/null
    start_camera 8
    wait_camera
    judge --expect "dropped==0" --expect "lost==0" --expect "reconnects==0" \
        --expect "p50_ms>=20" --expect "p99_ms<=160" --expect "handshake_ms>=40" \
        --note "relay delay 40 ms +- 20 ms both ways"
}

scenario_proxy_restart() {
    start_camera 14
    sleep 4
    mark impair_start
    kill_squid
    sleep 2
    start_squid
    mark impair_end
    wait_camera
    judge --recover-within 5 --expect "reconnects>=1" --expect "never==0" \
        --expect "recover_s<=5" --expect "losses_outside==0" --note "squid SIGKILL, restarted after 2 s"
}

scenario_link_cut() {
    start_camera 22
    sleep 4
    mark impair_start
    relay_ctl cut >/dev/null
    sleep 10
    relay_ctl restore >/dev/null
    mark impair_end
    wait_camera
    judge --recover-within 6 --expect "reconnects>=1" --expect "never==0" \
        --expect "recover_s<=6" --expect "losses_outside==0" --note "black hole for 10 s"
}

scenario_slow_link() {
    start_camera 18
    sleep 4
    mark impair_start
    relay_ctl rate 400 >/dev/null
    sleep 8
    relay_ctl rate 0 >/dev/null
    mark impair_end
    wait_camera
    judge --recover-within 4 --expect "dropped>=1" --expect "never==0" --expect "reconnects==0" \
        --expect "recover_s<=4" --expect "losses_outside==0" --expect "window_max_ms<=3000" \
        --note "400 kbit/s for 8 s (media ~650)"
}

scenario_proxy_503() {
    start_camera 16
    sleep 4
    mark impair_start
    server_ctl listen off >/dev/null
    sleep 6
    server_ctl listen on >/dev/null
    mark impair_end
    wait_camera
    judge --recover-within 5 --expect "refused_503>=1" --expect "never==0" \
        --expect "reconnects>=1" --expect "recover_s<=5" --expect "losses_outside==0" \
        --note "server down 6 s: squid answers 503"
}

scenario_cred_rotation() {
    local new="rotated-$RUN" before after i
    before=$(squid_407s)
    start_camera 16
    sleep 4
    mark impair_start
    set_password "$new"
    in_ns "$NS_PRX" "$SQUID" -k reconfigure -f "$SQ/squid.conf" >>"$WORK/squid.out" 2>&1
    sleep 1
    # Tunnels survive a rotation; drop the current one so the camera must log in again.
    relay_ctl reset >/dev/null
    for ((i = 0; i < 80; i++)); do
        grep -q 'gave_up retry=never' "$WORK/$SCEN.camera.log" && break
        sleep 0.1
    done
    # The camera must now wait quietly: no attempts with the rejected password meanwhile.
    sleep 2
    mark impair_end
    mark recover_from
    give_camera "$new"
    PASSWORD=$new
    wait_camera
    after=$(squid_407s)
    judge --recover-within 3 --expect "never==1" --expect "recover_s<=3" \
        --expect "losses_outside==0" --expect "squid_407<=2" --fact "squid_407=$((after - before))" \
        --note "password rotated; camera given the new one 2 s after its Never"
}

run_scenario() { # run_scenario NAME
    SCEN=$1
    [ "$MODE" = native ] || SCEN="$1-$MODE"
    log "scenario $SCEN"
    reset_path
    local t=$SECONDS
    "scenario_$1"
    echo "   ($((SECONDS - t)) s)"
}

start_all=$SECONDS
CAMERA_RUNNER=("$HIL")
[ "$SCENARIOS" = none ] && SCENARIOS=""
for s in $SCENARIOS; do
    if ! declare -F "scenario_$s" >/dev/null; then
        log "unknown scenario $s (known: $ALL_SCENARIOS)"
        exit 2
    fi
    run_scenario "$s"
done

if [ -n "$QEMU_BIN" ]; then
    MODE=qemu-aarch64
    CAMERA_RUNNER=(qemu-aarch64 "$QEMU_BIN")
    for s in $QEMU_SCENARIOS; do
        case " $SCENARIOS " in *" $s "*) run_scenario "$s" ;; esac
    done
else
    printf 'qemu-aarch64\t(camera under qemu)\tSKIP\t-\t-\t-\t-\t-\t-\t-\t%s\n' "$QEMU_NOTE" >>"$ROWS"
fi

# ---------------------------------------------------------------------------------------------
# Board mode against this lab (HIL_BOARD_SELFTEST=1)
# ---------------------------------------------------------------------------------------------
BOARD_STATUS=0
board_selftest() {
    local conf ns addr start_cmd board_dir
    log "board-mode self-test: run-board.sh against sshd in $NS_CAM (the Pi) and $NS_PRX (proxy host)"
    if [ ! -x /usr/sbin/sshd ] || ! command -v ssh-keygen >/dev/null; then
        log "board self-test: sshd/ssh-keygen missing"
        BOARD_STATUS=1
        return
    fi
    mkdir -p /run/sshd "$WORK/ssh"
    ssh-keygen -q -t ed25519 -N '' -C hil-selftest -f "$WORK/ssh/host" </dev/null
    ssh-keygen -q -t ed25519 -N '' -C hil-selftest -f "$WORK/ssh/id" </dev/null
    cp "$WORK/ssh/id.pub" "$WORK/ssh/authorized_keys"
    for ns in "$NS_CAM" "$NS_PRX"; do
        if [ "$ns" = "$NS_CAM" ]; then addr=$CAM_IP; else addr=127.0.0.1; fi
        conf="$WORK/ssh/sshd-$ns.conf"
        cat >"$conf" <<EOF
Port 22
ListenAddress $addr
HostKey $WORK/ssh/host
PidFile $WORK/ssh/sshd-$ns.pid
AuthorizedKeysFile $WORK/ssh/authorized_keys
UsePAM no
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
Subsystem sftp /usr/lib/openssh/sftp-server
EOF
        ip netns exec "$ns" /usr/sbin/sshd -D -f "$conf" -E "$WORK/ssh/sshd-$ns.log" &
        PIDS+=($!)
    done
    wait_for 10 "sshd in $NS_CAM" tcp_open "$NS_PRX" "$CAM_IP" 22 || { BOARD_STATUS=1; return; }
    wait_for 10 "sshd in $NS_PRX" tcp_open "$NS_PRX" 127.0.0.1 22 || { BOARD_STATUS=1; return; }

    # The Pi's binaries: run-board.sh cross-builds them for aarch64 as for a real Pi and runs
    # them under qemu on the "Pi" when the cross toolchain is here; else it builds them natively.
    local pi_target exec_prefix=""
    pi_target=$(rustc -vV | sed -n "s/^host: //p")
    if [ -n "$QEMU_BIN" ]; then
        pi_target=aarch64-unknown-linux-gnu
        exec_prefix=qemu-aarch64
    fi

    # From now on Squid is managed as on a proxy host: by commands over ssh.
    kill_squid
    start_cmd="nohup $SQUID -N -f $SQ/squid.conf </dev/null >>$WORK/squid.out 2>&1 &"
    in_ns "$NS_PRX" bash -c "$start_cmd"
    wait_for 15 "squid for the board self-test" squid_accepting || { BOARD_STATUS=1; return; }

    BOARD_STATUS=0
    ip netns exec "$NS_PRX" env \
        HIL_PI_HOST="$CAM_IP" HIL_PI_USER=root HIL_PI_KEY="$WORK/ssh/id" HIL_PI_SUDO="" \
        HIL_PI_DIR="$WORK/pi" HIL_PI_TARGET="$pi_target" HIL_PI_EXEC_PREFIX="$exec_prefix" HIL_INSTALL=0 HIL_KEEP=1 \
        HIL_SSH_OPTS="-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR" \
        HIL_PROXY_URL="http://camera:$PASSWORD@$PRX_IP:$SQUID_PORT" \
        HIL_SERVER_ADDR="$SRV_IP:$MEDIA_PORT" HIL_SERVER_CTL="$SERVER_CTL" \
        HIL_PROXY_SSH=root@127.0.0.1 HIL_PROXY_SUDO="" \
        HIL_PROXY_STOP_CMD="kill -KILL \$(cat $SQ/squid.pid)" \
        HIL_PROXY_START_CMD="$start_cmd" \
        HIL_PROXY_RECONFIGURE_CMD="$SQUID -k reconfigure -f $SQ/squid.conf" \
        HIL_PROXY_PASSWD_FILE="$SQ/passwd" HIL_PROXY_ACCESS_LOG="$SQ/access.log" \
        HIL_SCENARIOS="${HIL_BOARD_SCENARIOS:-}" \
        timeout 1800 bash hil-tests/run-board.sh 2>&1 | tee "$WORK/board.log" | sed -u 's/^/   | /' ||
        BOARD_STATUS=1
    # The board rows join this run's table.
    board_dir=$(sed -n 's/^== hil-board: logs and results in //p' "$WORK/board.log" | tail -n1)
    if [ -n "$board_dir" ] && [ -f "$board_dir/rows.tsv" ]; then
        sed "s/^board\t/board (self-test${exec_prefix:+, $exec_prefix})\t/" "$board_dir/rows.tsv" >>"$ROWS"
        # Kept for the rows (HIL_KEEP=1 above); a passing board run's directory goes now.
        [ "$BOARD_STATUS" -ne 0 ] || [ -n "${HIL_KEEP:-}" ] || rm -rf "$board_dir"
    else
        BOARD_STATUS=1
    fi
}
if [ -n "${HIL_BOARD_SELFTEST:-}" ]; then
    board_selftest
fi

echo
log "summary ($((SECONDS - start_all)) s of scenarios)"
if "$HIL" table "$ROWS" && [ "$BOARD_STATUS" -eq 0 ]; then
    STATUS=0
    log "all scenarios passed${HIL_KEEP:+ (logs and rows.tsv kept in $WORK)}"
else
    log "FAILED (logs and rows.tsv in $WORK, kept)"
fi
exit "$STATUS"
