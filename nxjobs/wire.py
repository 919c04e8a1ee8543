"""The wire contract: the ids we put in provider requests, and the callList item shape.

Every attempt, lookup and callback of a job is matched by these ids (docs/callbacks.md),
so they derive from the job id alone and never change between attempts.
"""

from __future__ import annotations

import re
from typing import Any

from nxjobs.jobs import CallbotContactPayload, CallPayload, Contact, NumberCheckPayload


def call_order_id(job_id: str, payload: CallPayload) -> str:
    # A uuid4 hex job id is 32 alphanumerics: exactly the longest orderid allowed.
    return payload.order_id or job_id


def number_check_batch_no(job_id: str, payload: NumberCheckPayload) -> str:
    return payload.batch_no or job_id


def contact_order_id(job_id: str, index: int, explicit: str | None) -> str:
    return explicit or f"{job_id}-{index}"


def call_list_item(contact: Contact, order_id: str) -> dict[str, Any]:
    """One callList entry (docs/provider.md §6.3), unmasked: what addBatchCall sends."""
    item: dict[str, Any] = {
        "orderID": order_id,
        "userPhone": contact.user_phone,
        "userName": contact.user_name,
    }
    if contact.params:
        item["params"] = [{"name": p.name, "value": p.value} for p in contact.params]
    return item


def contact_job_order_id(job_id: str, payload: CallbotContactPayload) -> str:
    # A uuid4 hex job id is 32 letters and digits: a valid, globally unique orderID.
    return payload.contact.order_id or job_id


def contact_of_item(item: dict[str, Any]) -> dict[str, Any]:
    """The `contact` payload of a callList item: what a dead-lettered contact is replayed with."""
    contact: dict[str, Any] = {"user_phone": item["userPhone"], "order_id": item["orderID"]}
    if item.get("userName"):
        contact["user_name"] = item["userName"]
    if item.get("params"):
        contact["params"] = item["params"]
    return contact


# A callbot list split by time zone (nxjobs.callbot_zones) has one task per group: the job id and
# `-z<n>`, n from 0 in the plan's order; a list of one group keeps the job id itself.
ZONE_SUFFIX = "-z"
_ZONE_TASK_RE = re.compile(r"^(.+)-z([0-9]{1,4})$")


def zone_task_id(job_id: str, n: int) -> str:
    return f"{job_id}{ZONE_SUFFIX}{n}"


def list_job_of_task(user_task_id: str) -> tuple[str, int | None]:
    """(job id, zone group n or None) of a callbot list's userTaskID: what a callback names."""
    m = _ZONE_TASK_RE.match(user_task_id)
    return (m.group(1), int(m.group(2))) if m else (user_task_id, None)
