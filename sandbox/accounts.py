"""Fixed, obviously fake credentials the sandbox accepts, and the env that points workers at it.

Imports nothing; safe to use from tests, the CLI and docker-compose helpers.
"""

from __future__ import annotations

from typing import Final

# api2 open platform (Number Check, OTA, WhatsApp), docs/provider.md §2.
API2_ACCESS_KEY = "sandbox-access-key"
API2_ACCESS_SECRET = "sandbox-access-secret"
API2_APPKEY = "sandbox-appkey"

# Callbot v3, docs/provider.md §3.
CALLBOT_UUID = "sandbox-callbot-uuid"
CALLBOT_SECRET_KEY = "sandbox-callbot-secret"
CALLBOT_ALGORITHM: Final = "md5"

# Legacy Agent API (token / makecall / CDR), docs/provider.md §7.
AGENT_APPKEY = "sandbox-agent-appkey"
AGENT_SECRETKEY = "sandbox-agent-secretkey"
AGENT_USERNAME = "sandbox-agent"

API2_SECRETS = {API2_ACCESS_KEY: API2_ACCESS_SECRET}
CALLBOT_SECRETS = {CALLBOT_UUID: CALLBOT_SECRET_KEY}
AGENT_SECRETS = {AGENT_APPKEY: AGENT_SECRETKEY}
AGENT_USERNAMES = frozenset({AGENT_USERNAME})
# The do-not-call list's key for the sandbox's workers (and the tests' producers): not a secret.
SUPPRESSION_SECRET = "sandbox-suppression-key-not-a-secret"


def sandbox_env(base_url: str) -> dict[str, str]:
    """`NXJOBS_*` variables that make our workers talk to a sandbox at `base_url`.

    Every family shares one base URL: the sandbox serves all of them on one port
    and their paths do not collide. The sandbox rings no phone: calling hours are off (the tests
    that exercise them turn them on), and the do-not-call list has the sandbox's key.
    """
    base_url = base_url.rstrip("/")
    return {
        "NXJOBS_API2__BASE_URL": base_url,
        "NXJOBS_API2__ACCESS_KEY": API2_ACCESS_KEY,
        "NXJOBS_API2__ACCESS_SECRET": API2_ACCESS_SECRET,
        "NXJOBS_API2__APPKEY": API2_APPKEY,
        "NXJOBS_CALLBOT__BASE_URL": base_url,
        "NXJOBS_CALLBOT__UUID": CALLBOT_UUID,
        "NXJOBS_CALLBOT__SECRET_KEY": CALLBOT_SECRET_KEY,
        "NXJOBS_CALLBOT__ALGORITHM": CALLBOT_ALGORITHM,
        "NXJOBS_AGENT__BASE_URL": base_url,
        "NXJOBS_AGENT__CDR_BASE_URL": base_url,
        "NXJOBS_AGENT__APPKEY": AGENT_APPKEY,
        "NXJOBS_AGENT__SECRETKEY": AGENT_SECRETKEY,
        "NXJOBS_AGENT__USERNAME": AGENT_USERNAME,
        "NXJOBS_CALLING_HOURS__ENABLED": "false",
        "NXJOBS_SUPPRESSION__SECRET": SUPPRESSION_SECRET,
    }
