"""Webhook notifications of a job's end: the body we POST, its signature, and `verify` for the
application that receives it (docs/notifications.md).

    from nxjobs.notify import verify, SignatureError
    event = verify(raw_body, request.headers["Nxjobs-Signature"], secret)  # the parsed body

The header is `Nxjobs-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">`, as
Stripe signs its webhooks: check it on the raw bytes, before parsing them. Pure: no Redis, no
HTTP; the clock is an argument.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any
from urllib.parse import urlsplit

from nxjobs import compact_json

HEADER = "Nxjobs-Signature"
SCHEME = "v1"
DEFAULT_TOLERANCE_S = 300
# Event type by the state a job ended in.
EVENT_TYPES = {
    "completed": "job.completed",
    "failed": "job.failed",
    "cancelled": "job.cancelled",
}
# The record fields an event's `job` carries (phones are masked in records already).
JOB_FIELDS = ("id", "kind", "state", "result", "error")


class SignatureError(ValueError):
    """A notification whose signature header is missing or garbled, too old, or wrong."""


def event_id(stream_entry_id: str) -> str:
    """The stable id of the event the stream entry `stream_entry_id` ("<ms>-<seq>") is: every
    delivery of it, and every retry, carries this id (receivers dedupe by it)."""
    return "evt_" + stream_entry_id


def event_body(stream_entry_id: str, state: str, at_ms: int, job: dict[str, Any]) -> dict[str, Any]:
    """The event as POSTed: `created` is when the job ended (unix seconds), `job` the record's
    JOB_FIELDS."""
    return {
        "id": event_id(stream_entry_id),
        "type": EVENT_TYPES.get(state, f"job.{state}"),
        "created": at_ms // 1000,
        "job": {name: job.get(name) for name in JOB_FIELDS},
    }


def valid_url(url: str) -> bool:
    """True for an absolute http or https URL (what a notify URL must be)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def encode(body: dict[str, Any]) -> bytes:
    return compact_json.dumps(body).encode()


def signature(body: bytes, secret: str, t: int) -> str:
    """Hex HMAC-SHA256 of `<t>.<body>` with `secret`."""
    return hmac.new(secret.encode(), b"%d." % t + body, hashlib.sha256).hexdigest()


def sign(body: bytes, secret: str, t: int | None = None) -> str:
    """The Nxjobs-Signature header value for `body` at unix time `t` (now if None)."""
    t = int(time.time()) if t is None else int(t)
    return f"t={t},{SCHEME}={signature(body, secret, t)}"


def verify(
    body: bytes | str,
    header: str | None,
    secret: str,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    *,
    now: float | None = None,
) -> dict[str, Any]:
    """Check the Nxjobs-Signature `header` of the raw `body` with `secret` and return the parsed
    event. Raises SignatureError for a missing or garbled header, a timestamp more than
    `tolerance_s` from `now` (a replay), or no matching v1 signature."""
    raw = body.encode() if isinstance(body, str) else bytes(body)
    t, signatures = _parse(header)
    current = time.time() if now is None else now
    if tolerance_s and abs(current - t) > tolerance_s:
        raise SignatureError(f"timestamp outside the tolerance ({tolerance_s} s)")
    expected = signature(raw, secret, t)
    if not any(hmac.compare_digest(expected, s) for s in signatures):
        raise SignatureError("no signature matches the body")
    try:
        event = json.loads(raw)
    except ValueError:
        raise SignatureError("the signed body is not JSON") from None
    if not isinstance(event, dict):
        raise SignatureError("the signed body is not a JSON object")
    return event


def _parse(header: str | None) -> tuple[int, list[str]]:
    if not header:
        raise SignatureError(f"missing {HEADER} header")
    t: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if name == "t":
            try:
                t = int(value)
            except ValueError:
                raise SignatureError(f"garbled {HEADER} header: bad timestamp") from None
        elif name == SCHEME:
            signatures.append(value)
    if t is None:
        raise SignatureError(f"garbled {HEADER} header: no timestamp")
    if not signatures:
        raise SignatureError(f"garbled {HEADER} header: no {SCHEME} signature")
    return t, signatures
