"""Flower's task events, sent in batches (workers/event_batching.py), all still arrive."""

from __future__ import annotations

import threading
import time

import pytest

pytestmark = pytest.mark.integration


def test_every_task_event_of_a_job_arrives(producer, sandbox, worker, redis_url):
    from celery import Celery

    app = Celery("events-reader", broker=redis_url, set_as_current=False)
    seen: dict[str, set[str]] = {}
    listening = threading.Event()
    with app.connection_for_read() as conn:
        receiver = app.events.Receiver(
            conn, handlers={"*": lambda e: seen.setdefault(e.get("uuid", ""), set()).add(e["type"])}
        )
        receiver.on_consume_ready = lambda *args, **kwargs: listening.set()
        reader = threading.Thread(target=receiver.capture, kwargs={"limit": None}, daemon=True)
        reader.start()
        assert listening.wait(10)
        ids = [
            producer.ota_init(phone=f"+861380000{i:04d}", user_ip="203.0.113.9") for i in range(5)
        ]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(
            "task-succeeded" in seen.get(job_id, set()) for job_id in ids
        ):
            time.sleep(0.05)
        receiver.should_stop = True
        reader.join(5)
    for job_id in ids:
        assert {"task-received", "task-started", "task-succeeded"} <= seen.get(job_id, set())
