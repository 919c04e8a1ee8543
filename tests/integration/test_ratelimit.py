"""The global limiter: atomic under concurrent processes, shared cooldowns,
per-credential isolation, and waits that never use up a job's retries."""

from __future__ import annotations

import multiprocessing
import time
import uuid

import pytest

from nxjobs.ratelimit.limiter import Limit, RateLimiter
from nxjobs.records import JobState
from nxjobs.redis_conn import connect

pytestmark = pytest.mark.integration


def _grab(redis_url: str, name: str, quota: float, seconds: float, out) -> None:
    """Call acquire as fast as possible; report the Redis-clock time each 'go' was granted."""
    limiter = RateLimiter(connect(redis_url), horizon_s=0.2)
    limit = Limit(name, quota)
    gone = []
    deadline = time.monotonic() + seconds
    prepaid = None
    while time.monotonic() < deadline:
        grant = limiter.acquire([limit], prepaid_at_us=prepaid, early_s=0.002)
        if grant.go:
            # The send log member is "<granted at>-<slot>": the quota holds on send times.
            gone.append(int(grant.member.split("-")[0]))
            prepaid = None
        elif grant.reserved:
            prepaid = grant.slot_at_us
            time.sleep(min(grant.wait_s, 0.05))
        else:
            time.sleep(0.01)
    out.put(gone)


def test_concurrent_processes_never_exceed_the_quota_in_any_second(redis_url):
    # Given four processes hammering one 40/s limit for 2.5 s
    name = f"atomic-{uuid.uuid4().hex}"
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_grab, args=(redis_url, name, 40, 2.5, out)) for _ in range(4)]
    for p in procs:
        p.start()
    sends = sorted(t for _ in procs for t in out.get(timeout=30))
    for p in procs:
        p.join(10)
    # Then no sliding second holds more than the quota
    worst = max(sum(1 for t in sends[i : i + 60] if t - s < 1_000_000) for i, s in enumerate(sends))
    assert worst <= 40
    # and the quota is actually used (not starved by contention)
    assert len(sends) >= 40 * 2.5 * 0.8


def test_slots_are_evenly_spaced_reservations(redis_url):
    limiter = RateLimiter(connect(redis_url), horizon_s=5)
    limit = Limit(f"spacing-{uuid.uuid4().hex}", 10)
    grants = [limiter.acquire([limit]) for _ in range(5)]
    # Given 10/s, Then five immediate asks get slots 100 ms apart, the first one now
    assert grants[0].go and all(g.reserved for g in grants)
    gaps = [b.slot_at_us - a.slot_at_us for a, b in zip(grants, grants[1:], strict=False)]
    assert gaps == [100_000] * 4


def test_credentials_never_wait_on_each_other(redis_url):
    limiter = RateLimiter(connect(redis_url), horizon_s=5)
    busy, idle = Limit(f"busy-{uuid.uuid4().hex}", 2), Limit(f"idle-{uuid.uuid4().hex}", 2)
    # Given one credential with slots booked seconds ahead and in cooldown
    for _ in range(5):
        limiter.acquire([busy])
    limiter.cool_down([busy], base_s=5, cap_s=5)
    assert not limiter.acquire([busy]).go
    # Then another credential still sends at once
    assert limiter.acquire([idle]).go


def test_cooldown_grows_on_repeats_up_to_the_cap(redis_url):
    limiter = RateLimiter(connect(redis_url))
    limit = Limit(f"strikes-{uuid.uuid4().hex}", 10)
    lengths = [limiter.cool_down([limit], base_s=0.5, cap_s=2.0) for _ in range(4)]
    # jitter keeps each cooldown within [step/2, step]; steps 0.5, 1, 2, 2 (capped)
    for got, step in zip(lengths, [0.5, 1.0, 2.0, 2.0], strict=True):
        assert step / 2 - 0.01 <= got <= step + 0.01, lengths


def test_a_prepaid_slot_is_spent_once_a_cooldown_has_not_intervened(redis_url):
    limiter = RateLimiter(connect(redis_url))
    limit = Limit(f"prepaid-{uuid.uuid4().hex}", 5)
    limiter.acquire([limit])  # now
    ahead = limiter.acquire([limit])  # reserved ~200 ms ahead
    assert ahead.reserved and not ahead.go
    time.sleep(ahead.wait_s)
    assert limiter.acquire([limit], prepaid_at_us=ahead.slot_at_us).go


def test_waiting_for_slots_never_uses_up_retries(producer, sandbox, worker):
    # Given more jobs than the worker's api2 quota (10/s) sends in a second
    ids = [producer.wa_calling(business_phone=str(6582000000 + i)) for i in range(25)]
    records = producer.wait(ids, timeout_s=30)
    # Then all are submitted on their first attempt, some after waiting for their slot
    assert all(r.reached(JobState.SUBMITTED) for r in records.values())
    assert all(r.attempts == 1 for r in records.values())
    assert sum(r.waits for r in records.values()) > 0


def test_too_frequent_answers_are_counted_apart_and_never_fail_the_job(producer, sandbox, worker):
    # Given the provider says "too frequent" more times than a job may fail (max 8 attempts)
    sandbox.script("/api/ota/init", 2206, times=10)
    job_id = producer.ota_init(phone="8615800001795", user_ip="203.0.113.7")
    record = producer.wait([job_id], timeout_s=60)[job_id]
    # Then it still succeeds, with the throttles counted separately from attempts that failed
    assert record.reached(JobState.SUBMITTED), record.error
    assert record.throttles == 10
    assert record.attempts == 11


def test_a_cooldown_stops_every_worker(worker, worker_env, redis_url, sandbox, tmp_path):
    from celery import Celery

    from nxjobs.producers import Producer
    from workers.devstack import start_worker

    # Given two workers of their own (one process each) sharing a 1 s base cooldown, and a backlog;
    # the session's worker stops taking api2 jobs meanwhile so only these two run them
    control = Celery(broker=redis_url, set_as_current=False).control
    control.cancel_consumer("api2", destination=[worker.node_name], reply=True, timeout=5)
    env = {
        **worker_env,
        "NXJOBS_RATELIMIT__COOLDOWN_BASE_S": "1.0",
        "NXJOBS_API2__RATE_PER_S": "20",
    }
    workers = [
        start_worker(env, queues="api2", concurrency=1, log_dir=str(tmp_path / f"w{i}"))
        for i in range(2)
    ]
    try:
        sandbox.script("/api/wa/calling/get", 2206, times=1)
        with Producer(redis_url) as producer:
            ids = [producer.wa_calling(business_phone=str(6583000000 + i)) for i in range(20)]
            records = producer.wait(ids, timeout_s=60)
        assert all(r.reached(JobState.SUBMITTED) for r in records.values())
    finally:
        for w in workers:
            w.stop()
        control.add_consumer("api2", destination=[worker.node_name], reply=True, timeout=5)
    # When one of them was told "too frequent"
    sent = sorted(r["ts"] for r in sandbox.requests(path="/api/wa/calling/get", limit=200))
    assert sandbox.stats()["responses"]["/api/wa/calling/get"].get("2206") == 1
    first = sent[0]  # the scripted 2206 answers the first request
    # Then nobody sent anything for at least half the base cooldown (jitter keeps it within [0.5, 1]
    # s)
    assert sent[1] - first >= 0.45


def test_a_huge_call_list_does_not_starve_a_small_one(producer, sandbox, worker):
    # Given a 6 000-contact list (13 requests at the worker's 10/s Callbot quota) already running
    big = producer.callbot_list(
        scene_id="s",
        task_name="big",
        contacts=[{"user_phone": str(8613500000000 + i)} for i in range(6000)],
    )
    time.sleep(0.3)
    # When a one-contact list arrives for the same credential
    small = producer.callbot_list(
        scene_id="s", task_name="small", contacts=[{"user_phone": "8613400000000"}]
    )
    records = producer.wait([big, small], timeout_s=60)
    # Then the small one takes its turn between the big one's chunks and is done first
    assert records[small].state == records[big].state == JobState.SUBMITTED
    assert records[small].updated_at < records[big].updated_at
    assert records[big].waits > 0
