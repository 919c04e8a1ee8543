"""Coalescing tasks (nxjobs.coalesce): the flush that sends a batch, and beat's sweep."""

from __future__ import annotations

import logging
import time

from celery import shared_task

from nxjobs import coalesce
from tasks.flush import FlushTask, flush
from tasks.services import get_services

log = logging.getLogger("nxjobs.coalesce")


@shared_task(name=coalesce.FLUSH_TASK, bind=True, base=FlushTask)
def number_check_batch(
    self: FlushTask, group: str, trigger: str = "linger", slot_at_us: int | None = None
) -> str:
    # slot_at_us is set only by our own re-queues (rate-limit waits).
    return flush(self, get_services(), group=group, trigger=trigger, slot_at_us=slot_at_us)


@shared_task(name=coalesce.CONTACT_FLUSH_TASK, bind=True, base=FlushTask)
def callbot_contact_batch(
    self: FlushTask, group: str, trigger: str = "linger", slot_at_us: int | None = None
) -> str:
    # The same flush; its group (`cbt:<userTaskID>`) makes it an addBatchCall on the callbot queue.
    return flush(self, get_services(), group=group, trigger=trigger, slot_at_us=slot_at_us)


@shared_task(name=coalesce.SWEEP_TASK, bind=True, ignore_result=True)
def coalesce_sweep(self, family: str | None = None) -> dict:
    """Flush what a lost message left behind: pending items (numbers, contacts) with no flush on its
    way (a producer died between its push and its publish), and built batches untouched for
    `stale_batch_s` (their flush message was lost). A re-flushed batch keeps its id, so it is looked
    up (or its repeat refused by the provider) before anything is added twice. Each flush goes to
    its kind's queue. Beat runs one sweep per family (`family`: only that family's groups), each
    on that family's queue; without `family`, every group."""
    svc = get_services()
    queue = svc.coalesce

    def ours(group: str) -> bool:
        return family is None or coalesce.spec_of(group).family == family

    groups = queue.unarmed_groups(ours)
    for group in groups:
        coalesce.send_flush(self.app, group, "linger", countdown=svc.settings.coalesce.linger_s)
    stale = [
        (batch_id, group)
        for batch_id, group in queue.stale_batches(svc.settings.coalesce.stale_batch_s, time.time())
        if ours(group)
    ]
    for batch_id, group in stale:
        coalesce.send_flush(self.app, group, "full", task_id=batch_id)
    if groups or stale:
        log.warning(
            "coalesce sweep: re-armed %d group(s), re-sent %d stale batch(es)",
            len(groups),
            len(stale),
        )
    return {"rearmed": len(groups), "stale_batches": len(stale)}
