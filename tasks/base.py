"""JobTask: the one place a job attempt is run, classified, retried and recorded.

Reads top to bottom: take the first request's rate-limit slot (or go back to
the queue until it comes), claim the record, run the operation, classify the
outcome, then record submitted / retrying / failed. Operations never see Celery.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any, Callable

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded

from nxjobs import keys
from nxjobs.client.backoff import backoff_delay_s
from nxjobs.client.errors import Action, NXCloudError
from nxjobs.client.operations import AmbiguousSubmission, Outcome
from nxjobs.jobs import PRIORITY_NEW, PRIORITY_RESERVED_SLOT, PRIORITY_RETRY, InvalidJob, validate_payload
from nxjobs.ratelimit.gate import SlotNotReady
from nxjobs.ratelimit.limiter import Grant
from nxjobs.records import TERMINAL_STATES, JobError, JobState
from nxjobs.redact import redact
from nxjobs.store import Transition, TransitionRefused
from tasks.limits import first_request
from tasks.services import Services, get_services

log = logging.getLogger("nxjobs.jobs")

Operation = Callable[[Services, str, Any, Outcome], Outcome]


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
    # Retries are counted and capped by run_job (RetrySettings), per error class,
    # and rate-limit waits are not retries at all.
    max_retries = None

    def apply_async(self, args=None, kwargs=None, **options):
        # Retries re-publish through here: keep Flower's view of the arguments redacted.
        if kwargs is not None:
            options.setdefault("kwargsrepr", repr(redact(kwargs)))
        if args:
            options.setdefault("argsrepr", repr(redact(list(args))))
        return super().apply_async(args, kwargs, **options)

    def run_job(self, job_id: str, kind: str, payload: dict[str, Any], operation: Operation, *,
                slot_at_us: int | None = None, resumed: bool = False) -> str:
        svc = get_services()
        started = time.monotonic()
        try:
            model = validate_payload(kind, payload)
        except InvalidJob as exc:
            claim = self._claim(svc, job_id, kind, payload, bump=True)
            if claim is None:
                return "skipped"
            return self._fail(svc, job_id, kind, claim.attempts, started, JobError(
                code="invalid_payload", message=str(exc), retryable=False))

        # A job waiting for its slot is not running: take the slot before claiming.
        limits = svc.gate.limits_for(*first_request(kind, model))
        try:
            svc.gate.take(limits, prepaid_at_us=slot_at_us)
        except SlotNotReady as wait:
            svc.store.incr(job_id, "waits")
            raise self._requeue_for_slot(svc, job_id, payload, wait.grant, resumed=resumed)
        svc.gate.begin_attempt(first_slot_paid=bool(limits))

        claim = self._claim(svc, job_id, kind, payload, bump=not resumed)
        if claim is None:
            return "skipped"

        outcome = Outcome()
        try:
            operation(svc, job_id, model, outcome)
        except SlotNotReady as wait:
            # A later request of a multi-step job: its progress is saved, resume at the slot.
            svc.store.transition(job_id, JobState.RETRYING, incr=["waits"], request=outcome.request)
            raise self._requeue_for_slot(svc, job_id, payload, wait.grant, resumed=True)
        except AmbiguousSubmission as err:
            svc.redis.zadd(keys.RECONCILE, {job_id: time.time()})
            return self._fail(svc, job_id, kind, claim.attempts, started,
                              JobError(code=err.code, message=err.message, retryable=False), outcome)
        except NXCloudError as err:
            if err.classification.throttled:
                return self._throttled(svc, job_id, kind, payload, claim, started, err, outcome)
            return self._retry_or_fail(svc, job_id, kind, payload, claim, started, err, outcome)
        except SoftTimeLimitExceeded:
            if kind == "call":
                svc.redis.zadd(keys.RECONCILE, {job_id: time.time()})
            return self._fail(svc, job_id, kind, claim.attempts, started, JobError(
                code="time_limit", message="attempt exceeded the task time limit", retryable=False), outcome)
        except Exception as exc:
            # A bug or an unreachable store: record what we can, then let Celery see it.
            try:
                svc.store.transition(job_id, JobState.FAILED, request=outcome.request, error=JobError(
                    code="internal_error", message=type(exc).__name__, retryable=False).model_dump())
            except Exception:
                log.exception("job=%s could not record internal error", job_id)
            raise

        svc.store.transition(job_id, JobState.SUBMITTED, request=outcome.request, result=outcome.result, error=None)
        _log_attempt(job_id, kind, claim.attempts, "submitted", "0", started)
        return JobState.SUBMITTED.value

    # ---- steps --------------------------------------------------------------

    def _claim(self, svc: Services, job_id: str, kind: str, payload: dict[str, Any], *,
               bump: bool) -> Transition | None:
        """Move the record to running; None if the job is already past submission (a redelivery)."""
        incr = ["attempts"] if bump else []
        try:
            return svc.store.transition(job_id, JobState.RUNNING, incr=incr)
        except TransitionRefused as refused:
            if refused.current is None:
                # Enqueued without our producer, or the record expired: start one now.
                svc.store.create(job_id, kind, redact(payload))
                return svc.store.transition(job_id, JobState.RUNNING, incr=["attempts"])
            if JobState(refused.current) in TERMINAL_STATES or refused.current == JobState.SUBMITTED.value:
                log.info("job=%s kind=%s already %s; redelivery ignored, nothing re-sent", job_id, kind,
                         refused.current)
                return None
            raise

    def _requeue_for_slot(self, svc: Services, job_id: str, payload: dict[str, Any], grant: Grant, *,
                          resumed: bool):
        if grant.reserved:
            countdown = grant.wait_s
            priority = PRIORITY_RESERVED_SLOT
        else:
            # Beyond the reservation horizon: come back while the slot is still ahead,
            # spread out so the waiting backlog does not wake all at once.
            horizon = svc.settings.ratelimit.horizon_s
            countdown = max(0.5, grant.wait_s - horizon * svc.rng.uniform(0.25, 0.75))
            priority = PRIORITY_NEW
        kwargs = {"job_id": job_id, "payload": payload, "slot_at_us": grant.slot_at_us if grant.reserved else None,
                  "resumed": resumed}
        return self.retry(kwargs=kwargs, countdown=countdown, priority=priority,
                          exc=RateWait(f"waiting {countdown:.3f}s for a rate-limit slot"))

    def _throttled(self, svc, job_id, kind, payload, claim: Transition, started, err: NXCloudError,
                   outcome: Outcome) -> str:
        """The provider said "too frequent" despite the limiter: every worker backs off this credential."""
        limits = svc.gate.last_limits
        rl = svc.settings.ratelimit
        cooldown = svc.limiter.cool_down(limits, base_s=rl.cooldown_base_s, cap_s=rl.cooldown_cap_s,
                                         repeat_within_s=rl.cooldown_repeat_s, rng=svc.rng)
        error = JobError(code=err.code, message=err.message, retryable=True)
        if claim.throttles + 1 > rl.max_throttles:
            svc.store.incr(job_id, "throttles")
            return self._fail(svc, job_id, kind, claim.attempts, started, error.model_copy(
                update={"retryable": False, "message": f"{err.message} ({rl.max_throttles} times)"}), outcome)
        svc.store.transition(job_id, JobState.RETRYING, incr=["throttles"], request=outcome.request,
                             error=error.model_dump())
        _log_attempt(job_id, kind, claim.attempts, f"throttled, cooldown {cooldown:.2f}s", err.code, started)
        kwargs = {"job_id": job_id, "payload": payload, "slot_at_us": None, "resumed": False}
        raise self.retry(kwargs=kwargs, countdown=cooldown + svc.rng.uniform(0, 0.1), priority=PRIORITY_RETRY,
                         exc=RateWait(f"{kind} job {job_id}: provider said too frequent ({err.code})"))

    def _retry_or_fail(self, svc, job_id, kind, payload, claim: Transition, started, err: NXCloudError,
                       outcome: Outcome) -> str:
        cls = err.classification
        retry = svc.settings.retry
        # Throttled attempts never use up error retries.
        error_attempts = claim.attempts - claim.throttles
        limit = retry.bounded_attempts if (cls.bounded or cls.action is Action.REFRESH) else retry.max_attempts
        if cls.retryable and error_attempts < limit:
            base = max(retry.base_s, cls.min_backoff_s)
            delay = backoff_delay_s(error_attempts, base_s=base, cap_s=max(retry.cap_s, base), rng=svc.rng)
            svc.store.transition(job_id, JobState.RETRYING, request=outcome.request, error=JobError(
                code=err.code, message=err.message, retryable=True).model_dump())
            _log_attempt(job_id, kind, claim.attempts, f"retry in {delay:.2f}s", err.code, started)
            kwargs = {"job_id": job_id, "payload": payload, "slot_at_us": None, "resumed": False}
            raise self.retry(kwargs=kwargs, countdown=delay, priority=PRIORITY_RETRY,
                             exc=JobFailed(f"{kind} job {job_id}: {err.code} {err.message}"))
        return self._fail(svc, job_id, kind, claim.attempts, started,
                          JobError(code=err.code, message=err.message, retryable=cls.retryable), outcome)

    def _fail(self, svc, job_id, kind, attempt, started, error: JobError, outcome: Outcome | None = None) -> str:
        fields: dict[str, Any] = {"error": error.model_dump()}
        if outcome is not None:
            fields["request"] = outcome.request
        svc.store.transition(job_id, JobState.FAILED, **fields)
        _log_attempt(job_id, kind, attempt, "failed", error.code, started)
        raise JobFailed(f"{kind} job {job_id} failed: {error.code} {error.message}")


def _log_attempt(job_id: str, kind: str, attempt: int, outcome: str, code: str, started: float) -> None:
    log.info("job=%s kind=%s attempt=%d outcome=%s code=%s latency_ms=%d",
             job_id, kind, attempt, outcome, code, (time.monotonic() - started) * 1000)
