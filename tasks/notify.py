"""The webhook delivery task, on the `notify` queue: one POST of one job event
(nxjobs.webhooks.deliver); a failure is retried by the dispatcher from Redis when due, not by a
Celery countdown (which may not outlive the broker visibility timeout)."""

from __future__ import annotations

from celery import shared_task

from nxjobs import webhooks
from nxjobs.jobs import NOTIFY_TASK
from tasks.services import get_services


def policy_of(settings) -> webhooks.Policy:
    n = settings.notify
    return webhooks.Policy(
        base_s=n.base_s,
        cap_s=n.cap_s,
        max_age_s=n.max_age_s,
        connect_timeout_s=n.connect_timeout_s,
        read_timeout_s=n.read_timeout_s,
        batch=n.batch,
        block_s=n.block_s,
        claim_idle_s=n.claim_idle_s,
    )


@shared_task(name=NOTIFY_TASK, ignore_result=True, acks_late=True)
def notify_deliver(delivery_id: str) -> dict:
    svc = get_services()
    secret = svc.settings.notify.secret
    if secret is None:  # the notify queue requires it at startup (config.settings)
        raise RuntimeError("NXJOBS_NOTIFY__SECRET is not set")
    outcome = webhooks.deliver(
        svc.redis, delivery_id, secret.get_secret_value(), policy_of(svc.settings)
    )
    return {"delivery": delivery_id, "status": outcome.status, "attempts": outcome.attempts}
