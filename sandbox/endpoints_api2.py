"""The sandbox's api2 family (Number Check, OTA, WhatsApp calling), docs/provider.md §2, §5:
signature check, quotas and the endpoints."""

from __future__ import annotations

import datetime as dt
import hmac
import secrets
from collections.abc import Callable
from typing import Any

from nxjobs.client.signing import Algorithm, api2_sign
from sandbox import accounts
from sandbox.base import (
    _DIGITS,
    _Answer,
    _as_int,
    _country,
    _decode,
    _hex32,
    _json_object,
    _nonempty,
    _Request,
)
from sandbox.state import SandboxState

API2_TS_WINDOW_MS = 60_000
NUMBER_CHECK_MAX = 5000
NUMBER_CHECK_BIG_BATCH = 2000
NUMBER_QUERY_DAYS = 14
# The algorithm header's accepted values (lower-cased).
_ALGORITHMS: dict[str, Algorithm] = {"md5": "md5", "sha256": "sha256"}


def _api2_env(req: _Request, code: Any, message: str) -> dict[str, Any]:
    return {"code": code, "message": message, "data": None}


def _api2_throttle(req: _Request) -> dict[str, Any]:
    return {"code": 2206, "message": "Request is too frequent", "data": None}


def _api2_verifier(biz_type: str, action: str) -> Callable[[SandboxState, _Request], None]:
    def verify(state: SandboxState, req: _Request) -> None:
        h = req.headers
        missing = [
            n for n in ("accessKey", "ts", "bizType", "action", "sign") if not h.get(n.lower())
        ]
        if missing:
            raise _Answer(_api2_env(req, 1001, "missing header(s): " + ", ".join(missing)))
        if (h["biztype"], h["action"]) != (biz_type, action):
            raise _Answer(
                _api2_env(req, 1002, f"this path needs bizType={biz_type} action={action}")
            )
        text = _decode(req.raw)
        body = _json_object(text)
        if body is None:
            raise _Answer(_api2_env(req, 1002, "body must be a JSON object"))
        secret = accounts.API2_SECRETS.get(h["accesskey"])
        if secret is None:
            raise _Answer(_api2_env(req, 1005, "no permission: unknown accessKey"))
        ts_ms = _as_int(h["ts"])
        if ts_ms is None or abs(req.now * 1000 - ts_ms) > API2_TS_WINDOW_MS:
            raise _Answer(_api2_env(req, 1004, "ts is outside the allowed 60 s window"))
        algorithm = _ALGORITHMS.get(h.get("algorithm", "md5").lower())
        if algorithm is None:
            raise _Answer(_api2_env(req, 1003, "unsupported algorithm"))
        # Signed over the bytes as received: re-serialising would hide client bugs.
        expected = api2_sign(
            access_key=h["accesskey"],
            access_secret=secret,
            action=h["action"],
            biz_type=h["biztype"],
            ts_ms=h["ts"],
            body_text=text,
            algorithm=algorithm,
        )
        if not hmac.compare_digest(expected, h["sign"].lower()):
            raise _Answer(_api2_env(req, 1003, "signature invalid"))
        req.body = body
        req.credential = h["accesskey"]

    return verify


def _api2_quotas(state: SandboxState, req: _Request) -> list[tuple[str, str, int]]:
    quotas = [("api2", req.credential, state.config.api2_rate)]
    phone = req.body.get("phone")
    if (
        req.path == "/api/number/check"
        and isinstance(phone, str)
        and phone.count(",") >= NUMBER_CHECK_BIG_BATCH
    ):
        quotas.append(("number_check_big", req.credential, state.config.number_check_big_rate))
    return quotas


def _nc_error(state: SandboxState, code: int, message: str) -> dict[str, Any]:
    if state.config.number_check_shape == "legacy":
        return {"msg": message, "code": code, "data": {"messageId": "", "batchNo": ""}}
    return {"code": code, "message": message, "data": None}


def _nc_common(
    state: SandboxState, body: dict[str, Any], levels: tuple[int, ...]
) -> tuple[list[str], int, str]:
    """Validate appkey, phone, checkLevel, batchNo in the documented order; raise _Answer."""
    if body.get("appkey") != accounts.API2_APPKEY:
        raise _Answer(_nc_error(state, 202, "Application not available or incorrect appkey"))
    phone = body.get("phone")
    numbers = (
        [n.strip() for n in phone.split(",")] if isinstance(phone, str) and phone.strip() else []
    )
    if not numbers or not all(_DIGITS.fullmatch(n) for n in numbers):
        raise _Answer(_nc_error(state, 201, "Parameter error or empty: phone"))
    if len(numbers) > NUMBER_CHECK_MAX:
        raise _Answer(
            _nc_error(state, 201, f"Parameter error: more than {NUMBER_CHECK_MAX} numbers")
        )
    level = _as_int(body.get("checkLevel", 1))
    if level not in levels:
        raise _Answer(_nc_error(state, 207, "Invalid check type"))
    batch_no = body.get("batchNo")
    if batch_no is None or batch_no == "":
        batch_no = "".join(str(secrets.randbelow(10)) for _ in range(12))
    elif not isinstance(batch_no, str):
        raise _Answer(_nc_error(state, 201, "Parameter error: batchNo"))
    elif len(batch_no) > 64:
        raise _Answer(_nc_error(state, 212, "Batch number length cannot exceed 64 characters"))
    return numbers, level, batch_no


def _nc_row(number_id: str, batch_no: str, phone: str, level: int, now: float) -> dict[str, Any]:
    _, iso = _country(phone)
    row = {
        "id": number_id,
        "batchNo": batch_no,
        "phone": phone,
        "checkLevel": level,
        "code": 0,
        "numberType": "mobile",
        "operator": "Sandbox Mobile",
        "country": iso,
        "price": 0.005,
        "currency": "USD",
        "checkedAt": int(now),
    }
    if level == 5:
        row.update({"mcc": "999", "mnc": "01", "ported": "NO", "active": "YES"})
    return row


def _nc_record(
    state: SandboxState, request_id: str, batch_no: str, given_batch: bool, rows: list, now: float
) -> None:
    stores = state.stores
    if given_batch and batch_no in stores.nc_batchnos:
        state.duplicates["number_check_batchno"] += 1
    stores.nc_batchnos.add(batch_no)
    stores.nc_submissions.append(
        {"requestId": request_id, "batchNo": batch_no, "created": now, "rows": rows}
    )
    state.accepted["number_check"] += 1


def _nc_dr(state: SandboxState, row: dict[str, Any]) -> dict[str, Any]:
    """The result callback of one number (docs/provider.md §5.4), in the configured shape."""
    cost = {"price": row["price"], "currency": row["currency"]}
    if state.config.number_check_shape == "legacy":
        basic = {
            "preCheck": "YES",
            "regionCode": row["country"],
            "countryCode": _country(row["phone"])[0],
            "nationalNumber": row["phone"][len(_country(row["phone"])[0]) :],
            "standNumber": row["phone"],
            "numberType": 2,
            "carrier": row["operator"],
        }
        return {
            "messageId": row["id"],
            "code": 0,
            "msg": "success",
            "batchNo": row["batchNo"],
            "phone": row["phone"],
            "data": {"basic": basic},
            "cost": cost,
        }
    data = {
        k: row[k]
        for k in ("numberType", "operator", "country", "mcc", "mnc", "ported", "active")
        if k in row
    }
    return {
        "requestId": row["id"],
        "code": 0,
        "message": "success",
        "batchNo": row["batchNo"],
        "phone": row["phone"],
        "data": data,
        "cost": cost,
    }


def _number_check(state: SandboxState, req: _Request) -> dict[str, Any]:
    numbers, level, batch_no = _nc_common(state, req.body, (1, 4, 5))
    request_id = _hex32()
    failed = [n for n in numbers if n.startswith("999")]
    ok = [n for n in numbers if not n.startswith("999")]
    # docs/provider.md §5.1: a single-number batch keeps the submit id; otherwise id-<6 digits>.
    rows = [
        _nc_row(
            request_id if len(numbers) == 1 else f"{request_id}-{i:06d}",
            batch_no,
            n,
            level,
            req.now,
        )
        for i, n in enumerate(ok, start=1)
    ]
    _nc_record(state, request_id, batch_no, _nonempty(req.body.get("batchNo")), rows, req.now)
    # One DR per accepted number to drUrl (rejected numbers are answered in failNumber instead).
    dr_url = req.body.get("drUrl")
    if isinstance(dr_url, str) and dr_url:
        for row in rows:
            state.queue_callback("number-check", dr_url, _nc_dr(state, row), signed=False)
    if state.config.number_check_shape == "legacy":
        return {"msg": "success", "code": 0, "data": {"messageId": request_id, "batchNo": batch_no}}
    fail = [{"number": n, "reason": "invalid number"} for n in failed]
    return {
        "code": 0,
        "message": "Success",
        "data": {"requestId": request_id, "batchNo": batch_no, "failNumber": fail},
    }


def _number_check_get(state: SandboxState, req: _Request) -> dict[str, Any]:
    numbers, level, batch_no = _nc_common(state, req.body, (1,))
    if len(numbers) != 1:
        return _nc_error(state, 201, "Parameter error: exactly one phone number")
    phone = numbers[0]
    request_id = _hex32()
    invalid = phone.startswith("999")
    rows = [] if invalid else [_nc_row(request_id, batch_no, phone, level, req.now)]
    _nc_record(state, request_id, batch_no, _nonempty(req.body.get("batchNo")), rows, req.now)
    _, iso = _country(phone)
    basic = {
        "phone": phone,
        "country": iso,
        "numberType": "invalid" if invalid else "mobile",
        "operator": "" if invalid else "Sandbox Mobile",
        "failReason": "invalid number" if invalid else "",
    }
    data = {
        "requestId": request_id,
        "batchNo": batch_no,
        "basic": basic,
        "cost": {"price": 0.005, "currency": "USD"},
    }
    return {"code": 0, "message": "Success", "data": data}


def _number_query(state: SandboxState, req: _Request) -> dict[str, Any]:
    b = req.body
    legacy = state.config.number_check_shape == "legacy"
    if "appkey" in b and b["appkey"] != accounts.API2_APPKEY:
        return _nc_error(state, 202, "Application not available or incorrect appkey")
    page, size = _as_int(b.get("page")), _as_int(b.get("pageSize"))
    if not page or page < 1 or not size or not 1 <= size <= 100:
        return _nc_error(state, 88, "Request failed: page/pageSize")
    try:
        day = dt.date.fromisoformat(str(b.get("date")))
    except ValueError:
        return _nc_error(state, 88, "Request failed: date must be yyyy-MM-dd")
    today = dt.datetime.fromtimestamp(req.now, dt.UTC).date()
    # One day of slack for clients east of UTC.
    if not today - dt.timedelta(days=NUMBER_QUERY_DAYS) <= day <= today + dt.timedelta(days=1):
        return _nc_error(state, 88, "Request failed: date outside the last 14 days")
    wanted_id = b.get("requestId") or b.get("messageId")
    batch_no = b.get("batchNo")
    if not wanted_id and not batch_no:
        return _nc_error(state, 88, "Request failed: requestId and batchNo are both empty")
    rows = []
    for sub in state.stores.nc_submissions:
        for row in sub["rows"]:
            if wanted_id and wanted_id not in (sub["requestId"], row["id"]):
                continue
            if batch_no and batch_no != sub["batchNo"]:
                continue
            if b.get("phone") and b["phone"] != row["phone"]:
                continue
            shaped = {k: v for k, v in row.items() if k != "id"}
            shaped["messageId" if legacy else "requestId"] = row["id"]
            rows.append(shaped)
    total_page = (len(rows) + size - 1) // size
    data = {
        "page": page,
        "pageSize": size,
        "totalPage": total_page,
        "totalSize": len(rows),
        "result": rows[(page - 1) * size : page * size],
    }
    return (
        {"msg": "success", "code": 0, "data": data}
        if legacy
        else {"code": 0, "message": "Success", "data": data}
    )


def _ota_init(state: SandboxState, req: _Request) -> dict[str, Any]:
    b = req.body
    if b.get("appkey") != accounts.API2_APPKEY:
        return {"code": 9906, "msg": "Application does not exist or is not available", "data": None}
    if not _nonempty(b.get("phone")) or not _nonempty(b.get("userIp")):
        return {"code": 9901, "msg": "Parameter error or missing", "data": None}
    request_id = _hex32()
    state.accepted["ota_init"] += 1
    url = (
        f"https://ota.sandbox.invalid/auth?response_type=code&client_id=sandbox&state={request_id}"
    )
    return {"code": 0, "msg": "Request successful", "data": {"requestId": request_id, "url": url}}


def _wa_calling_get(state: SandboxState, req: _Request) -> dict[str, Any]:
    b = req.body
    if b.get("appkey") != accounts.API2_APPKEY:
        message = "Customer APP does not exist / Status is unavailable"
        return {"code": 9003, "message": message, "data": None, "traceId": _hex32()}
    if not _nonempty(b.get("business_phone")):
        return {
            "code": 9000,
            "message": "Request parameter error",
            "data": None,
            "traceId": _hex32(),
        }
    # Shape of the vendor's "enabled, no custom business hours" example.
    data = {
        "status": 1,
        "business_phone": b["business_phone"],
        "region": "SG",
        "icon_status": 1,
        "hours_status": 0,
        "hours_customize": None,
        "permission_status": 0,
        "recording_status": 1,
        "nx_sip_addr": [
            {"region": "SG", "ip_list": ["127.0.0.1:6030"], "fqdn": ["sip.sandbox.invalid"]}
        ],
        "customer_sip_addr": [{"host": "127.0.0.1", "port": 8080, "type": 1}],
    }
    return {"code": 0, "message": "Success", "data": data, "traceId": _hex32()}
