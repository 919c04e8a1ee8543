"""One flush of coalesced Number Check jobs (nxjobs.coalesce): slot, batch, request, fan-out.

Reads top to bottom like JobTask: take the request's rate-limit slot (or go back
to the queue until it comes), take the batch (or find the one an earlier
delivery of this same message built), send it once, then record every member.
The batch is named after the flush message's task id, which retries and
redeliveries keep, so a batch is built once and sent at most once: before a
resend, a batch whose earlier attempt may have reached the provider is looked
up by its batchNo.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from celery import Task
from celery.exceptions import Reject
from kombu.exceptions import OperationalError

from nxjobs import coalesce, keys
from nxjobs.callbacks import reconcile
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

KIND = "number-check"
_INFRA_ERRORS = (redis.RedisError, OperationalError)


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
        if trigger == "full" and waiting < cfg.max_numbers:
            # Another flush took this batch's numbers first: what is left waits out the linger,
            # rather than spending a request on a part batch now.
            if not queue.arm(group):
                return "deferred"
            raise _again(task, group, "linger", countdown=cfg.linger_s, priority=PRIORITY_NEW,
                         reason="waiting out the linger")

    # Both quotas if a full batch would be big: the batch is taken only once the slot is ours.
    limits = svc.gate.limits_for("api2", NUMBER_CHECK_PATH, {"phone": ",".join("0" * cfg.max_numbers)})
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
    batch_no = coalesce.batch_no_of(batch_id)
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
            created_iso = svc.redis.hget(keys.coalesce_batch(batch_id), "created_iso") or utc_now_iso()
            found = reconcile.find_number_check(svc.api2, svc.settings.api2.appkey, batch_no, created_iso,
                                                time.time(), len(taken.members))
            outcome.request.append({"endpoint": "lookup:" + reconcile.NUMBER_QUERY_PATH, "body": {"batchNo": batch_no}})
            if found is not None:
                log.info("batch=%s interrupted attempt found at the provider; not re-sent", batch_id)
                return _record(svc, batch_id, taken.members, outcome, found.get("requestId"), batch_no, [],
                               attempt, started, code="0")
            svc.redis.delete(marker)  # the provider files a batch at once: no trace, safe to send

    svc.redis.set(marker, f"{time.time():.3f}", ex=svc.settings.record_ttl_s)
    callbacks = svc.settings.callbacks
    try:
        data = check_number_batch(
            svc.api2, phones=[phone for _, phone in taken.members], batch_no=batch_no,
            check_level=coalesce.level_of(group), appkey=svc.settings.api2.appkey, public_url=callbacks.public_url,
            outcome=outcome, callback_token=callbacks.token.get_secret_value() if callbacks.token else None)
    except SlotNotReady as wait:
        svc.redis.delete(marker)  # not sent
        raise _wait_for_slot(task, svc, group, trigger, wait)
    except NXCloudError as err:
        if not (isinstance(err, TransportError) and err.may_have_reached):
            svc.redis.delete(marker)  # answered, or never reached: a resend is safe
        return _failed_attempt(task, svc, group, batch_id, taken.members, outcome, err, attempt, started)
    return _record(svc, batch_id, taken.members, outcome, data.get("requestId"), data.get("batchNo") or batch_no,
                   data.get("failNumber") or [], attempt, started, code="0")


def _record(svc: Services, batch_id: str, members: list[tuple[str, str]], outcome: Outcome,
            request_id: str | None, batch_no: str, fail_numbers: list[Any], attempt: int, started: float, *,
            code: str) -> str:
    """Every member gets its share: submitted with the batch's ids, or failed if its number was rejected."""
    rejected = coalesce.rejected_members(members, fail_numbers)
    share = {"requestId": request_id, "batchNo": batch_no, "numbers": 1, "failNumber": [],
             "coalesced": {"batch": batch_id, "numbers": len(members)}}
    outcomes = []
    for job_id, phone in members:
        if job_id in rejected:
            error = JobError(code="number_rejected", message=f"{mask_phone(phone)}: {rejected[job_id]}",
                             retryable=False)
            _dead_letter(svc, job_id, phone, error, batch_id)
            outcomes.append(coalesce.MemberOutcome(job_id, True, error.model_dump()))
        else:
            outcomes.append(coalesce.MemberOutcome(job_id, False, share))
    now = time.time()
    due = now + svc.settings.callbacks.deadlines_s().get(KIND, 600.0)
    completed = svc.coalesce.fan_out(batch_id, outcome.request, outcomes, now_s=now, now_iso=utc_now_iso(),
                                     due_at_s=due)
    svc.redis.delete(keys.inflight(batch_id))
    _observe_completions(svc, completed)
    log_attempt(batch_id, KIND, attempt, "submitted", code, started)
    log.info("batch=%s numbers=%d rejected=%d completed_early=%d", batch_id, len(members), len(rejected),
             len(completed))
    return f"submitted {len(members) - len(rejected)} of {len(members)}"


def _failed_attempt(task: Task, svc: Services, group: str, batch_id: str, members: list[tuple[str, str]],
                    outcome: Outcome, err: NXCloudError, attempt: int, started: float) -> str:
    """Throttled: cool down and try again. Transient: back off and try again. Else every member fails."""
    cls = err.classification
    rl = svc.settings.ratelimit
    if cls.throttled:
        cooldown = svc.limiter.cool_down(svc.gate.last_limits, base_s=rl.cooldown_base_s, cap_s=rl.cooldown_cap_s,
                                         repeat_within_s=rl.cooldown_repeat_s, rng=svc.rng)
        throttles = svc.coalesce.batch_counter(batch_id, "throttles")
        if throttles <= rl.max_throttles:
            log_attempt(batch_id, KIND, attempt, f"throttled, cooldown {cooldown:.2f}s", err.code, started)
            raise _again(task, group, "full", countdown=cooldown + svc.rng.uniform(0, 0.1),
                         priority=PRIORITY_RETRY, reason=f"provider said too frequent ({err.code})")
    else:
        throttles = int(svc.redis.hget(keys.coalesce_batch(batch_id), "throttles") or 0)
        delay = policy.retry_delay(cls, attempt - throttles, svc.settings.retry, svc.rng)
        if delay is not None:
            log_attempt(batch_id, KIND, attempt, f"retry in {delay:.2f}s", err.code, started)
            raise _again(task, group, "full", countdown=delay, priority=PRIORITY_RETRY,
                         reason=f"{err.code} {err.message}")
    error = JobError(code=err.code, message=err.message, retryable=False)
    for job_id, phone in members:
        _dead_letter(svc, job_id, phone, error, batch_id)
    svc.coalesce.fan_out(batch_id, outcome.request, [coalesce.MemberOutcome(job_id, True, error.model_dump())
                                                     for job_id, _ in members],
                         now_s=time.time(), now_iso=utc_now_iso(), due_at_s=time.time())
    log_attempt(batch_id, KIND, attempt, "failed", err.code, started)
    return f"failed {len(members)}: {err.code}"


def _dead_letter(svc: Services, job_id: str, phone: str, error: JobError, batch_id: str) -> None:
    # Replayed on its own (not coalesced again): the payload a producer would have sent for it.
    record = svc.store.get(job_id)
    svc.dead_letters.add(job_id, KIND, {"phones": [phone], "check_level": _level_of_record(record)},
                         error.model_dump(), record.model_dump(mode="json", exclude={"callbacks"}) if record else None)
    log.warning("job=%s batch=%s failed %s", job_id, batch_id, error.code)


def _level_of_record(record: Any) -> int:
    level = (record.input or {}).get("check_level") if record is not None else None
    return int(level) if level else 1


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
