"""Redis behind Sentinel: a master, a replica and three sentinels (workers.devstack.SentinelGroup),
and the master killed in the middle of a run of jobs (the sentinels fail over to the replica),
through a real worker, a real receiver and real HTTP to the sandbox.

Every job ends completed, each sent to the provider exactly once (the sandbox's requests counted
per batchNo = job id), producers enqueue again after the failover, and the receiver applies the
callbacks that arrive after it (or reconciliation finds what a callback said, when Redis
dropped its write in the failover).
"""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter

import pytest

from tests.conftest import CALLBACK_WORKER_ENV, SANDBOX_CALLBACKS, WORKER_ENV
from workers.devstack import SentinelGroup, start_beat, start_callbacks, start_worker

pytestmark = pytest.mark.integration

MASTER = "mymaster"
JOBS = 120


@pytest.fixture(scope="module")
def group():
    if not shutil.which("redis-sentinel") and not os.path.exists("/usr/bin/redis-sentinel"):
        if os.environ.get("CI"):
            raise RuntimeError("redis-sentinel not found (scripts/ensure-redis.sh installs it)")
        pytest.skip("redis-sentinel not found (apt-get install redis-sentinel)")
    with SentinelGroup(master_name=MASTER) as g:
        yield g


def _env(group: SentinelGroup, sandbox_url: str) -> dict[str, str]:
    from sandbox.accounts import sandbox_env

    clean = {k: v for k, v in os.environ.items() if not k.startswith("NXJOBS_")}
    return {
        **clean,
        **sandbox_env(sandbox_url),
        **WORKER_ENV,
        **CALLBACK_WORKER_ENV,
        "NXJOBS_REDIS_URL": group.url,
        "NXJOBS_REDIS_SENTINEL_MASTER": MASTER,
        # The lost-message sweeper (beat) within the test's bound: a message Redis or a
        # connection dropped is re-published once its job sat unchanged for confirm_s.
        "NXJOBS_RECOVER__INTERVAL_S": "1",
        "NXJOBS_RECOVER__CONFIRM_S": "3",
    }


def _enqueue(producer, phone: str, deadline_s: float = 15.0) -> tuple[str, int]:
    """Enqueue one number check on its own; retried while the failover lasts. Returns the job id
    and how many tries failed."""
    from nxjobs.producers import EnqueueError, RedisUnavailable

    failed = 0
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return producer.number_check(phones=[phone], batch=False), failed
        except (EnqueueError, RedisUnavailable):
            failed += 1
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_failover_mid_run_loses_nothing_and_sends_nothing_twice(
    group, sandbox, sandbox_handle, tmp_path
):
    from nxjobs.producers import Producer
    from nxjobs.redis_conn import RedisTarget

    env = _env(group, sandbox_handle.url)
    receiver, url = start_callbacks(env, log_dir=str(tmp_path / "receiver"))
    env["NXJOBS_CALLBACKS__PUBLIC_URL"] = url
    worker = start_worker(env, queues="api2", concurrency=2, log_dir=str(tmp_path / "worker"))
    # Reconciliation: a callback whose write the old master took in the moment before it became
    # a replica is lost by Redis itself; the query API finds the result (docs/operations.md).
    beat = start_beat(env, log_dir=str(tmp_path / "beat"))
    sandbox.configure(**SANDBOX_CALLBACKS)
    target = RedisTarget(group.url, sentinel_master=MASTER)
    producer = Producer(target)
    try:
        ids, retries = [], 0
        phones = [f"8613800{i:04d}" for i in range(JOBS)]
        for phone in phones[: JOBS // 2]:
            job_id, failed = _enqueue(producer, phone)
            ids.append(job_id)
            retries += failed
        old_master = group.master_port()
        recovery_s = group.crash_master()
        assert group.master_port() != old_master
        after_failover = len(ids)
        for phone in phones[JOBS // 2 :]:
            job_id, failed = _enqueue(producer, phone)
            ids.append(job_id)
            retries += failed

        # The worker consumes again within ~15 s of the failover (Celery's reconnect backoff).
        records = producer.wait(ids, until="completed", timeout_s=60)
        states = Counter(r.state.value if r else "missing" for r in records.values())
        late = {
            j: (ids.index(j), r.state.value if r else None)
            for j, r in records.items()
            if r is None or r.state.value != "completed"
        }
        assert states == {"completed": JOBS}, (states, late, worker.log_tail(20))

        # Sent once each: one provider request per job (batchNo = job id), none twice.
        sent = Counter(
            r["body"].get("batchNo") for r in sandbox.requests(path="/api/number/check", limit=2000)
        )
        wrong = {job_id: sent[job_id] for job_id in ids if sent[job_id] != 1}
        assert not wrong, (wrong, ids.index(next(iter(wrong))), worker.log_tail(60))
        # The jobs enqueued after the failover completed through the new master: the producer,
        # the worker and the receiver all moved to it.
        assert all(records[j].callbacks for j in ids[after_failover:])
        reconciled = sum(
            1 for r in records.values() if any(c["source"] == "reconcile" for c in r.callbacks)
        )
        print(
            f"failover: {JOBS} jobs, lost 0, duplicates 0, new master in {recovery_s:.2f} s, "
            f"producer retries {retries}, results found by reconciliation {reconciled}, "
            f"messages re-published by the lost-message sweeper "
            f"{worker.log_text().count('re-published')}"
        )
    finally:
        producer.close()
        beat.stop()
        worker.stop()
        receiver.stop()
