"""One flush of coalesced jobs (nxjobs.coalesce): slot, batch, request, fan-out; no Celery.

Reads top to bottom like the single job's attempt (job.py): take the request's rate-limit
slot (or go back to the queue until it comes), take the batch (or find the one an earlier
delivery of this same message built), send it once, then record every member.
The batch is named after the flush message's task id, which retries and
redeliveries keep, so a batch is built once and sent at most once: before a
resend, a batch whose earlier attempt may have reached the provider is looked
up (a Number Check batch by its batchNo), or sent again where the provider
itself refuses a repeat (a contact's orderID: "already exists" counts as added).

What differs per kind (its limits, lookup, request and each member's share of
the answer) is a `Sender` (senders.py); the flow is one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from nxjobs import coalesce, keys
from nxjobs.attempts import policy, report
from nxjobs.attempts.decisions import (
    AlreadySent,
    BatchFailed,
    BatchSubmitted,
    CoolDown,
    Decision,
    Deferred,
    Empty,
    RetryLater,
    WaitForSlot,
)
from nxjobs.attempts.job import wait_for_slot
from nxjobs.attempts.senders import Batch, Sender
from nxjobs.client.errors import NXCloudError
from nxjobs.client.operations import Outcome
from nxjobs.inflight import InflightMarker
from nxjobs.jobs import PRIORITY_NEW, PRIORITY_RETRY
from nxjobs.ratelimit.gate import SlotNotReady, Slots
from nxjobs.records import JobError, utc_now_iso

log = logging.getLogger("nxjobs.coalesce")

# What a flush re-queues itself as (each one a Decision).
_Requeue = TypeVar("_Requeue", WaitForSlot, RetryLater, CoolDown)

# (group, trigger, countdown s): publish another flush of `group` (the runner owns the broker).
SendFlush = Callable[[str, str, float], None]


class BatchAttempt:
    """`svc`: the worker's services (as JobAttempt's, plus coalesce); `batch_id`: the flush
    message's id, which names its batch; `send_flush`: how a flush of what is left is published."""

    def __init__(
        self,
        svc: Any,
        sender: Sender,
        *,
        group: str,
        batch_id: str,
        trigger: str,
        slot_at_us: int | None,
        send_flush: SendFlush,
    ):
        self.svc = svc
        self.sender = sender
        self.kind = sender.spec.kind
        self.group = group
        self.batch_id = batch_id
        self.trigger = trigger
        self.slot_at_us = slot_at_us
        self.send_flush = send_flush
        self.slots = Slots()
        self.marker = InflightMarker(svc.redis, batch_id)
        self.started = 0.0

    def run(self) -> Decision:
        svc, group = self.svc, self.group
        queue = svc.coalesce
        self.started = time.monotonic()
        report.take_request_latencies(
            svc
        )  # an earlier task's requests on this thread are not this batch's
        state = queue.batch_state(self.batch_id)
        if state == "done":
            return AlreadySent()  # a late duplicate of this flush (e.g. re-sent by the sweep)
        if state is None:
            waiting = queue.pending(group)
            if waiting == 0:
                return Empty()
            if self.trigger == "full" and waiting < queue.max_items(group):
                # Another flush took this batch's numbers first: what is left waits out the linger,
                # rather than spending a request on a part batch now.
                if not queue.arm(group):
                    return Deferred()
                return self._again(
                    RetryLater,
                    "linger",
                    countdown=svc.settings.coalesce.linger_s,
                    priority=PRIORITY_NEW,
                    reason="waiting out the linger",
                )

        # The batch is taken only once the slot is ours.
        limits = self.sender.limits(svc, group)
        try:
            permit = svc.gate.take(limits, prepaid_at_us=self.slot_at_us)
        except SlotNotReady as wait:
            return self._wait_for_slot(wait)
        with svc.gate.bind(permit) as self.slots:
            return self._run_taken()

    def _run_taken(self) -> Decision:
        svc, group, batch_id, sender = self.svc, self.group, self.batch_id, self.sender
        queue = svc.coalesce
        linger_s = svc.settings.coalesce.linger_s
        taken = queue.take(group, batch_id, time.time(), utc_now_iso())
        if taken.status == 0:
            return Empty()
        if taken.status == 3:
            return AlreadySent()
        if taken.status == 2 and taken.pending_left and queue.arm(group):
            # Numbers left behind get their own flush after the linger (a full one is sent by
            # the pushes).
            self.send_flush(group, "linger", linger_s)
        batch = Batch(group, batch_id, coalesce.batch_no_of(batch_id), taken.members, taken.items)
        attempt = queue.batch_counter(batch_id, "attempts")
        outcome = Outcome()

        if taken.status == 1:
            busy_until = self.marker.busy_until(svc.settings.http)
            if busy_until is not None:
                if time.time() < busy_until:
                    return self._again(
                        RetryLater,
                        self.trigger,
                        countdown=busy_until - time.time(),
                        priority=PRIORITY_RETRY,
                        reason="an earlier attempt may still be in flight",
                    )
                found = sender.look_up(svc, batch, outcome)
                if found is not None:
                    log.info(
                        "batch=%s interrupted attempt found at the provider; not re-sent", batch_id
                    )
                    return self._record(batch, outcome, found, attempt)
                self.marker.clear()  # no trace (or a repeat the provider refuses): safe to send

        self.marker.set(ttl_s=svc.settings.record_ttl_s)
        try:
            answer = sender.send(svc, batch, outcome)
        except SlotNotReady as wait:
            self.marker.clear()  # not sent
            return self._wait_for_slot(wait)
        except NXCloudError as err:
            self.marker.on_error(err)
            return self._failed_attempt(batch, outcome, err, attempt)
        return self._record(batch, outcome, answer, attempt)

    def _record(
        self, batch: Batch, outcome: Outcome, answer: dict[str, Any], attempt: int
    ) -> BatchSubmitted:
        """Every member gets its share: submitted with the batch's ids, or failed (that job only) if
        the provider refused its item."""
        svc, sender, kind = self.svc, self.sender, self.kind
        keys_of = dict(batch.members)
        outcomes = []
        for share in sender.shares(batch, answer):
            if share.error is not None:
                self._dead_letter(batch, share.job_id, keys_of[share.job_id], share.error)
                outcomes.append(
                    coalesce.MemberOutcome(share.job_id, True, share.error.model_dump())
                )
            else:
                outcomes.append(coalesce.MemberOutcome(share.job_id, False, share.result or {}))
        failed = sum(1 for o in outcomes if o.failed)
        now = time.time()
        due = now + svc.settings.callbacks.deadlines_s().get(kind, 600.0)
        completed = svc.coalesce.fan_out(
            batch.batch_id,
            outcome.request,
            outcomes,
            now_s=now,
            now_iso=utc_now_iso(),
            due_at_s=due,
            family=sender.spec.family,
        )
        self.marker.clear()
        report.observe_completions(svc, completed)
        self._log(attempt, "submitted", "0")
        log.info(
            "batch=%s kind=%s members=%d rejected=%d completed_early=%d",
            batch.batch_id,
            kind,
            len(batch.members),
            failed,
            len(completed),
        )
        return BatchSubmitted(members=len(batch.members), rejected=failed)

    def _failed_attempt(
        self, batch: Batch, outcome: Outcome, err: NXCloudError, attempt: int
    ) -> Decision:
        """Throttled: cool down and try again. Transient: back off and try again. Else every
        member fails."""
        svc, batch_id = self.svc, self.batch_id
        cls = err.classification
        rl = svc.settings.ratelimit
        if cls.throttled:
            cooldown = svc.limiter.cool_down(
                self.slots.permit.limits,
                base_s=rl.cooldown_base_s,
                cap_s=rl.cooldown_cap_s,
                repeat_within_s=rl.cooldown_repeat_s,
                rng=svc.rng,
            )
            throttles = svc.coalesce.batch_counter(batch_id, "throttles")
            if throttles <= rl.max_throttles:
                self._log(attempt, f"throttled, cooldown {cooldown:.2f}s", err.code)
                return self._again(
                    CoolDown,
                    "full",
                    countdown=cooldown + svc.rng.uniform(0, 0.1),
                    priority=PRIORITY_RETRY,
                    reason=f"provider said too frequent ({err.code})",
                )
        else:
            throttles = int(svc.redis.hget(keys.coalesce_batch(batch_id), "throttles") or 0)
            delay = policy.retry_delay(cls, attempt - throttles, svc.settings.retry, svc.rng)
            if delay is not None:
                self._log(attempt, f"retry in {delay:.2f}s", err.code)
                return self._again(
                    RetryLater,
                    "full",
                    countdown=delay,
                    priority=PRIORITY_RETRY,
                    reason=f"{err.code} {err.message}",
                    error=JobError(code=err.code, message=err.message, retryable=True),
                )
        error = JobError(code=err.code, message=err.message, retryable=False)
        for job_id, key in batch.members:
            self._dead_letter(batch, job_id, key, error)
        svc.coalesce.fan_out(
            batch_id,
            outcome.request,
            [
                coalesce.MemberOutcome(job_id, True, error.model_dump())
                for job_id, _ in batch.members
            ],
            now_s=time.time(),
            now_iso=utc_now_iso(),
            due_at_s=time.time(),
            family=self.sender.spec.family,
        )
        self._log(attempt, "failed", err.code)
        return BatchFailed(members=len(batch.members), code=err.code)

    def _dead_letter(self, batch: Batch, job_id: str, key: str, error: JobError) -> None:
        # Replayed on its own (not coalesced again): the payload a producer would have sent for it.
        svc, sender = self.svc, self.sender
        record = svc.store.get(job_id)
        svc.dead_letters.add(
            job_id,
            sender.spec.kind,
            sender.replay_payload(batch, job_id, key),
            error.model_dump(),
            record.model_dump(mode="json", exclude={"callbacks"}) if record else None,
        )
        log.warning("job=%s batch=%s failed %s", job_id, batch.batch_id, error.code)

    def _wait_for_slot(self, wait: SlotNotReady) -> Decision:
        svc = self.svc
        slot = wait_for_slot(wait.grant, svc.settings.ratelimit, svc.rng)
        report.record_rate_wait(
            svc, self.batch_id, slot.countdown, [lim.name for lim in wait.limits]
        )
        return self._again(
            WaitForSlot,
            self.trigger,
            countdown=slot.countdown,
            priority=slot.priority,
            slot_at_us=slot.slot_at_us,
            reason=f"waiting {slot.countdown:.3f}s for a rate-limit slot",
        )

    def _again(
        self,
        decision: type[_Requeue],
        trigger: str,
        *,
        countdown: float,
        priority: int,
        reason: str,
        **fields: Any,
    ) -> _Requeue:
        """The same message (same task id, so the same batch) back on the queue after
        `countdown`."""
        self.svc.coalesce.touch(self.batch_id, time.time())
        return decision(
            countdown=max(countdown, 0.0),
            priority=priority,
            reason=f"batch: {reason}",
            trigger=trigger,
            **fields,
        )

    def _log(self, attempt: int, outcome: str, code: str) -> None:
        report.log_attempt(
            self.svc,
            self.batch_id,
            self.kind,
            attempt,
            outcome,
            code,
            self.started,
            self.slots.permit.credentials,
        )
