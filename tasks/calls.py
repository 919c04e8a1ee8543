"""Agent API task: place one outbound call."""

from celery import shared_task

from nxjobs.client import operations
from nxjobs.jobs import KINDS
from tasks.base import JobTask


@shared_task(name=KINDS["call"].task_name, bind=True, base=JobTask)
def place_call(
    self: JobTask, job_id: str, payload: dict, slot_at_us: int | None = None, resumed: bool = False
) -> str:
    # slot_at_us / resumed are set only by our own re-queues (rate-limit waits).
    return self.run_job(
        job_id, "call", payload, _place_call, slot_at_us=slot_at_us, resumed=resumed
    )


def _place_call(svc, job_id, payload, outcome):
    agent = svc.settings.agent
    return operations.place_call(
        svc.agent,
        svc.agent_tokens,
        job_id=job_id,
        payload=payload,
        username=agent.username,
        default_show_phone=agent.show_phone,
        outcome=outcome,
    )
