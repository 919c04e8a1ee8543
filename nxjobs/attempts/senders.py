"""What differs per kind in a flush of coalesced jobs (nxjobs.attempts.batch): its limits,
its lookup, its request and each member's share of the answer. No Celery here."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

from nxjobs import coalesce, keys, wire
from nxjobs.callbacks import reconcile
from nxjobs.client import operations
from nxjobs.client.operations import NUMBER_CHECK_PATH, Outcome, check_number_batch
from nxjobs.records import JobError, utc_now_iso
from nxjobs.redact import mask_phone

_LONG_DIGITS = re.compile(r"[0-9]{7,}")


@dataclass(frozen=True)
class Batch:
    """A built batch, as the kind-specific half sees it."""

    group: str
    batch_id: str
    batch_no: str
    members: list[tuple[str, str]]  # (job id, key)
    items: dict[str, dict[str, Any]]  # job id -> callList item (contacts)


class Share(NamedTuple):
    """One member's part of the answer: its result, or the error that fails it (that job only)."""

    job_id: str
    result: dict[str, Any] | None = None
    error: JobError | None = None


class Sender:
    """The kind-specific half of a flush. `look_up` answers for a batch an interrupted attempt may
    have sent: the answer it got, or None to send it (again)."""

    spec: coalesce.Spec

    def limits(self, svc: Any, group: str) -> list[Any]:
        raise NotImplementedError

    def look_up(self, svc: Any, batch: Batch, outcome: Outcome) -> dict[str, Any] | None:
        raise NotImplementedError

    def send(self, svc: Any, batch: Batch, outcome: Outcome) -> dict[str, Any]:
        raise NotImplementedError

    def shares(self, batch: Batch, answer: dict[str, Any]) -> list[Share]:
        raise NotImplementedError

    def replay_payload(self, batch: Batch, job_id: str, key: str) -> dict[str, Any]:
        """The payload a member is replayed with from the dead letters: its own, sent on its own."""
        raise NotImplementedError


class NumberCheckSender(Sender):
    spec = coalesce.NUMBER_CHECKS

    def limits(self, svc: Any, group: str) -> list[Any]:
        # Both quotas if a full batch would be big: the batch is taken only once the slot is ours.
        return svc.gate.limits_for(
            "api2", NUMBER_CHECK_PATH, {"phone": ",".join("0" * svc.coalesce.max_items(group))}
        )

    def look_up(self, svc: Any, batch: Batch, outcome: Outcome) -> dict[str, Any] | None:
        created_iso = (
            svc.redis.hget(keys.coalesce_batch(batch.batch_id), "created_iso") or utc_now_iso()
        )
        found = reconcile.find_number_check(
            svc.api2,
            svc.settings.api2.appkey,
            batch.batch_no,
            created_iso,
            time.time(),
            len(batch.members),
        )
        outcome.request.append(
            {
                "endpoint": "lookup:" + reconcile.NUMBER_QUERY_PATH,
                "body": {"batchNo": batch.batch_no},
            }
        )
        return None if found is None else {**found, "failNumber": []}

    def send(self, svc: Any, batch: Batch, outcome: Outcome) -> dict[str, Any]:
        callbacks = svc.settings.callbacks
        return check_number_batch(
            svc.api2,
            phones=[phone for _, phone in batch.members],
            batch_no=batch.batch_no,
            check_level=coalesce.level_of(batch.group),
            appkey=svc.settings.api2.appkey,
            public_url=callbacks.public_url,
            outcome=outcome,
            callback_token=callbacks.token.get_secret_value() if callbacks.token else None,
        )

    def shares(self, batch: Batch, answer: dict[str, Any]) -> list[Share]:
        rejected = coalesce.rejected_members(batch.members, answer.get("failNumber") or [])
        share: dict[str, Any] = {
            "requestId": answer.get("requestId"),
            "batchNo": answer.get("batchNo") or batch.batch_no,
            "numbers": 1,
            "failNumber": [],
            "coalesced": {"batch": batch.batch_id, "numbers": len(batch.members)},
        }
        return [
            (
                Share(
                    job_id,
                    error=JobError(
                        code="number_rejected",
                        message=f"{mask_phone(phone)}: {rejected[job_id]}",
                        retryable=False,
                    ),
                )
                if job_id in rejected
                else Share(job_id, result=share)
            )
            for job_id, phone in batch.members
        ]

    def replay_payload(self, batch: Batch, job_id: str, key: str) -> dict[str, Any]:
        return {"phones": [key], "check_level": coalesce.level_of(batch.group)}


class ContactSender(Sender):
    spec = coalesce.CONTACTS

    def limits(self, svc: Any, group: str) -> list[Any]:
        return svc.gate.limits_for("callbot", "addBatchCall", None)

    def look_up(self, svc: Any, batch: Batch, outcome: Outcome) -> dict[str, Any] | None:
        # Sent again as it was: the provider refuses an orderID it already has ("already exists"),
        # which counts as added (operations.rejected_orders), so no contact is added twice.
        return None

    def send(self, svc: Any, batch: Batch, outcome: Outcome) -> dict[str, Any]:
        return operations.add_contacts(
            svc.callbot,
            user_task_id=coalesce.user_task_id_of(batch.group),
            call_list=[batch.items[job_id] for job_id, _ in batch.members if job_id in batch.items],
            public_url=svc.settings.callbacks.public_url,
            outcome=outcome,
            shared=True,
        )

    def shares(self, batch: Batch, answer: dict[str, Any]) -> list[Share]:
        refused = operations.rejected_orders(answer.get("errList"))
        share = {
            "userTaskID": coalesce.user_task_id_of(batch.group),
            "contacts": 1,
            "totalCount": answer.get("totalCount"),
            "successCount": answer.get("successCount"),
            "coalesced": {"batch": batch.batch_id, "contacts": len(batch.members)},
        }
        out = []
        for job_id, order_id in batch.members:
            if job_id not in batch.items:  # cannot happen: every contact is pushed with its item
                out.append(
                    Share(
                        job_id,
                        error=JobError(
                            code="internal_error", message="contact item missing", retryable=False
                        ),
                    )
                )
            elif order_id in refused:
                message = _LONG_DIGITS.sub(lambda m: mask_phone(m.group()), refused[order_id])
                out.append(
                    Share(
                        job_id,
                        error=JobError(
                            code=operations.CONTACT_REJECTED,
                            message=f"orderID {order_id}: {message}",
                            retryable=False,
                        ),
                    )
                )
            else:
                out.append(Share(job_id, result={**share, "orderID": order_id}))
        return out

    def replay_payload(self, batch: Batch, job_id: str, key: str) -> dict[str, Any]:
        item = batch.items.get(job_id) or {}
        return {
            "user_task_id": coalesce.user_task_id_of(batch.group),
            "contact": wire.contact_of_item(item) if item else {"order_id": key},
        }


SENDERS: dict[str, Sender] = {
    sender.spec.kind: sender for sender in (NumberCheckSender(), ContactSender())
}


def sender_of(group: str) -> Sender:
    return SENDERS[coalesce.spec_of(group).kind]
