"""Deferred calls end to end on a real Redis, a real worker (calling hours on) and the sandbox over
HTTP: a call enqueued while its window is closed waits `scheduled` for the next opening, the
sandbox gets no makecall before it and exactly one after; so does one whose message reaches the
worker anyway (deferred at send time, its message acked); number checks and OTA init to the same
number, which call nobody, are sent at once. A promotion racing a deferral leaves the deferral in
place."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from nxjobs import broker, keys
from nxjobs.client.agent import MAKECALL_PATH
from nxjobs.records import JobState, utc_now_iso
from nxjobs.schedule import Schedule, iso
from workers.devstack import start_worker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

SG = "6591239002"
SG_ZONE = ZoneInfo("Asia/Singapore")
# The opening is at least this far ahead when the fixture starts: the worker is up well before.
LEAD_S = 30.0


def _next_opening() -> datetime:
    """The first minute boundary at least LEAD_S from now (the window opens there)."""
    now = datetime.now(UTC)
    opening = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    if (opening - now).total_seconds() < LEAD_S:
        opening += timedelta(minutes=1)
    return opening


@pytest.fixture(scope="module")
def hours(redis_server, worker_env, tmp_path_factory):
    """A worker on its own Redis db whose SG window opens at the next minute boundary at least
    LEAD_S ahead (so within LEAD_S + 60 s) and lasts two hours; every day. Yields (redis url,
    opening, its env)."""
    url = redis_server.url.rsplit("/", 1)[0] + "/2"
    opening = _next_opening()
    local = opening.astimezone(SG_ZONE)
    window = f"{local:%H:%M}-{local + timedelta(hours=2):%H:%M}"
    env = {
        "NXJOBS_REDIS_URL": url,
        "NXJOBS_CALLING_HOURS__ENABLED": "true",
        "NXJOBS_CALLING_HOURS__DAYS": "mon,tue,wed,thu,fri,sat,sun",
        "NXJOBS_CALLING_HOURS__BY_COUNTRY": json.dumps({"SG": {"window": window}}),
        "NXJOBS_SCHEDULE__INTERVAL_S": "0.2",
    }
    proc = start_worker(
        {**worker_env, **env}, concurrency=2, log_dir=str(tmp_path_factory.mktemp("hours"))
    )
    try:
        yield url, opening, env
    finally:
        proc.stop()


@pytest.fixture()
def hours_producer(hours, monkeypatch):
    from nxjobs.producers import Producer

    url, _, env = hours
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with Producer(url) as producer:
        yield producer


def _makecalls(sandbox, orderid: str) -> list[dict]:
    return [
        r
        for r in sandbox.requests(MAKECALL_PATH, limit=1000)
        if r["body"].get("orderid") == orderid
    ]


def test_an_at_inside_a_closed_window_moves_to_the_opening(hours, hours_producer):
    _, opening, _ = hours
    producer = hours_producer
    assert datetime.now(UTC) < opening - timedelta(seconds=5), "the worker took too long"
    asked = opening - timedelta(seconds=1)
    job_id = producer.call(phone=SG, at=asked)
    record = producer.get(job_id)
    assert record.state == JobState.SCHEDULED and record.run_at == iso(opening)
    assert f"the run_at asked for, {iso(asked)}, is outside it" in record.schedule_note
    assert producer.cancel(job_id).cancelled


def test_a_deferred_call_reaches_the_sandbox_only_after_its_opening(
    hours, hours_producer, sandbox, monkeypatch
):
    from nxjobs.producers import Producer

    url, opening, _ = hours
    producer = hours_producer
    assert datetime.now(UTC) < opening - timedelta(seconds=5), "the worker took too long"
    # Given the SG window is closed now and opens at `opening`
    # When a call to SG is enqueued
    job_id = producer.call(phone=SG)
    # Then it waits in the schedule for the opening, with the reason
    record = producer.get(job_id)
    assert record is not None and record.state == JobState.SCHEDULED
    assert record.run_at == iso(opening)
    assert record.schedule_note.startswith("deferred: calling hours SG ")
    assert record.schedule_note.endswith("(Asia/Singapore)")
    assert producer.redis.zscore(keys.SCHEDULE, job_id) == int(opening.timestamp() * 1000)
    assert producer.redis.llen("agent") == 0  # no message: nothing for a worker to take

    # And a call whose message reaches the worker anyway (its producer had calling hours off) is
    # deferred by the worker at send time, and its message acked
    monkeypatch.setenv("NXJOBS_CALLING_HOURS__ENABLED", "false")
    with Producer(url) as elsewhere:
        sent_anyway = elsewhere.call(phone=SG)
    deadline = time.monotonic() + 30
    while (record := producer.get(sent_anyway)).state != JobState.SCHEDULED:
        assert time.monotonic() < deadline, record
        time.sleep(0.1)
    assert record.state == JobState.SCHEDULED and record.attempts == 0
    assert record.run_at == iso(opening)
    assert record.schedule_note.startswith("deferred: calling hours SG ")
    deadline = time.monotonic() + 10
    while producer.redis.hlen(broker.unacked_key()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert producer.redis.hlen(broker.unacked_key()) == 0  # acked, not held as a countdown
    assert producer.redis.llen("agent") == 0

    # And while it waits, a number check and an OTA init to the same number are sent at once:
    # they call nobody
    check = producer.number_check(phones=[SG], check_level=1, batch=False)
    ota = producer.ota_init(phone=SG, user_ip="203.0.113.7")
    for other in (check, ota):
        assert producer.get(other).state != JobState.SCHEDULED
    done = producer.wait([check, ota], until="submitted", timeout_s=30)
    assert all(r is not None and r.reached(JobState.SUBMITTED) for r in done.values())
    assert all(r.schedule_note is None for r in done.values())

    # Then no makecall reaches the sandbox before the opening (a call's orderid is its job id)
    both = [job_id, sent_anyway]
    while datetime.now(UTC) < opening - timedelta(seconds=1):
        assert [_makecalls(sandbox, one) for one in both] == [[], []]
        assert {producer.get(one).state for one in both} == {JobState.SCHEDULED}
        time.sleep(0.5)
    # And exactly one each after it, within seconds
    records = producer.wait(both, until="submitted", timeout_s=30)
    for one in both:
        record = records[one]
        assert record is not None and record.reached(JobState.SUBMITTED)
        assert len(_makecalls(sandbox, one)) == 1
        assert datetime.fromisoformat(record.updated_at) >= opening
        assert record.attempts == 1 and record.error is None
    time.sleep(1.0)  # a second message (a promotion offered twice) would show by now
    for one in both:
        assert len(_makecalls(sandbox, one)) == 1
        assert producer.redis.zscore(keys.SCHEDULE, one) is None
        assert not producer.redis.exists(keys.scheduled_message(one))


def test_a_confirm_leaves_a_job_deferred_again_after_its_take(hours, hours_producer):
    """A promoted message claimed and deferred before the promoter's confirm: the confirm sees the
    entry re-scored (not its lease) and leaves the deferral alone."""
    producer = hours_producer
    sched = Schedule(producer.redis, producer.store.ttl_s)
    job_id = uuid.uuid4().hex
    producer.store.create(job_id, "call", {"phone": "659***9002"})
    producer.store.transition(job_id, JobState.RUNNING)  # the early message's claim
    later = datetime.now(UTC) + timedelta(hours=5)
    lease_until = int(time.time() * 1000) + 30_000  # what the take gave the entry
    producer.redis.zadd(keys.SCHEDULE, {job_id: lease_until})
    answer = sched.defer(job_id, later, "{}", {"run_at": iso(later)}, utc_now_iso())
    assert answer.deferred
    assert sched.confirm([job_id], utc_now_iso(), lease_until) == 0
    assert producer.get(job_id).state == JobState.SCHEDULED
    assert producer.redis.zscore(keys.SCHEDULE, job_id) == int(later.timestamp() * 1000)
    assert producer.redis.get(keys.scheduled_message(job_id)) == "{}"
    # With the in-flight marker set, a deferral is refused and changes nothing
    other = uuid.uuid4().hex
    producer.store.create(other, "call", {"phone": "659***9002"})
    producer.store.transition(other, JobState.RUNNING)
    producer.redis.set(keys.inflight(other), "1", ex=60)
    refused = sched.defer(other, later, "{}", {"run_at": iso(later)}, utc_now_iso())
    assert not refused.deferred and refused.why == "inflight"
    assert producer.get(other).state == JobState.RUNNING
    assert producer.redis.zscore(keys.SCHEDULE, other) is None
    producer.redis.delete(keys.inflight(other))
    producer.store.delete(other)
    assert producer.cancel(job_id).cancelled
