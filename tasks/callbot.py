"""Callbot v3 tasks: create a call list task, add its contacts, start it; add one contact to a
task on its own (a `callbot-contact` job with batch=False, or a dead-letter replay; the coalesced
ones are sent by tasks/coalesce.py)."""

from celery import shared_task

from nxjobs.client import operations
from nxjobs.jobs import KINDS
from tasks.base import JobTask


@shared_task(name=KINDS["callbot-list"].task_name, bind=True, base=JobTask)
def submit_call_list(
    self: JobTask, job_id: str, payload: dict, slot_at_us: int | None = None, resumed: bool = False
) -> str:
    # slot_at_us / resumed are set only by our own re-queues (rate-limit waits).
    return self.run_job(
        job_id, "callbot-list", payload, _submit_call_list, slot_at_us=slot_at_us, resumed=resumed
    )


def _submit_call_list(svc, job_id, payload, outcome):
    return operations.submit_call_list(
        svc.callbot,
        job_id=job_id,
        payload=payload,
        public_url=svc.settings.callbacks.public_url,
        strategy_name=svc.settings.callbot.strategy_name,
        progress=svc.store.get_progress(job_id),
        save_progress=lambda progress: svc.store.update(job_id, progress=progress),
        outcome=outcome,
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
