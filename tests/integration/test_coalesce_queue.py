"""The Redis side of coalescing (nxjobs.coalesce.CoalesceQueue) on a real Redis: when flushes
are due, what a flush takes, and that a batch is built once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from config.settings import CoalesceSettings
from nxjobs import coalesce, keys
from nxjobs.redis_conn import connect
from nxjobs.store import RecordStore

pytestmark = pytest.mark.integration

NOW = "2026-11-23T00:00:00.000Z"


@pytest.fixture()
def queue(redis_url):
    client = connect(redis_url.rsplit("/", 1)[0] + "/3")
    client.flushdb()
    yield coalesce.CoalesceQueue(client, CoalesceSettings(max_numbers=4, linger_s=0.5), ttl_s=600)
    client.flushdb()


def _jobs(phones):
    return [(uuid.uuid4().hex, p, json.dumps({"phones": ["***"]})) for p in phones]


def test_a_lingering_flush_is_due_once_and_a_full_one_per_filled_batch(queue):
    # The first push arms the linger; pushes that fill a batch ask for a flush now
    assert queue.enqueue("nc1", _jobs(["6590000001"]), NOW) == coalesce.Flushes(0, True)
    assert queue.enqueue("nc1", _jobs(["6590000002", "6590000003"]), NOW) == coalesce.Flushes(
        0, False
    )
    assert queue.enqueue(
        "nc1", _jobs([f"659000001{i}" for i in range(6)]), NOW
    ) == coalesce.Flushes(2, False)
    assert queue.pending("nc1") == 9
    # Each record exists, queued, waiting for one callback
    record = queue.redis.hgetall(
        keys.job(queue.redis.lindex(keys.coalesce_pending("nc1"), 0).split("|")[0])
    )
    assert (record["state"], record["callbacks_needed"], record["kind"]) == (
        "queued",
        "1",
        "number-check",
    )


def test_a_flush_takes_at_most_a_batch_and_never_one_phone_twice(queue):
    jobs = _jobs(["6590000001", "6590000001", "6590000002", "6590000003", "6590000004"])
    queue.enqueue("nc1", jobs, NOW)
    taken = queue.take("nc1", "batch-1", 1.0, NOW)
    # Of the first 4 (max_numbers), the duplicate phone goes back to the head for the next batch
    assert taken.status == 2
    assert [m[1] for m in taken.members] == ["6590000001", "6590000002", "6590000003"]
    assert taken.pending_left == 2
    assert queue.redis.lrange(keys.coalesce_pending("nc1"), 0, -1) == [
        f"{jobs[1][0]}|6590000001",
        f"{jobs[4][0]}|6590000004",
    ]
    # Members run, and a callback for (batchNo, phone) finds its member already
    assert queue.redis.hget(keys.job(jobs[0][0]), "state") == "running"
    batch_no = coalesce.batch_no_of("batch-1")
    index = coalesce.member_index_key(batch_no)
    assert queue.redis.hget(index, "6590000002") == jobs[2][0]
    # in one index hash for the batch, expiring with it: no member has an index key of its own
    assert queue.redis.hlen(index) == 3 and 0 < queue.redis.ttl(index) <= queue.ttl_s


def test_a_batch_is_built_once_and_a_late_duplicate_flush_stops(queue):
    queue.enqueue("nc1", _jobs(["6590000001", "6590000002"]), NOW)
    first = queue.take("nc1", "batch-1", 1.0, NOW)
    queue.enqueue("nc1", _jobs(["6590000003"]), NOW)
    # The same flush delivered again gets the same members, and takes nothing new
    again = queue.take("nc1", "batch-1", 2.0, NOW)
    assert (again.status, again.members) == (1, first.members)
    assert queue.pending("nc1") == 1
    # Once recorded, the batch is done: a later delivery of its flush finds nothing to send
    outcomes = [
        coalesce.MemberOutcome(job_id, False, {"requestId": "r"}) for job_id, _ in first.members
    ]
    assert queue.fan_out("batch-1", [], outcomes, now_s=3.0, now_iso=NOW, due_at_s=600.0) == []
    assert queue.take("nc1", "batch-1", 4.0, NOW).status == 3
    assert queue.batch_state("batch-1") == "done"
    assert queue.redis.hget(keys.job(first.members[0][0]), "state") == "submitted"


def test_a_member_whose_callback_came_first_completes_at_fan_out(queue):
    jobs = _jobs(["6590000001", "6590000002"])
    queue.enqueue("nc1", jobs, NOW)
    taken = queue.take("nc1", "batch-1", 1.0, NOW)
    queue.redis.hset(
        keys.job(jobs[0][0]), "callbacks_done", 1
    )  # as the receiver leaves an early callback
    outcomes = [
        coalesce.MemberOutcome(job_id, False, {"requestId": "r"}) for job_id, _ in taken.members
    ]
    assert queue.fan_out("batch-1", [], outcomes, now_s=3.0, now_iso=NOW, due_at_s=600.0) == [
        jobs[0][0]
    ]
    assert queue.redis.hget(keys.job(jobs[0][0]), "state") == "completed"
    # the other one waits for its callback, due for reconciliation at the deadline
    assert queue.redis.zscore(keys.callbacks_waiting("api2"), jobs[1][0]) == 600.0


def test_fan_out_sends_a_shared_result_once_and_still_gives_each_member_its_own_story(queue):
    # Given a batch of four: two share one result object, one has its own, one was rejected
    jobs = _jobs(["6590000001", "6590000002", "6590000003", "6590000004"])
    queue.enqueue("nc1", jobs, NOW)
    taken = queue.take("nc1", "batch-1", 1.0, NOW)
    (a, _), (b, _), (c, _), (d, _) = taken.members
    shared = {"requestId": "r-shared", "numbers": 1}
    outcomes = [
        coalesce.MemberOutcome(a, False, shared),
        coalesce.MemberOutcome(b, True, {"code": "number_rejected"}),
        coalesce.MemberOutcome(c, False, shared),
        coalesce.MemberOutcome(d, False, {"requestId": "r-own"}),
    ]
    assert (
        queue.fan_out(
            "batch-1", [{"endpoint": "x"}], outcomes, now_s=3.0, now_iso=NOW, due_at_s=600.0
        )
        == []
    )
    stored = {
        job_id: queue.redis.hmget(keys.job(job_id), "state", "result", "error")
        for job_id in (a, b, c, d)
    }
    # the shared result stored once, in the batch, and read from there
    assert stored[a] == stored[c] == ["submitted", "", ""]
    assert queue.redis.hget(keys.coalesce_batch("batch-1"), "result") == json.dumps(
        shared, separators=(",", ":")
    )
    records = RecordStore(queue.redis).get_many([a, c, d])
    assert records[a].result == records[c].result == shared
    assert records[a].request == [{"endpoint": "x"}]
    assert stored[d][:2] == ["submitted", '{"requestId":"r-own"}']
    assert records[d].result == {"requestId": "r-own"}
    assert stored[b][0] == "failed" and json.loads(stored[b][2]) == {"code": "number_rejected"}
    # Only the submitted ones wait for a callback (one ZADD for all of them)
    waiting = queue.redis.zrange(keys.callbacks_waiting("api2"), 0, -1, withscores=True)
    assert sorted(waiting) == sorted([(a, 600.0), (c, 600.0), (d, 600.0)])


def test_the_sweep_rearms_a_group_whose_flush_was_lost_and_finds_stale_batches(queue):
    queue.enqueue("nc1", _jobs(["6590000001", "6590000002"]), NOW)
    queue.redis.delete(keys.coalesce_armed("nc1"))  # its lingering flush was lost with its producer
    assert queue.unarmed_groups() == ["nc1"]
    assert queue.unarmed_groups() == []  # armed again: one flush, not one per sweep
    queue.take("nc1", "batch-1", 100.0, NOW)
    assert queue.stale_batches(50.0, now_s=120.0) == []
    assert queue.stale_batches(50.0, now_s=200.0) == [("batch-1", "nc1")]


def test_each_family_sweeps_only_its_own_groups(queue):
    # Given a number-check group and a contact group, both with their flush messages lost
    queue.enqueue("nc1", _jobs(["6590000001"]), NOW)
    contact = (
        uuid.uuid4().hex,
        "order-1",
        json.dumps({"contact": {}}),
        json.dumps({"orderID": "order-1"}),
    )
    queue.enqueue(coalesce.contact_group("task-1"), [contact], NOW)
    for group in ("nc1", coalesce.contact_group("task-1")):
        queue.redis.delete(keys.coalesce_armed(group))

    def family_is(name):
        return lambda group: coalesce.spec_of(group).family == name

    # Then the callbot sweep re-arms only the contact group, and leaves the other to the api2 sweep
    assert queue.unarmed_groups(family_is("callbot")) == [coalesce.contact_group("task-1")]
    assert queue.unarmed_groups(family_is("api2")) == ["nc1"]


def test_a_group_is_in_the_groups_set_while_its_pending_list_has_items(queue):
    groups = keys.COALESCE_GROUPS
    queue.enqueue("nc1", _jobs(["6590000001", "6590000002", "6590000003", "6590000004"]), NOW)
    queue.enqueue("nc1", _jobs(["6590000005"]), NOW)
    assert queue.redis.smembers(groups) == {"nc1"}
    # A batch that leaves items behind keeps the group (and puts back one the set had lost)
    queue.redis.srem(groups, "nc1")
    assert queue.take("nc1", "batch-1", 1.0, NOW).pending_left == 1
    assert queue.redis.smembers(groups) == {"nc1"}
    # The batch that takes the last item drops it
    assert queue.take("nc1", "batch-2", 2.0, NOW).pending_left == 0
    assert queue.redis.smembers(groups) == set()


def test_the_sweep_drops_a_group_found_empty_and_keeps_one_with_items(queue):
    queue.enqueue("nc1", _jobs(["6590000001"]), NOW)
    queue.redis.sadd(keys.COALESCE_GROUPS, "nc2")  # its list emptied outside the take script
    queue.redis.delete(keys.coalesce_armed("nc1"))
    assert queue.unarmed_groups() == ["nc1"]
    assert queue.redis.smembers(keys.COALESCE_GROUPS) == {"nc1"}
    assert queue.redis.get(keys.coalesce_armed("nc2")) is None  # no flush for an empty group


def _scans(client) -> int:
    return int(client.info("commandstats").get("cmdstat_scan", {}).get("calls", 0))


def test_the_sweep_reads_no_keyspace(queue):
    # Given unrelated keys, and a group whose lingering flush was lost
    queue.redis.mset({f"unrelated:{i}": "x" for i in range(2000)})
    queue.enqueue("nc1", _jobs(["6590000001"]), NOW)
    queue.redis.delete(keys.coalesce_armed("nc1"))
    before = _scans(queue.redis)
    # Then the sweep re-arms it without one SCAN
    assert queue.unarmed_groups() == ["nc1"]
    assert queue.stale_batches(50.0, now_s=200.0) == []
    assert _scans(queue.redis) == before


def test_coalesce_adopt_puts_back_the_groups_an_older_version_left_pending(queue, redis_url):
    # Given pending lists written before the groups set existed, their flushes lost
    queue.enqueue("nc1", _jobs(["6590000001"]), NOW)
    queue.enqueue("nc2", _jobs(["6590000002"]), NOW)
    queue.redis.delete(keys.COALESCE_GROUPS, keys.coalesce_armed("nc1"), keys.coalesce_armed("nc2"))
    assert queue.unarmed_groups() == []
    # When the operator runs the one-off adoption
    env = {k: v for k, v in os.environ.items() if not k.startswith("NXJOBS_")}
    env["NXJOBS_REDIS_URL"] = redis_url.rsplit("/", 1)[0] + "/3"
    done = subprocess.run(
        [sys.executable, "-m", "nxjobs.cli", "coalesce-adopt"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Then the sweep finds both groups again
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "2 group(s) with pending items: nc1 nc2"
    assert queue.unarmed_groups() == ["nc1", "nc2"]
