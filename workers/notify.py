"""The webhook dispatcher thread of a `notify` worker's main process (nxjobs/webhooks.py has
the rule).

Why a thread and not a beat entry: it reads the events stream with a blocking XREADGROUP, so an
event is dispatched as soon as it is written (a beat tick would add up to its interval), it
needs no lock (each worker is its own consumer of the group; a due retry is taken by one ZREM),
and it runs wherever a notify worker runs, with or without beat. Started on `worker_ready` when
the worker consumes the notify queue, stopped on `worker_shutdown` (workers/celery_app.py). Its
own Redis connection; deliveries go out as tasks on the notify queue.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from config.settings import Settings
from nxjobs import webhooks
from nxjobs.jobs import NOTIFY_TASK, QUEUE_NOTIFY
from nxjobs.redis_conn import connect

log = logging.getLogger("nxjobs.notify")

_threads: list[DispatcherThread] = []


class DispatcherThread(threading.Thread):
    def __init__(self, app: Any, consumer_name: str, settings: Settings):
        super().__init__(name="nxjobs-notify", daemon=True)
        self.app = app
        self.settings = settings
        self.consumer_name = consumer_name
        self._stop_event = threading.Event()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout_s)

    def send(self, delivery_id: str) -> None:
        self.app.send_task(
            NOTIFY_TASK,
            args=(delivery_id,),
            queue=QUEUE_NOTIFY,
            routing_key=QUEUE_NOTIFY,
        )

    def run(self) -> None:
        from tasks.notify import policy_of

        n = self.settings.notify
        dispatcher: webhooks.Dispatcher | None = None
        failing = False
        while not self._stop_event.is_set():
            try:
                if dispatcher is None:  # here, so Redis away at startup is only a failed pass
                    client = connect(self.settings.redis_url)
                    webhooks.ensure_group(client)
                    webhooks.set_maxlen(client, n.events_maxlen)
                    dispatcher = webhooks.Dispatcher(
                        client,
                        self.send,
                        policy_of(self.settings),
                        consumer=self.consumer_name,
                        url=n.url,
                    )
                dispatcher.run_once()
                failing = False
            except Exception:  # noqa: BLE001 - Redis or the broker away: the next pass tries again
                if not failing:
                    log.warning("notify dispatcher: pass failed", exc_info=True)
                failing = True
                self._stop_event.wait(n.block_s)


def start(app: Any, consumer: Any, settings: Settings) -> None:
    consume_from = getattr(app.amqp.queues, "consume_from", None) or app.amqp.queues
    if QUEUE_NOTIFY not in consume_from or any(t.is_alive() for t in _threads):
        return
    thread = DispatcherThread(app, consumer.hostname, settings)
    thread.start()
    _threads.append(thread)


def stop() -> None:
    while _threads:
        _threads.pop().stop()
