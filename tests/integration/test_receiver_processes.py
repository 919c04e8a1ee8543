"""`python -m workers.web --workers N`: one socket, N serving processes, restarted when they die."""

from __future__ import annotations

import os
import signal
import time

import pytest
import requests

from workers.devstack import start_callbacks

pytestmark = pytest.mark.timeout(90)


def children_of(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        return [int(x) for x in fh.read().split()]


def wait_for(predicate, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    return predicate()


def test_workers_share_a_port_chosen_by_the_os_and_a_dead_one_is_replaced(callbacks_env, tmp_path):
    # Given the receiver with two processes on port 0
    proc, url = start_callbacks(
        callbacks_env, port=0, extra=("--workers", "2"), log_dir=str(tmp_path)
    )
    try:
        # Then it prints the port it really listens on, and answers there
        assert not url.endswith(":0")
        assert requests.get(url + "/readyz", timeout=5).status_code == 200
        kids = wait_for(
            lambda: len(children_of(proc.proc.pid)) == 2 and children_of(proc.proc.pid), 10
        )
        assert kids and len(kids) == 2
        # When one serving process is killed
        os.kill(kids[0], signal.SIGKILL)
        # Then another takes its place, and the port keeps answering all along
        replaced = wait_for(
            lambda: (lambda now: len(now) == 2 and kids[0] not in now)(children_of(proc.proc.pid)),
            10,
        )
        assert replaced
        for _ in range(10):
            assert requests.get(url + "/readyz", timeout=5).status_code == 200
        # When the supervisor gets SIGTERM, every process stops, cleanly and soon
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(timeout=20) == 0
    finally:
        proc.stop()


def test_single_process_stops_on_sigterm(callbacks_env, tmp_path):
    proc, url = start_callbacks(callbacks_env, port=0, log_dir=str(tmp_path))
    try:
        assert requests.get(url + "/healthz", timeout=5).json()["ok"] is True
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(timeout=20) == 0
    finally:
        proc.stop()


def test_a_callback_redis_could_not_take_gets_a_503_and_is_stored_when_sent_again(
    callbacks_env, tmp_path
):
    import json
    import uuid

    import redis

    from nxjobs import correlate
    from nxjobs.jobs import validate_payload
    from nxjobs.records import JobState
    from nxjobs.store import RecordStore
    from workers.devstack import RedisServer

    with RedisServer(appendonly=True) as own_redis:
        # Given a receiver on a Redis of its own, and a submitted two-number check
        env = {**callbacks_env, "NXJOBS_REDIS_URL": own_redis.url}
        proc, url = start_callbacks(env, port=0, log_dir=str(tmp_path))
        try:
            store = RecordStore(redis.Redis.from_url(own_redis.url, decode_responses=True))
            job_id, request_id = uuid.uuid4().hex, uuid.uuid4().hex
            payload = validate_payload("number-check", {"phones": ["6591000001", "6591000002"]})
            store.create(
                job_id,
                "number-check",
                {},
                expect=correlate.on_enqueue("number-check", job_id, payload),
            )
            store.transition(job_id, JobState.RUNNING)
            store.transition(
                job_id,
                JobState.SUBMITTED,
                result={"requestId": request_id, "batchNo": job_id, "numbers": 2, "failNumber": []},
            )
            token = env["NXJOBS_CALLBACKS__TOKEN"]

            def post(n: int):
                dr = {
                    "requestId": f"{request_id}-{n:06d}",
                    "code": 0,
                    "phone": f"659100000{n}",
                    "batchNo": job_id,
                }
                return requests.post(
                    f"{url}/callbacks/number-check/{token}", data=json.dumps(dr), timeout=10
                )

            assert post(1).status_code == 200
            # When Redis is down as the second result arrives
            own_redis.halt()
            # Then the receiver answers 503 (NXCloud delivers it again later) and stays up
            assert post(2).status_code == 503
            # And once Redis is back (it forgot the receiver's script), the redelivery is stored
            own_redis.start()
            assert wait_for(lambda: post(2).status_code == 200, 15)
            record = store.get(job_id)
            assert record.state == JobState.COMPLETED and len(record.callbacks) == 2
        finally:
            proc.stop()
