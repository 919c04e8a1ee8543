"""JobTask: carries out the decision of a job's attempt (nxjobs.attempts.job) in Celery.

The attempt takes the slot, claims, sends, classifies and records; the task turns what
it decided into a re-queue (`self.retry`), a failure (JobFailed) or its return value,
and gives the message back (Reject) when Redis went away mid-attempt.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import Task
from celery.exceptions import Reject, SoftTimeLimitExceeded
from kombu.exceptions import OperationalError

from nxjobs.attempts.decisions import (
    Again,
    Decision,
    Failed,
    Rescheduled,
    RetryLater,
    Skipped,
    Submitted,
    WaitForSlot,
)
from nxjobs.attempts.job import JobAttempt, Operation
from nxjobs.jobs import KINDS
from nxjobs.records import JobState
from nxjobs.redact import flower_repr, redact
from tasks.services import get_services

log = logging.getLogger("nxjobs.jobs")
_KIND_BY_TASK = {kind.task_name: kind.name for kind in KINDS.values()}

# Broker/store errors: nothing about the job was decided, give the message back.
_INFRA_ERRORS = (redis.RedisError, OperationalError)


class JobFailed(Exception):
    """Raised after a job is recorded failed, so Celery and Flower show FAILURE too."""


class RateWait(Exception):
    """Shown by Celery/Flower as the reason of a re-queue that waits for a rate-limit slot."""


class JobTask(Task):
    # Acknowledge only after the attempt is recorded, and give the job back if
    # the worker process dies mid-attempt; the record's state machine keeps a
    # redelivered job from being submitted twice.
    acks_late = True
    reject_on_worker_lost = True
    # Our records are the result store.
    ignore_result = True
    # Retries are counted and capped by the attempt (RetrySettings), per error class,
    # and rate-limit waits are not retries at all.
    max_retries = None

    def apply_async(self, args=None, kwargs=None, **options):
        # Retries and rate-limit waits re-publish through here: Flower gets the producer's view of
        # the arguments (kind first, redacted, masked). Set here, not only in the message header
        # (workers/celery_app.py): Celery's "task-sent" event carries this option, and Flower keeps
        # whichever of that event and the worker's "task-received" comes last.
        if kwargs is not None:
            options.setdefault("kwargsrepr", flower_repr(kwargs, _KIND_BY_TASK.get(self.name)))
        if args:
            options.setdefault("argsrepr", repr(redact(list(args))))
        return super().apply_async(args, kwargs, **options)

    def run_job(
        self,
        job_id: str,
        kind: str,
        payload: dict[str, Any],
        operation: Operation,
        *,
        slot_at_us: int | None = None,
        resumed: bool = False,
    ) -> str:
        attempt = JobAttempt(
            get_services(),
            job_id,
            kind,
            payload,
            operation,
            slot_at_us=slot_at_us,
            resumed=resumed,
            time_limit_errors=(SoftTimeLimitExceeded,),
            infra_errors=_INFRA_ERRORS,
        )
        try:
            return self.carry_out(job_id, payload, attempt.run())
        except _INFRA_ERRORS as exc:
            # Redis (store or broker) went away mid-attempt, e.g. restarting. Acking now
            # would drop the job with its record stuck in `running`: requeue it instead
            # (if Redis is still down the message stays unacked and comes back after the
            # visibility timeout). The in-flight marker, if set, makes the rerun look up
            # rather than resend.
            log.warning(
                "job=%s kind=%s store/broker unavailable (%s); message returned to the queue",
                job_id,
                kind,
                type(exc).__name__,
            )
            raise Reject(f"redis unavailable: {type(exc).__name__}", requeue=True) from exc

    def carry_out(self, job_id: str, payload: dict[str, Any], decision: Decision) -> str:
        if isinstance(decision, Submitted):
            return JobState.SUBMITTED.value
        if isinstance(decision, Skipped):
            return "skipped"
        if isinstance(decision, Rescheduled):
            return JobState.SCHEDULED.value  # acked: the schedule publishes it at run_at
        if isinstance(decision, Failed):
            raise JobFailed(decision.reason)
        if not isinstance(decision, Again):
            raise TypeError(f"not a job decision: {decision!r}")
        slot_at_us = decision.slot_at_us if isinstance(decision, WaitForSlot) else None
        kwargs = {
            "job_id": job_id,
            "payload": payload,
            "slot_at_us": slot_at_us,
            "resumed": decision.resumed,
        }
        # A retry after an error shows as a failure; waits (slot, cooldown, in flight) as waits.
        failed = isinstance(decision, RetryLater) and decision.error is not None
        exc = JobFailed(decision.reason) if failed else RateWait(decision.reason)
        raise self.retry(
            kwargs=kwargs, countdown=decision.countdown, priority=decision.priority, exc=exc
        )
