"""The job indexes (nxjobs.keys.job_index) and retention by state on a real Redis: every state
write moves the job between its kind's indexes, the exporter's job gauge and the lost-message
sweeper read them without scanning, a finished record expires after its state's retention, and
the bounded trim drops the members of expired records only."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from config.settings import CoalesceSettings
from nxjobs import coalesce, keys
from nxjobs.records import JobState
from nxjobs.recover import LostMessageSweeper
from nxjobs.redis_conn import connect
from nxjobs.store import RecordStore
from workers.exporter import Exporter

pytestmark = pytest.mark.integration

NOW = "2026-11-23T00:00:00.000Z"
RETENTION = {"completed": 50, "failed": 70}


@pytest.fixture()
def client(redis_url):
    client = connect(redis_url.rsplit("/", 1)[0] + "/12")
    client.flushdb()
    yield client
    client.flushdb()


def indexed_in(client, kind: str, job_id: str) -> list[str]:
    """The states whose index of `kind` holds `job_id`."""
    return [
        s.value
        for s in JobState
        if client.zscore(keys.job_index(kind, s.value), job_id) is not None
    ]


def scans(client) -> int:
    stats = client.info("commandstats")
    return sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("scan", "keys"))


def test_the_index_follows_every_move_of_a_job(client):
    store = RecordStore(client, ttl_s=600)
    before = time.time()
    store.create("j1", "call", {}, payload={"phone": "8613800138000"})
    assert indexed_in(client, "call", "j1") == ["queued"]
    assert before - 1 <= client.zscore(keys.job_index("call", "queued"), "j1") <= time.time() + 1
    store.transition("j1", JobState.RUNNING, incr=["attempts"])
    assert indexed_in(client, "call", "j1") == ["running"]
    store.transition("j1", JobState.RETRYING)
    assert indexed_in(client, "call", "j1") == ["retrying"]
    store.transition("j1", JobState.RUNNING)
    # A call waits for its CDR callback: submitted, not completed.
    after = store.transition("j1", JobState.SUBMITTED, result={"orderid": "o1"})
    assert after.state == "submitted" and indexed_in(client, "call", "j1") == ["submitted"]
    store.transition("j1", JobState.COMPLETED)
    # A finished job leaves the indexes and is counted instead.
    assert indexed_in(client, "call", "j1") == []
    assert client.hget(keys.METRICS_COUNTERS, keys.finished_count("call", "completed")) == "1"

    store.create("j2", "call", {})
    store.transition("j2", JobState.RUNNING)
    store.transition("j2", JobState.FAILED, error={"code": "x"})
    assert indexed_in(client, "call", "j2") == []
    assert client.hget(keys.METRICS_COUNTERS, keys.finished_count("call", "failed")) == "1"
    store.delete("j2")
    assert indexed_in(client, "call", "j2") == [] and not client.exists(keys.job("j2"))
    # Another kind's indexes are untouched.
    assert all(client.zcard(keys.job_index("ota-init", s.value)) == 0 for s in JobState)


def test_coalesced_members_move_through_the_indexes_many_in_one_script(client):
    queue = coalesce.CoalesceQueue(client, CoalesceSettings(max_numbers=4), ttl_s=600)
    jobs = [
        (uuid.uuid4().hex, p, json.dumps({"phones": ["***"]})) for p in ("6590000001", "6590000002")
    ]
    queue.enqueue("nc1", jobs, NOW)
    ids = [j[0] for j in jobs]
    assert [indexed_in(client, "number-check", j) for j in ids] == [["queued"], ["queued"]]
    taken = queue.take("nc1", "batch-1", 1.0, NOW)
    assert [indexed_in(client, "number-check", j) for j, _ in taken.members] == [["running"]] * 2
    outcomes = [
        coalesce.MemberOutcome(ids[0], False, {"requestId": "r"}),
        coalesce.MemberOutcome(ids[1], True, {"code": "permanent"}),
    ]
    queue.fan_out("batch-1", [], outcomes, now_s=3.0, now_iso=NOW, due_at_s=600.0)
    assert indexed_in(client, "number-check", ids[0]) == ["submitted"]
    assert indexed_in(client, "number-check", ids[1]) == []
    assert client.hget(keys.METRICS_COUNTERS, keys.finished_count("number-check", "failed")) == "1"


def test_the_job_gauge_is_the_index_counts_and_no_scrape_scans(client):
    store = RecordStore(client, ttl_s=600)
    for i in range(3):
        store.create(f"q{i}", "call", {})
    store.create("r", "ota-init", {})
    store.transition("r", JobState.RUNNING)
    # Unrelated keys, and records the indexes do not know, are not counted or read.
    pipe = client.pipeline(transaction=False)
    for i in range(2000):
        pipe.set(f"other:{i}", "x")
    pipe.execute()
    exporter = Exporter(client, stall_s=300)
    seen = scans(client)
    counts = exporter.jobs_by_state()
    gauge = {
        (s.labels["kind"], s.labels["state"]): s.value
        for m in exporter.collect()
        if m.name == "nxjobs_jobs"
        for s in m.samples
    }
    assert scans(client) == seen
    assert counts[("call", "queued")] == 3 and counts[("ota-init", "running")] == 1
    assert counts == {cell: client.zcard(keys.job_index(*cell)) for cell in counts} and len(
        counts
    ) == len({c[0] for c in counts}) * len(keys.INDEXED_STATES)
    # Finished jobs are a counter of the jobs that entered each finished state.
    store.transition("r", JobState.FAILED, error={"code": "x"})
    finished = {
        (s.labels["kind"], s.labels["state"]): s.value
        for m in exporter.collect()
        if m.name == "nxjobs_jobs_finished"
        for s in m.samples
        if s.name == "nxjobs_jobs_finished_total"
    }
    assert finished == {("ota-init", "failed"): 1.0}
    assert gauge == counts


def test_the_sweeper_republishes_from_the_indexes_without_a_scan(client):
    store = RecordStore(client, ttl_s=600)
    store.create("lost", "call", {}, payload={"phone": "8613800138000"})
    store.create("fresh", "call", {}, payload={"phone": "8613800138001"})
    store.create("nopayload", "call", {})  # a coalesced member has no message of its own
    old = "2020-01-01T00:00:00.000Z"
    for job in ("lost", "nopayload"):
        client.hset(keys.job(job), "updated_at", old)
        client.zadd(keys.job_index("call", "queued"), {job: 1577836800}, xx=True)
    sent: list = []
    now = [time.time()]
    sweeper = LostMessageSweeper(
        client, lambda *a: sent.append(a), confirm_s=10, clock=lambda: now[0], per_state=5
    )
    seen = scans(client)
    first = sweeper.run("agent")
    assert first["candidates"] == 1 and first["suspects"] == 1
    now[0] += 11
    assert sweeper.run("agent")["republished"] == 1
    assert sent == [("call", "lost", {"phone": "8613800138000"})]
    assert scans(client) == seen


def test_a_finished_record_expires_after_its_states_retention(client):
    store = RecordStore(client, ttl_s=1000, retention_s=RETENTION)
    assert client.hgetall(keys.RETENTION) == {"completed": "50", "failed": "70"}
    store.create("c", "ota-init", {}, payload={"x": 1})
    store.transition("c", JobState.RUNNING)
    assert 990 < client.ttl(keys.job("c")) <= 1000
    # ota-init waits for no callback: the submit completes it at once.
    assert store.transition("c", JobState.SUBMITTED, result={}).state == "completed"
    assert 40 < client.ttl(keys.job("c")) <= 50
    assert 40 < client.ttl(keys.job_payload("c")) <= 50
    store.create("f", "call", {}, payload={"x": 1})
    store.transition("f", JobState.RUNNING)
    store.transition("f", JobState.FAILED, error={"code": "x"})
    assert 60 < client.ttl(keys.job("f")) <= 70
    assert 60 < client.ttl(keys.job_payload("f")) <= 70
    # A producer's store (no retention given) writes none and changes nothing.
    RecordStore(client, ttl_s=5)
    assert client.hgetall(keys.RETENTION) == {"completed": "50", "failed": "70"}


def test_the_trim_drops_members_of_expired_records_only_and_is_bounded(client):
    store = RecordStore(client, ttl_s=1000, retention_s=RETENTION)
    now = int(time.time())
    submitted, queued = keys.job_index("call", "submitted"), keys.job_index("call", "queued")
    client.zadd(submitted, {f"old{i}": now - 1001 - i for i in range(5)})
    client.zadd(submitted, {"live": now - 10})
    client.zadd(queued, {"oldq": now - 1001, "liveq": now - 900})
    assert store.trim_indexes(["call"], limit=3) == 3
    assert store.trim_indexes(["call"], limit=100) == 3
    assert store.trim_indexes(["call"], limit=100) == 0
    assert client.zrange(submitted, 0, -1) == ["live"]
    assert client.zrange(queued, 0, -1) == ["liveq"]


def test_the_recover_task_trims_its_familys_indexes(client, monkeypatch):
    import tasks.services
    from config.settings import Settings
    from tasks.reconcile import recover_lost_messages

    url = client.connection_pool.connection_kwargs
    settings = Settings(redis_url=f"redis://{url['host']}:{url['port']}/{url['db']}")
    monkeypatch.setattr(tasks.services, "_services", tasks.services.Services(settings))
    old = int(time.time()) - settings.record_ttl_s - 5
    client.zadd(keys.job_index("call", "submitted"), {"gone": old, "kept": int(time.time())})
    client.zadd(keys.job_index("ota-init", "submitted"), {"other-family": old})
    report = recover_lost_messages.run("agent")
    assert report["index_trimmed"] == 1 and report["candidates"] == 0
    assert client.zrange(keys.job_index("call", "submitted"), 0, -1) == ["kept"]
    assert client.zcard(keys.job_index("ota-init", "submitted")) == 1  # the api2 run's to trim
    # The workers' store wrote the retention the scripts read.
    assert client.hget(keys.RETENTION, "completed") == str(settings.retention.completed_s)
