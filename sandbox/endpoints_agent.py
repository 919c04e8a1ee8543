"""The sandbox's Agent API (token, makecall, CDR by orderid), docs/provider.md §7."""

from __future__ import annotations

import re
import uuid
from typing import Any

from sandbox import accounts
from sandbox.base import (
    _Answer,
    _country,
    _decode,
    _fmt_time,
    _form,
    _hex32,
    _json_object,
    _outcome,
    _Request,
)
from sandbox.state import SandboxState

CDR_MAX_ORDERIDS = 20
CDR_PATH = "/api/voiceSms/getSipCdrByOrderid"
_ALNUM = re.compile(r"[A-Za-z0-9]+")


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
    # Older tokens stay valid until their own expiry (docs/provider.md §7.1, our choice).
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
    # No dedupe, like the real API as far as we know (docs/provider.md §7.2, our choice); a repeat
    # rings twice.
    if order_id and order_id in stores.called_orderids:
        state.duplicates["makecall_orderid"] += 1
    if order_id:
        stores.called_orderids.add(order_id)
    call = {
        "cdr_id": _hex32(),
        "orderid": order_id,
        "sessionid": session_id,
        "username": form["username"],
        "phone": form["phone"],
        "show_phone": form.get("showphone") or "nxcloud",
        "created": req.now,
    }
    stores.calls.append(call)
    state.accepted["makecall"] += 1
    # The CDR arrives when the call ends, at the URL registered with the vendor (docs/provider.md
    # §7.3).
    state.queue_callback("cdr", state.config.cdr_callback_url, _cdr_callback(call), signed=False)
    return {"code": 0, "orderid": order_id, "sessionid": session_id, "info": "success"}


def _cdr_verify(state: SandboxState, req: _Request) -> None:
    body = _json_object(_decode(req.raw))
    appkey = body.get("appkey") if body else None
    if body is None or not appkey or accounts.AGENT_SECRETS.get(appkey) != body.get("secretkey"):
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
        "id": call["cdr_id"],
        "sipid": "sandbox-sip-0001",
        "username": call["username"],
        "phone": phone,
        "effective_called_number": phone,
        "country_code": code,
        "show_phone": call["show_phone"],
        "orderid": call["orderid"],
        "direction": "1",
        "duration": 30 if answered else 0,
        "start_time": _fmt_time(start),
        "answer_time": _fmt_time(answer) if answered else None,
        "end_time": _fmt_time(end),
        "record_url": f"https://record.sandbox.invalid/{call['cdr_id']}.mp3" if answered else None,
        "hangup_cause": outcome.hangup_cause,
    }


def _cdr_callback(call: dict[str, Any]) -> dict[str, Any]:
    """The CDR callback of a call (docs/provider.md §7.3): times are Unix seconds as strings."""
    row = _cdr_row(call)
    start = int(call["created"]) + 1
    answered = row["duration"] > 0
    return {
        "sessionid": call["sessionid"],
        "username": call["username"],
        "mobile_name": "sandbox phone",
        "sipid": row["sipid"],
        "orderid": call["orderid"],
        "code": row["country_code"],
        "phone": call["phone"],
        "show_phone": call["show_phone"],
        "duration": row["duration"],
        "direction": 1,
        "record": 1 if answered else 0,
        "record_url": row["record_url"] or "",
        "start_time": str(start),
        "answer_time": str(start + 5) if answered else "0",
        "end_time": str(start + 35 if answered else start + 30),
        "hangup_cause": row["hangup_cause"],
    }


def _cdr_by_orderid(state: SandboxState, req: _Request) -> dict[str, Any]:
    raw = req.body.get("orderid")
    wanted = [o.strip() for o in raw.split(",") if o.strip()] if isinstance(raw, str) else []
    if not wanted or len(wanted) > CDR_MAX_ORDERIDS:
        return {"code": "1", "info": "params invalid"}
    rows = [_cdr_row(c) for c in state.stores.calls if c["orderid"] and c["orderid"] in wanted]
    return {"code": "0", "row": rows}
