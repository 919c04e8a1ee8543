"""One flush of coalesced jobs (nxjobs.coalesce): slot, batch, request, fan-out.

Reads top to bottom like JobTask: take the request's rate-limit slot (or go back
to the queue until it comes), take the batch (or find the one an earlier
delivery of this same message built), send it once, then record every member.
The batch is named after the flush message's task id, which retries and
redeliveries keep, so a batch is built once and sent at most once: before a
resend, a batch whose earlier attempt may have reached the provider is looked
up (a Number Check batch by its batchNo), or sent again where the provider
itself refuses a repeat (a contact's orderID: "already exists" counts as added).

What differs per kind (its limits, lookup, request and each member's share of
the answer) is a `Sender`; the flow is one.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import redis
from celery import Task
from celery.exceptions import Reject
from kombu.exceptions import OperationalError

from nxjobs import wire
from nxjobs import coalesce, keys
from nxjobs.callbacks import reconcile
from nxjobs.client import operations
from nxjobs.client.errors import NXCloudError, TransportError
from nxjobs.client.operations import NUMBER_CHECK_PATH, Outcome, check_number_batch
from nxjobs.jobs import PRIORITY_NEW, PRIORITY_RETRY
from nxjobs.ratelimit.gate import SlotNotReady
from nxjobs.records import JobError, utc_now_iso
from nxjobs.redact import mask_phone
from tasks import policy
from tasks.base import RateWait, log_attempt, record_job_rate_wait, take_request_latencies
from tasks.services import Services, get_services

log = logging.getLogger("nxjobs.coalesce")

_INFRA_ERRORS = (redis.RedisError, OperationalError)
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
    """One member's part of the answer: its result, or the error that fails it (that job only).
    A NamedTuple: one per member, thousands per batch."""

    job_id: str
    result: dict[str, Any] | None = None
    error: JobError | None = None


class Sender:
    """The kind-specific half of a flush. `look_up` answers for a batch an interrupted attempt may
    have sent: the answer it got, or None to send it (again)."""

    spec: coalesce.Spec

    def limits(self, svc: Services, group: str) -> list[Any]:
        raise NotImplementedError

    def look_up(self, svc: Services, batch: Batch, outcome: Outcome) -> dict[str, Any] | None:
        raise NotImplementedError

    def send(self, svc: Services, batch: Batch, outcome: Outcome) -> dict[str, Any]:
        raise NotImplementedError

    def shares(self, batch: Batch, answer: dict[str, Any]) -> list[Share]:
        raise NotImplementedError

    def replay_payload(self, batch: Batch, job_id: str, key: str) -> dict[str, Any]:
        """The payload a member is replayed with from the dead letters: its own, sent on its own."""
        raise NotImplementedError


class NumberCheckSender(Sender):
    spec = coalesce.NUMBER_CHECKS

    def limits(self, svc: Services, group: str) -> list[Any]:
        # Both quotas if a full batch would be big: the batch is taken only once the slot is ours.
        return svc.gate.limits_for("api2", NUMBER_CHECK_PATH, {"phone": ",".join("0" * svc.coalesce.max_items(group))})

    def look_up(self, svc: Services, batch: Batch, outcome: Outcome) -> dict[str, Any] | None:
        created_iso = svc.redis.hget(keys.coalesce_batch(batch.batch_id), "created_iso") or utc_now_iso()
        found = reconcile.find_number_check(svc.api2, svc.settings.api2.appkey, batch.batch_no, created_iso,
                                            time.time(), len(batch.members))
        outcome.request.append({"endpoint": "lookup:" + reconcile.NUMBER_QUERY_PATH,
                                "body": {"batchNo": batch.batch_no}})
        return None if found is None else {**found, "failNumber": []}

    def send(self, svc: Services, batch: Batch, outcome: Outcome) -> dict[str, Any]:
        callbacks = svc.settings.callbacks
        return check_number_batch(
            svc.api2, phones=[phone for _, phone in batch.members], batch_no=batch.batch_no,
            check_level=coalesce.level_of(batch.group), appkey=svc.settings.api2.appkey,
            public_url=callbacks.public_url, outcome=outcome,
            callback_token=callbacks.token.get_secret_value() if callbacks.token else None)

    def shares(self, batch: Batch, answer: dict[str, Any]) -> list[Share]:
        rejected = coalesce.rejected_members(batch.members, answer.get("failNumber") or [])
        share = {"requestId": answer.get("requestId"), "batchNo": answer.get("batchNo") or batch.batch_no,
                 "numbers": 1, "failNumber": [], "coalesced": {"batch": batch.batch_id, "numbers": len(batch.members)}}
        return [Share(job_id, error=JobError(code="number_rejected", message=f"{mask_phone(phone)}: {rejected[job_id]}",
                                             retryable=False))
                if job_id in rejected else Share(job_id, result=share)
                for job_id, phone in batch.members]

    def replay_payload(self, batch: Batch, job_id: str, key: str) -> dict[str, Any]:
        return {"phones": [key], "check_level": coalesce.level_of(batch.group)}


class ContactSender(Sender):
    spec = coalesce.CONTACTS

    def limits(self, svc: Services, group: str) -> list[Any]:
        return svc.gate.limits_for("callbot", "addBatchCall", None)

    def look_up(self, svc: Services, batch: Batch, outcome: Outcome) -> dict[str, Any] | None:
        # Sent again as it was: the provider refuses an orderID it already has ("already exists"),
        # which counts as added (operations.rejected_orders), so no contact is added twice.
        return None

    def send(self, svc: Services, batch: Batch, outcome: Outcome) -> dict[str, Any]:
        return operations.add_contacts(
            svc.callbot, user_task_id=coalesce.user_task_id_of(batch.group),
            call_list=[batch.items[job_id] for job_id, _ in batch.members if job_id in batch.items],
            public_url=svc.settings.callbacks.public_url, outcome=outcome, shared=True)

    def shares(self, batch: Batch, answer: dict[str, Any]) -> list[Share]:
        refused = operations.rejected_orders(answer.get("errList"))
        share = {"userTaskID": coalesce.user_task_id_of(batch.group), "contacts": 1,
                 "totalCount": answer.get("totalCount"), "successCount": answer.get("successCount"),
                 "coalesced": {"batch": batch.batch_id, "contacts": len(batch.members)}}
        out = []
        for job_id, order_id in batch.members:
            if job_id not in batch.items:  # cannot happen: every contact is pushed with its item
                out.append(Share(job_id, error=JobError(code="internal_error", message="contact item missing",
                                                        retryable=False)))
            elif order_id in refused:
                message = _LONG_DIGITS.sub(lambda m: mask_phone(m.group()), refused[order_id])
                out.append(Share(job_id, error=JobError(code=operations.CONTACT_REJECTED,
                                                        message=f"orderID {order_id}: {message}", retryable=False)))
            else:
                out.append(Share(job_id, result={**share, "orderID": order_id}))
        return out

    def replay_payload(self, batch: Batch, job_id: str, key: str) -> dict[str, Any]:
        item = batch.items.get(job_id) or {}
        return {"user_task_id": coalesce.user_task_id_of(batch.group),
                "contact": wire.contact_of_item(item) if item else {"order_id": key}}


SENDERS: dict[str, Sender] = {sender.spec.kind: sender for sender in (NumberCheckSender(), ContactSender())}


def sender_of(group: str) -> Sender:
    return SENDERS[coalesce.spec_of(group).kind]


class FlushTask(Task):
    # As JobTask: acknowledged once the outcome is recorded; a lost worker gives the message back.
    acks_late = True
    reject_on_worker_lost = True
    ignore_result = True
    max_retries = None


def flush(task: Task, svc: Services, *, group: str, trigger: str, slot_at_us: int | None) -> str:
    try:
        return _flush(task, svc, group=group, trigger=trigger, slot_at_us=slot_at_us)
    except _INFRA_ERRORS as exc:
        # Nothing decided: the batch (if built) stays, and this message comes back to finish it.
        log.warning("batch=%s store/broker unavailable (%s); message returned to the queue",
                    task.request.id, type(exc).__name__)
        raise Reject(f"redis unavailable: {type(exc).__name__}", requeue=True) from exc


def _flush(task: Task, svc: Services, *, group: str, trigger: str, slot_at_us: int | None) -> str:
    queue = svc.coalesce
    cfg = svc.settings.coalesce
    sender = sender_of(group)
    batch_id = task.request.id
    started = time.monotonic()
    take_request_latencies(svc)  # an earlier task's requests on this thread are not this batch's
    state = queue.batch_state(batch_id)
    if state == "done":
        return "already sent"  # a late duplicate of this flush (e.g. re-sent by the sweep)
    if state is None:
        waiting = queue.pending(group)
        if waiting == 0:
            return "empty"
        if trigger == "full" and waiting < queue.max_items(group):
            # Another flush took this batch's numbers first: what is left waits out the linger,
            # rather than spending a request on a part batch now.
            if not queue.arm(group):
                return "deferred"
            raise _again(task, group, "linger", countdown=cfg.linger_s, priority=PRIORITY_NEW,
                         reason="waiting out the linger")

    # The batch is taken only once the slot is ours.
    limits = sender.limits(svc, group)
    try:
        svc.gate.take(limits, prepaid_at_us=slot_at_us)
    except SlotNotReady as wait:
        raise _wait_for_slot(task, svc, group, trigger, wait)
    svc.gate.begin_attempt(first_slot_paid=bool(limits))

    now = time.time()
    taken = queue.take(group, batch_id, now, utc_now_iso())
    if taken.status == 0:
        return "empty"
    if taken.status == 3:
        return "already sent"
    if taken.status == 2 and taken.pending_left and queue.arm(group):
        # Numbers left behind get their own flush after the linger (a full one is sent by the pushes).
        coalesce.send_flush(task.app, group, "linger", countdown=cfg.linger_s)
    batch = Batch(group, batch_id, coalesce.batch_no_of(batch_id), taken.members, taken.items)
    attempt = queue.batch_counter(batch_id, "attempts")
    outcome = Outcome()

    marker = keys.inflight(batch_id)
    if taken.status == 1:
        set_at = svc.redis.get(marker)
        if set_at is not None:
            busy_until = policy.inflight_busy_until(set_at, svc.settings.http)
            if time.time() < busy_until:
                raise _again(task, group, trigger, countdown=busy_until - time.time(), priority=PRIORITY_RETRY,
                             reason="an earlier attempt may still be in flight")
            found = sender.look_up(svc, batch, outcome)
            if found is not None:
                log.info("batch=%s interrupted attempt found at the provider; not re-sent", batch_id)
                return _record(svc, sender, batch, outcome, found, attempt, started)
            svc.redis.delete(marker)  # no trace (or a repeat the provider refuses): safe to send

    svc.redis.set(marker, f"{time.time():.3f}", ex=svc.settings.record_ttl_s)
    try:
        answer = sender.send(svc, batch, outcome)
    except SlotNotReady as wait:
        svc.redis.delete(marker)  # not sent
        raise _wait_for_slot(task, svc, group, trigger, wait)
    except NXCloudError as err:
        if not (isinstance(err, TransportError) and err.may_have_reached):
            svc.redis.delete(marker)  # answered, or never reached: a resend is safe
        return _failed_attempt(task, svc, sender, batch, outcome, err, attempt, started)
    return _record(svc, sender, batch, outcome, answer, attempt, started)


def _record(svc: Services, sender: Sender, batch: Batch, outcome: Outcome, answer: dict[str, Any], attempt: int,
            started: float) -> str:
    """Every member gets its share: submitted with the batch's ids, or failed (that job only) if the
    provider refused its item."""
    kind = sender.spec.kind
    keys_of = dict(batch.members)
    outcomes = []
    for share in sender.shares(batch, answer):
        if share.error is not None:
            _dead_letter(svc, sender, batch, share.job_id, keys_of[share.job_id], share.error)
            outcomes.append(coalesce.MemberOutcome(share.job_id, True, share.error.model_dump()))
        else:
            outcomes.append(coalesce.MemberOutcome(share.job_id, False, share.result or {}))
    failed = sum(1 for o in outcomes if o.failed)
    now = time.time()
    due = now + svc.settings.callbacks.deadlines_s().get(kind, 600.0)
    completed = svc.coalesce.fan_out(batch.batch_id, outcome.request, outcomes, now_s=now, now_iso=utc_now_iso(),
                                     due_at_s=due, family=sender.spec.family)
    svc.redis.delete(keys.inflight(batch.batch_id))
    _observe_completions(svc, completed)
    log_attempt(batch.batch_id, kind, attempt, "submitted", "0", started)
    log.info("batch=%s kind=%s members=%d rejected=%d completed_early=%d", batch.batch_id, kind, len(batch.members),
             failed, len(completed))
    return f"submitted {len(batch.members) - failed} of {len(batch.members)}"


def _failed_attempt(task: Task, svc: Services, sender: Sender, batch: Batch, outcome: Outcome, err: NXCloudError,
                    attempt: int, started: float) -> str:
    """Throttled: cool down and try again. Transient: back off and try again. Else every member fails."""
    group, batch_id, kind = batch.group, batch.batch_id, sender.spec.kind
    cls = err.classification
    rl = svc.settings.ratelimit
    if cls.throttled:
        cooldown = svc.limiter.cool_down(svc.gate.last_limits, base_s=rl.cooldown_base_s, cap_s=rl.cooldown_cap_s,
                                         repeat_within_s=rl.cooldown_repeat_s, rng=svc.rng)
        throttles = svc.coalesce.batch_counter(batch_id, "throttles")
        if throttles <= rl.max_throttles:
            log_attempt(batch_id, kind, attempt, f"throttled, cooldown {cooldown:.2f}s", err.code, started)
            raise _again(task, group, "full", countdown=cooldown + svc.rng.uniform(0, 0.1),
                         priority=PRIORITY_RETRY, reason=f"provider said too frequent ({err.code})")
    else:
        throttles = int(svc.redis.hget(keys.coalesce_batch(batch_id), "throttles") or 0)
        delay = policy.retry_delay(cls, attempt - throttles, svc.settings.retry, svc.rng)
        if delay is not None:
            log_attempt(batch_id, kind, attempt, f"retry in {delay:.2f}s", err.code, started)
            raise _again(task, group, "full", countdown=delay, priority=PRIORITY_RETRY,
                         reason=f"{err.code} {err.message}")
    error = JobError(code=err.code, message=err.message, retryable=False)
    for job_id, key in batch.members:
        _dead_letter(svc, sender, batch, job_id, key, error)
    svc.coalesce.fan_out(batch_id, outcome.request, [coalesce.MemberOutcome(job_id, True, error.model_dump())
                                                     for job_id, _ in batch.members],
                         now_s=time.time(), now_iso=utc_now_iso(), due_at_s=time.time(), family=sender.spec.family)
    log_attempt(batch_id, kind, attempt, "failed", err.code, started)
    return f"failed {len(batch.members)}: {err.code}"


def _dead_letter(svc: Services, sender: Sender, batch: Batch, job_id: str, key: str, error: JobError) -> None:
    # Replayed on its own (not coalesced again): the payload a producer would have sent for it.
    record = svc.store.get(job_id)
    svc.dead_letters.add(job_id, sender.spec.kind, sender.replay_payload(batch, job_id, key), error.model_dump(),
                         record.model_dump(mode="json", exclude={"callbacks"}) if record else None)
    log.warning("job=%s batch=%s failed %s", job_id, batch.batch_id, error.code)


def _observe_completions(svc: Services, job_ids: list[str]) -> None:
    if not job_ids:
        return
    try:
        from nxjobs import metrics

        for job_id in job_ids:
            metrics.observe_completion(svc.redis, job_id)
    except Exception as exc:  # metrics never change an outcome
        log.warning("completion metrics not recorded: %s", type(exc).__name__)


def _wait_for_slot(task: Task, svc: Services, group: str, trigger: str, wait: SlotNotReady):
    grant = wait.grant
    countdown, priority = policy.slot_wait(grant, svc.settings.ratelimit, svc.rng)
    record_job_rate_wait(svc, task.request.id, countdown)
    return _again(task, group, trigger, countdown=countdown, priority=priority,
                  slot_at_us=grant.slot_at_us if grant.reserved else None,
                  reason=f"waiting {countdown:.3f}s for a rate-limit slot")


def _again(task: Task, group: str, trigger: str, *, countdown: float, priority: int, reason: str,
           slot_at_us: int | None = None):
    """The same message (same task id, so the same batch) back on the queue after `countdown`."""
    get_services().coalesce.touch(task.request.id, time.time())
    return task.retry(kwargs={"group": group, "trigger": trigger, "slot_at_us": slot_at_us},
                      countdown=max(countdown, 0.0), priority=priority, exc=RateWait(f"batch: {reason}"))
