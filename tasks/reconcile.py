"""Reconciliation task, run by Celery beat once per API family on that family's
queue (so it runs where that family's credentials are): jobs whose callbacks
are late are looked up with the query APIs (nxjobs.callbacks.reconcile)."""

from __future__ import annotations

import logging
import time

from celery import shared_task

from nxjobs import keys
from nxjobs.callbacks.reconcile import Clients, Policy, Reconciler
from nxjobs.ratelimit.gate import SlotNotReady
from tasks.services import Services, get_services

log = logging.getLogger("nxjobs.reconcile")

TASK_NAME = "nxjobs.reconcile_callbacks"
FAMILIES = ("api2", "callbot", "agent")
# A query whose rate-limit slot is this close is waited for in the task; further away, the run ends.
MAX_SLOT_WAIT_S = 5.0


@shared_task(name=TASK_NAME, ignore_result=True)
def reconcile_callbacks(family: str) -> dict:
    svc = get_services()
    cb = svc.settings.callbacks
    # One run per family at a time; the lock outlives a crashed run by at most the interval.
    lock = svc.redis.lock(
        keys.reconcile_lock(family),
        timeout=max(60.0, cb.reconcile_interval_s * 4, cb.reconcile_max_run_s * 3),
        blocking=False,
    )
    if not lock.acquire():
        return {"family": family, "skipped": "another run is in progress"}
    try:
        report = run_once(svc, family)
    finally:
        try:
            lock.release()
        except Exception:  # expired meanwhile: nothing to release
            pass
    if len(report) > 1:
        log.info("reconcile %s", " ".join(f"{k}={v}" for k, v in report.items()))
    return report


def run_once(svc: Services, family: str) -> dict:
    """One reconciliation run of `family` with the services' clients and settings (the caller
    holds the family's lock); its report."""
    cb = svc.settings.callbacks
    with svc.gate.bind() as slots:

        def wait_slot(exc: BaseException) -> bool:
            grant = exc.grant  # type: ignore[attr-defined]
            if not grant.reserved or grant.wait_s > MAX_SLOT_WAIT_S:
                return False
            time.sleep(grant.wait_s)
            slots.prepay(grant.slot_at_us)  # the next request spends this slot
            return True

        clients = Clients(
            api2=svc.api2 if family == "api2" else None,
            api2_appkey=svc.settings.api2.appkey,
            callbot=svc.callbot if family == "callbot" else None,
            agent=svc.agent if family == "agent" else None,
            not_now=(SlotNotReady,),
            wait_slot=wait_slot,
        )
        policy = Policy(
            deadlines_s=cb.deadlines_s(),
            give_up_s=cb.give_up_s(),
            recheck_s=cb.recheck_s,
            ambiguous_after_s=cb.ambiguous_lookup_after_s,
            batch=cb.reconcile_batch,
            max_requests=cb.reconcile_max_requests,
            max_run_s=cb.reconcile_max_run_s,
        )
        return Reconciler(svc.store, svc.ledger, policy, clients).run(family).as_dict()


RECOVER_TASK_NAME = "nxjobs.recover_lost_messages"
# Index members of expired records dropped per family and run (RecordStore.trim_indexes).
INDEX_TRIM_PER_RUN = 10_000


@shared_task(name=RECOVER_TASK_NAME, ignore_result=True)
def recover_lost_messages(family: str) -> dict:
    """Re-publish jobs of `family` whose broker message was lost (nxjobs/recover.py), and trim
    the family's job indexes of members whose records have expired (bounded per run)."""
    from celery import current_app

    from nxjobs.jobs import KINDS, PRIORITY_RETRY
    from nxjobs.recover import LostMessageSweeper
    from nxjobs.redact import redact

    svc = get_services()
    lock = svc.redis.lock(
        keys.recover_lock(family),
        timeout=max(60.0, svc.settings.recover.interval_s * 4),
        blocking=False,
    )
    if not lock.acquire():
        return {"family": family, "skipped": "another run is in progress"}

    def publish(kind: str, job_id: str, payload: dict) -> None:
        job_kind = KINDS[kind]
        kwargs = {"job_id": job_id, "payload": payload}
        current_app.send_task(
            job_kind.task_name,
            kwargs=kwargs,
            task_id=job_id,
            queue=job_kind.queue,
            routing_key=job_kind.queue,
            priority=PRIORITY_RETRY,
            kwargsrepr=repr(redact(kwargs)),
            argsrepr="()",
        )

    try:
        report = LostMessageSweeper(
            svc.redis,
            publish,
            broker_client=svc.broker_redis,
            confirm_s=svc.settings.recover.confirm_s,
            transport_options=current_app.conf.broker_transport_options,
        ).run(family)
        family_kinds = [name for name, k in KINDS.items() if k.queue == family]
        report["index_trimmed"] = svc.store.trim_indexes(family_kinds, limit=INDEX_TRIM_PER_RUN)
    finally:
        try:
            lock.release()
        except Exception:  # expired meanwhile: nothing to release
            pass
    if report.get("republished"):
        log.warning("recover %s %s", family, " ".join(f"{k}={v}" for k, v in report.items()))
    return {"family": family, **report}
