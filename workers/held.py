"""The held-messages thread of a worker's main process (nxjobs/held.py has the rule).

Started on `worker_ready`, stopped on `worker_shutdown` (workers/celery_app.py), which Celery
sends once the consumer has closed and given back what it held, so the entry is deleted then. Every
`NXJOBS_HELD__INTERVAL_S` it lists the delivery tags of every message this worker holds, then
puts back the orphans of dead workers. It talks to Redis on its own connections (a kombu
connection of the app, our Redis client): the consumer's are not safe to share across threads.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery.worker import state as worker_state
from celery.worker.request import Request

from config.settings import Settings
from nxjobs.held import HeldMessages
from workers.delivery import store_target

log = logging.getLogger("nxjobs.held")

# A copy taken while the main thread changes the collection can raise; try again at once.
_COPY_TRIES = 5


def _copy(collection: Any) -> list[Any]:
    for _ in range(_COPY_TRIES - 1):
        try:
            return list(collection)
        except RuntimeError:  # changed size during iteration
            continue
    return list(collection)


def _tag(request: Any) -> str | None:
    info = getattr(request, "delivery_info", None) or {}
    tag = info.get("delivery_tag")
    return None if tag is None else str(tag)


def held_tags(consumer: Any) -> set[str]:
    """Delivery tags of every message this worker holds: reserved (prefetched), active, and the
    countdown / ETA requests waiting in the consumer's timer (as `celery inspect scheduled`
    finds them), plus whatever the task channel still counts as delivered and unacked."""
    requests: list[Any] = _copy(worker_state.reserved_requests)
    requests += _copy(worker_state.active_requests)
    timer = getattr(consumer, "timer", None)
    if timer is not None:
        for waiting in _copy(timer.schedule.queue):
            args = getattr(getattr(waiting, "entry", None), "args", None) or ()
            if args and isinstance(args[0], Request):
                requests.append(args[0])
    tags = {tag for tag in map(_tag, requests) if tag is not None}
    try:
        delivered = consumer.task_consumer.channel.qos._delivered
        tags.update(str(t) for t in _copy(delivered))
    except (AttributeError, RuntimeError):  # no task consumer (reconnecting), or busy
        pass
    return tags


class HeldThread(threading.Thread):
    def __init__(self, app: Any, consumer: Any, settings: Settings):
        super().__init__(name="nxjobs-held", daemon=True)
        self.app = app
        self.consumer = consumer
        self.settings = settings.held
        self.store = store_target(settings)
        self.node = consumer.hostname
        self._stop_event = threading.Event()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout_s)

    def run(self) -> None:
        conn = self.app.connection_for_write()
        held: HeldMessages | None = None
        failing = False
        try:
            while not self._stop_event.is_set():
                try:
                    if held is None:  # here, so Redis away at startup is only a failed tick
                        held = HeldMessages(
                            self.store.connect(),
                            conn.default_channel,
                            node=self.node,
                            interval_s=self.settings.interval_s,
                            grace_s=self.settings.grace(),
                            restore_limit=self.settings.restore_limit,
                        )
                    self.tick(held)
                    failing = False
                except Exception:  # noqa: BLE001 - Redis away: the next tick tries again
                    if not failing:
                        log.warning("held messages: tick failed", exc_info=True)
                    failing = True
                self._stop_event.wait(self.settings.interval_s)
            # worker_shutdown comes after the consumer closed: what it held went back already.
            if held is not None:
                held.forget_self()
        except Exception:  # noqa: BLE001 - the entry ages out; another worker deletes it
            log.warning("held messages: could not delete this worker's entry", exc_info=True)
        finally:
            conn.release()

    def tick(self, held: HeldMessages) -> None:
        at = time.time()
        held.beat(at, held_tags(self.consumer))
        held.restore_orphans()


_threads: list[HeldThread] = []


def start(app: Any, consumer: Any, settings: Settings) -> None:
    if any(t.is_alive() for t in _threads):
        # Celery sends worker_ready once; were it sent again, a restart would leave a gap in
        # this worker's list.
        return
    thread = HeldThread(app, consumer, settings)
    thread.start()
    _threads.append(thread)


def stop() -> None:
    while _threads:
        _threads.pop().stop()
