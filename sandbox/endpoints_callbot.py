"""The sandbox's Callbot v3, docs/provider.md §3, §6: signature check, tasks, orders, dialling, and
the call, order and task callbacks they send."""

from __future__ import annotations

import hmac
import re
import uuid
from collections.abc import Callable
from typing import Any

from nxjobs.client.signing import Algorithm, callbot_sign
from sandbox import accounts
from sandbox.base import (
    _DIGITS,
    _Answer,
    _as_int,
    _decode,
    _hex32,
    _json_object,
    _nonempty,
    _outcome,
    _Request,
)
from sandbox.state import SandboxState

CALLBOT_TS_WINDOW_S = 60
CALLBOT_MAX_CALL_LIST = 1000
CALLBOT_MAX_ORDER_DETAIL = 500
CALLBOT_MAX_PAGE_SIZE = 100
# Sandbox convention: addBatchCall refuses a contact whose userPhone starts so (one errList entry).
CALLBOT_REFUSED_PREFIX = "997"
# The algorithm header's accepted values (upper-cased, without "-").
_ALGORITHMS: dict[str, Algorithm] = {"MD5": "md5", "SHA256": "sha256"}


def _cb_env(req: _Request, code: Any, message: str) -> dict[str, Any]:
    if req.path.endswith("/ping"):
        request_id = req.headers.get("requestid", "")
        return {
            "code": code,
            "msg": message,
            "reqId": request_id,
            "data": None,
            "timestamp": int(req.now),
        }
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
        algorithm = _ALGORITHMS.get(h.get("algorithm", "MD5").upper().replace("-", ""))
        if algorithm is None:
            raise _Answer(_cb_env(req, 6, "incorrect signature: unsupported algorithm"))
        text = _decode(req.raw)
        if text is None:
            raise _Answer(_cb_env(req, 3, "parameter format error: body is not UTF-8"))
        expected = callbot_sign(
            secret_key=secret,
            uuid=h["uuid"],
            request_id=h.get("requestid", ""),
            create_ts_s=h["createts"],
            body_text=text,
            algorithm=algorithm,
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
    body = {
        k: order[k]
        for k in (
            "orderID",
            "userPhone",
            "userName",
            "sceneID",
            "userTaskID",
            "taskID",
            "finish",
            "other",
        )
    }
    return {
        "callbackType": callback_type,
        **body,
        "callInfoDetail": order["callInfoDetailList"][-1],
    }


def _cb_maybe_finish(state: SandboxState, task: dict[str, Any]) -> None:
    """A running task whose orders are all finished completes (status 3) and says so by callback."""
    orders = [state.stores.cb_orders[o] for o in task["orderIDs"]]
    if task["taskStatus"] != 2 or not orders or not all(o["finish"] for o in orders):
        return
    task["taskStatus"] = 3
    task["_finished_by_orders"] = True
    _cb_task_callback(state, task)


def _cb_dial(state: SandboxState, order: dict[str, Any], now: float) -> None:
    """One simulated attempt; the order finishes at once with the `_outcome` of its number.

    Sends the call callback (every attempt) and the order callback (order finished)."""
    outcome = _outcome(order["userPhone"])
    answered = outcome.answered
    start = int(now)
    duration = 30 if answered else 0
    order["callInfoDetailList"].append(
        {
            "callID": _hex32(),
            "callingNumber": "sandbox-line",
            "lineAddress": "127.0.0.1",
            "callStatus": outcome.call_status,
            "callStartTs": start,
            "callAnswerTs": start + 5 if answered else 0,
            "callEndTs": start + 5 + duration if answered else start + 30,
            "callDuration": duration,
            "callAudioUrl": f"https://audio.sandbox.invalid/{order['orderID']}.wav"
            if answered
            else "",
            "hangupCause": outcome.hangup_cause,
            "termSipCode": outcome.sip_code,
            "intents": [],
            "sms": [],
            "params": order.get("params") or [],
        }
    )
    order["finish"] = True
    state.queue_callback(
        "callbot-call", order.get("_callCallbackUrl"), _cb_order_callback(order, 3), signed=True
    )
    state.queue_callback(
        "callbot-order", order.get("_orderCallbackUrl"), _cb_order_callback(order, 2), signed=True
    )


def _cb_undialled(state: SandboxState, task: dict[str, Any]) -> list[dict[str, Any]]:
    """The task's orders not yet dialled and not stopped, in the order they were added."""
    orders = (state.stores.cb_orders[o] for o in task["orderIDs"])
    return [o for o in orders if not o["callInfoDetailList"] and not o["finish"]]


def _cb_dial_due(state: SandboxState, task: dict[str, Any], now: float) -> None:
    """A running task dials what is due: everything at once, or with callbot_dial_interval_s one
    number per interval from when it was (re)started; then it completes if every order is done."""
    if task["taskStatus"] != 2:
        return
    interval = state.config.callbot_dial_interval_s
    pending = _cb_undialled(state, task)
    if interval <= 0:
        for order in pending:
            _cb_dial(state, order, now)
    else:
        next_at = task.get("_next_dial_at") or now
        while pending and next_at <= now:
            _cb_dial(state, pending.pop(0), now)
            next_at += interval
        task["_next_dial_at"] = max(next_at, now) if not pending else next_at
    _cb_maybe_finish(state, task)


def _cb_task_callback(state: SandboxState, task: dict[str, Any]) -> None:
    """The task-status callback (docs/provider.md §6.6), sent when a task completes."""
    body = {
        "callbackType": 1,
        "userTaskID": task["userTaskID"],
        "taskID": task["taskID"],
        "sceneID": task["sceneID"],
        "taskStatus": task["taskStatus"],
        "createTs": task["createTs"],
        "taskStat": _cb_task_stat(state, task),
    }
    state.queue_callback("callbot-task", task.get("_taskCallbackUrl"), body, signed=True)


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


def _cb_add_orders(
    state: SandboxState,
    task: dict[str, Any],
    call_list: list[Any],
    now: float,
    info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    orders = state.stores.cb_orders
    info = info or {}
    # Per batch (callInfoList), else the task's own (createTask's orderCallbackUrl).
    call_url = info.get("callCallbackUrl") or task.get("_callCallbackUrl")
    order_url = info.get("orderCallbackUrl") or task.get("_orderCallbackUrl")
    errors = []
    added = 0
    # , our choice A task that completed because its orders were all dialled (not by an operator's
    # "complete") takes new contacts, as a kept task would (funcFlag.taskKeep, docs/provider.md
    # §6.3): it runs again, dials them, and completes again (with its own task callback) when they
    # finish.
    reopen = task["taskStatus"] == 3 and task.get("_finished_by_orders")
    for item in call_list:
        order_id = item.get("orderID") if isinstance(item, dict) else None
        phone = item.get("userPhone") if isinstance(item, dict) else None
        if not isinstance(item, dict):
            errors.append({"orderID": "", "errMsg": "callList item must be an object"})
        elif not isinstance(order_id, str) or not order_id:
            errors.append({"orderID": str(order_id or ""), "errMsg": "orderID is required"})
        elif not isinstance(phone, str) or not _DIGITS.fullmatch(phone):
            errors.append(
                {"orderID": order_id, "errMsg": "userPhone must be digits with country code"}
            )
        elif order_id in orders:
            state.duplicate_rejections["callbot_orderid"] += 1
            errors.append({"orderID": order_id, "errMsg": "orderID already exists"})
        elif phone.startswith(CALLBOT_REFUSED_PREFIX):
            errors.append({"orderID": order_id, "errMsg": "userPhone is on the do-not-call list"})
        else:
            order = {
                "orderID": order_id,
                "userPhone": phone,
                "userName": item.get("userName", ""),
                "customerName": item.get("customerName", ""),
                "other": item.get("other", ""),
                "params": item.get("params") or [],
                "sceneID": task["sceneID"],
                "userTaskID": task["userTaskID"],
                "taskID": task["taskID"],
                "finish": False,
                "callInfoDetailList": [],
                "_callCallbackUrl": call_url,
                "_orderCallbackUrl": order_url,
            }
            orders[order_id] = order
            task["orderIDs"].append(order_id)
            added += 1
            if reopen:
                task["taskStatus"], task["_finished_by_orders"], reopen = 2, False, False
    if added:
        _cb_dial_due(state, task, now)
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
    startup_type = _as_int(setting.get("startupType"))
    startup_at = _as_int(setting.get("startupAt"))
    if startup_type == 2 and startup_at is None:
        raise _Answer(_cb_env(req, 4, "parameter value error: startupType 2 needs startupAt"))
    bad = _cb_dialling_error(setting)
    if bad:
        raise _Answer(_cb_env(req, 4, f"parameter value error: {bad}"))
    return {
        "userTaskID": user_task_id,
        "taskID": str(uuid.uuid4().int % 10**12).zfill(12),
        "sceneID": b["sceneID"],
        "taskName": setting.get("taskName") or b.get("taskName") or "",
        "taskStatus": 1,
        "createTs": int(req.now),
        "orderIDs": [],
        # Where its callbacks go (docs/provider.md §6.3: top level in createTask, in the setting
        # otherwise).
        "_taskCallbackUrl": setting.get("taskCallbackUrl") or b.get("taskCallbackUrl"),
        "_orderCallbackUrl": b.get("orderCallbackUrl"),
        "_callCallbackUrl": b.get("callCallbackUrl"),
        # A scheduled start (startupType 2): the task starts itself then (start_due).
        "_startupAt": startup_at if startup_type == 2 else None,
        # The taskCreateSetting it was created with (zoneSecond, dialAtWeekDay, dialAtUpHour,
        # dialAtDownHour...): recorded, not enforced, the sandbox dials whenever a task runs;
        # an updateTask's changes go to `_settings`.
        "_createSetting": dict(setting),
    }


_HHMM = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$|^24:00$")
_WEEKDAYS = re.compile(r"^[1-7](,[1-7])*$")


def _cb_dialling_error(setting: dict[str, Any]) -> str:
    """What is wrong with a setting's dialling fields, in the formats we chose for them
    (docs/provider.md §6.3): zoneSecond an int of seconds east of UTC (-12 h to +14 h),
    dialAtWeekDay "1,2,3" (1 = Monday), dialAtUpHour / dialAtDownHour "HH:MM" ("24:00" an end)."""
    zone = setting.get("zoneSecond")
    if zone is not None and (
        not isinstance(zone, int) or isinstance(zone, bool) or not -43200 <= zone <= 50400
    ):
        return "zoneSecond must be seconds from UTC, -43200 to 50400"
    days = setting.get("dialAtWeekDay")
    if days is not None and not (isinstance(days, str) and _WEEKDAYS.match(days)):
        return 'dialAtWeekDay must be like "1,2,3,4,5" (1 = Monday)'
    for name in ("dialAtUpHour", "dialAtDownHour"):
        value = setting.get(name)
        if value is not None and not (isinstance(value, str) and _HHMM.match(value)):
            return f'{name} must be "HH:MM"'
    return ""


def _cb_start(state: SandboxState, task: dict[str, Any], now: float) -> None:
    """The task starts (status 2) and dials what is due (_cb_dial_due)."""
    task["taskStatus"] = 2
    task["_finished_by_orders"] = False
    task["_next_dial_at"] = now
    _cb_dial_due(state, task, now)


def start_due(state: SandboxState) -> int:
    """Start the tasks whose scheduled start (startupAt) has come, as the provider does on its
    own, whoever is connected; run by the callback dispatcher's loop. Returns how many started."""
    with state.lock:
        now = state.now()
        due = [t for t, at in state.stores.cb_scheduled.items() if at <= now]
        for user_task_id in due:
            del state.stores.cb_scheduled[user_task_id]
            task = state.stores.cb_tasks.get(user_task_id)
            if task is not None and task["taskStatus"] == 1:
                _cb_start(state, task, now)
        return len(due)


def _cb_store_task(state: SandboxState, task: dict[str, Any]) -> None:
    if (
        task["userTaskID"] in state.stores.cb_tasks
    ):  # unreachable by design; counted if it ever happens
        state.duplicates["callbot_usertaskid"] += 1
    state.stores.cb_tasks[task["userTaskID"]] = task
    state.accepted["callbot_tasks"] += 1
    if task.get("_startupAt") is not None:
        state.stores.cb_scheduled[task["userTaskID"]] = float(task["_startupAt"])


def _cb_create_task(state: SandboxState, req: _Request) -> dict[str, Any]:
    task = _cb_new_task(state, req)
    _cb_store_task(state, task)
    return _cb_ok(req, taskID=task["taskID"])


def _cb_create_and_call(state: SandboxState, req: _Request) -> dict[str, Any]:
    task = _cb_new_task(state, req)
    call_list = _cb_call_list(req)
    _cb_store_task(state, task)
    return _cb_ok(
        req,
        taskID=task["taskID"],
        **_cb_add_orders(state, task, call_list, req.now, req.body["callInfoList"]),
    )


def _cb_task(state: SandboxState, req: _Request) -> dict[str, Any]:
    user_task_id = req.body.get("userTaskID")
    if not _nonempty(user_task_id):
        raise _Answer(_cb_env(req, 2, "missing parameter: userTaskID"))
    task = state.stores.cb_tasks.get(user_task_id)
    if task is None:
        raise _Answer(_cb_env(req, 4, "parameter value error: userTaskID not found"))
    _cb_dial_due(state, task, req.now)
    return task


def _cb_add_batch_call(state: SandboxState, req: _Request) -> dict[str, Any]:
    task = _cb_task(state, req)
    call_list = _cb_call_list(req)
    return _cb_ok(req, **_cb_add_orders(state, task, call_list, req.now, req.body["callInfoList"]))


def _cb_mgr_task_status(state: SandboxState, req: _Request) -> dict[str, Any]:
    operate = req.body.get("taskOperate")
    if operate is None:
        return _cb_env(req, 2, "missing parameter: taskOperate")
    operate_code = _as_int(operate)
    new_status = {1: 2, 2: 5, 3: 3}.get(operate_code) if operate_code is not None else None
    if new_status is None:
        return _cb_env(req, 4, "parameter value error: taskOperate must be 1, 2 or 3")
    task = _cb_task(state, req)
    was = task["taskStatus"]
    if was == 3 and new_status != 3:
        return _cb_env(req, 4, "parameter value error: task is completed")
    state.stores.cb_scheduled.pop(task["userTaskID"], None)  # an operator's start or stop wins
    task["_finished_by_orders"] = False  # an operator's status sticks: completed stays completed
    if new_status == was:  # asked again (a resent request): the answer is the same, nothing moves
        return _cb_ok(req, taskID=task["taskID"], taskStatus=was)
    task["taskStatus"] = new_status
    if new_status == 2:
        task["_next_dial_at"] = req.now  # (re)started: the next number is dialled at once
        _cb_dial_due(state, task, req.now)
    elif new_status == 3:
        if _as_int(req.body.get("delCall")) == 1:
            # delCall 1: the numbers not yet dialled are deleted from the task.
            dropped = {o["orderID"] for o in _cb_undialled(state, task)}
            task["orderIDs"] = [o for o in task["orderIDs"] if o not in dropped]
            for order_id in dropped:
                del state.stores.cb_orders[order_id]
        _cb_task_callback(state, task)
    return _cb_ok(req, taskID=task["taskID"], taskStatus=task["taskStatus"])


def _cb_stop_order(state: SandboxState, req: _Request) -> dict[str, Any]:
    """Stop orders for good (irreversible): each is finished undialled and never dialled again;
    one already dialled, already stopped or not the task's is refused in errList."""
    task = _cb_task(state, req)
    order_ids = req.body.get("orderIDs")
    if order_ids is None:
        return _cb_env(req, 2, "missing parameter: orderIDs")
    if not isinstance(order_ids, list):
        return _cb_env(req, 3, "parameter format error: orderIDs must be an array")
    if len(order_ids) > CALLBOT_MAX_CALL_LIST:
        return _cb_env(req, 4001, f"too many array elements (max {CALLBOT_MAX_CALL_LIST})")
    errors, stopped = [], 0
    for order_id in order_ids:
        order = state.stores.cb_orders.get(order_id) if isinstance(order_id, str) else None
        if order is None or order["userTaskID"] != task["userTaskID"]:
            errors.append({"orderID": str(order_id), "errMsg": "orderID not found in the task"})
        elif order.get("_stopped"):
            errors.append({"orderID": order_id, "errMsg": "order already stopped"})
        elif order["finish"]:
            errors.append({"orderID": order_id, "errMsg": "order already finished"})
        else:
            order["finish"], order["_stopped"] = True, True
            stopped += 1
    if stopped:
        _cb_maybe_finish(state, task)
    return _cb_ok(req, totalCount=len(order_ids), successCount=stopped, errList=errors)


# What updateTask may carry besides the task's ids (docs/provider.md §6.3).
_CB_UPDATABLE = frozenset({"productID", "userTaskID", "sceneID", "taskCreateSetting", "funcFlag"})


def _cb_update_task(state: SandboxState, req: _Request) -> dict[str, Any]:
    """Change a paused or not-started task's taskCreateSetting / funcFlag; nothing else."""
    task = _cb_task(state, req)
    b = req.body
    if task["taskStatus"] not in (1, 5):
        return _cb_env(
            req, 4, "parameter value error: only a paused or not started task can be updated"
        )
    extra = sorted(set(b) - _CB_UPDATABLE)
    if extra:
        return _cb_env(req, 4, f"parameter value error: {extra[0]} cannot be updated")
    if b.get("sceneID") != task["sceneID"]:
        return _cb_env(req, 4, "parameter value error: sceneID does not match the task")
    setting = b.get("taskCreateSetting")
    if not isinstance(setting, dict):
        return _cb_env(req, 3, "parameter format error: taskCreateSetting must be an object")
    bad = _cb_dialling_error(setting)
    if bad:
        return _cb_env(req, 4, f"parameter value error: {bad}")
    task["taskName"] = setting.get("taskName") or task["taskName"]
    task["_taskCallbackUrl"] = setting.get("taskCallbackUrl") or task["_taskCallbackUrl"]
    task.setdefault("_settings", {}).update(setting)
    if isinstance(b.get("funcFlag"), dict):
        task.setdefault("_funcFlag", {}).update(b["funcFlag"])
    return _cb_ok(req)


def _cb_task_stat(state: SandboxState, task: dict[str, Any]) -> dict[str, Any]:
    orders = [state.stores.cb_orders[o] for o in task["orderIDs"]]
    calls = [c for o in orders for c in o["callInfoDetailList"]]
    answered_calls = sum(1 for c in calls if c["callDuration"] > 0)
    answered_orders = sum(
        1 for o in orders if any(c["callDuration"] > 0 for c in o["callInfoDetailList"])
    )
    finished = sum(1 for o in orders if o["finish"])
    return {
        "answerOrderCount": answered_orders,
        "finishOrderCount": finished,
        "totalOrderCount": len(orders),
        "finishRate": round(finished / len(orders), 2) if orders else 0,
        "totalAnswerCall": answered_calls,
        "totalCall": len(calls),
        "answerRate": round(answered_calls / len(calls), 2) if calls else 0,
    }


def _cb_list_task(state: SandboxState, req: _Request) -> dict[str, Any]:
    b = req.body
    page = max(_as_int(b.get("page", 1)) or 1, 1)
    size = min(
        max(_as_int(b.get("size", CALLBOT_MAX_PAGE_SIZE)) or CALLBOT_MAX_PAGE_SIZE, 1),
        CALLBOT_MAX_PAGE_SIZE,
    )
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
            rows.append(
                {k: v for k, v in _cb_public(order).items() if k not in ("customerName", "params")}
            )
    return _cb_ok(req, orderDetailList=rows)


def _cb_ping(state: SandboxState, req: _Request) -> dict[str, Any]:
    return {**_cb_env(req, 0, "success"), "data": req.body.get("data")}
