"""Per job kind: which callbacks complete a job, and which ids lead a callback to it.

Pure rules, used by the producer (ids we choose, registered with the record so
a callback that beats the worker's submit result still finds its job) and by
the store when a job is submitted (provider-chosen ids, the final count).

| kind | completed when | correlated by |
|---|---|---|
| number-check | every accepted number has its result | requestId (per number), batchNo |
| call | its CDR arrived | orderid |
| callbot-list | each task's status callback says finished (3/4) | userTaskID = job id (+`-z<n>`) |
| callbot-contact | its order callback says finished | orderID, before userTaskID |
| ota-init, wa-calling | at once: the synchronous answer is final | — |

The per-number requestId is `<id>-NNNNNN`; a contact's orderID is indexed at enqueue.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nxjobs import keys, wire
from nxjobs.redact import mask_phone

# Defaults of config.settings.CallbacksSettings.*_deadline_s, for stores built without settings.
DEFAULT_DEADLINES_S = {
    "number-check": 600.0,
    "call": 1800.0,
    "callbot-list": 3600.0,
    "callbot-contact": 3600.0,
}


# Callback entries a job stores at most (beyond them, distinct callbacks are counted and dropped):
# a call has one CDR, a contact a few call attempts and its order, a list that much per contact.
CALL_CALLBACKS_MAX = 8
CONTACT_CALLBACKS_MAX = 64
# A job that can get more callbacks than this keeps them out of its record hash, paged
# (keys.CALLBACKS_PAGED, lib/items.lua): a number check of more numbers, every callbot list (each
# contact's calls and order). A call, a one-number check, a coalesced member or a contact keeps
# its few inline: an items hash would cost each of them another key.
INLINE_CALLBACKS = 8
# Distinct outcomes a paged job's summary counts apart; the rest are counted as "other".
SUMMARY_OUTCOMES_MAX = 32
# Characters of a provider value an outcome keeps (a summary key stays short whatever comes).
_OUTCOME_VALUE_MAX = 32


@dataclass(frozen=True)
class Expectation:
    # Completion units needed (None = not known yet); 0 means complete on submit.
    needed: int | None
    # Correlation index keys that must point at the job.
    index_keys: tuple[str, ...] = ()
    # Record fields that let the ledger check a callback's ids (keys.PROOF_* / keys.proof_*), and
    # how many callback entries the job may store (None = no cap).
    proof: dict[str, str] | None = None
    callbacks_max: int | None = None
    # Its callbacks and proof marks go to its items hash (keys.job_items), paged.
    paged: bool = False


def phone_key(phone: str) -> str:
    """How a callback's number is compared with the job's: masked, as the provider may mask it
    (`999***6789`): the first three and last digits of the same length must agree."""
    digits = "".join(ch for ch in str(phone) if ch.isdigit() or ch == "*")
    return mask_phone(digits) if digits else ""


def on_enqueue(kind: str, job_id: str, payload: Any) -> Expectation:
    """What we know before anything is sent: the ids we choose, and an upper bound of units."""
    if kind == "call":
        return Expectation(
            1,
            _call_index(job_id, wire.call_order_id(job_id, payload)),
            callbacks_max=CALL_CALLBACKS_MAX,
        )
    if kind == "number-check":
        batch_no = wire.number_check_batch_no(job_id, payload)
        proof = {
            keys.PROOF_BATCH: batch_no,
            **{keys.proof_phone(phone_key(p)): "1" for p in payload.phones},
        }
        return Expectation(
            len(payload.phones),
            (keys.callback_index("nc-batch", batch_no),),
            proof,
            callbacks_max=len(payload.phones),
            paged=len(payload.phones) > INLINE_CALLBACKS,
        )
    if kind == "callbot-list":
        # userTaskID is the job id: no index needed. Its orders: `<job id>-<index>`, or the explicit
        # ones.
        contacts = payload.contacts
        proof = {
            keys.PROOF_ORDERS: str(len(contacts)),
            **{keys.proof_order(c.order_id): "1" for c in contacts if c.order_id},
        }
        return Expectation(
            1, (), proof, callbacks_max=CONTACT_CALLBACKS_MAX * (len(contacts) + 1), paged=True
        )
    if kind == "callbot-contact":
        return Expectation(
            1,
            (contact_index(wire.contact_job_order_id(job_id, payload)),),
            {keys.PROOF_TASK: payload.user_task_id},
            callbacks_max=CONTACT_CALLBACKS_MAX,
        )
    return Expectation(0)


def member_proof(kind: str, key: str, user_task_id: str) -> tuple[str, str]:
    """The record field and value a coalesced member's callbacks are proved against: a number
    check's number (its key), a contact's task."""
    if kind == "number-check":
        return keys.proof_phone(phone_key(key)), "1"
    return keys.PROOF_TASK, user_task_id


def member_callbacks_max(kind: str) -> int:
    return 1 if kind == "number-check" else CONTACT_CALLBACKS_MAX


def _call_index(job_id: str, orderid: str) -> tuple[str, ...]:
    """A CDR names its call by orderid: our default orderid is the job id, which the receiver
    looks up directly; only an explicit one needs an index key (some 150 B a call)."""
    return () if orderid == job_id else (keys.callback_index("call", orderid),)


def on_submit(kind: str | None, result: dict[str, Any] | None, job_id: str = "") -> Expectation:
    """What the submit answer adds: provider-chosen ids, and numbers rejected up front."""
    result = result or {}
    # The ids we chose are indexed again: a record started without our producer lacks them.
    if kind == "number-check":
        index = tuple(
            keys.callback_index(name, str(result[field]))
            for name, field in (("nc-req", "requestId"), ("nc-batch", "batchNo"))
            if result.get(field)
        )
        numbers = int(result.get("numbers") or 0)
        rejected = len(result.get("failNumber") or [])
        request_id = result.get("requestId")
        return Expectation(
            max(numbers - rejected, 0),
            index,
            {keys.PROOF_ID: str(request_id)} if request_id else None,
        )
    if kind == "call":
        orderid = result.get("orderid")
        sessionid = result.get("sessionid")
        return Expectation(
            1,
            _call_index(job_id, str(orderid)) if orderid else (),
            {keys.PROOF_ID: str(sessionid)} if sessionid else None,
        )
    if kind == "callbot-list":
        # One task-status callback per task it started (a list split by time zone has several).
        tasks = result.get("tasks")
        if isinstance(tasks, list) and tasks:
            return Expectation(max(sum(1 for t in tasks if t.get("started")), 1))
        return Expectation(1)
    if kind == "callbot-contact":
        order_id = result.get("orderID")
        return Expectation(1, (contact_index(str(order_id)),) if order_id else ())
    return Expectation(0)


def list_task_unit(user_task_id: str) -> str:
    """The completion unit of a callbot list's task that finished: one per task of a list split by
    time zone (`<job id>-z<n>`), the one of a list of one task (its userTaskID is the job id)."""
    zone = wire.list_job_of_task(user_task_id)[1]
    return "task-finished" if zone is None else f"task-finished:z{zone}"


def callback_outcome(callback_type: str, data: dict[str, Any]) -> str:
    """What a callback's summary counts it as: a DR by its code (0 = success, else a per-number
    code, docs/provider.md §5.4), a Callbot call by its callStatus, an order by finished or not,
    a task status callback by its taskStatus, a CDR by its hangup_cause. The ledger passes it to
    the script (a paged job's counted summary) and the store reads a small job's from its entries:
    both from the entry as stored (`type`, redacted `data`)."""
    if callback_type == "number-check":
        value = data.get("code")
    elif callback_type == "callbot-call":
        detail = data.get("callInfoDetail")
        value = detail.get("callStatus") if isinstance(detail, dict) else None
    elif callback_type == "callbot-order":
        finish = data.get("finish")
        done = finish.strip().lower() in ("1", "true", "yes") if isinstance(finish, str) else finish
        value = "finished" if done else "open"
    elif callback_type == "callbot-task":
        value = data.get("taskStatus")
    elif callback_type == "cdr":
        value = data.get("hangup_cause")
    else:
        value = None
    text = "?" if value is None or value == "" else str(value)[:_OUTCOME_VALUE_MAX]
    return f"{callback_type}:{text}"


def summarize(callbacks: list[dict[str, Any]]) -> dict[str, int]:
    """A small job's summary, from its entries (a paged job's is counted as they come)."""
    counts: dict[str, int] = {}
    for entry in callbacks:
        outcome = callback_outcome(str(entry.get("type") or ""), entry.get("data") or {})
        if outcome not in counts and len(counts) >= SUMMARY_OUTCOMES_MAX:
            outcome = "other"
        counts[outcome] = counts.get(outcome, 0) + 1
    return counts


def contact_index(order_id: str) -> str:
    """A `callbot-contact` job's correlation key: its orderID (globally unique,
    docs/provider.md §6.1)."""
    return keys.callback_index("cb-order", order_id)
