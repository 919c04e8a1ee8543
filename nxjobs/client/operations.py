"""One function per job kind: build the provider request(s) from a validated
payload, send them, and return what was sent (redacted) and what came back.

No Celery, no settings: every credential-free parameter arrives as an argument.
Idempotency keys (orderid, batchNo, userTaskID, orderID) derive from the job id
so every attempt reuses them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from nxjobs import callback_urls
from nxjobs.client.agent import MAKECALL_PATH, AgentClient, TokenSource
from nxjobs.client.api2 import Api2Client
from nxjobs.client.callbot import CallbotClient
from nxjobs.client.errors import PERMANENT, NXCloudError, ProviderError, TransportError
from nxjobs.client.transport import Response
from nxjobs.jobs import (
    CALLBOT_CHUNK_SIZE,
    CallbotContactPayload,
    CallbotListPayload,
    CallPayload,
    NumberCheckPayload,
    OtaInitPayload,
    WaCallingPayload,
)
from nxjobs.redact import redact, summarize_list
from nxjobs.wire import (
    call_list_item,
    call_order_id,
    contact_job_order_id,
    contact_order_id,
    number_check_batch_no,
    zone_task_id,
)

# A callbot list's scheduled start (payload.start_at) left to the provider (startupType 2) only
# when still at least this far ahead when the task is created; nearer, we start it ourselves.
PROVIDER_START_MIN_AHEAD_S = 5.0


class ZonePlan(Protocol):
    """One zone group of a list (nxjobs.callbot_zones.ZoneGroup): its contacts' indices and the
    taskCreateSetting fields its task dials by."""

    @property
    def indices(self) -> tuple[int, ...]: ...

    def setting(self) -> dict[str, Any]: ...


@dataclass
class Outcome:
    request: list[dict[str, Any]] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)


class AmbiguousSubmission(NXCloudError):
    """The request may have reached the provider but we have no answer.

    Resending could repeat a side effect (ring a phone twice), so the job is
    parked for reconciliation by its idempotency key instead of retried.
    """

    def __init__(self, cause: TransportError, key_name: str, key: str):
        super().__init__(
            f"{cause.message}; not re-sent, reconcile by {key_name}={key}",
            code="ambiguous",
            classification=PERMANENT,
        )
        self.key_name = key_name
        self.key = key


def _sent(endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"endpoint": endpoint, "body": redact(body)}


# ---- Agent API ------------------------------------------------------------


def place_call(
    agent: AgentClient,
    tokens: TokenSource,
    *,
    job_id: str,
    payload: CallPayload,
    username: str,
    default_show_phone: str | None,
    outcome: Outcome,
) -> Outcome:
    orderid = call_order_id(job_id, payload)
    showphone = payload.show_phone or default_show_phone
    form = {"username": username, "phone": payload.phone, "orderid": orderid}
    if showphone:
        form["showphone"] = showphone
    outcome.request.append(_sent(MAKECALL_PATH, form))

    def send(token: str) -> Response:
        try:
            return agent.make_call(
                token=token,
                username=username,
                phone=payload.phone,
                orderid=orderid,
                showphone=showphone,
            )
        except TransportError as err:
            # Only the makecall itself can ring a phone; a lost token answer is harmless to retry.
            if err.may_have_reached:
                raise AmbiguousSubmission(err, "orderid", orderid) from err
            raise

    resp = tokens.call(send)
    outcome.result = {
        "orderid": resp.body.get("orderid") or orderid,
        "sessionid": resp.body.get("sessionid"),
        "info": resp.body.get("info"),
    }
    return outcome


# ---- api2 -----------------------------------------------------------------

NUMBER_CHECK_PATH = "/api/number/check"
OTA_INIT_PATH = "/api/ota/init"
WA_CALLING_PATH = "/api/wa/calling/get"


def check_numbers(
    api2: Api2Client,
    *,
    job_id: str,
    payload: NumberCheckPayload,
    appkey: str,
    public_url: str | None,
    outcome: Outcome,
    callback_token: str | None = None,
) -> Outcome:
    body, sent = _number_check_request(
        payload.phones,
        number_check_batch_no(job_id, payload),
        payload.check_level,
        appkey,
        public_url,
        callback_token,
    )
    outcome.request.append(sent)
    data = _submit_number_check(api2, body)
    outcome.result = {
        "requestId": data["requestId"],
        "batchNo": data["batchNo"],
        "numbers": len(payload.phones),
        "failNumber": redact(data["failNumber"]),
    }
    return outcome


def check_number_batch(
    api2: Api2Client,
    *,
    phones: list[str],
    batch_no: str,
    check_level: int,
    appkey: str,
    public_url: str | None,
    outcome: Outcome,
    callback_token: str | None = None,
) -> dict[str, Any]:
    """One request for many jobs' numbers (nxjobs.coalesce). Returns the answer's data with
    `failNumber` as the provider gave it: the caller matches it to its members, then masks it."""
    body, sent = _number_check_request(
        phones, batch_no, check_level, appkey, public_url, callback_token
    )
    sent["body"]["phone"] = f"{len(phones)} numbers of coalesced jobs"
    outcome.request.append(sent)
    return _submit_number_check(api2, body)


def _number_check_request(
    phones: list[str],
    batch_no: str,
    check_level: int,
    appkey: str,
    public_url: str | None,
    callback_token: str | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The body to send, and its redacted copy for the record (the callback token never
    reaches one)."""
    body: dict[str, Any] = {
        "phone": ",".join(phones),
        "batchNo": batch_no,
        "checkLevel": check_level,
        "appkey": appkey,
    }
    dr_url = callback_urls.build(public_url, callback_urls.NUMBER_CHECK, callback_token)
    if dr_url:
        body["drUrl"] = dr_url
    sent = _sent(NUMBER_CHECK_PATH, body)
    if dr_url:
        sent["body"]["drUrl"] = callback_urls.redact_url(dr_url)
    return body, sent


def _submit_number_check(api2: Api2Client, body: dict[str, Any]) -> dict[str, Any]:
    resp = api2.post(NUMBER_CHECK_PATH, biz_type=1, action="numbercheck", body=body)
    data = resp.body.get("data") or {}
    # Current docs name it requestId, legacy ones messageId (docs/provider.md §5.1).
    return {
        "requestId": data.get("requestId") or data.get("messageId"),
        "batchNo": data.get("batchNo") or body["batchNo"],
        "failNumber": data.get("failNumber") or [],
    }


def ota_init(
    api2: Api2Client, *, payload: OtaInitPayload, appkey: str, outcome: Outcome
) -> Outcome:
    body = {"appkey": appkey, "phone": payload.phone, "userIp": payload.user_ip}
    outcome.request.append(_sent(OTA_INIT_PATH, body))
    resp = api2.post(OTA_INIT_PATH, biz_type=6, action="init", body=body)
    data = resp.body.get("data") or {}
    outcome.result = {"requestId": data.get("requestId"), "url": data.get("url")}
    return outcome


def wa_calling(
    api2: Api2Client, *, payload: WaCallingPayload, appkey: str, outcome: Outcome
) -> Outcome:
    body = {"appkey": appkey, "business_phone": payload.business_phone}
    outcome.request.append(_sent(WA_CALLING_PATH, body))
    resp = api2.post(WA_CALLING_PATH, biz_type=2, action="mt", body=body)
    outcome.result = {"data": redact(resp.body.get("data")), "traceId": resp.body.get("traceId")}
    return outcome


# ---- Callbot v3 -----------------------------------------------------------


def _already_present(err: dict[str, Any]) -> bool:
    # On a resumed attempt the provider rejects orders it already has; that is success.
    return "already exist" in str(err.get("errMsg", "")).lower()


def rejected_orders(err_list: Any) -> dict[str, str]:
    """orderID -> errMsg of the contacts addBatchCall refused, leaving out "already exists":
    an order the provider has is an order added (a resent request, docs/provider.md §6.1)."""
    out: dict[str, str] = {}
    for err in err_list if isinstance(err_list, list) else []:
        if isinstance(err, dict) and err.get("orderID") and not _already_present(err):
            out[str(err["orderID"])] = str(err.get("errMsg") or "refused by the provider")
    return out


def _call_info(
    call_list: list[dict[str, Any]],
    public_url: str | None,
    order_cb: str | None = None,
    call_cb: str | None = None,
) -> dict[str, Any]:
    """callInfoList: the contacts, and where their order and call callbacks go."""
    info: dict[str, Any] = {"callList": call_list}
    order_cb = order_cb or callback_urls.build(public_url, callback_urls.CALLBOT_ORDER)
    call_cb = call_cb or callback_urls.build(public_url, callback_urls.CALLBOT_CALL)
    if order_cb:
        info["orderCallbackUrl"] = order_cb
    if call_cb:
        info["callCallbackUrl"] = call_cb
    return info


# ---- Callbot v3: contacts added to an existing task (callbot-contact) -------


def add_contacts(
    callbot: CallbotClient,
    *,
    user_task_id: str,
    call_list: list[dict[str, Any]],
    public_url: str | None,
    outcome: Outcome,
    shared: bool,
) -> dict[str, Any]:
    """One addBatchCall onto task `user_task_id`; returns the answer (totalCount, successCount,
    errList as the provider gave it: the caller matches it to its contacts). `shared`: the contacts
    are several jobs' (nxjobs.coalesce), so the record says how many, never whose."""
    body = {"userTaskID": user_task_id, "callInfoList": _call_info(call_list, public_url)}
    sent = _summarized("addBatchCall", body)
    if shared:
        sent["body"]["callInfoList"]["callList"] = f"{len(call_list)} contacts of coalesced jobs"
    outcome.request.append(sent)
    resp = callbot.post("addBatchCall", body)
    return {
        "totalCount": resp.body.get("totalCount"),
        "successCount": resp.body.get("successCount"),
        "errList": resp.body.get("errList") or [],
    }


def add_contact(
    callbot: CallbotClient,
    *,
    job_id: str,
    payload: CallbotContactPayload,
    public_url: str | None,
    outcome: Outcome,
) -> Outcome:
    """A contact sent on its own (batch=False): a one-contact addBatchCall. Its orderID is the
    idempotency key: a repeat is refused as already present, which counts as added."""
    order_id = contact_job_order_id(job_id, payload)
    answer = add_contacts(
        callbot,
        user_task_id=payload.user_task_id,
        call_list=[call_list_item(payload.contact, order_id)],
        public_url=public_url,
        outcome=outcome,
        shared=False,
    )
    refused = rejected_orders(answer["errList"])
    if order_id in refused:
        raise ProviderError("callbot", CONTACT_REJECTED, refused[order_id], endpoint="addBatchCall")
    outcome.result = {"userTaskID": payload.user_task_id, "orderID": order_id, "contacts": 1}
    return outcome


# The code of a contact the provider refused in addBatchCall's errList (its message is the errMsg).
CONTACT_REJECTED = "contact_rejected"


def submit_call_list(
    callbot: CallbotClient,
    *,
    job_id: str,
    payload: CallbotListPayload,
    public_url: str | None,
    strategy_name: str,
    progress: dict[str, Any],
    save_progress: Callable[[dict[str, Any]], None],
    outcome: Outcome,
    plan: Callable[[], Sequence[ZonePlan]] | None = None,
) -> Outcome:
    """Create the list's task(s) with their contacts and start them, resuming after the last
    step a previous attempt completed (`progress`, saved after every step).

    `plan` (calling hours on, nxjobs.callbot_zones): the zone groups, asked once, on the first
    attempt; their plan is saved before anything is sent. One group (or no plan) is one task whose
    userTaskID is the job id; several are one task each, `<job id>-z<n>`, each with its group's
    contacts and dialling fields. Every task is created and filled first, then every task that
    has a contact the provider accepted is started."""
    task_cb = payload.task_callback_url or callback_urls.build(
        public_url, callback_urls.CALLBOT_TASK
    )
    order_cb = payload.order_callback_url or callback_urls.build(
        public_url, callback_urls.CALLBOT_ORDER
    )
    call_cb = payload.call_callback_url or callback_urls.build(
        public_url, callback_urls.CALLBOT_CALL
    )
    base: dict[str, Any] = {
        "taskName": payload.task_name,
        "strategyName": payload.strategy_name or strategy_name,
    }
    if task_cb:
        base["taskCallbackUrl"] = task_cb
    if progress:
        state = dict(progress)
    else:
        groups = plan() if plan is not None else []
        state = {"userTaskID": job_id, "added": 0, "accepted": 0, "rejected": []}
        if len(groups) == 1:
            state["zone"] = groups[0].setting()
        elif len(groups) > 1:
            state = {
                "tasks": [
                    {
                        "userTaskID": zone_task_id(job_id, n),
                        "contacts": list(g.indices),
                        "zone": g.setting(),
                        "added": 0,
                        "accepted": 0,
                        "rejected": [],
                    }
                    for n, g in enumerate(groups)
                ]
            }
            save_progress(state)  # the plan is fixed before any task exists
    tasks: list[dict[str, Any]] = state["tasks"] if "tasks" in state else [state]

    def save(_task: dict[str, Any] | None = None) -> None:
        save_progress(state)  # a task's state is part of it

    for task in tasks:
        indices = task.get("contacts")
        chosen = list(range(len(payload.contacts))) if indices is None else list(indices)
        setting = {**base, **(task.get("zone") or {})}
        _create_and_add(
            callbot,
            job_id,
            payload,
            task,
            chosen,
            setting,
            task_cb,
            order_cb,
            call_cb,
            save,
            outcome.request,
        )

    if sum(int(t["accepted"]) for t in tasks) == 0:
        rejected = [e for t in tasks for e in t["rejected"]]
        raise ProviderError(
            "callbot",
            "4",
            "every contact was rejected: " + str(rejected[:3]),
            endpoint="addBatchCall",
        )
    for task in tasks:
        if task["accepted"] > 0:
            _start(callbot, task, save, outcome.request)

    total = len(payload.contacts)
    if "tasks" not in state:
        outcome.result = {
            k: state.get(k) for k in ("userTaskID", "taskID", "taskStatus", "accepted", "rejected")
        }
        if state.get("zone"):
            outcome.result["zone"] = state["zone"]
        if state.get("startup_at"):
            outcome.result["startupAt"] = state["startup_at"]
        outcome.result["contacts"] = total
        return outcome
    outcome.result = {
        "tasks": [
            {
                "userTaskID": t["userTaskID"],
                "taskID": t.get("taskID"),
                "taskStatus": t.get("taskStatus"),
                "started": t["accepted"] > 0,
                "contacts": len(t["contacts"]),
                "accepted": t["accepted"],
                "zone": t["zone"],
            }
            for t in tasks
        ],
        "accepted": sum(int(t["accepted"]) for t in tasks),
        "rejected": [e for t in tasks for e in t["rejected"]][:100],
        "contacts": total,
    }
    if tasks[0].get("startup_at"):
        outcome.result["startupAt"] = tasks[0]["startup_at"]
    return outcome


def _create_and_add(
    callbot: CallbotClient,
    job_id: str,
    payload: CallbotListPayload,
    state: dict[str, Any],
    chosen: list[int],
    setting: dict[str, Any],
    task_cb: str | None,
    order_cb: str | None,
    call_cb: str | None,
    save_progress: Callable[[dict[str, Any]], None],
    sent: list[dict[str, Any]],
) -> None:
    """Create task `state["userTaskID"]` with the contacts `chosen` (their indices in the list),
    unless an earlier attempt did; then add the rest of them, a chunk a request."""
    user_task_id = state["userTaskID"]
    total = len(chosen)

    def info_list(start: int) -> dict[str, Any]:
        items = [
            call_list_item(
                payload.contacts[i], contact_order_id(job_id, i, payload.contacts[i].order_id)
            )
            for i in chosen[start : start + CALLBOT_CHUNK_SIZE]
        ]
        return _call_info(items, None, order_cb, call_cb)

    def record_added(resp_body: dict[str, Any], count: int) -> None:
        errs = [e for e in (resp_body.get("errList") or []) if not _already_present(e)]
        state["added"] += count
        state["accepted"] += count - len(errs)
        state["rejected"] = (state["rejected"] + redact(errs))[:100]
        save_progress(state)

    if "taskID" not in state:
        existing = _find_task(callbot, user_task_id) if state.get("create_sent") else None
        if existing:
            # An earlier attempt's create reached the provider; a createAndCall carried its first
            # chunk too.
            state["taskID"] = existing.get("taskID")
            if state.get("create_mode") == "createAndCall":
                state["added"] = min(total, CALLBOT_CHUNK_SIZE)
                state["accepted"] = state["added"]
            save_progress(state)
        else:
            state["create_sent"] = True
            state["create_mode"] = "createAndCall" if total <= CALLBOT_CHUNK_SIZE else "createTask"
            # A start still far enough ahead is the provider's to make (it starts the task then,
            # whether or not we are up); otherwise we start it ourselves below, as any list.
            if payload.start_at and payload.start_at >= time.time() + PROVIDER_START_MIN_AHEAD_S:
                state["startup_at"] = payload.start_at
            save_progress(state)
            if state.get("startup_at"):
                setting = {**setting, "startupType": 2, "startupAt": state["startup_at"]}
            if state["create_mode"] == "createAndCall":
                body: dict[str, Any] = {
                    "userTaskID": user_task_id,
                    "sceneID": payload.scene_id,
                    "taskCreateSetting": setting,
                    "callInfoList": info_list(0),
                }
                sent.append(_summarized("createAndCall", body))
                resp = _post_once(
                    callbot, "createAndCall", body, state, "create_sent", save_progress
                )
                state["taskID"] = resp.body.get("taskID")
                record_added(resp.body, total)
            else:
                body = {
                    "userTaskID": user_task_id,
                    "sceneID": payload.scene_id,
                    "taskCreateSetting": setting,
                }
                if task_cb:
                    body["taskCallbackUrl"] = task_cb
                if order_cb:
                    body["orderCallbackUrl"] = order_cb
                sent.append(_summarized("createTask", body))
                resp = _post_once(callbot, "createTask", body, state, "create_sent", save_progress)
                state["taskID"] = resp.body.get("taskID")
                save_progress(state)

    while state["added"] < total:
        start = state["added"]
        body = {"userTaskID": user_task_id, "callInfoList": info_list(start)}
        sent.append(_summarized("addBatchCall", body))
        resp = callbot.post("addBatchCall", body)
        record_added(resp.body, min(CALLBOT_CHUNK_SIZE, total - start))


def _start(
    callbot: CallbotClient,
    state: dict[str, Any],
    save_progress: Callable[[dict[str, Any]], None],
    sent: list[dict[str, Any]],
) -> None:
    """Start task `state["userTaskID"]` unless it is started (or scheduled to start itself)."""
    user_task_id = state["userTaskID"]
    if state.get("startup_at"):
        # Created with its scheduled start: the provider starts it; nothing for us to send.
        state["started"] = True
        state.setdefault("taskStatus", 1)  # not started yet (docs/provider.md §6)
    if not state.get("started") and state.get("start_sent"):
        # An earlier attempt sent the start and lost the answer: the task may be running or,
        # with a short list, already finished (a second start is then refused). Ask first.
        task = _find_task(callbot, user_task_id)
        if task and task.get("taskStatus") not in (
            None,
            1,
        ):  # 1 = not started (docs/provider.md §6)
            state["started"] = True
            state["taskStatus"] = task.get("taskStatus")
            save_progress(state)
    if not state.get("started"):
        state["start_sent"] = (
            True  # saved first: a worker killed mid-request leaves the doubt recorded
        )
        save_progress(state)
        body = {"userTaskID": user_task_id, "taskOperate": 1, "delCall": 0}
        sent.append(_summarized("mgrTaskStatus", body))
        resp = _post_once(callbot, "mgrTaskStatus", body, state, "start_sent", save_progress)
        state["started"] = True
        state["taskStatus"] = resp.body.get("taskStatus")
        save_progress(state)


def _post_once(
    callbot: CallbotClient,
    endpoint: str,
    body: dict[str, Any],
    state: dict[str, Any],
    flag: str,
    save_progress: Callable[[dict[str, Any]], None],
) -> Response:
    """Send a step whose `flag` ("sent, maybe applied") was saved just before. If it was not
    sent (its rate-limit slot is not yet due) or was refused with an answer, nothing was
    applied: clear the flag, so the next attempt sends it straight away instead of asking
    the provider first and spending its reserved slot on that question (which would make
    it wait again, for ever). Only a lost answer keeps the doubt recorded."""
    try:
        return callbot.post(endpoint, body)
    except Exception as exc:
        if not (isinstance(exc, TransportError) and exc.may_have_reached):
            state[flag] = False
            save_progress(state)
        raise


def _summarized(endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
    safe = redact(body)
    info = safe.get("callInfoList")
    if info and isinstance(info.get("callList"), list):
        info["callList"] = summarize_list(info["callList"], keep=5)
    return {"endpoint": endpoint, "body": safe}


def _find_task(callbot: CallbotClient, user_task_id: str) -> dict[str, Any] | None:
    resp = callbot.post(
        "listTask", {"page": 1, "size": 1, "queryConditions": {"userTaskID": [user_task_id]}}
    )
    tasks: list[dict[str, Any]] = resp.body.get("taskData") or []
    for task in tasks:
        if task.get("userTaskID") == user_task_id:
            return task
    return None


# ---- Callbot v3: campaign control of a task (nxjobs.campaign, docs/campaigns.md) ---------

# mgrTaskStatus's taskOperate (docs/provider.md §6.4).
TASK_START, TASK_PAUSE, TASK_COMPLETE = 1, 2, 3


def manage_task(
    callbot: CallbotClient, *, user_task_id: str, operate: int, delete_undialled: bool
) -> dict[str, Any]:
    """Start (resume), pause or complete task `user_task_id`; `delete_undialled` (delCall 1, with
    complete): the numbers not yet dialled are dropped. Returns the answer's taskID, taskStatus."""
    body = {
        "userTaskID": user_task_id,
        "taskOperate": operate,
        "delCall": 1 if delete_undialled else 0,
    }
    resp = callbot.post("mgrTaskStatus", body)
    return {"taskID": resp.body.get("taskID"), "taskStatus": resp.body.get("taskStatus")}


def stop_orders(
    callbot: CallbotClient, *, user_task_id: str, order_ids: list[str]
) -> dict[str, Any]:
    """Stop these orders of task `user_task_id` for good (stopOrder, irreversible; delCall 1: they
    are not dialled again). Returns totalCount, successCount and errList as the provider gave
    them: an order already stopped or finished is refused there, and nothing is stopped twice."""
    body = {"userTaskID": user_task_id, "orderIDs": list(order_ids), "delCall": 1}
    resp = callbot.post("stopOrder", body)
    return {
        "totalCount": resp.body.get("totalCount"),
        "successCount": resp.body.get("successCount"),
        "errList": resp.body.get("errList") or [],
    }


def update_task(
    callbot: CallbotClient, *, user_task_id: str, scene_id: str, settings: dict[str, Any]
) -> dict[str, Any]:
    """Change the taskCreateSetting fields `settings` of a paused (or not started) task
    (updateTask). Returns the fields sent: the answer is the envelope alone."""
    body = {"userTaskID": user_task_id, "sceneID": scene_id, "taskCreateSetting": dict(settings)}
    callbot.post("updateTask", body)
    return {"updated": sorted(settings)}
