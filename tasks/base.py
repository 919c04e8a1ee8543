"""JobTask: the one place a job attempt is run, classified, retried and recorded.

Reads top to bottom: take the first request's rate-limit slot (or go back to
the queue until it comes), claim the record, run the operation, classify the
outcome, then record submitted / retrying / failed. Operations never see Celery.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import redis
from celery import Task
from celery.exceptions import Reject, Retry, SoftTimeLimitExceeded
from kombu.exceptions import OperationalError

from nxjobs import keys
from nxjobs.callbacks import reconcile
from nxjobs.client.errors import PERMANENT, NXCloudError, TransportError
from nxjobs.client.operations import AmbiguousSubmission, Outcome, call_order_id, number_check_batch_no
from nxjobs.jobs import KINDS, PRIORITY_RETRY, InvalidJob, validate_payload
from nxjobs.ratelimit.gate import SlotNotReady
from nxjobs.ratelimit.limiter import Grant
from nxjobs.records import TERMINAL_STATES, JobError, JobState, utc_now_iso
from nxjobs.redact import flower_repr, redact
from nxjobs.store import Transition, TransitionRefused
from tasks import policy
from tasks.limits import first_request
from tasks.services import Services, get_services

log = logging.getLogger("nxjobs.jobs")
_KIND_BY_TASK = {kind.task_name: kind.name for kind in KINDS.values()}

Operation = Callable[[Services, str, Any, Outcome], Outcome]

# Kinds whose request has a side effect worth guarding with the in-flight marker
# (nxjobs.keys.inflight): a phone rings, a batch is billed, a task is created.
SIDE_EFFECT_KINDS = frozenset({"call", "number-check", "callbot-list"})
# ... and those a redelivery looks up by idempotency key before sending again.
# callbot-list needs no lookup here: its operation saves progress after every
# step and asks listTask before creating the task again.
LOOKUP_KINDS = frozenset({"call", "number-check"})
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
    # Retries are counted and capped by run_job (RetrySettings), per error class,
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

    def run_job(self, job_id: str, kind: str, payload: dict[str, Any], operation: Operation, *,
                slot_at_us: int | None = None, resumed: bool = False) -> str:
        try:
            return self._run_job(job_id, kind, payload, operation, slot_at_us=slot_at_us, resumed=resumed)
        except _INFRA_ERRORS as exc:
            # Redis (store or broker) went away mid-attempt, e.g. restarting. Acking now
            # would drop the job with its record stuck in `running`: requeue it instead
            # (if Redis is still down the message stays unacked and comes back after the
            # visibility timeout). The in-flight marker, if set, makes the rerun look up
            # rather than resend.
            log.warning("job=%s kind=%s store/broker unavailable (%s); message returned to the queue",
                        job_id, kind, type(exc).__name__)
            raise Reject(f"redis unavailable: {type(exc).__name__}", requeue=True) from exc

    def _run_job(self, job_id: str, kind: str, payload: dict[str, Any], operation: Operation, *,
                 slot_at_us: int | None = None, resumed: bool = False) -> str:
        svc = get_services()
        # Left by an earlier job on this thread that ended without a report: not this attempt's.
        take_request_latencies(svc)
        started = time.monotonic()
        try:
            model = validate_payload(kind, payload)
        except InvalidJob as exc:
            claim = self._claim(svc, job_id, kind, payload, bump=True)
            if claim is None:
                return "skipped"
            return self._fail(svc, job_id, kind, claim.attempts, started, JobError(
                code="invalid_payload", message=str(exc), retryable=False), payload=payload)

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
        guard: dict[str, bool] = {}
        try:
            self._send_once(svc, job_id, kind, model, payload, outcome, operation, guard)
        except Retry:
            raise  # _send_once waiting for an earlier attempt that may still be in flight
        except SlotNotReady as wait:
            if guard.get("set") and kind in LOOKUP_KINDS:
                svc.redis.delete(keys.inflight(job_id))  # its one request was not sent
            # A later request of a multi-step job: its progress is saved, resume at the slot.
            svc.store.transition(job_id, JobState.RETRYING, incr=["waits"], request=outcome.request)
            raise self._requeue_for_slot(svc, job_id, payload, wait.grant, resumed=True)
        except AmbiguousSubmission as err:
            svc.redis.zadd(keys.RECONCILE, {job_id: time.time()})
            # Dead-lettered too (reconciliation drops the entry if it finds the call);
            # the marker stays, so even a replay looks the orderid up before any resend.
            return self._fail(svc, job_id, kind, claim.attempts, started,
                              JobError(code=err.code, message=err.message, retryable=False), outcome,
                              payload=payload)
        except NXCloudError as err:
            if guard.get("set") and not (isinstance(err, TransportError) and err.may_have_reached):
                # The provider answered our request (or was never reached): nothing happened, a
                # resend is safe. A lost answer keeps the marker, so the retry looks it up first;
                # so does an error of the lookup itself (guard not set yet: the doubt remains).
                svc.redis.delete(keys.inflight(job_id))
            if err.classification.throttled:
                return self._throttled(svc, job_id, kind, payload, claim, started, err, outcome)
            return self._retry_or_fail(svc, job_id, kind, payload, claim, started, err, outcome)
        except SoftTimeLimitExceeded:
            if kind == "call":
                svc.redis.zadd(keys.RECONCILE, {job_id: time.time()})
            return self._fail(svc, job_id, kind, claim.attempts, started, JobError(
                code="time_limit", message="attempt exceeded the task time limit", retryable=False), outcome,
                payload=payload)
        except _INFRA_ERRORS:
            raise  # run_job gives the message back; nothing is decided
        except Exception as exc:
            # A bug: record what we can (and dead-letter it), then let Celery see it.
            self._dead_letter(svc, job_id, kind, payload, JobError(
                code="internal_error", message=type(exc).__name__, retryable=False))
            try:
                svc.store.transition(job_id, JobState.FAILED, request=outcome.request, error=JobError(
                    code="internal_error", message=type(exc).__name__, retryable=False).model_dump())
            except Exception:
                log.exception("job=%s could not record internal error", job_id)
            raise

        submit = svc.store.transition(job_id, JobState.SUBMITTED, request=outcome.request, result=outcome.result,
                                      error=None)
        # Recorded: a redelivery now stops at the claim, and the sweeper has nothing to re-send.
        svc.redis.delete(keys.inflight(job_id), keys.job_payload(job_id))
        if submit.state == JobState.COMPLETED.value:
            _observe_completed_at_submit(svc, job_id, kind, outcome.result)
        log_attempt(job_id, kind, claim.attempts, "submitted", "0", started)
        return JobState.SUBMITTED.value

    # ---- steps --------------------------------------------------------------

    def _send_once(self, svc: Services, job_id: str, kind: str, model: Any, payload: dict[str, Any],
                   outcome: Outcome, operation: Operation, guard: dict[str, bool]) -> None:
        """Run `operation` so that its side effect happens at most once per job.

        The in-flight marker is set right before the request is sent and removed once
        the outcome is recorded. Finding it here means an earlier delivery may have
        sent the request and died (or lost the answer) before recording: ask the
        provider by idempotency key instead of resending."""
        marker = keys.inflight(job_id)
        if kind in LOOKUP_KINDS:
            set_at = svc.redis.get(marker)
            if set_at is not None:
                busy_until = policy.inflight_busy_until(set_at, svc.settings.http)
                if time.time() < busy_until:
                    # That earlier attempt may still be waiting for its answer: come back after.
                    kwargs = {"job_id": job_id, "payload": payload, "slot_at_us": None, "resumed": True}
                    raise self.retry(kwargs=kwargs, countdown=busy_until - time.time(), priority=PRIORITY_RETRY,
                                     exc=RateWait(f"{kind} job {job_id}: an earlier attempt may be in flight"))
                found = self._look_up(svc, job_id, kind, model, outcome)
                if found is not None:
                    outcome.result = found
                    log.info("job=%s kind=%s interrupted attempt found at the provider; not re-sent", job_id, kind)
                    return
                if kind == "call":
                    # No CDR yet is no proof the phone did not ring: never resend; reconcile later.
                    orderid = call_order_id(job_id, model)
                    raise AmbiguousSubmission(TransportError(
                        "an earlier attempt was interrupted after its makecall may have been sent, "
                        "and no CDR has its orderid yet", code="interrupted", classification=PERMANENT,
                        may_have_reached=True), "orderid", orderid)
                svc.redis.delete(marker)  # the provider files a batch at once: no trace, safe to send
        if kind in SIDE_EFFECT_KINDS:
            svc.redis.set(marker, f"{time.time():.3f}", ex=svc.settings.record_ttl_s)
            guard["set"] = True
        operation(svc, job_id, model, outcome)

    def _look_up(self, svc: Services, job_id: str, kind: str, model: Any, outcome: Outcome) -> dict | None:
        if kind == "call":
            orderid = call_order_id(job_id, model)
            # The CDR quota is not the makecall slot this attempt holds.
            svc.gate.begin_attempt(first_slot_paid=False)
            outcome.request.append({"endpoint": "lookup:getSipCdrByOrderid", "body": {"orderid": orderid}})
            return reconcile.find_call(svc.agent, orderid)
        batch_no = number_check_batch_no(job_id, model)
        created_at = svc.redis.hget(keys.job(job_id), "created_at") or utc_now_iso()
        outcome.request.append({"endpoint": "lookup:" + reconcile.NUMBER_QUERY_PATH, "body": {"batchNo": batch_no}})
        # The query spends the api2 slot this attempt holds; a resend then takes its own.
        return reconcile.find_number_check(svc.api2, svc.settings.api2.appkey, batch_no, created_at, time.time(),
                                           len(model.phones))

    def _dead_letter(self, svc: Services, job_id: str, kind: str, payload: dict[str, Any], error: JobError) -> None:
        try:
            record = svc.store.get(job_id)
            svc.dead_letters.add(job_id, kind, payload, error.model_dump(),
                                 record.model_dump(mode="json", exclude={"callbacks"}) if record else None)
        except redis.RedisError:
            log.exception("job=%s could not write its dead letter", job_id)
            raise

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
        countdown, priority = policy.slot_wait(grant, svc.settings.ratelimit, svc.rng)
        kwargs = {"job_id": job_id, "payload": payload, "slot_at_us": grant.slot_at_us if grant.reserved else None,
                  "resumed": resumed}
        record_job_rate_wait(svc, job_id, countdown)
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
                update={"retryable": False, "message": f"{err.message} ({rl.max_throttles} times)"}), outcome,
                payload=payload)
        svc.store.transition(job_id, JobState.RETRYING, incr=["throttles"], request=outcome.request,
                             error=error.model_dump())
        log_attempt(job_id, kind, claim.attempts, f"throttled, cooldown {cooldown:.2f}s", err.code, started)
        kwargs = {"job_id": job_id, "payload": payload, "slot_at_us": None, "resumed": False}
        raise self.retry(kwargs=kwargs, countdown=cooldown + svc.rng.uniform(0, 0.1), priority=PRIORITY_RETRY,
                         exc=RateWait(f"{kind} job {job_id}: provider said too frequent ({err.code})"))

    def _retry_or_fail(self, svc, job_id, kind, payload, claim: Transition, started, err: NXCloudError,
                       outcome: Outcome) -> str:
        cls = err.classification
        delay = policy.retry_delay(cls, claim.attempts - claim.throttles, svc.settings.retry, svc.rng)
        if delay is not None:
            svc.store.transition(job_id, JobState.RETRYING, request=outcome.request, error=JobError(
                code=err.code, message=err.message, retryable=True).model_dump())
            log_attempt(job_id, kind, claim.attempts, f"retry in {delay:.2f}s", err.code, started)
            kwargs = {"job_id": job_id, "payload": payload, "slot_at_us": None, "resumed": False}
            raise self.retry(kwargs=kwargs, countdown=delay, priority=PRIORITY_RETRY,
                             exc=JobFailed(f"{kind} job {job_id}: {err.code} {err.message}"))
        return self._fail(svc, job_id, kind, claim.attempts, started,
                          JobError(code=err.code, message=err.message, retryable=cls.retryable), outcome,
                          payload=payload)

    def _fail(self, svc, job_id, kind, attempt, started, error: JobError, outcome: Outcome | None = None, *,
              payload: dict[str, Any] | None = None) -> str:
        if payload is not None:
            # Before the record says failed: a worker lost in between leaves at worst a
            # stale entry (replay skips it), never a failed job missing from the dead letters.
            self._dead_letter(svc, job_id, kind, payload, error)
        fields: dict[str, Any] = {"error": error.model_dump()}
        if outcome is not None:
            fields["request"] = outcome.request
        svc.store.transition(job_id, JobState.FAILED, **fields)
        svc.redis.delete(keys.job_payload(job_id))  # a replay takes it from the dead letter
        log_attempt(job_id, kind, attempt, "failed", error.code, started)
        raise JobFailed(f"{kind} job {job_id} failed: {error.code} {error.message}")


def log_attempt(job_id: str, kind: str, attempt: int, outcome: str, code: str, started: float) -> None:
    """The one place an attempt is reported: one log line (fields also as structured `extra`)
    and one pipelined Redis call of metrics (nxjobs.metrics). Never a secret or a phone.
    `latency_ms` is the provider's part (this attempt's requests, summed), `attempt_ms` the whole attempt."""
    attempt_s = time.monotonic() - started
    requests_s = take_request_latencies()
    latency_ms, attempt_ms = round(sum(requests_s) * 1000), round(attempt_s * 1000)
    log.info("job=%s kind=%s attempt=%d outcome=%s code=%s latency_ms=%d attempt_ms=%d",
             job_id, kind, attempt, outcome, code, latency_ms, attempt_ms,
             extra={"job_id": job_id, "kind": kind, "attempt": attempt, "outcome": outcome, "code": code,
                    "latency_ms": latency_ms, "attempt_ms": attempt_ms})
    from nxjobs import metrics  # kept local: the metric helpers below are the only users
    from nxjobs.jobs import KINDS

    try:
        svc = get_services()
        queue = KINDS[kind].queue if kind in KINDS else "unknown"
        metrics.record_attempt(svc.redis, kind=kind, queue=queue, outcome=outcome, code=code, attempt_s=attempt_s,
                               request_latencies_s=requests_s, credentials=[lim.name for lim in svc.gate.last_limits])
    except Exception as exc:  # metrics must never change a job's outcome
        log.warning("job=%s metrics not recorded: %s", job_id, type(exc).__name__)


def take_request_latencies(svc: Services | None = None) -> list[float]:
    """This thread's provider request durations since last taken. [] if this process has not
    built its Transport: building one only to ask would open a connection pool for nothing."""
    try:
        svc = svc or get_services()
        if "transport" not in svc.__dict__:
            return []
        return svc.transport.take_latencies()
    except Exception as exc:  # metrics must never change a job's outcome
        log.warning("provider latencies not read: %s", type(exc).__name__)
        return []


def record_job_rate_wait(svc: Services, job_id: str, wait_s: float) -> None:
    """The wait this job is sent back to serve, per credential it waits on (labels hashed)."""
    from nxjobs import metrics

    try:
        metrics.record_rate_wait(svc.redis, credentials=[lim.name for lim in svc.gate.last_limits], wait_s=wait_s)
    except Exception as exc:  # metrics must never change a job's outcome
        log.warning("job=%s rate-wait metric not recorded: %s", job_id, type(exc).__name__)


def _observe_completed_at_submit(svc: Services, job_id: str, kind: str, result: dict[str, Any] | None) -> None:
    """Every callback beat the submit result, so the receiver saw no completion to time: time it here.
    Kinds final at submit (ota-init, wa-calling) have no callbacks and no delay to time."""
    from nxjobs import metrics
    from nxjobs import correlate

    try:
        if correlate.on_submit(kind, result).needed:
            metrics.observe_completion(svc.redis, job_id)
    except Exception as exc:  # metrics must never change a job's outcome
        log.warning("job=%s completion metric not recorded: %s", job_id, type(exc).__name__)
