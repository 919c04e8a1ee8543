"""FlushTask: carries out the decision of one flush of coalesced jobs (nxjobs.attempts.batch).

Every re-queue is the same message (same task id, so the same batch) back on the queue.
"""

from __future__ import annotations

import logging

import redis
from celery import Task
from celery.exceptions import Reject
from kombu.exceptions import OperationalError

from nxjobs import coalesce
from nxjobs.attempts import decisions
from nxjobs.attempts.batch import BatchAttempt
from nxjobs.attempts.senders import sender_of
from tasks.base import RateWait
from tasks.services import Services

log = logging.getLogger("nxjobs.coalesce")

_INFRA_ERRORS = (redis.RedisError, OperationalError)


class FlushTask(Task):
    # As JobTask: acknowledged once the outcome is recorded; a lost worker gives the message back.
    acks_late = True
    reject_on_worker_lost = True
    ignore_result = True
    max_retries = None


def flush(task: Task, svc: Services, *, group: str, trigger: str, slot_at_us: int | None) -> str:
    attempt = BatchAttempt(
        svc,
        sender_of(group),
        group=group,
        batch_id=task.request.id,
        trigger=trigger,
        slot_at_us=slot_at_us,
        send_flush=lambda g, t, countdown: coalesce.send_flush(task.app, g, t, countdown=countdown),
    )
    try:
        return carry_out(task, group, attempt.run())
    except _INFRA_ERRORS as exc:
        # Nothing decided: the batch (if built) stays, and this message comes back to finish it.
        log.warning(
            "batch=%s store/broker unavailable (%s); message returned to the queue",
            task.request.id,
            type(exc).__name__,
        )
        raise Reject(f"redis unavailable: {type(exc).__name__}", requeue=True) from exc


def carry_out(task: Task, group: str, decision: decisions.Decision) -> str:
    if isinstance(decision, decisions.Again):
        slot_at_us = decision.slot_at_us if isinstance(decision, decisions.WaitForSlot) else None
        kwargs = {"group": group, "trigger": decision.trigger, "slot_at_us": slot_at_us}
        raise task.retry(
            kwargs=kwargs,
            countdown=decision.countdown,
            priority=decision.priority,
            exc=RateWait(decision.reason),
        )
    if isinstance(decision, decisions.BatchSubmitted):
        return f"submitted {decision.members - decision.rejected} of {decision.members}"
    if isinstance(decision, decisions.BatchFailed):
        return f"failed {decision.members}: {decision.code}"
    if isinstance(decision, decisions.Empty):
        return "empty"
    if isinstance(decision, decisions.Deferred):
        return "deferred"
    if isinstance(decision, decisions.AlreadySent):
        return "already sent"
    raise TypeError(f"not a flush decision: {decision!r}")
