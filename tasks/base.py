"""JobTask: the one place a job attempt is run, classified, retried and recorded.

Reads top to bottom: claim the record, run the operation, classify the
outcome, then record submitted / retrying / failed. Operations never see Celery.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded

from nxjobs import keys
from nxjobs.client.backoff import backoff_delay_s
from nxjobs.client.errors import Action, NXCloudError
from nxjobs.client.operations import AmbiguousSubmission, Outcome
from nxjobs.jobs import InvalidJob, validate_payload
from nxjobs.records import JobError, JobState, TERMINAL_STATES
from nxjobs.redact import redact
from nxjobs.store import TransitionRefused
from tasks.services import Services, get_services

log = logging.getLogger("nxjobs.jobs")

Operation = Callable[[Services, str, Any, Outcome], Outcome]


class JobFailed(Exception):
    """Raised after a job is recorded failed, so Celery and Flower show FAILURE too."""


class JobTask(Task):
    # Acknowledge only after the attempt is recorded, and give the job back if
    # the worker process dies mid-attempt; the record's state machine keeps a
    # redelivered job from being submitted twice.
    acks_late = True
    reject_on_worker_lost = True
    # Our records are the result store.
    ignore_result = True
    # Retries are counted and capped by run_job from RetrySettings, per error class.
    max_retries = None

    def apply_async(self, args=None, kwargs=None, **options):
        # Retries re-publish through here: keep Flower's view of the arguments redacted.
        if kwargs is not None:
            options.setdefault("kwargsrepr", repr(redact(kwargs)))
        if args:
            options.setdefault("argsrepr", repr(redact(list(args))))
        return super().apply_async(args, kwargs, **options)

    def run_job(self, job_id: str, kind: str, payload: dict[str, Any], operation: Operation) -> str:
        svc = get_services()
        store = svc.store
        attempt = self.request.retries + 1
        started = time.monotonic()

        try:
            model = validate_payload(kind, payload)
        except InvalidJob as exc:
            self._claim(svc, job_id, kind, payload)
            return self._fail(svc, job_id, kind, attempt, started, JobError(
                code="invalid_payload", message=str(exc), retryable=False))

        if not self._claim(svc, job_id, kind, payload):
            return "skipped"

        outcome = Outcome()
        try:
            operation(svc, job_id, model, outcome)
        except AmbiguousSubmission as err:
            svc.redis.zadd(keys.RECONCILE, {job_id: time.time()})
            return self._fail(svc, job_id, kind, attempt, started,
                              JobError(code=err.code, message=err.message, retryable=False), outcome)
        except NXCloudError as err:
            return self._retry_or_fail(svc, job_id, kind, attempt, started, err, outcome)
        except SoftTimeLimitExceeded:
            if kind == "call":
                svc.redis.zadd(keys.RECONCILE, {job_id: time.time()})
            return self._fail(svc, job_id, kind, attempt, started, JobError(
                code="time_limit", message="attempt exceeded the task time limit", retryable=False), outcome)
        except Exception as exc:
            # A bug or an unreachable store: record what we can, then let Celery see it.
            try:
                store.transition(job_id, JobState.FAILED, request=outcome.request, error=JobError(
                    code="internal_error", message=type(exc).__name__, retryable=False).model_dump())
            except Exception:
                log.exception("job=%s could not record internal error", job_id)
            raise

        store.transition(job_id, JobState.SUBMITTED, request=outcome.request, result=outcome.result, error=None)
        _log_attempt(job_id, kind, attempt, "submitted", "0", started)
        return JobState.SUBMITTED.value

    def _claim(self, svc: Services, job_id: str, kind: str, payload: dict[str, Any]) -> bool:
        """Move the record to running; False if the job is already past submission (a redelivery)."""
        try:
            svc.store.transition(job_id, JobState.RUNNING, bump_attempts=True)
            return True
        except TransitionRefused as refused:
            if refused.current is None:
                # Enqueued without our producer, or the record expired: start one now.
                svc.store.create(job_id, kind, redact(payload))
                svc.store.transition(job_id, JobState.RUNNING, bump_attempts=True)
                return True
            if JobState(refused.current) in TERMINAL_STATES or refused.current == JobState.SUBMITTED.value:
                log.info("job=%s kind=%s already %s; redelivery ignored, nothing re-sent", job_id, kind,
                         refused.current)
                return False
            raise

    def _retry_or_fail(self, svc, job_id, kind, attempt, started, err: NXCloudError, outcome: Outcome) -> str:
        cls = err.classification
        retry = svc.settings.retry
        limit = retry.bounded_attempts if (cls.bounded or cls.action is Action.REFRESH) else retry.max_attempts
        if cls.retryable and attempt < limit:
            base = max(retry.base_s, cls.min_backoff_s)
            delay = backoff_delay_s(attempt, base_s=base, cap_s=max(retry.cap_s, base), rng=svc.rng)
            svc.store.transition(job_id, JobState.RETRYING, request=outcome.request, error=JobError(
                code=err.code, message=err.message, retryable=True).model_dump())
            _log_attempt(job_id, kind, attempt, f"retry in {delay:.2f}s", err.code, started)
            raise self.retry(countdown=delay, exc=JobFailed(f"{kind} job {job_id}: {err.code} {err.message}"))
        return self._fail(svc, job_id, kind, attempt, started,
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
