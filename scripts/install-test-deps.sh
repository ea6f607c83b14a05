#!/usr/bin/env bash
# Installs the Debian packages the integration tests need (real Squid, Apache mod_proxy_connect,
# tinyproxy, HAProxy and sshd peers).
# Idempotent and fast when everything is already present: `dpkg -s` is checked before apt runs.
# The tests start their own daemons on free loopback ports with private configs; this script makes
# sure no stock daemon that a package install may have started is left on the default ports.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

PACKAGES=(squid-openssl apache2 apache2-utils tinyproxy haproxy openssh-server openssh-client openssl
    ca-certificates procps iproute2)

missing=()
for pkg in "${PACKAGES[@]}"; do
    # "install ok installed" is the only status that means the package is usable. (Status is
    # read with dpkg-query, not `dpkg -s | grep -q`: under pipefail grep's early exit would make
    # dpkg die of SIGPIPE on a long entry such as apache2's, and the pipeline fail at random.)
    if [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)" != "install ok installed" ]; then
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    echo "install-test-deps: all packages present (${PACKAGES[*]})"
else
    echo "install-test-deps: installing ${missing[*]}"
    # Keep package scripts from starting the stock daemons where the machine allows it; a
    # policy-rc.d that is already there (as in containers) is left alone.
    created_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
        $SUDO chmod 755 /usr/sbin/policy-rc.d
        created_policy=1
    fi
    cleanup_policy() {
        if [ -n "$created_policy" ]; then
            $SUDO rm -f /usr/sbin/policy-rc.d
        fi
    }
    trap cleanup_policy EXIT
    export DEBIAN_FRONTEND=noninteractive
    # Fresh lists: a machine's cached lists may be empty or name versions the mirror dropped.
    $SUDO apt-get update
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi

# Stop stock daemons that may have been started anyway (systemd machines without a policy, or an
# earlier install). The tests never use these; they only occupy default ports (3128, 80, 8888,
# 22, ...).
SERVICES=(squid apache2 tinyproxy haproxy ssh)
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    for svc in "${SERVICES[@]}"; do
        if systemctl is-active --quiet "$svc" 2>/dev/null; then
            echo "install-test-deps: stopping stock $svc"
            $SUDO systemctl stop "$svc" || true
        fi
        # Keep it from coming back at the next boot.
        $SUDO systemctl disable --quiet "$svc" 2>/dev/null || true
    done
fi
# Without systemd (containers, sysvinit) look at the stock pid files. Only daemons named by the
# packages' own pid files are stopped: the tests' daemons use private pid files in temp dirs.
# (The init scripts are not called: squid's takes 2 s even when nothing runs.)
for pidfile in /run/squid.pid /var/run/squid.pid /run/sshd.pid /var/run/sshd.pid \
    /run/apache2/apache2.pid /var/run/apache2/apache2.pid /run/tinyproxy/tinyproxy.pid \
    /var/run/tinyproxy/tinyproxy.pid /run/haproxy.pid /var/run/haproxy.pid; do
    if [ -s "$pidfile" ]; then
        pid="$(cat "$pidfile" 2>/dev/null || true)"
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            echo "install-test-deps: stopping stock daemon pid $pid ($pidfile)"
            $SUDO kill "$pid" 2>/dev/null || true
        fi
    fi
done

# sshd refuses to start without its privilege-separation directory.
if [ ! -d /run/sshd ]; then
    $SUDO mkdir -p /run/sshd
    $SUDO chmod 755 /run/sshd
fi

for tool in /usr/sbin/squid /usr/sbin/sshd /usr/bin/ssh /usr/bin/ssh-keygen /usr/bin/openssl \
    /usr/lib/squid/basic_ncsa_auth /usr/lib/squid/digest_file_auth /usr/sbin/apache2 \
    /usr/bin/htpasswd /usr/bin/tinyproxy /usr/sbin/haproxy; do
    if [ ! -x "$tool" ]; then
        echo "install-test-deps: expected $tool after install, not found" >&2
        exit 1
    fi
done
# Apache's modules are loaded by the tests' own config (LoadModule): plain files, not executables.
for module in mpm_event authn_core authn_file authz_core authz_user authz_host auth_basic proxy \
    proxy_connect ssl socache_shmcb; do
    if [ ! -f "/usr/lib/apache2/modules/mod_$module.so" ]; then
        echo "install-test-deps: expected mod_$module.so after install, not found" >&2
        exit 1
    fi
done
echo "install-test-deps: ready"
