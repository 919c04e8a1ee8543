"""Callback payloads (pydantic) and the normalised Event each one becomes.

An Event says which job it belongs to (correlation index keys to try, then a
direct job id), how to recognise a repeat (dedupe key), whether it counts
towards completion (unit), and what to store (the payload, redacted). The
receiver and the reconciliation build Events the same way, so a result that
came by callback and the same result found by a query are one and the same.

A Callbot call or order callback belongs to a `callbot-contact` job when its
orderID is indexed (the job added that contact), else to the `callbot-list`
job whose id is its userTaskID (a list split by time zone: without its `-z<n>`).

Dedupe keys (docs/provider.md §5.4, §6.6, §7.3/7.4): Number Check = per-number id;
Callbot call = callID; order = (orderID, finish); task = (taskStatus,
taskStat.totalCall); CDR = sessionid (callback) or CDR id (query).

Finding a job is not proof the callback is its own: each Event also carries
the ids the ledger checks against what the job recorded (`check`, `proof`),
so a callback changes only the job its ids prove (docs in nxjobs.callbacks.ledger).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import from_json

from nxjobs import coalesce, keys
from nxjobs.correlate import contact_index, list_task_unit, phone_key
from nxjobs.redact import redact
from nxjobs.wire import list_job_of_task

# Number Check: per-number ids are `<submit requestId>-<6 digits>` (docs/provider.md §5.1).
_PER_NUMBER_SUFFIX = re.compile(r"-[0-9]{6}$")
_Id = Annotated[str, Field(min_length=1, max_length=128)]

# Callbot taskStatus values meaning "will not dial any more" (docs/provider.md §6.4).
TASK_FINISHED = frozenset({3, 4})

NUMBER_CHECK = "number-check"
CALLBOT_CALL = "callbot-call"
CALLBOT_ORDER = "callbot-order"
CALLBOT_TASK = "callbot-task"
CDR = "cdr"
TYPES = (NUMBER_CHECK, CALLBOT_CALL, CALLBOT_ORDER, CALLBOT_TASK, CDR)

# What the ledger checks an Event's ids against (Event.check; the ids are Event.proof):
CHECK_NUMBER = (
    "nc"  # (request id, batchNo, phone key): the job's requestId, batchNo and one of its numbers
)
CHECK_CDR = (
    "cdr"  # (sessionid,): the makecall's sessionid; a failed/ambiguous call is looked up instead
)
CHECK_ORDER = "order"  # (userTaskID, orderID): the contact's task, or an order of the list job
CHECK_TASK = (
    "task"  # (userTaskID,): a task of the list job (the job id, or `-z<n>` below its count)
)


class Malformed(ValueError):
    """The body is not JSON or not the shape this callback type needs."""


class _Payload(BaseModel):
    # Keep every field NXCloud sends (stored redacted); validate the ones we route on.
    model_config = ConfigDict(extra="allow", str_strip_whitespace=True)


class NumberCheckResult(_Payload):
    """One number's DR (current: requestId/message; legacy: messageId/msg), or a query row."""

    requestId: str | None = Field(default=None, max_length=128)
    messageId: str | None = Field(default=None, max_length=128)
    batchNo: str | None = Field(default=None, max_length=64)
    phone: str | None = Field(default=None, max_length=32)
    code: int | str | None = None

    @field_validator("phone", mode="before")
    @classmethod
    def _phone_text(cls, value: Any) -> Any:
        # Some senders write the number as a JSON number.
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _has_id(self) -> NumberCheckResult:
        if not (self.requestId or self.messageId):
            raise ValueError("requestId (or legacy messageId) is required")
        return self

    @property
    def number_id(self) -> str:
        return self.requestId or self.messageId or ""


class CallInfo(_Payload):
    callID: _Id


class CallbotCall(_Payload):
    userTaskID: _Id
    orderID: _Id
    callInfoDetail: CallInfo


class CallbotOrder(_Payload):
    userTaskID: _Id
    orderID: _Id
    finish: bool | int | str | None = None


class TaskStat(_Payload):
    totalCall: int | None = None


class CallbotTask(_Payload):
    userTaskID: _Id
    taskStatus: int
    taskStat: TaskStat | None = None


class AgentCdr(_Payload):
    """CDR callback (§7.3, has sessionid) or a CDR-by-orderid row (§7.4, has id)."""

    orderid: _Id
    sessionid: str | None = Field(default=None, max_length=128)
    id: str | int | None = None

    @model_validator(mode="after")
    def _has_id(self) -> AgentCdr:
        if not (self.sessionid or self.id):
            raise ValueError("sessionid (callback) or id (query row) is required")
        return self


MODELS: dict[str, type[_Payload]] = {
    NUMBER_CHECK: NumberCheckResult,
    CALLBOT_CALL: CallbotCall,
    CALLBOT_ORDER: CallbotOrder,
    CALLBOT_TASK: CallbotTask,
    CDR: AgentCdr,
}


class Event(NamedTuple):
    type: str
    job_kind: str  # the job kind this callback belongs to
    index_keys: tuple[str, ...]  # correlation index keys, tried in order
    direct_id: str  # a job id to try when no index key matches ("" = none)
    dedupe: str
    # Completion unit ("" = does not count towards completion; equal to `dedupe`: every distinct
    # callback counts, as each Number Check DR does, and the ledger needs no set of units).
    unit: str
    data: dict[str, Any]  # the payload, redacted
    ids: dict[str, Any]  # the correlating ids, for the unmatched list
    # Set on an Agent CDR: the result a job failed as "ambiguous" gets when this proves the call
    # happened.
    resolves: dict[str, Any] | None = None
    # A second job kind the callback may belong to, found by an index key, and its completion unit
    # there: a Callbot order of a `callbot-contact` job (by orderID) counts for that job, while an
    # order of a `callbot-list` job (by userTaskID) counts for nothing ("" = no second kind).
    alt_kind: str = ""
    alt_unit: str = ""
    # How the ledger proves the job is this callback's own (CHECK_*; "" = finding it is enough),
    # and the ids it compares with what the job recorded.
    check: str = ""
    proof: tuple[str, ...] = ()
    # A signed callback's replay key ("" = unsigned), remembered until `replay_until` (unix s).
    replay: str = ""
    replay_until: int = 0
    # A DR that may be a coalesced member's: index_keys[0] is its batch's member index hash
    # (nxjobs.keys.member_index), read at this field (the phone); "" = no such index.
    member: str = ""


CONTACT_KIND = "callbot-contact"
# The completion unit of a callbot-contact job: its order finished.
ORDER_FINISHED = "order-finished"


def _bool_flag(value: Any) -> str:
    if isinstance(value, str):
        return "1" if value.strip().lower() in ("1", "true", "yes") else "0"
    return "1" if value else "0"


def number_check_base_id(number_id: str) -> str:
    """The submit requestId a per-number id belongs to."""
    return _PER_NUMBER_SUFFIX.sub("", number_id)


def to_event(kind: str, model: _Payload, payload: dict[str, Any]) -> Event:
    """The Event for callback type `kind`: `model` routes it, `payload` (what `model` was validated
    from) is stored as it came, redacted."""
    data = redact(payload)
    if isinstance(model, NumberCheckResult):
        nid = model.number_id
        base = number_check_base_id(nid)
        phone = model.phone or ""
        index = [keys.callback_index("nc-req", base)]
        member = ""
        if model.batchNo:
            index.append(keys.callback_index("nc-batch", model.batchNo))
            if phone:
                # A coalesced job is one number of a shared batch (nxjobs.coalesce): found by both,
                # in its batch's member index.
                index.insert(0, coalesce.member_index_key(model.batchNo))
                index.append(keys.member_index_before_shards(model.batchNo, phone))
                member = phone
        dedupe = f"nc:{nid}"
        return Event(
            NUMBER_CHECK,
            "number-check",
            tuple(index),
            "",
            dedupe,
            dedupe,
            data,
            {"requestId": nid, "batchNo": model.batchNo},
            check=CHECK_NUMBER,
            proof=(base, model.batchNo or "", phone_key(phone)),
            member=member,
        )
    if isinstance(model, CallbotCall):
        # A contact added on its own (callbot-contact) is found by its orderID; else the list job.
        call_id = model.callInfoDetail.callID
        return Event(
            CALLBOT_CALL,
            "callbot-list",
            (contact_index(model.orderID),),
            list_job_of_task(model.userTaskID)[0],
            f"call:{call_id}",
            "",
            data,
            {"userTaskID": model.userTaskID, "orderID": model.orderID, "callID": call_id},
            alt_kind=CONTACT_KIND,
            check=CHECK_ORDER,
            proof=(model.userTaskID, model.orderID),
        )
    if isinstance(model, CallbotOrder):
        finish = _bool_flag(model.finish)
        return Event(
            CALLBOT_ORDER,
            "callbot-list",
            (contact_index(model.orderID),),
            list_job_of_task(model.userTaskID)[0],
            f"order:{model.orderID}:{finish}",
            "",
            data,
            {"userTaskID": model.userTaskID, "orderID": model.orderID},
            alt_kind=CONTACT_KIND,
            alt_unit=ORDER_FINISHED if finish == "1" else "",
            check=CHECK_ORDER,
            proof=(model.userTaskID, model.orderID),
        )
    if isinstance(model, CallbotTask):
        total = model.taskStat.totalCall if model.taskStat else None
        # A list split by time zone finishes task by task: each is its own unit.
        job_id, zone = list_job_of_task(model.userTaskID)
        unit = list_task_unit(model.userTaskID) if model.taskStatus in TASK_FINISHED else ""
        dedupe = f"task:{model.taskStatus}:{total}"
        return Event(
            CALLBOT_TASK,
            "callbot-list",
            (),
            job_id,
            dedupe if zone is None else f"{dedupe}:z{zone}",
            unit,
            data,
            {"userTaskID": model.userTaskID, "taskStatus": model.taskStatus},
            check=CHECK_TASK,
            proof=(model.userTaskID,),
        )
    if isinstance(model, AgentCdr):
        one = model.sessionid or f"row-{model.id}"
        resolves = {
            "orderid": model.orderid,
            "info": "makecall answer was lost; the call was found by its CDR",
        }
        if model.sessionid:
            resolves["sessionid"] = model.sessionid
        return Event(
            CDR,
            "call",
            (keys.callback_index("call", model.orderid),),
            model.orderid,
            f"cdr:{one}",
            "cdr",
            data,
            {"orderid": model.orderid, "sessionid": model.sessionid},
            resolves,
            check=CHECK_CDR,
            proof=(model.sessionid or "",),
        )
    raise TypeError(f"no event for {type(model).__name__}")


def parse(kind: str, raw: bytes | str) -> Event:
    """Validate a raw JSON body as callback type `kind`; raise Malformed (never ValidationError)."""
    # Parsed once to a dict, validated, and that dict stored: the receiver's hot path, where
    # validating the JSON into a model and dumping the model back cost twice as much.
    try:
        # Strict JSON (RFC 8259): NaN and Infinity are not numbers a callback may carry.
        payload = from_json(raw, allow_inf_nan=False)
    except ValueError as exc:
        raise Malformed(f"body: Invalid JSON: {exc}") from None
    return from_dict(kind, payload)


def from_dict(kind: str, data: Any) -> Event:
    """The Event for an already parsed JSON body or query-API row; raise Malformed."""
    try:
        model = MODELS[kind].model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "body"
        raise Malformed(f"{where}: {err['msg']}") from None
    return to_event(kind, model, data)
