"""Per job kind: which callbacks complete a job, and which ids lead a callback to it.

Pure rules, used by the producer (ids we choose, registered with the record so
a callback that beats the worker's submit result still finds its job) and by
the store when a job is submitted (provider-chosen ids, the final count).

| kind | completed when | correlated by |
|---|---|---|
| number-check | every accepted number has its result | requestId (per-number `<id>-NNNNNN`), batchNo |
| call | its CDR arrived | orderid |
| callbot-list | a task-status callback says finished (taskStatus 3/4) | userTaskID = job id |
| callbot-contact | its order callback says finished | orderID (indexed at enqueue), before userTaskID |
| ota-init, wa-calling | at once: the synchronous answer is final | — |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nxjobs import keys
from nxjobs.client import operations

# Defaults of config.settings.CallbacksSettings.*_deadline_s, for stores built without settings.
DEFAULT_DEADLINES_S = {"number-check": 600.0, "call": 1800.0, "callbot-list": 3600.0, "callbot-contact": 3600.0}


@dataclass(frozen=True)
class Expectation:
    # Completion units needed (None = not known yet); 0 means complete on submit.
    needed: int | None
    # Correlation index keys that must point at the job.
    index_keys: tuple[str, ...] = ()


def on_enqueue(kind: str, job_id: str, payload: Any) -> Expectation:
    """What we know before anything is sent: the ids we choose, and an upper bound of units."""
    if kind == "call":
        return Expectation(1, (keys.callback_index("call", operations.call_order_id(job_id, payload)),))
    if kind == "number-check":
        batch_no = operations.number_check_batch_no(job_id, payload)
        return Expectation(len(payload.phones), (keys.callback_index("nc-batch", batch_no),))
    if kind == "callbot-list":
        return Expectation(1)  # userTaskID is the job id: no index needed
    if kind == "callbot-contact":
        return Expectation(1, (contact_index(operations.contact_job_order_id(job_id, payload)),))
    return Expectation(0)


def on_submit(kind: str | None, result: dict[str, Any] | None) -> Expectation:
    """What the submit answer adds: provider-chosen ids, and numbers rejected up front."""
    result = result or {}
    # The ids we chose are indexed again: a record started without our producer lacks them.
    if kind == "number-check":
        index = tuple(keys.callback_index(name, str(result[field])) for name, field in
                      (("nc-req", "requestId"), ("nc-batch", "batchNo")) if result.get(field))
        numbers = int(result.get("numbers") or 0)
        rejected = len(result.get("failNumber") or [])
        return Expectation(max(numbers - rejected, 0), index)
    if kind == "call":
        orderid = result.get("orderid")
        return Expectation(1, (keys.callback_index("call", str(orderid)),) if orderid else ())
    if kind == "callbot-list":
        return Expectation(1)
    if kind == "callbot-contact":
        order_id = result.get("orderID")
        return Expectation(1, (contact_index(str(order_id)),) if order_id else ())
    return Expectation(0)


def contact_index(order_id: str) -> str:
    """A `callbot-contact` job's correlation key: its orderID (globally unique, reference §6.1)."""
    return keys.callback_index("cb-order", order_id)
