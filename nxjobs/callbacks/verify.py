"""Pure authenticity checks on a callback's raw request, before any parsing.

Callbot callbacks are signed like Callbot requests (docs/provider.md §3.2, §4): the
sign is recomputed over the raw body text, compared in constant time, and the
createTs must be within a tolerance. Unsigned callbacks (Number Check DR, Agent
CDR) must arrive on a URL carrying the per-deployment token, also compared in
constant time. No clock, no I/O: `now_s` is an argument.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from nxjobs.client.signing import Algorithm, callbot_sign

# The signing algorithms, as spelled once lower-cased and without "-".
_ALGORITHMS: dict[str, Algorithm] = {"md5": "md5", "sha256": "sha256"}


class Rejected(Exception):
    """The callback is refused; `status` is the HTTP status to answer with (4xx)."""

    def __init__(self, status: int, reason: str):
        self.status = status
        self.reason = reason
        super().__init__(f"{status} {reason}")


def check_token(given: str, expected: str) -> None:
    """Raise Rejected(401) unless `given` equals `expected` (constant time, no length shortcut)."""
    if not expected or not hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8")):
        raise Rejected(401, "bad token")


def check_callbot(
    raw: bytes,
    headers: Mapping[str, str],
    *,
    uuid: str,
    secret_key: str,
    algorithm: str,
    now_s: float,
    tolerance_s: float,
) -> str:
    """Verify a signed Callbot callback; return its body text. `headers` names are lower-case.
    `algorithm` is the account's (md5 or sha256): a sender may not choose another."""
    sign = headers.get("sign", "")
    given_uuid = headers.get("uuid", "")
    create_ts = headers.get("createts", "")
    request_id = headers.get("requestid", "")
    if not (sign and given_uuid and create_ts):
        raise Rejected(401, "missing signature headers")
    if not hmac.compare_digest(given_uuid.encode("utf-8"), uuid.encode("utf-8")):
        raise Rejected(401, "unknown uuid")
    if not create_ts.isdigit():
        raise Rejected(401, "bad createTs")
    # Spelled MD5 / SHA256 / sha-256 in the wild. Only the account's own is accepted, so a forger
    # cannot pick the weaker one (a downgrade).
    account = algorithm.lower().replace("-", "")
    given = headers.get("algorithm")
    if given is not None and given.lower().replace("-", "") != account:
        raise Rejected(401, "algorithm is not the account's")
    known = _ALGORITHMS.get(account)
    if known is None:
        raise Rejected(401, "unsupported algorithm")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Rejected(400, "body is not UTF-8") from None
    expected = callbot_sign(
        secret_key=secret_key,
        uuid=uuid,
        request_id=request_id,
        create_ts_s=create_ts,
        body_text=text,
        algorithm=known,
    )
    if not hmac.compare_digest(expected.encode("ascii"), sign.upper().encode("utf-8", "replace")):
        raise Rejected(401, "bad signature")
    # createTs is inside the signed text, so a replay cannot refresh it.
    if abs(now_s - int(create_ts)) > tolerance_s:
        raise Rejected(401, "stale createTs")
    return text
