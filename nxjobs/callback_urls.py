"""The URLs we ask NXCloud to call back on, built from NXJOBS_CALLBACKS__PUBLIC_URL.

The receiver (a later service) serves these paths; keeping both sides on this
one module means they cannot drift apart.
"""

from __future__ import annotations

NUMBER_CHECK = "/callbacks/number-check"
CALLBOT_TASK = "/callbacks/callbot/task"
CALLBOT_ORDER = "/callbacks/callbot/order"
CALLBOT_CALL = "/callbacks/callbot/call"
AGENT_CDR = "/callbacks/agent/cdr"


def build(public_url: str | None, path: str) -> str | None:
    if not public_url:
        return None
    return public_url.rstrip("/") + path
