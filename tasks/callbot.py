"""Callbot v3 tasks: create a call list task, add its contacts, start it; add one contact to a
task on its own (a `callbot-contact` job with batch=False, or a dead-letter replay; the coalesced
ones are sent by tasks/coalesce.py); one campaign-control operation on a list's task
(nxjobs.campaign)."""

from functools import cache, partial

import redis
from celery import shared_task
from celery.exceptions import Reject

from nxjobs import callbot_zones
from nxjobs.campaign import CONTROL_TASK, ControlRun, Later
from nxjobs.client import operations
from nxjobs.jobs import KINDS
from tasks.base import JobTask
from tasks.services import get_services


@shared_task(name=KINDS["callbot-list"].task_name, bind=True, base=JobTask)
def submit_call_list(
    self: JobTask, job_id: str, payload: dict, slot_at_us: int | None = None, resumed: bool = False
) -> str:
    # slot_at_us / resumed are set only by our own re-queues (rate-limit waits).
    return self.run_job(
        job_id, "callbot-list", payload, _submit_call_list, slot_at_us=slot_at_us, resumed=resumed
    )


def _submit_call_list(svc, job_id, payload, outcome):
    policy = svc.calling_hours
    return operations.submit_call_list(
        svc.callbot,
        job_id=job_id,
        payload=payload,
        public_url=svc.settings.callbacks.public_url,
        strategy_name=svc.settings.callbot.strategy_name,
        progress=svc.store.get_progress(job_id),
        save_progress=lambda progress: svc.store.save_progress(job_id, progress),
        outcome=outcome,
        # Calling hours on: the contacts by time zone, one task per group (asked once).
        plan=None if policy is None else partial(callbot_zones.plan_list, payload, policy),
    )


@shared_task(name=KINDS["callbot-contact"].task_name, bind=True, base=JobTask)
def add_contact(
    self: JobTask, job_id: str, payload: dict, slot_at_us: int | None = None, resumed: bool = False
) -> str:
    # slot_at_us / resumed are set only by our own re-queues (rate-limit waits).
    return self.run_job(
        job_id, "callbot-contact", payload, _add_contact, slot_at_us=slot_at_us, resumed=resumed
    )


def _add_contact(svc, job_id, payload, outcome):
    return operations.add_contact(
        svc.callbot,
        job_id=job_id,
        payload=payload,
        public_url=svc.settings.callbacks.public_url,
        outcome=outcome,
    )


@shared_task(name=CONTROL_TASK, bind=True, acks_late=True, ignore_result=True, max_retries=None)
def control_campaign(
    self,
    job_id: str,
    op_id: str,
    op: str,
    args: dict,
    slot_at_us=None,
    errors: int = 0,
    throttles: int = 0,
) -> str:
    # slot_at_us / errors / throttles are set only by our own re-queues (waits, retries).
    try:
        result = _control().run(
            job_id, op_id, op, args, slot_at_us=slot_at_us, errors=errors, throttles=throttles
        )
    except redis.RedisError as exc:
        # The answer could not be recorded: run it again (every operation is safe to resend).
        raise Reject(f"redis unavailable: {type(exc).__name__}", requeue=True) from exc
    if isinstance(result, Later):
        kwargs = {
            "job_id": job_id,
            "op_id": op_id,
            "op": op,
            "args": args,
            "slot_at_us": result.slot_at_us,
            "errors": result.errors,
            "throttles": result.throttles,
        }
        raise self.retry(kwargs=kwargs, countdown=result.countdown, exc=RuntimeError(result.reason))
    return result.outcome


@cache
def _control() -> ControlRun:
    svc = get_services()
    return ControlRun(
        svc.redis,
        svc.callbot,
        svc.gate,
        svc.limiter,
        retry=svc.settings.retry,
        ratelimit=svc.settings.ratelimit,
        ttl_s=svc.settings.record_ttl_s,
        rng=svc.rng,
    )
