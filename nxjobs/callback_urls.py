"""The URLs we ask NXCloud to call back on, built from NXJOBS_CALLBACKS__PUBLIC_URL.

The receiver (nxjobs.callbacks.app) serves these paths; keeping both sides on
this one module means they cannot drift apart.

Callbot callbacks are signed (docs/provider.md §4), so their URLs are plain. Number
Check DRs and Agent CDRs are not signed: their URL ends in the per-deployment
token (``/callbacks/number-check/<token>``), which the receiver compares in
constant time. A path segment rather than a query string, so proxies that log
queries do not log it either; stored copies of the URL go through
``redact_url``.
"""

from __future__ import annotations

NUMBER_CHECK = "/callbacks/number-check"
CALLBOT_TASK = "/callbacks/callbot/task"
CALLBOT_ORDER = "/callbacks/callbot/order"
CALLBOT_CALL = "/callbacks/callbot/call"
AGENT_CDR = "/callbacks/agent/cdr"

# Paths whose callbacks carry no signature: the token in the URL is their only proof.
UNSIGNED = (NUMBER_CHECK, AGENT_CDR)
REDACTED = "[redacted]"


def build(public_url: str | None, path: str, token: str | None = None) -> str | None:
    """The full callback URL for `path`, or None when no public URL is configured.

    Unsigned paths need `token` (ValueError without it: never send a URL anyone could forge to).
    """
    if not public_url:
        return None
    url = public_url.rstrip("/") + path
    if path in UNSIGNED:
        if not token:
            raise ValueError(f"callback path {path} is unsigned and needs the per-deployment token")
        url += "/" + token
    return url


def redact_url(url: str | None) -> str | None:
    """`url` with the token segment of an unsigned callback URL replaced, for records and logs."""
    if not url:
        return url
    for path in UNSIGNED:
        at = url.find(path + "/")
        if at >= 0:
            return url[: at + len(path) + 1] + REDACTED
    return url
