"""Request -> response logic of the fake NXCloud APIs, with no sockets involved.

`handle(state, path, headers, body, now)` takes lower-cased header names, the raw
body bytes and epoch seconds, and returns a `Reply` (unpacks as `status, body`).
`handle_control` serves the unauthenticated /_sandbox/* test API. HTTP plumbing
lives in server.py; storage, quotas and dice in state.py.

Pipeline for every known API path: log -> injected 503 -> family auth ->
scripted answer -> injected throttle -> quota -> endpoint -> maybe slow.
Everything before "endpoint" is free of side effects.
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
import re
import secrets
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterator
from urllib.parse import parse_qs

from nxjobs.client.signing import api2_sign, callbot_sign
from nxjobs.sandbox import accounts
from nxjobs.sandbox.state import SandboxState

API2_TS_WINDOW_MS = 60_000
CALLBOT_TS_WINDOW_S = 60
NUMBER_CHECK_MAX = 5000
NUMBER_CHECK_BIG_BATCH = 2000
CALLBOT_MAX_CALL_LIST = 1000
CALLBOT_MAX_ORDER_DETAIL = 500
CALLBOT_MAX_PAGE_SIZE = 100
# Sandbox convention: addBatchCall refuses a contact whose userPhone starts so (one errList entry).
CALLBOT_REFUSED_PREFIX = "997"
CDR_MAX_ORDERIDS = 20
NUMBER_QUERY_DAYS = 14

_DIGITS = re.compile(r"[0-9]+")
_ALNUM = re.compile(r"[A-Za-z0-9]+")
# Longest-prefix match is enough for plausible fake rows.
_COUNTRIES = {
    "1": "US", "44": "GB", "52": "MX", "55": "BR", "60": "MY", "62": "ID", "63": "PH", "65": "SG",
    "66": "TH", "81": "JP", "82": "KR", "84": "VN", "86": "CN", "91": "IN", "234": "NG", "852": "HK",
    "853": "MO", "886": "TW", "971": "AE",
}


@dataclass
class Reply:
    """An HTTP answer; `delay_s` > 0 asks the server to stall after the side effect."""

    status: int
    body: dict[str, Any]
    delay_s: float = 0.0

    def __iter__(self) -> Iterator[Any]:
        yield self.status
        yield self.body


class _Answer(Exception):
    """Early exit carrying a complete business-error body (HTTP 200)."""

    def __init__(self, body: dict[str, Any]):
        self.body = body


@dataclass
class _Request:
    path: str
    headers: dict[str, str]
    raw: bytes
    now: float
    body: Any = None
    credential: str = ""


@dataclass(frozen=True)
class _Route:
    family: str
    verify: Callable[[SandboxState, _Request], None]
    endpoint: Callable[[SandboxState, _Request], dict[str, Any]]
    envelope: Callable[[_Request, Any, str], dict[str, Any]]
    throttle: Callable[[_Request], dict[str, Any]]
    quotas: Callable[[SandboxState, _Request], list[tuple[str, str, int]]]


# ---------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------


def _hex32() -> str:
    return uuid.uuid4().hex


def _country(phone: str) -> tuple[str, str]:
    """(dialling code, ISO2) for a digits-only number; ("", "XX") if unknown."""
    for n in (3, 2, 1):
        if phone[:n] in _COUNTRIES:
            return phone[:n], _COUNTRIES[phone[:n]]
    return "", "XX"


@dataclass(frozen=True)
class _Outcome:
    answered: bool
    call_status: int  # Callbot callStatus as simulated (reference §6.4 [CHOICE])
    hangup_cause: str
    sip_code: str


def _outcome(phone: str) -> _Outcome:
    """Sandbox convention: 999... is not a real number, 998... rings out unanswered, the rest answer."""
    if phone.startswith("999"):
        return _Outcome(False, 4, "UNALLOCATED_NUMBER", "404")
    if phone.startswith("998"):
        return _Outcome(False, 2, "NO_ANSWER", "480")
    return _Outcome(True, 1, "NORMAL_CLEARING", "200")


def _fmt_time(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _decode(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _json_object(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def _form(raw: bytes) -> dict[str, str]:
    text = _decode(raw) or ""
    return {k: v[0] for k, v in parse_qs(text, keep_blank_values=True).items()}


def _nonempty(value: Any) -> bool:
    return value is not None and value != "" and not isinstance(value, (dict, list, bool))


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        return int(value)
    return None


# ---------------------------------------------------------------------------------
# api2 family (Number Check, OTA, WhatsApp calling), reference §2, §5
# ---------------------------------------------------------------------------------


def _api2_env(req: _Request, code: Any, message: str) -> dict[str, Any]:
    return {"code": code, "message": message, "data": None}


def _api2_throttle(req: _Request) -> dict[str, Any]:
    return {"code": 2206, "message": "Request is too frequent", "data": None}


def _api2_verifier(biz_type: str, action: str) -> Callable[[SandboxState, _Request], None]:
    def verify(state: SandboxState, req: _Request) -> None:
        h = req.headers
        missing = [n for n in ("accessKey", "ts", "bizType", "action", "sign") if not h.get(n.lower())]
        if missing:
            raise _Answer(_api2_env(req, 1001, "missing header(s): " + ", ".join(missing)))
        if (h["biztype"], h["action"]) != (biz_type, action):
            raise _Answer(_api2_env(req, 1002, f"this path needs bizType={biz_type} action={action}"))
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
        algorithm = h.get("algorithm", "md5").lower()
        if algorithm not in ("md5", "sha256"):
            raise _Answer(_api2_env(req, 1003, "unsupported algorithm"))
        # Signed over the bytes as received: re-serialising would hide client bugs.
        expected = api2_sign(
            access_key=h["accesskey"], access_secret=secret, action=h["action"], biz_type=h["biztype"],
            ts_ms=h["ts"], body_text=text, algorithm=algorithm,
        )
        if not hmac.compare_digest(expected, h["sign"].lower()):
            raise _Answer(_api2_env(req, 1003, "signature invalid"))
        req.body = body
        req.credential = h["accesskey"]

    return verify


def _api2_quotas(state: SandboxState, req: _Request) -> list[tuple[str, str, int]]:
    quotas = [("api2", req.credential, state.config.api2_rate)]
    phone = req.body.get("phone")
    if req.path == "/api/number/check" and isinstance(phone, str) and phone.count(",") >= NUMBER_CHECK_BIG_BATCH:
        quotas.append(("number_check_big", req.credential, state.config.number_check_big_rate))
    return quotas


def _nc_error(state: SandboxState, code: int, message: str) -> dict[str, Any]:
    if state.config.number_check_shape == "legacy":
        return {"msg": message, "code": code, "data": {"messageId": "", "batchNo": ""}}
    return {"code": code, "message": message, "data": None}


def _nc_common(state: SandboxState, body: dict[str, Any], levels: tuple[int, ...]) -> tuple[list[str], int, str]:
    """Validate appkey, phone, checkLevel, batchNo in the documented order; raise _Answer."""
    if body.get("appkey") != accounts.API2_APPKEY:
        raise _Answer(_nc_error(state, 202, "Application not available or incorrect appkey"))
    phone = body.get("phone")
    numbers = [n.strip() for n in phone.split(",")] if isinstance(phone, str) and phone.strip() else []
    if not numbers or not all(_DIGITS.fullmatch(n) for n in numbers):
        raise _Answer(_nc_error(state, 201, "Parameter error or empty: phone"))
    if len(numbers) > NUMBER_CHECK_MAX:
        raise _Answer(_nc_error(state, 201, f"Parameter error: more than {NUMBER_CHECK_MAX} numbers"))
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
        "id": number_id, "batchNo": batch_no, "phone": phone, "checkLevel": level, "code": 0,
        "numberType": "mobile", "operator": "Sandbox Mobile", "country": iso,
        "price": 0.005, "currency": "USD", "checkedAt": int(now),
    }
    if level == 5:
        row.update({"mcc": "999", "mnc": "01", "ported": "NO", "active": "YES"})
    return row


def _nc_record(state: SandboxState, request_id: str, batch_no: str, given_batch: bool, rows: list, now: float) -> None:
    stores = state.stores
    if given_batch and batch_no in stores.nc_batchnos:
        state.duplicates["number_check_batchno"] += 1
    stores.nc_batchnos.add(batch_no)
    stores.nc_submissions.append({"requestId": request_id, "batchNo": batch_no, "created": now, "rows": rows})
    state.accepted["number_check"] += 1


def _nc_dr(state: SandboxState, row: dict[str, Any]) -> dict[str, Any]:
    """The result callback of one number (reference §5.4), in the configured shape."""
    cost = {"price": row["price"], "currency": row["currency"]}
    if state.config.number_check_shape == "legacy":
        basic = {"preCheck": "YES", "regionCode": row["country"], "countryCode": _country(row["phone"])[0],
                 "nationalNumber": row["phone"][len(_country(row["phone"])[0]):], "standNumber": row["phone"],
                 "numberType": 2, "carrier": row["operator"]}
        return {"messageId": row["id"], "code": 0, "msg": "success", "batchNo": row["batchNo"],
                "phone": row["phone"], "data": {"basic": basic}, "cost": cost}
    data = {k: row[k] for k in ("numberType", "operator", "country", "mcc", "mnc", "ported", "active") if k in row}
    return {"requestId": row["id"], "code": 0, "message": "success", "batchNo": row["batchNo"],
            "phone": row["phone"], "data": data, "cost": cost}


def _number_check(state: SandboxState, req: _Request) -> dict[str, Any]:
    numbers, level, batch_no = _nc_common(state, req.body, (1, 4, 5))
    request_id = _hex32()
    failed = [n for n in numbers if n.startswith("999")]
    ok = [n for n in numbers if not n.startswith("999")]
    # Reference §5.1: a single-number batch keeps the submit id; otherwise id-<6 digits>.
    rows = [
        _nc_row(request_id if len(numbers) == 1 else f"{request_id}-{i:06d}", batch_no, n, level, req.now)
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
    return {"code": 0, "message": "Success", "data": {"requestId": request_id, "batchNo": batch_no, "failNumber": fail}}


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
        "phone": phone, "country": iso, "numberType": "invalid" if invalid else "mobile",
        "operator": "" if invalid else "Sandbox Mobile", "failReason": "invalid number" if invalid else "",
    }
    data = {"requestId": request_id, "batchNo": batch_no, "basic": basic, "cost": {"price": 0.005, "currency": "USD"}}
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
    today = dt.datetime.fromtimestamp(req.now, dt.timezone.utc).date()
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
        "page": page, "pageSize": size, "totalPage": total_page, "totalSize": len(rows),
        "result": rows[(page - 1) * size : page * size],
    }
    return {"msg": "success", "code": 0, "data": data} if legacy else {"code": 0, "message": "Success", "data": data}


def _ota_init(state: SandboxState, req: _Request) -> dict[str, Any]:
    b = req.body
    if b.get("appkey") != accounts.API2_APPKEY:
        return {"code": 9906, "msg": "Application does not exist or is not available", "data": None}
    if not _nonempty(b.get("phone")) or not _nonempty(b.get("userIp")):
        return {"code": 9901, "msg": "Parameter error or missing", "data": None}
    request_id = _hex32()
    state.accepted["ota_init"] += 1
    url = f"https://ota.sandbox.invalid/auth?response_type=code&client_id=sandbox&state={request_id}"
    return {"code": 0, "msg": "Request successful", "data": {"requestId": request_id, "url": url}}


def _wa_calling_get(state: SandboxState, req: _Request) -> dict[str, Any]:
    b = req.body
    if b.get("appkey") != accounts.API2_APPKEY:
        message = "Customer APP does not exist / Status is unavailable"
        return {"code": 9003, "message": message, "data": None, "traceId": _hex32()}
    if not _nonempty(b.get("business_phone")):
        return {"code": 9000, "message": "Request parameter error", "data": None, "traceId": _hex32()}
    # Shape of the vendor's "enabled, no custom business hours" example.
    data = {
        "status": 1, "business_phone": b["business_phone"], "region": "SG", "icon_status": 1,
        "hours_status": 0, "hours_customize": None, "permission_status": 0, "recording_status": 1,
        "nx_sip_addr": [{"region": "SG", "ip_list": ["127.0.0.1:6030"], "fqdn": ["sip.sandbox.invalid"]}],
        "customer_sip_addr": [{"host": "127.0.0.1", "port": 8080, "type": 1}],
    }
    return {"code": 0, "message": "Success", "data": data, "traceId": _hex32()}


# ---------------------------------------------------------------------------------
# Callbot v3, reference §3, §6
# ---------------------------------------------------------------------------------


def _cb_env(req: _Request, code: Any, message: str) -> dict[str, Any]:
    if req.path.endswith("/ping"):
        request_id = req.headers.get("requestid", "")
        return {"code": code, "msg": message, "reqId": request_id, "data": None, "timestamp": int(req.now)}
    return {"retCode": code, "retMsg": message, "responseID": _hex32()}


def _cb_throttle(req: _Request) -> dict[str, Any]:
    return _cb_env(req, 7, "system busy")


def _cb_verifier(needs_product: bool) -> Callable[[SandboxState, _Request], None]:
    def verify(state: SandboxState, req: _Request) -> None:
        h = req.headers
        if not h.get("sign"):
            raise _Answer(_cb_env(req, 6001, "signature missing"))
        secret = accounts.CALLBOT_SECRETS.get(h.get("uuid", ""))
        if secret is None:
            raise _Answer(_cb_env(req, 6002, "account does not exist"))
        create_ts = _as_int(h.get("createts", ""))
        if create_ts is None or abs(req.now - create_ts) > CALLBOT_TS_WINDOW_S:
            raise _Answer(_cb_env(req, 6, "incorrect signature: createTs outside the 60 s window"))
        algorithm = h.get("algorithm", "MD5").upper().replace("-", "")
        if algorithm not in ("MD5", "SHA256"):
            raise _Answer(_cb_env(req, 6, "incorrect signature: unsupported algorithm"))
        text = _decode(req.raw)
        if text is None:
            raise _Answer(_cb_env(req, 3, "parameter format error: body is not UTF-8"))
        expected = callbot_sign(
            secret_key=secret, uuid=h["uuid"], request_id=h.get("requestid", ""), create_ts_s=h["createts"],
            body_text=text, algorithm=algorithm.lower(),
        )
        if not hmac.compare_digest(expected, h["sign"].upper()):
            raise _Answer(_cb_env(req, 6, "incorrect signature"))
        body = _json_object(text)
        if body is None:
            raise _Answer(_cb_env(req, 3, "parameter format error: body must be a JSON object"))
        if needs_product and body.get("productID") != "callbot":
            raise _Answer(_cb_env(req, 4, "parameter value error: productID must be callbot"))
        req.body = body
        req.credential = h["uuid"]

    return verify


def _cb_quotas(state: SandboxState, req: _Request) -> list[tuple[str, str, int]]:
    return [("callbot", req.credential, state.config.callbot_rate)]


def _cb_ok(req: _Request, **extra: Any) -> dict[str, Any]:
    return {**_cb_env(req, 0, "success"), **extra}


def _cb_public(record: dict[str, Any]) -> dict[str, Any]:
    """A stored task/order without the sandbox's private bookkeeping (keys starting with "_")."""
    return {k: v for k, v in record.items() if not k.startswith("_")}


def _cb_order_callback(order: dict[str, Any], callback_type: int) -> dict[str, Any]:
    body = {k: order[k] for k in ("orderID", "userPhone", "userName", "sceneID", "userTaskID", "taskID", "finish",
                                  "other")}
    return {"callbackType": callback_type, **body, "callInfoDetail": order["callInfoDetailList"][-1]}


def _cb_maybe_finish(state: SandboxState, task: dict[str, Any]) -> None:
    """A running task whose orders are all finished completes (status 3) and says so by callback."""
    orders = [state.stores.cb_orders[o] for o in task["orderIDs"]]
    if task["taskStatus"] != 2 or not orders or not all(o["finish"] for o in orders):
        return
    task["taskStatus"] = 3
    task["_finished_by_orders"] = True
    body = {"callbackType": 1, "userTaskID": task["userTaskID"], "taskID": task["taskID"],
            "sceneID": task["sceneID"], "taskStatus": 3, "createTs": task["createTs"],
            "taskStat": _cb_task_stat(state, task)}
    state.queue_callback("callbot-task", task.get("_taskCallbackUrl"), body, signed=True)


def _cb_dial(state: SandboxState, order: dict[str, Any], now: float) -> None:
    """One simulated attempt; the order finishes at once with the `_outcome` of its number.

    Sends the call callback (every attempt) and the order callback (order finished)."""
    outcome = _outcome(order["userPhone"])
    answered = outcome.answered
    start = int(now)
    duration = 30 if answered else 0
    order["callInfoDetailList"].append({
        "callID": _hex32(), "callingNumber": "sandbox-line", "lineAddress": "127.0.0.1",
        "callStatus": outcome.call_status, "callStartTs": start, "callAnswerTs": start + 5 if answered else 0,
        "callEndTs": start + 5 + duration if answered else start + 30, "callDuration": duration,
        "callAudioUrl": f"https://audio.sandbox.invalid/{order['orderID']}.wav" if answered else "",
        "hangupCause": outcome.hangup_cause, "termSipCode": outcome.sip_code,
        "intents": [], "sms": [], "params": order.get("params") or [],
    })
    order["finish"] = True
    state.queue_callback("callbot-call", order.get("_callCallbackUrl"), _cb_order_callback(order, 3), signed=True)
    state.queue_callback("callbot-order", order.get("_orderCallbackUrl"), _cb_order_callback(order, 2), signed=True)


def _cb_call_list(req: _Request) -> list[Any]:
    info = req.body.get("callInfoList")
    if not isinstance(info, dict) or "callList" not in info:
        raise _Answer(_cb_env(req, 2, "missing parameter: callInfoList.callList"))
    call_list = info["callList"]
    if not isinstance(call_list, list):
        raise _Answer(_cb_env(req, 3, "parameter format error: callList must be an array"))
    if len(call_list) > CALLBOT_MAX_CALL_LIST:
        raise _Answer(_cb_env(req, 4001, f"too many array elements (max {CALLBOT_MAX_CALL_LIST})"))
    return call_list


def _cb_add_orders(state: SandboxState, task: dict[str, Any], call_list: list[Any], now: float,
                   info: dict[str, Any] | None = None) -> dict[str, Any]:
    orders = state.stores.cb_orders
    info = info or {}
    # Per batch (callInfoList), else the task's own (createTask's orderCallbackUrl).
    call_url = info.get("callCallbackUrl") or task.get("_callCallbackUrl")
    order_url = info.get("orderCallbackUrl") or task.get("_orderCallbackUrl")
    errors = []
    added = 0
    # [CHOICE] A task that completed because its orders were all dialled (not by an operator's
    # "complete") takes new contacts, as a kept task would (funcFlag.taskKeep, reference §6.3): it
    # runs again, dials them, and completes again (with its own task callback) when they finish.
    reopen = task["taskStatus"] == 3 and task.get("_finished_by_orders")
    for item in call_list:
        order_id = item.get("orderID") if isinstance(item, dict) else None
        phone = item.get("userPhone") if isinstance(item, dict) else None
        if not isinstance(item, dict):
            errors.append({"orderID": "", "errMsg": "callList item must be an object"})
        elif not isinstance(order_id, str) or not order_id:
            errors.append({"orderID": str(order_id or ""), "errMsg": "orderID is required"})
        elif not isinstance(phone, str) or not _DIGITS.fullmatch(phone):
            errors.append({"orderID": order_id, "errMsg": "userPhone must be digits with country code"})
        elif order_id in orders:
            state.duplicate_rejections["callbot_orderid"] += 1
            errors.append({"orderID": order_id, "errMsg": "orderID already exists"})
        elif phone.startswith(CALLBOT_REFUSED_PREFIX):
            errors.append({"orderID": order_id, "errMsg": "userPhone is on the do-not-call list"})
        else:
            order = {
                "orderID": order_id, "userPhone": phone, "userName": item.get("userName", ""),
                "customerName": item.get("customerName", ""), "other": item.get("other", ""),
                "params": item.get("params") or [], "sceneID": task["sceneID"], "userTaskID": task["userTaskID"],
                "taskID": task["taskID"], "finish": False, "callInfoDetailList": [],
                "_callCallbackUrl": call_url, "_orderCallbackUrl": order_url,
            }
            orders[order_id] = order
            task["orderIDs"].append(order_id)
            added += 1
            if reopen:
                task["taskStatus"], task["_finished_by_orders"], reopen = 2, False, False
            if task["taskStatus"] == 2:
                _cb_dial(state, order, now)
    if added:
        _cb_maybe_finish(state, task)
    state.accepted["callbot_orders"] += added
    return {"totalCount": len(call_list), "successCount": added, "errList": errors}


def _cb_new_task(state: SandboxState, req: _Request) -> dict[str, Any]:
    """Validate and create the task; raises _Answer on missing fields or an existing userTaskID."""
    b = req.body
    user_task_id = b.get("userTaskID")
    if not isinstance(user_task_id, str) or not user_task_id or not _nonempty(b.get("sceneID")):
        raise _Answer(_cb_env(req, 2, "missing parameter: userTaskID and sceneID are required"))
    if user_task_id in state.stores.cb_tasks:
        state.duplicate_rejections["callbot_usertaskid"] += 1
        raise _Answer(_cb_env(req, 4, "userTaskID already exists"))
    setting = b.get("taskCreateSetting") if isinstance(b.get("taskCreateSetting"), dict) else {}
    return {
        "userTaskID": user_task_id, "taskID": str(uuid.uuid4().int % 10**12).zfill(12), "sceneID": b["sceneID"],
        "taskName": setting.get("taskName") or b.get("taskName") or "",
        "taskStatus": 1, "createTs": int(req.now), "orderIDs": [],
        # Where its callbacks go (reference §6.3: top level in createTask, in the setting otherwise).
        "_taskCallbackUrl": setting.get("taskCallbackUrl") or b.get("taskCallbackUrl"),
        "_orderCallbackUrl": b.get("orderCallbackUrl"), "_callCallbackUrl": b.get("callCallbackUrl"),
    }


def _cb_store_task(state: SandboxState, task: dict[str, Any]) -> None:
    if task["userTaskID"] in state.stores.cb_tasks:  # unreachable by design; counted if it ever happens
        state.duplicates["callbot_usertaskid"] += 1
    state.stores.cb_tasks[task["userTaskID"]] = task
    state.accepted["callbot_tasks"] += 1


def _cb_create_task(state: SandboxState, req: _Request) -> dict[str, Any]:
    task = _cb_new_task(state, req)
    _cb_store_task(state, task)
    return _cb_ok(req, taskID=task["taskID"])


def _cb_create_and_call(state: SandboxState, req: _Request) -> dict[str, Any]:
    task = _cb_new_task(state, req)
    call_list = _cb_call_list(req)
    _cb_store_task(state, task)
    return _cb_ok(req, taskID=task["taskID"], **_cb_add_orders(state, task, call_list, req.now,
                                                               req.body["callInfoList"]))


def _cb_task(state: SandboxState, req: _Request) -> dict[str, Any]:
    user_task_id = req.body.get("userTaskID")
    if not _nonempty(user_task_id):
        raise _Answer(_cb_env(req, 2, "missing parameter: userTaskID"))
    task = state.stores.cb_tasks.get(user_task_id)
    if task is None:
        raise _Answer(_cb_env(req, 4, "parameter value error: userTaskID not found"))
    return task


def _cb_add_batch_call(state: SandboxState, req: _Request) -> dict[str, Any]:
    task = _cb_task(state, req)
    call_list = _cb_call_list(req)
    return _cb_ok(req, **_cb_add_orders(state, task, call_list, req.now, req.body["callInfoList"]))


def _cb_mgr_task_status(state: SandboxState, req: _Request) -> dict[str, Any]:
    operate = req.body.get("taskOperate")
    if operate is None:
        return _cb_env(req, 2, "missing parameter: taskOperate")
    new_status = {1: 2, 2: 5, 3: 3}.get(_as_int(operate))
    if new_status is None:
        return _cb_env(req, 4, "parameter value error: taskOperate must be 1, 2 or 3")
    task = _cb_task(state, req)
    if task["taskStatus"] == 3 and new_status != 3:
        return _cb_env(req, 4, "parameter value error: task is completed")
    task["taskStatus"] = new_status
    task["_finished_by_orders"] = False  # an operator's status sticks: completed stays completed
    if new_status == 2:
        for order_id in task["orderIDs"]:
            order = state.stores.cb_orders[order_id]
            if not order["callInfoDetailList"]:
                _cb_dial(state, order, req.now)
        _cb_maybe_finish(state, task)
    return _cb_ok(req, taskID=task["taskID"], taskStatus=new_status)


def _cb_task_stat(state: SandboxState, task: dict[str, Any]) -> dict[str, Any]:
    orders = [state.stores.cb_orders[o] for o in task["orderIDs"]]
    calls = [c for o in orders for c in o["callInfoDetailList"]]
    answered_calls = sum(1 for c in calls if c["callDuration"] > 0)
    answered_orders = sum(1 for o in orders if any(c["callDuration"] > 0 for c in o["callInfoDetailList"]))
    finished = sum(1 for o in orders if o["finish"])
    return {
        "answerOrderCount": answered_orders, "finishOrderCount": finished, "totalOrderCount": len(orders),
        "finishRate": round(finished / len(orders), 2) if orders else 0, "totalAnswerCall": answered_calls,
        "totalCall": len(calls), "answerRate": round(answered_calls / len(calls), 2) if calls else 0,
    }


def _cb_list_task(state: SandboxState, req: _Request) -> dict[str, Any]:
    b = req.body
    page = max(_as_int(b.get("page", 1)) or 1, 1)
    size = min(max(_as_int(b.get("size", CALLBOT_MAX_PAGE_SIZE)) or CALLBOT_MAX_PAGE_SIZE, 1), CALLBOT_MAX_PAGE_SIZE)
    qc = b.get("queryConditions") or {}
    if not isinstance(qc, dict):
        return _cb_env(req, 3, "parameter format error: queryConditions")

    def keep(task: dict[str, Any]) -> bool:
        for key in ("userTaskID", "taskStatus", "taskName"):
            wanted = qc.get(key)
            if isinstance(wanted, list) and wanted and task[key] not in wanted:
                return False
        if _nonempty(qc.get("sceneID")) and qc["sceneID"] != task["sceneID"]:
            return False
        start, end = _as_int(qc.get("startTs")), _as_int(qc.get("endTs"))
        return (not start or task["createTs"] >= start) and (not end or task["createTs"] <= end)

    tasks = [t for t in state.stores.cb_tasks.values() if keep(t)]
    rows = [
        {k: t[k] for k in ("userTaskID", "taskID", "sceneID", "taskName", "taskStatus", "createTs")}
        | {"taskStat": _cb_task_stat(state, t)}
        for t in tasks[(page - 1) * size : page * size]
    ]
    return _cb_ok(req, totalCount=len(tasks), taskData=rows)


def _cb_list_order_detail(state: SandboxState, req: _Request) -> dict[str, Any]:
    wanted = req.body.get("orderList")
    if wanted is None:
        return _cb_env(req, 2, "missing parameter: orderList")
    if not isinstance(wanted, list):
        return _cb_env(req, 3, "parameter format error: orderList must be an array")
    if len(wanted) > CALLBOT_MAX_ORDER_DETAIL:
        return _cb_env(req, 4001, f"too many array elements (max {CALLBOT_MAX_ORDER_DETAIL})")
    user_task_id = req.body.get("userTaskID")
    rows = []
    for order_id in wanted:
        order = state.stores.cb_orders.get(order_id) if isinstance(order_id, str) else None
        if order and (not user_task_id or order["userTaskID"] == user_task_id):
            rows.append({k: v for k, v in _cb_public(order).items() if k not in ("customerName", "params")})
    return _cb_ok(req, orderDetailList=rows)


def _cb_ping(state: SandboxState, req: _Request) -> dict[str, Any]:
    return {**_cb_env(req, 0, "success"), "data": req.body.get("data")}


# ---------------------------------------------------------------------------------
# Agent API (token, makecall, CDR by orderid), reference §7
# ---------------------------------------------------------------------------------


def _agent_env(req: _Request, code: Any, message: str) -> dict[str, Any]:
    if req.path == CDR_PATH:
        return {"code": str(code), "info": message}
    return {"code": code, "info": message}


def _agent_throttle(req: _Request) -> dict[str, Any]:
    if req.path == CDR_PATH:
        return {"code": "1", "info": "appkey access rate limit"}
    # Undocumented for makecall: reuse api2's "too frequent" code so clients classify it as retry.
    return {"code": 2206, "info": "Request is too frequent"}


def _token_verify(state: SandboxState, req: _Request) -> None:
    form = _form(req.raw)
    appkey = form.get("appkey", "")
    if not appkey or accounts.AGENT_SECRETS.get(appkey) != form.get("secretkey"):
        raise _Answer({"code": 1101, "info": "appkey or secretkey invalid."})
    req.body, req.credential = form, appkey


def _token(state: SandboxState, req: _Request) -> dict[str, Any]:
    ttl = state.config.token_ttl_s
    token = uuid.uuid4().hex.upper()
    # Older tokens stay valid until their own expiry (reference §7.1 [CHOICE]).
    state.stores.tokens[token] = {"appkey": req.credential, "expires_at": req.now + ttl}
    state.accepted["agent_token"] += 1
    return {"code": 0, "token": token, "expireinterval": ttl}


def _makecall_verify(state: SandboxState, req: _Request) -> None:
    form = _form(req.raw)
    token = state.stores.tokens.get(form.get("token", ""))
    if token is None:
        raise _Answer({"code": 1201, "info": "This token is not available"})
    if req.now >= token["expires_at"]:
        raise _Answer({"code": 1201, "info": "This token has expired"})
    if not form.get("username") or not form.get("phone"):
        raise _Answer({"code": 1200, "info": "Parameter error!"})
    req.body, req.credential = form, form["username"]


def _makecall_quotas(state: SandboxState, req: _Request) -> list[tuple[str, str, int]]:
    return [("makecall", req.credential, state.config.makecall_rate)]


def _makecall(state: SandboxState, req: _Request) -> dict[str, Any]:
    form = req.body
    if form["username"] not in accounts.AGENT_USERNAMES:
        return {"code": 1001, "info": "Username no exist!"}
    order_id = form.get("orderid", "")
    if order_id:
        if not _ALNUM.fullmatch(order_id):
            return {"code": 1007, "info": "orderid format error"}
        if len(order_id) > 32:
            return {"code": 1008, "info": "orderid length is too long"}
        if len(order_id) < 4:
            return {"code": 1007, "info": "orderid format error"}
    session_id = str(uuid.uuid4())
    stores = state.stores
    # No dedupe, like the real API as far as we know (reference §7.2 [CHOICE]); a repeat rings twice.
    if order_id and order_id in stores.called_orderids:
        state.duplicates["makecall_orderid"] += 1
    if order_id:
        stores.called_orderids.add(order_id)
    call = {
        "cdr_id": _hex32(), "orderid": order_id, "sessionid": session_id, "username": form["username"],
        "phone": form["phone"], "show_phone": form.get("showphone") or "nxcloud", "created": req.now,
    }
    stores.calls.append(call)
    state.accepted["makecall"] += 1
    # The CDR arrives when the call ends, at the URL registered with the vendor (reference §7.3).
    state.queue_callback("cdr", state.config.cdr_callback_url, _cdr_callback(call), signed=False)
    return {"code": 0, "orderid": order_id, "sessionid": session_id, "info": "success"}


def _cdr_verify(state: SandboxState, req: _Request) -> None:
    body = _json_object(_decode(req.raw))
    appkey = body.get("appkey") if body else None
    if not appkey or accounts.AGENT_SECRETS.get(appkey) != body.get("secretkey"):
        raise _Answer({"code": "1", "info": "params invalid"})
    req.body, req.credential = body, appkey


def _cdr_quotas(state: SandboxState, req: _Request) -> list[tuple[str, str, int]]:
    return [("cdr", req.credential, state.config.cdr_rate)]


def _cdr_row(call: dict[str, Any]) -> dict[str, Any]:
    phone = call["phone"]
    outcome = _outcome(phone)
    answered = outcome.answered
    start = call["created"] + 1
    answer = start + 5
    end = answer + 30 if answered else start + 30
    code, _ = _country(phone)
    return {
        "id": call["cdr_id"], "sipid": "sandbox-sip-0001", "username": call["username"], "phone": phone,
        "effective_called_number": phone, "country_code": code, "show_phone": call["show_phone"],
        "orderid": call["orderid"], "direction": "1", "duration": 30 if answered else 0,
        "start_time": _fmt_time(start), "answer_time": _fmt_time(answer) if answered else None,
        "end_time": _fmt_time(end),
        "record_url": f"https://record.sandbox.invalid/{call['cdr_id']}.mp3" if answered else None,
        "hangup_cause": outcome.hangup_cause,
    }


def _cdr_callback(call: dict[str, Any]) -> dict[str, Any]:
    """The CDR callback of a call (reference §7.3): times are Unix seconds as strings."""
    row = _cdr_row(call)
    start = int(call["created"]) + 1
    answered = row["duration"] > 0
    return {
        "sessionid": call["sessionid"], "username": call["username"], "mobile_name": "sandbox phone",
        "sipid": row["sipid"], "orderid": call["orderid"], "code": row["country_code"], "phone": call["phone"],
        "show_phone": call["show_phone"], "duration": row["duration"], "direction": 1, "record": 1 if answered else 0,
        "record_url": row["record_url"] or "", "start_time": str(start),
        "answer_time": str(start + 5) if answered else "0", "end_time": str(start + 35 if answered else start + 30),
        "hangup_cause": row["hangup_cause"],
    }


def _cdr_by_orderid(state: SandboxState, req: _Request) -> dict[str, Any]:
    raw = req.body.get("orderid")
    wanted = [o.strip() for o in raw.split(",") if o.strip()] if isinstance(raw, str) else []
    if not wanted or len(wanted) > CDR_MAX_ORDERIDS:
        return {"code": "1", "info": "params invalid"}
    rows = [_cdr_row(c) for c in state.stores.calls if c["orderid"] and c["orderid"] in wanted]
    return {"code": "0", "row": rows}


# ---------------------------------------------------------------------------------
# Routing and the pipeline
# ---------------------------------------------------------------------------------

CALLBOT_PREFIX = "/callcentre/api/v3/"
CDR_PATH = "/api/voiceSms/getSipCdrByOrderid"


def _no_quota(state: SandboxState, req: _Request) -> list[tuple[str, str, int]]:
    return []


def _api2(biz_type: str, action: str, endpoint: Callable) -> _Route:
    return _Route("api2", _api2_verifier(biz_type, action), endpoint, _api2_env, _api2_throttle, _api2_quotas)


def _callbot(endpoint: Callable, needs_product: bool = True) -> _Route:
    return _Route("callbot", _cb_verifier(needs_product), endpoint, _cb_env, _cb_throttle, _cb_quotas)


ROUTES: dict[str, _Route] = {
    "/api/number/check": _api2("1", "numbercheck", _number_check),
    "/api/number/check/get": _api2("1", "numbercheck", _number_check_get),
    "/api/number/query": _api2("1", "numbercheck", _number_query),
    "/api/ota/init": _api2("6", "init", _ota_init),
    "/api/wa/calling/get": _api2("2", "mt", _wa_calling_get),
    CALLBOT_PREFIX + "ping": _callbot(_cb_ping, needs_product=False),
    CALLBOT_PREFIX + "createTask": _callbot(_cb_create_task),
    CALLBOT_PREFIX + "createAndCall": _callbot(_cb_create_and_call),
    CALLBOT_PREFIX + "addBatchCall": _callbot(_cb_add_batch_call),
    CALLBOT_PREFIX + "mgrTaskStatus": _callbot(_cb_mgr_task_status),
    CALLBOT_PREFIX + "listTask": _callbot(_cb_list_task),
    CALLBOT_PREFIX + "listOrderDetail": _callbot(_cb_list_order_detail),
    "/v1/call/token": _Route("agent", _token_verify, _token, _agent_env, _agent_throttle, _no_quota),
    "/v1/call/makecall": _Route("agent", _makecall_verify, _makecall, _agent_env, _agent_throttle, _makecall_quotas),
    CDR_PATH: _Route("agent", _cdr_verify, _cdr_by_orderid, _agent_env, _agent_throttle, _cdr_quotas),
}


def _loggable_body(route: _Route | None, raw: bytes) -> Any:
    text = _decode(raw)
    if text is None:
        return raw.hex()
    if route is not None and route.family == "agent" and route.endpoint is not _cdr_by_orderid:
        return _form(raw)
    try:
        return json.loads(text) if text else None
    except ValueError:
        return text


def _code_of(reply: Reply) -> Any:
    if reply.status != 200:
        return f"http_{reply.status}"
    return reply.body.get("retCode", reply.body.get("code"))


def _scripted(route: _Route, req: _Request, script: Any) -> Reply:
    if script.http_status != 200:
        return Reply(script.http_status, {"code": script.code, "message": script.message or "scripted HTTP error"})
    return Reply(200, route.envelope(req, script.code, script.message or f"scripted code {script.code}"))


def _run(state: SandboxState, route: _Route, req: _Request) -> Reply:
    config = state.config
    if state.roll(config.error_rate):
        state.faults["error"] += 1
        return Reply(503, {"code": 503, "message": "service unavailable (sandbox injected fault)"})
    try:
        route.verify(state, req)
        script = state.pop_script(req.path)
        if script is not None:
            state.faults["scripted"] += 1
            return _scripted(route, req, script)
        if state.roll(config.throttle_rate):
            state.faults["throttle"] += 1
            state.throttled[route.family] += 1
            return Reply(200, route.throttle(req))
        if not state.acquire(route.quotas(state, req), req.now):
            state.throttled[route.family] += 1
            return Reply(200, route.throttle(req))
        reply = Reply(200, route.endpoint(state, req))
    except _Answer as answer:
        return Reply(200, answer.body)
    if state.roll(config.slow_rate):
        state.faults["slow"] += 1
        reply.delay_s = config.slow_seconds
    return reply


def handle(
    state: SandboxState, path: str, headers: dict[str, str], body: bytes, now: float, method: str = "POST"
) -> Reply:
    """Answer one API request. `headers` must have lower-cased names; `now` is epoch seconds."""
    route = ROUTES.get(path)
    with state.lock:
        state.log_request(method, path, headers, _loggable_body(route, body), now)
        if route is None:
            reply = Reply(404, {"code": 404, "message": f"unknown path {path}"})
        elif method != "POST":
            reply = Reply(405, {"code": 405, "message": "use POST"})
        else:
            reply = _run(state, route, _Request(path, headers, body, now))
        state.count_response(path, _code_of(reply))
    return reply


# ---------------------------------------------------------------------------------
# /_sandbox/* control API (unauthenticated: the sandbox binds 127.0.0.1)
# ---------------------------------------------------------------------------------

CONTROL_PREFIX = "/_sandbox/"


def handle_control(state: SandboxState, method: str, path: str, query: dict[str, str], body: bytes) -> Reply:
    """Serve stats, the request log, config, scripts, token expiry and reset."""
    name = path[len(CONTROL_PREFIX):]
    payload: dict[str, Any] = {}
    if method == "POST" and body.strip():
        parsed = _json_object(_decode(body))
        if parsed is None:
            return Reply(400, {"error": "body must be a JSON object"})
        payload = parsed
    try:
        if (method, name) == ("GET", "health"):
            return Reply(200, {"ok": True})
        if (method, name) == ("GET", "stats"):
            return Reply(200, state.stats())
        if (method, name) == ("GET", "requests"):
            limit = int(query.get("limit", 100))
            return Reply(200, {"requests": state.recent_requests(query.get("path") or None, limit)})
        if (method, name) == ("GET", "callbacks"):
            limit = int(query.get("limit", 100))
            return Reply(200, {"callbacks": state.recent_callbacks(query.get("kind") or None, limit)})
        if (method, name) == ("POST", "config"):
            return Reply(200, {"config": state.configure(**payload).to_dict()})
        if (method, name) == ("POST", "script"):
            state.add_script(
                payload["path"], payload["code"], int(payload.get("times", 1)),
                int(payload.get("http_status", 200)), payload.get("message"),
            )
            return Reply(200, {"ok": True})
        if (method, name) == ("POST", "expire-tokens"):
            return Reply(200, {"expired": state.expire_tokens()})
        if (method, name) == ("POST", "reset"):
            state.reset(config=bool(payload.get("config", False)))
            return Reply(200, {"ok": True})
    except (KeyError, TypeError, ValueError) as exc:
        return Reply(400, {"error": f"{type(exc).__name__}: {exc}"})
    return Reply(404, {"error": f"unknown control endpoint {method} {path}"})
