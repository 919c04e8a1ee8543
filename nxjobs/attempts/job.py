"""One job's attempt: the at-most-once protocol for a single job, without Celery.

Reads top to bottom: take the first request's rate-limit slot (or go back to the queue
until it comes), claim the record, run the operation behind the in-flight marker,
classify the outcome, then record submitted / retrying / failed and return a decision
(nxjobs.attempts.decisions). Operations never see the decision, nor Celery.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from nxjobs import compact_json, keys, schedule
from nxjobs.attempts import policy, report
from nxjobs.attempts.decisions import (
    CoolDown,
    Decision,
    Failed,
    Rescheduled,
    RetryLater,
    Skipped,
    Submitted,
    WaitForSlot,
)
from nxjobs.callbacks import reconcile
from nxjobs.calling_hours import Deferral
from nxjobs.client.agent import MAKECALL_PATH
from nxjobs.client.errors import PERMANENT, NXCloudError, TransportError
from nxjobs.client.operations import (
    NUMBER_CHECK_PATH,
    AmbiguousSubmission,
    Outcome,
)
from nxjobs.inflight import InflightMarker
from nxjobs.jobs import PRIORITY_RETRY, InvalidJob, get_kind, validate_payload
from nxjobs.ratelimit.gate import Permit, SlotNotReady, Slots
from nxjobs.ratelimit.limiter import Grant
from nxjobs.records import TERMINAL_STATES, JobError, JobState, utc_now_iso
from nxjobs.redact import redact
from nxjobs.store import Transition, TransitionRefused
from nxjobs.suppression import SuppressionUnavailable
from nxjobs.wire import call_order_id, number_check_batch_no

log = logging.getLogger("nxjobs.jobs")

# (services, job id, validated payload, outcome) -> outcome; fills `outcome` as it sends.
Operation = Callable[[Any, str, Any, Outcome], Outcome]

# Kinds whose request has a side effect worth guarding with the in-flight marker:
# a phone rings, a batch is billed, a task is created.
SIDE_EFFECT_KINDS = frozenset({"call", "number-check", "callbot-list"})
# Kinds that ring a phone of their own: calling hours and the do-not-call list apply at send time.
# (Number checks, OTA init and WhatsApp queries call nobody; a callbot list's contacts are screened
# at enqueue, and its tasks carry their dialling hours to the provider: nxjobs.callbot_zones.)
CALLING_HOURS_KINDS = frozenset({"call"})
SUPPRESSION_KINDS = frozenset({"call", "callbot-contact"})
# ... and those a redelivery looks up by idempotency key before sending again.
# callbot-list needs no lookup here: its operation saves progress after every
# step and asks listTask before creating the task again.
LOOKUP_KINDS = frozenset({"call", "number-check"})


def first_request(kind: str, payload: Any) -> tuple[str, str, Any]:
    """(family, endpoint, body) of a job's first rate-limited request, to take its slot before
    claiming."""
    if kind == "call":
        return "agent", MAKECALL_PATH, None
    if kind == "callbot-list":
        return "callbot", "createAndCall", None
    if kind == "callbot-contact":
        return "callbot", "addBatchCall", None
    if kind == "number-check":
        return "api2", NUMBER_CHECK_PATH, {"phone": ",".join(payload.phones)}
    return "api2", "", None


def wait_for_slot(grant: Grant, ratelimit: Any, rng: Any, *, resumed: bool = False) -> WaitForSlot:
    """The re-queue that waits for the slot `grant` describes (nxjobs.attempts.policy.slot_wait)."""
    countdown, priority = policy.slot_wait(grant, ratelimit, rng)
    return WaitForSlot(
        countdown=countdown,
        priority=priority,
        resumed=resumed,
        slot_at_us=grant.slot_at_us if grant.reserved else None,
        reason=f"waiting {countdown:.3f}s for a rate-limit slot",
    )


class _Suppressed(Exception):
    """The callee is on the do-not-call list (or the list cannot be read): nothing is sent."""

    def __init__(self, error: JobError):
        self.error = error


def _callee(kind: str, model: Any) -> str | None:
    if kind == "call":
        return str(model.phone)
    if kind == "callbot-contact":
        return str(model.contact.user_phone)
    return None


class JobAttempt:
    """`svc`: the worker's services (tasks.services.Services or alike: settings, redis, store,
    gate, limiter, dead_letters, rng, transport, and the clients lookups use).
    `time_limit_errors`: what the runner raises when the attempt runs out of time;
    `infra_errors`: store or broker failures, raised through (nothing was decided).
    `clock`: now, as an aware datetime (calling hours)."""

    def __init__(
        self,
        svc: Any,
        job_id: str,
        kind: str,
        payload: dict[str, Any],
        operation: Operation,
        *,
        slot_at_us: int | None = None,
        resumed: bool = False,
        time_limit_errors: tuple[type[BaseException], ...] = (),
        infra_errors: tuple[type[BaseException], ...] = (redis.RedisError,),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ):
        self.svc = svc
        self.job_id = job_id
        self.kind = kind
        self.payload = payload
        self.operation = operation
        self.slot_at_us = slot_at_us
        self.resumed = resumed
        self.time_limit_errors = time_limit_errors
        self.infra_errors = infra_errors
        self.clock = clock  # the time calling hours are judged at (tests fix it)
        self.slots = Slots()
        self.marker = InflightMarker(svc.redis, job_id)
        self.marker_set = False
        self.started = 0.0
        self.model: Any = None
        # Set when a deferral was refused because another run moved the job first.
        self._deferred_elsewhere = False

    def run(self) -> Decision:
        svc, job_id, kind = self.svc, self.job_id, self.kind
        # Left by an earlier job on this thread that ended without a report: not this attempt's.
        report.take_request_latencies(svc)
        self.started = time.monotonic()
        try:
            model = validate_payload(kind, self.payload)
        except InvalidJob as exc:
            claim = self._claim(bump=True)
            if claim is None:
                return Skipped()
            return self._fail(
                claim.attempts, JobError(code="invalid_payload", message=str(exc), retryable=False)
            )
        self.model = model

        if kind in CALLING_HOURS_KINDS and svc.calling_hours is not None:
            closed = self._outside_calling_hours(self.clock())
            if closed is not None:
                return closed

        # A job waiting for its slot is not running: take the slot before claiming.
        limits = svc.gate.limits_for(*first_request(kind, model))
        try:
            permit = svc.gate.take(limits, prepaid_at_us=self.slot_at_us)
        except SlotNotReady as wait:
            svc.store.incr(job_id, "waits")
            decision = wait_for_slot(
                wait.grant, svc.settings.ratelimit, svc.rng, resumed=self.resumed
            )
            deferred = self._slot_wait_past_closing(decision.countdown)
            if deferred is not None:
                return deferred
            report.record_rate_wait(
                svc, job_id, decision.countdown, [lim.name for lim in wait.limits]
            )
            return decision
        return self._run_claimed(model, permit)

    def _run_claimed(self, model: Any, permit: Permit) -> Decision:
        svc, job_id, kind = self.svc, self.job_id, self.kind
        with svc.gate.bind(permit) as self.slots:
            claim = self._claim(bump=not self.resumed)
            if claim is None:
                return Skipped()
            outcome = Outcome()
            try:
                waiting = self._send_once(model, outcome)
            except SlotNotReady as wait:
                if self.marker_set and kind in LOOKUP_KINDS:
                    self.marker.clear()  # its one request was not sent
                # A later request of a multi-step job: its progress is saved, resume at the slot.
                svc.store.transition(
                    job_id, JobState.RETRYING, incr=["waits"], request=outcome.request
                )
                return self._wait_for_slot(wait, resumed=True)
            except _Suppressed as refused:
                return self._fail(claim.attempts, refused.error, outcome)
            except AmbiguousSubmission as err:
                svc.redis.zadd(keys.RECONCILE, {job_id: time.time()})
                # Dead-lettered too (reconciliation drops the entry if it finds the call);
                # the marker stays, so even a replay looks the orderid up before any resend.
                return self._fail(
                    claim.attempts,
                    JobError(code=err.code, message=err.message, retryable=False),
                    outcome,
                )
            except NXCloudError as err:
                if self.marker_set:
                    # An error of the lookup itself (marker not set yet) leaves the doubt in place.
                    self.marker.on_error(err)
                if err.classification.throttled:
                    return self._throttled(claim, err, outcome)
                return self._retry_or_fail(claim, err, outcome)
            except self.time_limit_errors:
                if kind == "call":
                    svc.redis.zadd(keys.RECONCILE, {job_id: time.time()})
                return self._fail(
                    claim.attempts,
                    JobError(
                        code="time_limit",
                        message="attempt exceeded the task time limit",
                        retryable=False,
                    ),
                    outcome,
                )
            except self.infra_errors:
                raise  # the runner gives the message back; nothing is decided
            except Exception as exc:
                self._internal_error(exc, outcome)
                raise
            if waiting is not None:
                return waiting
            return self._submitted(claim, outcome)

    # ---- steps --------------------------------------------------------------

    def _send_once(self, model: Any, outcome: Outcome) -> RetryLater | None:
        """Run the operation so that its side effect happens at most once per job.

        Finding the marker means an earlier delivery may have sent the request and died
        (or lost the answer) before recording: ask the provider by idempotency key instead
        of resending. Returns a decision only when that earlier attempt may still be in flight."""
        svc, job_id, kind = self.svc, self.job_id, self.kind
        if kind in LOOKUP_KINDS:
            busy_until = self.marker.busy_until(svc.settings.http)
            if busy_until is not None:
                if time.time() < busy_until:
                    # That earlier attempt may still be waiting for its answer: come back after.
                    return RetryLater(
                        countdown=busy_until - time.time(),
                        priority=PRIORITY_RETRY,
                        resumed=True,
                        reason=f"{kind} job {job_id}: an earlier attempt may be in flight",
                    )
                found = self._look_up(model, outcome)
                if found is not None:
                    outcome.result = found
                    log.info(
                        "job=%s kind=%s interrupted attempt found at the provider; not re-sent",
                        job_id,
                        kind,
                    )
                    return None
                if kind == "call":
                    # No CDR yet is no proof the phone did not ring: never resend; reconcile later.
                    orderid = call_order_id(job_id, model)
                    raise AmbiguousSubmission(
                        TransportError(
                            "an earlier attempt was interrupted after its makecall "
                            "may have been sent, and no CDR has its orderid yet",
                            code="interrupted",
                            classification=PERMANENT,
                            may_have_reached=True,
                        ),
                        "orderid",
                        orderid,
                    )
                self.marker.clear()  # the provider files a batch at once: no trace, safe to send
        self._check_suppressed(model)
        if kind in SIDE_EFFECT_KINDS:
            self.marker.set(ttl_s=svc.settings.record_ttl_s)
            self.marker_set = True
        self.operation(svc, job_id, model, outcome)
        return None

    def _check_suppressed(self, model: Any) -> None:
        """Right before the request: a callee put on the do-not-call list after enqueue is never
        called (the job fails `suppressed`); a list that cannot be read fails closed."""
        phone = _callee(self.kind, model)
        if phone is None or self.kind not in SUPPRESSION_KINDS:
            return
        try:
            listed = self.svc.suppression.contains(phone)
        except SuppressionUnavailable as exc:
            raise _Suppressed(
                JobError(code="suppression_unavailable", message=str(exc), retryable=False)
            ) from None
        if listed:
            raise _Suppressed(
                JobError(
                    code="suppressed",
                    message="the number is on the do-not-call list; not called",
                    retryable=False,
                )
            )

    # ---- calling hours: a closed window defers a call to the schedule ----------------------
    # Every run of a call checks its window right before its slot and claim; so does a retry,
    # backoff or slot wait whose end would fall after closing time. A closed window puts the job
    # back `scheduled` for the next opening (lua/job_defer.lua, only if nothing may have been
    # sent), and the message is acked: the schedule publishes it again then (docs/calling-hours.md).

    def _deferral(self, at: datetime) -> Deferral | None:
        if self.kind not in CALLING_HOURS_KINDS or self.svc.calling_hours is None:
            return None
        return self.svc.calling_hours.defer(self.model.phone, self.model.calling_hours, at)

    def _outside_calling_hours(self, now: datetime) -> Decision | None:
        deferral = self._deferral(now)
        if deferral is None:
            return None
        claim = self._claim(bump=False)
        if claim is None:
            return Skipped()
        if deferral.until is None:
            return self._fail(
                claim.attempts,
                JobError(
                    code="calling_hours",
                    message=f"{deferral.reason}: no time inside the window in every zone",
                    retryable=False,
                ),
            )
        deferred = self._defer(deferral)
        if deferred is None and self._deferred_elsewhere:
            return Skipped()
        # None: its in-flight marker is set, so the run goes on only to look the call up.
        return deferred

    def _past_closing(self, countdown: float) -> tuple[Deferral, str] | None:
        """A wait of `countdown` s that would end outside the window: (where it waits to, when
        the wait would have ended)."""
        due = self.clock() + timedelta(seconds=countdown)
        deferral = self._deferral(due)
        if deferral is None or deferral.until is None:
            return None  # open then; or no opening at all: the next run fails it
        return deferral, schedule.iso(due)

    def _slot_wait_past_closing(self, countdown: float) -> Rescheduled | None:
        """Before the claim: a slot wait that would end after closing time defers the call."""
        crossing = self._past_closing(countdown)
        if crossing is None:
            return None
        deferral, ends = crossing
        claim = self._claim(bump=False)
        if claim is None:
            return None  # past submission: the wait's run skips it
        deferred = self._defer(deferral, f"; its rate-limit slot wait would end at {ends}")
        if deferred is None and not self._deferred_elsewhere:
            # In flight: it waits for its slot as any job, not `running` meanwhile.
            self.svc.store.transition(self.job_id, JobState.RETRYING)
        return deferred

    def _retry_past_closing(
        self,
        countdown: float,
        what: str,
        error: JobError,
        outcome: Outcome,
        *,
        throttled: bool = False,
    ) -> Rescheduled | None:
        """After a failed send (claimed): a retry or cooldown that would end after closing time
        waits for the next opening instead, with the error and request recorded."""
        crossing = self._past_closing(countdown)
        if crossing is None:
            return None
        deferral, ends = crossing
        deferred = self._defer(
            deferral,
            f"; its {what} would end at {ends}",
            {
                "error": compact_json.dumps(error.model_dump()),
                "request": compact_json.dumps(outcome.request),
            },
        )
        if deferred is not None and throttled:
            self.svc.store.incr(self.job_id, "throttles")  # as the cooldown's transition would
        return deferred

    def _defer(
        self, deferral: Deferral, after: str = "", fields: dict[str, str] | None = None
    ) -> Rescheduled | None:
        """The claimed job back in the schedule until the opening; None if refused (its in-flight
        marker is set; or another run moved it first: `_deferred_elsewhere`)."""
        svc, job_id, kind = self.svc, self.job_id, self.kind
        assert deferral.until is not None
        job_kind = get_kind(kind)
        msg = schedule.message(
            kind,
            job_kind.task_name,
            job_kind.queue,
            PRIORITY_RETRY,
            {"job_id": job_id, "payload": self.payload},
        )
        run_at = schedule.iso(deferral.until)
        note = deferral.note + after
        answer = svc.schedule.defer(
            job_id,
            deferral.until,
            msg,
            {"run_at": run_at, "schedule_note": note, **(fields or {})},
            utc_now_iso(),
        )
        if not answer.deferred:
            self._deferred_elsewhere = answer.why != "inflight"
            log.info(
                "job=%s kind=%s not deferred (%s): %s",
                job_id,
                kind,
                answer.why or answer.state,
                note,
            )
            return None
        # A log line, not an attempt's metrics: nothing was tried (the number is not in it).
        log.info("job=%s kind=%s deferred to %s: %s", job_id, kind, run_at, note)
        return Rescheduled(run_at=run_at, reason=f"{kind} job {job_id}: {note}; runs at {run_at}")

    def _look_up(self, model: Any, outcome: Outcome) -> dict | None:
        svc, job_id = self.svc, self.job_id
        if self.kind == "call":
            orderid = call_order_id(job_id, model)
            # The CDR quota is not the makecall slot this attempt holds.
            self.slots.unpay()
            outcome.request.append(
                {"endpoint": "lookup:getSipCdrByOrderid", "body": {"orderid": orderid}}
            )
            return reconcile.find_call(svc.agent, orderid)
        batch_no = number_check_batch_no(job_id, model)
        created_at = svc.redis.hget(keys.job(job_id), "created_at") or utc_now_iso()
        outcome.request.append(
            {"endpoint": "lookup:" + reconcile.NUMBER_QUERY_PATH, "body": {"batchNo": batch_no}}
        )
        # The query spends the api2 slot this attempt holds; a resend then takes its own.
        return reconcile.find_number_check(
            svc.api2, svc.settings.api2.appkey, batch_no, created_at, time.time(), len(model.phones)
        )

    def _claim(self, *, bump: bool) -> Transition | None:
        """Move the record to running; None if the job is already past submission (a redelivery)."""
        svc, job_id, kind = self.svc, self.job_id, self.kind
        incr = ["attempts"] if bump else []
        try:
            return svc.store.transition(job_id, JobState.RUNNING, incr=incr)
        except TransitionRefused as refused:
            if refused.current is None:
                # Enqueued without our producer, or the record expired: start one now.
                svc.store.create(job_id, kind, redact(self.payload))
                return svc.store.transition(job_id, JobState.RUNNING, incr=["attempts"])
            if (
                JobState(refused.current) in TERMINAL_STATES
                or refused.current == JobState.SUBMITTED.value
            ):
                log.info(
                    "job=%s kind=%s already %s; redelivery ignored, nothing re-sent",
                    job_id,
                    kind,
                    refused.current,
                )
                return None
            raise

    def _submitted(self, claim: Transition, outcome: Outcome) -> Submitted:
        svc, job_id = self.svc, self.job_id
        done = report.prepare_attempt(
            svc,
            job_id,
            self.kind,
            claim.attempts,
            "submitted",
            "0",
            self.started,
            self.slots.permit.credentials,
        )
        # Recorded: a redelivery now stops at the claim, and the sweeper has nothing to re-send,
        # so the marker and the kept payload go in the same step. The metrics ride along: the
        # provider accepted this attempt's request even if a duplicate delivery recorded first.
        submit = svc.store.submit(
            job_id,
            self.kind,
            clear=[self.marker.key, keys.job_payload(job_id)],
            also=done.queue_metrics,
            request=outcome.request,
            result=outcome.result,
            error=None,
        )
        if submit.state == JobState.COMPLETED.value:
            report.observe_completed_at_submit(svc, job_id, self.kind, outcome.result)
        done.log()
        return Submitted()

    def _wait_for_slot(self, wait: SlotNotReady, *, resumed: bool) -> WaitForSlot:
        svc = self.svc
        decision = wait_for_slot(wait.grant, svc.settings.ratelimit, svc.rng, resumed=resumed)
        report.record_rate_wait(
            svc, self.job_id, decision.countdown, [lim.name for lim in wait.limits]
        )
        return decision

    def _throttled(self, claim: Transition, err: NXCloudError, outcome: Outcome) -> Decision:
        """The provider said "too frequent" despite the limiter: every worker backs off this
        credential."""
        svc, job_id, kind = self.svc, self.job_id, self.kind
        rl = svc.settings.ratelimit
        cooldown = svc.limiter.cool_down(
            self.slots.permit.limits,
            base_s=rl.cooldown_base_s,
            cap_s=rl.cooldown_cap_s,
            repeat_within_s=rl.cooldown_repeat_s,
            rng=svc.rng,
        )
        error = JobError(code=err.code, message=err.message, retryable=True)
        if claim.throttles + 1 > rl.max_throttles:
            svc.store.incr(job_id, "throttles")
            return self._fail(
                claim.attempts,
                error.model_copy(
                    update={
                        "retryable": False,
                        "message": f"{err.message} ({rl.max_throttles} times)",
                    }
                ),
                outcome,
            )
        countdown = cooldown + svc.rng.uniform(0, 0.1)
        deferred = self._retry_past_closing(countdown, "cooldown", error, outcome, throttled=True)
        if deferred is not None:
            self._log(claim.attempts, "throttled, deferred past closing time", err.code)
            return deferred
        svc.store.transition(
            job_id,
            JobState.RETRYING,
            incr=["throttles"],
            request=outcome.request,
            error=error.model_dump(),
        )
        self._log(claim.attempts, f"throttled, cooldown {cooldown:.2f}s", err.code)
        return CoolDown(
            countdown=countdown,
            priority=PRIORITY_RETRY,
            reason=f"{kind} job {job_id}: provider said too frequent ({err.code})",
        )

    def _retry_or_fail(self, claim: Transition, err: NXCloudError, outcome: Outcome) -> Decision:
        svc, job_id, kind = self.svc, self.job_id, self.kind
        cls = err.classification
        delay = policy.retry_delay(
            cls, claim.attempts - claim.throttles, svc.settings.retry, svc.rng
        )
        if delay is not None:
            error = JobError(code=err.code, message=err.message, retryable=True)
            deferred = self._retry_past_closing(delay, "retry", error, outcome)
            if deferred is not None:
                self._log(claim.attempts, "retry deferred past closing time", err.code)
                return deferred
            svc.store.transition(
                job_id, JobState.RETRYING, request=outcome.request, error=error.model_dump()
            )
            self._log(claim.attempts, f"retry in {delay:.2f}s", err.code)
            return RetryLater(
                countdown=delay,
                priority=PRIORITY_RETRY,
                error=error,
                reason=f"{kind} job {job_id}: {err.code} {err.message}",
            )
        return self._fail(
            claim.attempts,
            JobError(code=err.code, message=err.message, retryable=cls.retryable),
            outcome,
        )

    def _fail(self, attempt: int, error: JobError, outcome: Outcome | None = None) -> Failed:
        svc, job_id, kind = self.svc, self.job_id, self.kind
        # Before the record says failed: a worker lost in between leaves at worst a
        # stale entry (replay skips it), never a failed job missing from the dead letters.
        self._dead_letter(error)
        fields: dict[str, Any] = {"error": error.model_dump()}
        if outcome is not None:
            fields["request"] = outcome.request
        svc.store.transition(job_id, JobState.FAILED, **fields)
        svc.redis.delete(keys.job_payload(job_id))  # a replay takes it from the dead letter
        self._log(attempt, "failed", error.code)
        return Failed(
            error=error, reason=f"{kind} job {job_id} failed: {error.code} {error.message}"
        )

    def _internal_error(self, exc: Exception, outcome: Outcome) -> None:
        """A bug: record what we can (and dead-letter it); the caller lets the runner see it."""
        error = JobError(code="internal_error", message=type(exc).__name__, retryable=False)
        self._dead_letter(error)
        try:
            self.svc.store.transition(
                self.job_id, JobState.FAILED, request=outcome.request, error=error.model_dump()
            )
        except Exception:
            log.exception("job=%s could not record internal error", self.job_id)

    def _dead_letter(self, error: JobError) -> None:
        svc, job_id = self.svc, self.job_id
        try:
            record = svc.store.get(job_id)
            svc.dead_letters.add(
                job_id,
                self.kind,
                self.payload,
                error.model_dump(),
                record.model_dump(mode="json", exclude={"callbacks"}) if record else None,
            )
        except redis.RedisError:
            log.exception("job=%s could not write its dead letter", job_id)
            raise

    def _log(self, attempt: int, outcome: str, code: str) -> None:
        report.log_attempt(
            self.svc,
            self.job_id,
            self.kind,
            attempt,
            outcome,
            code,
            self.started,
            self.slots.permit.credentials,
        )
