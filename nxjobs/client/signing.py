"""Pure signers for the three NXCloud auth schemes (docs/provider.md §2, §3, §7).

No clocks, no randomness, no I/O: timestamps and request ids are arguments so
tests can pin them to the published vectors.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

Algorithm = Literal["md5", "sha256"]


def serialize_body(body: Any) -> str:
    """Serialise a JSON body once; callers sign and send exactly this text.

    Compact separators and raw UTF-8 (docs/provider.md §3.2, our choice); the server never
    re-canonicalises, so any other spelling would change the sign.
    """
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def _digest(text: str, algorithm: str) -> str:
    algo = algorithm.lower()
    if algo not in ("md5", "sha256"):
        raise ValueError(f"unsupported algorithm {algorithm!r}: use md5 or sha256")
    return hashlib.new(algo, text.encode("utf-8")).hexdigest()


def api2_string_to_sign(
    *, access_key: str, action: str, biz_type: str | int, ts_ms: int | str, body_text: str | None
) -> str:
    """The exact string hashed for an api2 request (steps 1-4, secret not yet appended)."""
    parts = f"accessKey={access_key}&action={action}&bizType={biz_type}&ts={ts_ms}"
    if body_text:
        parts += f"&body={body_text}"
    return parts


def api2_sign(
    *,
    access_key: str,
    access_secret: str,
    action: str,
    biz_type: str | int,
    ts_ms: int | str,
    body_text: str | None,
    algorithm: Algorithm = "md5",
) -> str:
    """api2 `sign` header: lowercase hex MD5/SHA-256 (docs/provider.md §2.2)."""
    text = api2_string_to_sign(
        access_key=access_key, action=action, biz_type=biz_type, ts_ms=ts_ms, body_text=body_text
    )
    return _digest(f"{text}&accessSecret={access_secret}", algorithm)


def api2_headers(
    *,
    access_key: str,
    access_secret: str,
    action: str,
    biz_type: str | int,
    ts_ms: int,
    body_text: str | None,
    algorithm: Algorithm = "md5",
) -> dict[str, str]:
    """All headers of a signed api2 JSON request (`algorithm` only when not md5)."""
    headers = {
        "accessKey": access_key,
        "ts": str(ts_ms),
        "bizType": str(biz_type),
        "action": action,
        "sign": api2_sign(
            access_key=access_key,
            access_secret=access_secret,
            action=action,
            biz_type=biz_type,
            ts_ms=ts_ms,
            body_text=body_text,
            algorithm=algorithm,
        ),
    }
    if algorithm != "md5":
        headers["algorithm"] = algorithm
    return headers


def callbot_sign(
    *,
    secret_key: str,
    uuid: str,
    request_id: str,
    create_ts_s: int | str,
    body_text: str,
    algorithm: Algorithm = "md5",
) -> str:
    """Callbot v3 `sign`: uppercase hex over the fixed-order authRaw (docs/provider.md §3.2)."""
    auth_raw = (
        f"{secret_key}&body={body_text}&createTs={create_ts_s}&requestID={request_id}&uuid={uuid}"
    )
    return _digest(auth_raw, algorithm).upper()


def callbot_headers(
    *,
    secret_key: str,
    uuid: str,
    request_id: str,
    create_ts_s: int,
    body_text: str,
    algorithm: Algorithm = "md5",
) -> dict[str, str]:
    """All headers of a signed Callbot v3 request (`algorithm` only when not md5)."""
    headers = {
        "uuid": uuid,
        "requestID": request_id,
        "createTs": str(create_ts_s),
        "sign": callbot_sign(
            secret_key=secret_key,
            uuid=uuid,
            request_id=request_id,
            create_ts_s=create_ts_s,
            body_text=body_text,
            algorithm=algorithm,
        ),
    }
    if algorithm != "md5":
        headers["algorithm"] = algorithm.upper()
    return headers
