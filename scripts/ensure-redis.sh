#!/usr/bin/env bash
# Print the absolute path of a usable redis-server on stdout, installing
# Debian's package when we are root and none is found.
#
# Lookup order (workers/devstack.py:find_redis_server mirrors steps 1-3,
# without ever installing):
#   1. $NXJOBS_REDIS_SERVER, if set and executable
#   2. redis-server on PATH (then /usr/bin, /usr/sbin)
#   3. as root with apt-get: apt-get install redis-server (no service start)
# redis-sentinel (the Sentinel tests, tests/integration/test_sentinel.py) is installed alongside
# by the same rule: as root with apt-get, when it is not on PATH. Its absence is not an error
# here (those tests skip on a developer machine and fail in CI).
# Progress and errors go to stderr so callers can capture stdout.
set -euo pipefail

log() { printf 'ensure-redis: %s\n' "$*" >&2; }

ensure_sentinel() {
    command -v redis-sentinel >/dev/null 2>&1 && return 0
    [[ -x /usr/bin/redis-sentinel ]] && return 0
    if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        log "redis-sentinel not found; installing Debian package redis-sentinel"
        with_no_service_start apt-get install -y -qq --no-install-recommends redis-sentinel >&2 \
            || { apt-get update -qq >&2 && with_no_service_start \
                apt-get install -y -qq --no-install-recommends redis-sentinel >&2; } \
            || log "could not install redis-sentinel (the Sentinel tests will not run)"
    else
        log "redis-sentinel not found (the Sentinel tests will not run): apt-get install redis-sentinel"
    fi
}

with_no_service_start() {
    # Keep the package's init scripts from starting a system-wide service during install.
    local policy=/usr/sbin/policy-rc.d created=0 rc=0
    if [[ ! -e "$policy" ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 0755 "$policy"
        created=1
    fi
    DEBIAN_FRONTEND=noninteractive "$@" || rc=$?
    [[ $created -eq 1 ]] && rm -f "$policy"
    return $rc
}

found() {
    ensure_sentinel
    # Make the path absolute but do NOT resolve symlinks: Debian's
    # redis-server is a symlink to redis-check-rdb and picks its role from
    # argv[0].
    local p="$1"
    [[ "$p" == /* ]] || p="$(cd -- "$(dirname -- "$p")" && pwd)/$(basename -- "$p")"
    printf '%s\n' "$p"
    exit 0
}

if [[ -n "${NXJOBS_REDIS_SERVER:-}" ]]; then
    if [[ -x "$NXJOBS_REDIS_SERVER" && ! -d "$NXJOBS_REDIS_SERVER" ]]; then
        found "$NXJOBS_REDIS_SERVER"
    fi
    log "NXJOBS_REDIS_SERVER=$NXJOBS_REDIS_SERVER is not an executable file; looking elsewhere"
fi

if p="$(command -v redis-server 2>/dev/null)" && [[ -n "$p" ]]; then
    found "$p"
fi
for p in /usr/bin/redis-server /usr/sbin/redis-server; do
    [[ -x "$p" ]] && found "$p"
done

if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    log "redis-server not found; installing Debian package redis-server"
    # Keep the package's init/systemd scripts from starting a system-wide
    # Redis on :6379 during install: the tests start their own servers.
    policy=/usr/sbin/policy-rc.d
    created_policy=0
    if [[ ! -e "$policy" ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 0755 "$policy"
        created_policy=1
        trap 'if [[ $created_policy -eq 1 ]]; then rm -f "$policy"; fi' EXIT
    fi
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        redis-server >&2
    if [[ $created_policy -eq 1 ]]; then
        rm -f "$policy"
        created_policy=0
    fi
    hash -r
    if p="$(command -v redis-server 2>/dev/null)" && [[ -n "$p" ]]; then
        found "$p"
    fi
    for p in /usr/bin/redis-server /usr/sbin/redis-server; do
        [[ -x "$p" ]] && found "$p"
    done
    log "apt-get install redis-server finished but no redis-server binary was found"
    exit 1
fi

log "no redis-server found."
log "Install Redis (e.g. 'sudo apt-get install redis-server' on Debian/Ubuntu,"
log "'brew install redis' on macOS), or set NXJOBS_REDIS_SERVER=/path/to/redis-server."
exit 1
