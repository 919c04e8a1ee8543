"""The scheduled-jobs thread of a worker's main process (nxjobs/schedule.py has the rule).

Started on `worker_ready`, stopped on `worker_shutdown` (workers/celery_app.py). Every
`NXJOBS_SCHEDULE__INTERVAL_S` it runs one promotion: one script call takes up to
`NXJOBS_SCHEDULE__BATCH` due jobs under a lease, each is published through the app with its stored
options, and one more call confirms them. Every worker runs it; the lease keeps two workers from
publishing the same job in the same window, and the claim makes a second message harmless. It
talks to Redis on its own connections (our Redis client, a producer of the app's pool).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from config.settings import Settings
from nxjobs.records import utc_now_iso
from nxjobs.redact import flower_repr
from nxjobs.redis_conn import connect
from nxjobs.schedule import Due, Schedule

log = logging.getLogger("nxjobs.schedule")


class ScheduleThread(threading.Thread):
    def __init__(self, app: Any, settings: Settings):
        super().__init__(name="nxjobs-schedule", daemon=True)
        self.app = app
        self.settings = settings.schedule
        self.redis_url = settings.redis_url
        self.ttl_s = settings.record_ttl_s
        self._stop_event = threading.Event()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout_s)

    def run(self) -> None:
        sched: Schedule | None = None
        failing = False
        while not self._stop_event.is_set():
            try:
                if sched is None:  # here, so Redis away at startup is only a failed tick
                    sched = Schedule(connect(self.redis_url), self.ttl_s)
                self.tick(sched)
                failing = False
            except Exception:  # noqa: BLE001 - Redis away: the next tick tries again
                if not failing:
                    log.warning("scheduled jobs: tick failed", exc_info=True)
                failing = True
            self._stop_event.wait(self.settings.interval_s)

    def tick(self, sched: Schedule) -> tuple[int, int]:
        with self.app.producer_or_acquire() as producer:

            def publish(due: Due) -> None:
                self.app.send_task(
                    due.task,
                    kwargs=due.kwargs,
                    task_id=due.job_id,
                    queue=due.queue,
                    routing_key=due.queue,
                    priority=due.priority,
                    producer=producer,
                    kwargsrepr=flower_repr(due.kwargs, due.kind),
                    argsrepr="()",
                )

            sent, failed = sched.promote(
                publish, utc_now_iso, limit=self.settings.batch, lease_s=self.settings.lease_s
            )
        if sent:
            log.info("scheduled jobs: %d due published", sent)
        return sent, failed


_threads: list[ScheduleThread] = []


def start(app: Any, settings: Settings) -> None:
    if any(t.is_alive() for t in _threads):
        return
    thread = ScheduleThread(app, settings)
    thread.start()
    _threads.append(thread)


def stop() -> None:
    while _threads:
        _threads.pop().stop()
