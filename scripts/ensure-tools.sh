#!/usr/bin/env bash
# Make sure each COMMAND:PACKAGE argument's command is on PATH, installing the Debian
# package when we are root and it is missing (what `make test` needs besides Python
# packages and redis-server: e.g. docker-compose for the compose checks).
# Not root, or no apt-get: say what is missing and exit 0; the tests that need it fail
# in CI (CI=true) and skip elsewhere.
set -euo pipefail

log() { printf 'ensure-tools: %s\n' "$*" >&2; }

missing=()
for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    log "installing Debian package(s): ${missing[*]}"
    # Keep packages that ship a service (prometheus) from starting it during install: the
    # checks only call the binaries.
    policy=/usr/sbin/policy-rc.d
    if [[ ! -e "$policy" ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 0755 "$policy"
        trap 'rm -f "$policy"' EXIT
    fi
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
else
    log "missing: ${missing[*]} (install them with your package manager)"
fi
