"""Held messages (nxjobs/held.py, workers/held.py) on a real Redis and real workers: what a
worker killed with -9 held (running, prefetched, countdowns waiting for a rate-limit slot) is
put back within seconds, and nothing is sent twice."""

from __future__ import annotations

import json
import time

import pytest
from kombu import Connection

from nxjobs import keys
from nxjobs.held import HeldMessages, encode
from nxjobs.redis_conn import connect
from workers.exporter import Exporter


@pytest.fixture()
def db_url(redis_server):
    url = redis_server.url.rsplit("/", 1)[0] + "/6"
    c = connect(url)
    c.flushdb()
    yield url
    c.flushdb()


def _unacked(client, tag: str, job_id: str, delivered_at: float) -> None:
    """One message as kombu records it when it hands it to a worker (anonymous exchange: the
    routing key is the queue)."""
    message = {
        "body": "e30=",
        "headers": {"id": job_id, "task": "nxjobs.call"},
        "properties": {"delivery_tag": tag, "delivery_info": {"routing_key": "agent"}},
    }
    client.hset("unacked", tag, json.dumps([message, "", "agent"]))
    client.zadd("unacked_index", {tag: delivered_at})


def test_orphans_go_back_first_in_line_and_a_live_workers_messages_stay(db_url):
    client = connect(db_url)
    now = time.time()
    client.rpush("agent", "already-queued")
    _unacked(client, "t-live", "job-live", now - 100)
    _unacked(client, "t-dead", "job-dead", now - 100)
    _unacked(client, "t-new", "job-new", now - 2)  # just delivered, not listed yet
    client.hset(keys.WORKERS_HELD, "dead@h", encode(now - 60, ["t-dead"]))
    with Connection(db_url) as conn:
        held = HeldMessages(client, conn.default_channel, node="live@h", interval_s=5, grace_s=15)
        held.beat(now, ["t-live"])
        run = held.restore_orphans()
        assert run.locked and run.restored == [("job-dead", "agent")]
        # First in line: the next BRPOP (right end) takes it.
        assert json.loads(client.lindex("agent", -1))["headers"]["id"] == "job-dead"
        assert client.lindex("agent", 0) == "already-queued"
        assert set(client.hkeys("unacked")) == {"t-live", "t-new"}
        assert client.zscore("unacked_index", "t-dead") is None
        # Its worker's entry went with its last held message; the live one stays.
        assert run.forgotten == ["dead@h"]
        assert set(client.hkeys(keys.WORKERS_HELD)) == {"live@h"}
        assert client.hget(keys.METRICS_COUNTERS, "restored|agent") == "1"
        restored = {
            f.name: [(s.labels, s.value) for s in f.samples]
            for f in Exporter(client, stall_s=300).collect()
        }["nxjobs_held_restored"]
        assert restored == [({"queue": "agent"}, 1.0)]
        # Nothing left to do: a second run puts nothing back.
        assert held.restore_orphans().restored == []
        assert client.llen("agent") == 2


def test_one_worker_at_a_time_and_a_run_is_bounded(db_url):
    client = connect(db_url)
    now = time.time()
    for i in range(7):
        _unacked(client, f"t{i}", f"job{i}", now - 100 - i)
    with Connection(db_url) as conn:
        held = HeldMessages(
            client, conn.default_channel, node="a@h", interval_s=5, grace_s=15, restore_limit=3
        )
        client.set(keys.WORKERS_HELD_LOCK, "someone-else", px=5000)
        assert held.restore_orphans().locked is False
        assert client.hlen("unacked") == 7
        client.delete(keys.WORKERS_HELD_LOCK)
        assert len(held.restore_orphans().restored) == 3
        assert client.hlen("unacked") == 4 and client.llen("agent") == 3
        assert client.get(keys.WORKERS_HELD_LOCK) is None  # released
        assert len(held.restore_orphans().restored) == 3
        assert len(held.restore_orphans().restored) == 1
        assert client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0


def test_an_entry_rewritten_since_it_was_read_is_not_deleted(db_url):
    client = connect(db_url)
    forget = HeldMessages(
        client, None, node="x@h", interval_s=5, grace_s=15
    )._forget  # the script alone
    client.hset(keys.WORKERS_HELD, "w@h", encode(1.0, []))
    assert forget(keys=[keys.WORKERS_HELD], args=["w@h", encode(0.5, [])]) == 0
    assert forget(keys=[keys.WORKERS_HELD], args=["w@h", encode(1.0, [])]) == 1
    assert client.hlen(keys.WORKERS_HELD) == 0


def test_a_worker_killed_with_9_while_holding_slot_waiting_calls_strands_none(redis_server):
    """60 calls under a makecall quota of 2/s (30 s of quota), 2 workers -c 4, the visibility
    timeout an hour: one worker's whole process group is killed while it lists more messages
    than it can run (countdowns waiting for a slot), and no fresh worker starts."""
    from bench.chaos import HELD_MAKECALL_RATE, run_scenario

    jobs = 60
    r = run_scenario("kill-held", jobs=jobs, timeout_s=150, concurrency=4, submit_s=3)
    assert r.submitted == jobs
    # Its list named more than its 4 processes run and prefetch: countdowns in its timer too.
    assert r.held_tags > 4 and r.held_jobs > 0, (r.held_tags, r.held_jobs)
    quota_s = jobs / HELD_MAKECALL_RATE
    assert r.held_settled_s is not None and r.held_settled_s <= 60 + quota_s, r.held_settled_s
    assert r.restored >= r.held_jobs > 0
    assert r.lost == 0, r.lost_ids
    assert r.duplicates == 0, r.duplicate_kinds
    assert r.completed + sum(r.failed.values()) + r.awaiting_callbacks == jobs, r.failed_detail
