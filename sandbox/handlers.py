"""Request -> response logic of the fake NXCloud APIs, with no sockets involved.

`handle(state, path, headers, body, now)` takes lower-cased header names, the raw
body bytes and epoch seconds, and returns a `Reply` (unpacks as `status, body`).
`handle_control` serves the unauthenticated /_sandbox/* test API. The endpoints
live per API family (endpoints_api2.py, endpoints_callbot.py, endpoints_agent.py,
sharing base.py); HTTP plumbing in server.py; storage, quotas and dice in state.py.

Pipeline for every known API path: log -> injected 503 -> family auth ->
scripted answer -> injected throttle -> quota -> endpoint -> maybe slow.
Everything before "endpoint" is free of side effects.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from sandbox.base import Reply, _Answer, _decode, _form, _json_object, _Request, _Route
from sandbox.endpoints_agent import (
    CDR_PATH,
    _agent_env,
    _agent_throttle,
    _cdr_by_orderid,
    _cdr_quotas,
    _cdr_verify,
    _makecall,
    _makecall_quotas,
    _makecall_verify,
    _token,
    _token_verify,
)
from sandbox.endpoints_api2 import (
    _api2_env,
    _api2_quotas,
    _api2_throttle,
    _api2_verifier,
    _number_check,
    _number_check_get,
    _number_query,
    _ota_init,
    _wa_calling_get,
)
from sandbox.endpoints_callbot import (
    _cb_add_batch_call,
    _cb_create_and_call,
    _cb_create_task,
    _cb_env,
    _cb_list_order_detail,
    _cb_list_task,
    _cb_mgr_task_status,
    _cb_ping,
    _cb_quotas,
    _cb_stop_order,
    _cb_throttle,
    _cb_update_task,
    _cb_verifier,
)
from sandbox.state import SandboxState

CALLBOT_PREFIX = "/callcentre/api/v3/"


def _no_quota(state: SandboxState, req: _Request) -> list[tuple[str, str, int]]:
    return []


def _api2(biz_type: str, action: str, endpoint: Callable) -> _Route:
    return _Route(
        "api2", _api2_verifier(biz_type, action), endpoint, _api2_env, _api2_throttle, _api2_quotas
    )


def _callbot(endpoint: Callable, needs_product: bool = True) -> _Route:
    return _Route(
        "callbot", _cb_verifier(needs_product), endpoint, _cb_env, _cb_throttle, _cb_quotas
    )


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
    CALLBOT_PREFIX + "stopOrder": _callbot(_cb_stop_order),
    CALLBOT_PREFIX + "updateTask": _callbot(_cb_update_task),
    CALLBOT_PREFIX + "listTask": _callbot(_cb_list_task),
    CALLBOT_PREFIX + "listOrderDetail": _callbot(_cb_list_order_detail),
    "/v1/call/token": _Route(
        "agent", _token_verify, _token, _agent_env, _agent_throttle, _no_quota
    ),
    "/v1/call/makecall": _Route(
        "agent", _makecall_verify, _makecall, _agent_env, _agent_throttle, _makecall_quotas
    ),
    CDR_PATH: _Route(
        "agent", _cdr_verify, _cdr_by_orderid, _agent_env, _agent_throttle, _cdr_quotas
    ),
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
        return Reply(
            script.http_status,
            {"code": script.code, "message": script.message or "scripted HTTP error"},
        )
    return Reply(
        200, route.envelope(req, script.code, script.message or f"scripted code {script.code}")
    )


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
    state: SandboxState,
    path: str,
    headers: dict[str, str],
    body: bytes,
    now: float,
    method: str = "POST",
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


CONTROL_PREFIX = "/_sandbox/"


def handle_control(
    state: SandboxState, method: str, path: str, query: dict[str, str], body: bytes
) -> Reply:
    """Serve stats, the request log, config, scripts, token expiry and reset."""
    name = path[len(CONTROL_PREFIX) :]
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
            return Reply(
                200, {"callbacks": state.recent_callbacks(query.get("kind") or None, limit)}
            )
        if (method, name) == ("POST", "config"):
            return Reply(200, {"config": state.configure(**payload).to_dict()})
        if (method, name) == ("POST", "script"):
            state.add_script(
                payload["path"],
                payload["code"],
                int(payload.get("times", 1)),
                int(payload.get("http_status", 200)),
                payload.get("message"),
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
