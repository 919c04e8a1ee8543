"""Coalescing one-number Number Checks into shared provider requests (nxjobs.coalesce), end to end:
real Redis, real Celery workers, real HTTP to the sandbox, callbacks through the real receiver."""

from __future__ import annotations

import time

import pytest

from nxjobs import keys
from nxjobs.records import JobState

pytestmark = pytest.mark.integration

WAIT_S = 30


def _batches(sandbox, phones: set[str]) -> list[list[str]]:
    """The number lists of the sandbox's /api/number/check requests that carried any of `phones`."""
    out = []
    for r in sandbox.requests(path="/api/number/check", limit=1000):
        numbers = str(r["body"].get("phone", "")).split(",")
        if phones & set(numbers):
            out.append(numbers)
    return out


def test_single_numbers_share_one_request_and_each_job_gets_its_own_callback(
    cb_producer, cb_sandbox, callbacks_worker
):
    # Given 40 one-number checks enqueued one by one, one of them a number the provider rejects
    phones = [f"659{i:07d}" for i in range(39)] + ["9991234567"]
    job_ids = [cb_producer.number_check(phones=[p]) for p in phones]
    # When they complete (or fail)
    records = cb_producer.wait(job_ids, until="completed", timeout_s=WAIT_S)
    # Then one provider request carried all 40 numbers
    batches = _batches(cb_sandbox, set(phones))
    assert len(batches) == 1 and sorted(batches[0]) == sorted(phones)
    # and each accepted job completed with exactly its own number's result
    for job_id, phone in zip(job_ids[:-1], phones[:-1], strict=True):
        record = records[job_id]
        assert record.state == JobState.COMPLETED, (record.state, record.error)
        assert (record.callbacks_needed, record.callbacks_done) == (1, 1)
        assert len(record.callbacks) == 1
        shown = record.callbacks[0]["data"]["phone"]
        assert shown != phone and shown[:3] == phone[:3] and shown[-4:] == phone[-4:]
        assert record.result["coalesced"]["numbers"] == 40
        assert record.result["numbers"] == 1
    # and a completed member keeps only what is its own: what it shares is stored once, in its
    # batch, and read from there
    redis = cb_producer.redis
    raw = redis.hgetall(keys.job(job_ids[0]))
    own = {"kind", "state", "input", "created_at", "updated_at", "coalesce_batch"}
    assert set(raw) - own == {f for f in raw if f.startswith(keys.MEMBER_CALLBACK_FIELD)}, sorted(
        raw
    )
    assert "numbers of coalesced jobs" in str(records[job_ids[0]].request)
    assert records[job_ids[0]].attempts == 1 and records[job_ids[0]].id == job_ids[0]
    # and its DR entry only what is its own: the record still shows the whole DR
    [entry] = [v for f, v in raw.items() if f.startswith(keys.CALLBACK_FIELD)]
    batch_no, request_id = (records[job_ids[0]].result[f] for f in ("batchNo", "requestId"))
    assert batch_no not in entry and request_id not in entry and "received_at" not in entry
    shown = records[job_ids[0]].callbacks[0]
    assert shown["data"]["batchNo"] == batch_no and shown["type"] == "number-check"
    assert shown["data"]["requestId"].startswith(request_id + "-")
    assert shown["received_at"] == records[job_ids[0]].updated_at and shown["source"] == "callback"
    # in a compact encoding (the shipped hash-max-listpack-value), small
    assert redis.object("encoding", keys.job(job_ids[0])) == "listpack"
    assert redis.memory_usage(keys.job(job_ids[0])) <= 560
    # and no member has an index key of its own: its batch's index hash finds it
    index = keys.member_index(batch_no)
    assert redis.hget(index, phones[0]) == job_ids[0] and redis.ttl(index) > 0
    assert redis.keys(keys.callback_index("nc-num", batch_no) + ":*") == []
    assert redis.memory_usage(index) / len(phones) <= 110
    # and the rejected number failed its own job only
    rejected = records[job_ids[-1]]
    assert rejected.state == JobState.FAILED
    assert rejected.error.code == "number_rejected"
    assert "9991234567" not in rejected.model_dump_json()
    # and it is in the dead letters, ready for a replay on its own (its one number, no batch)
    entry = next(
        e for e in cb_producer.dead_letters.list(kind="number-check") if e["job_id"] == job_ids[-1]
    )
    assert entry["payload"] == {"phones": ["9991234567"], "check_level": 1}


def test_a_full_batch_is_sent_without_waiting_for_the_linger(
    cb_producer, cb_sandbox, callbacks_worker
):
    # Given more numbers than one batch holds, enqueued in one call (max_numbers 2 000 by default)
    phones = [f"6598{i:06d}" for i in range(2500)]
    started = time.monotonic()
    job_ids = cb_producer.enqueue_many("number-check", [{"phones": [p]} for p in phones])
    # (waiting for the callbacks too, so no job is left for the reconciliation tests to find late)
    records = cb_producer.wait(job_ids, until="completed", timeout_s=WAIT_S)
    # Then every job completes, from two requests: a full one of 2 000 and the rest
    assert all(r.state == JobState.COMPLETED for r in records.values()), {
        r.state for r in records.values()
    }
    sizes = sorted(len(b) for b in _batches(cb_sandbox, set(phones)))
    assert sizes == [500, 2000], sizes
    # each found through its batch's member index, whose shards stay compact listpacks
    redis = cb_producer.redis
    index = keys.member_index(records[job_ids[0]].result["batchNo"])
    shards = int(redis.hget(index, keys.MEMBER_INDEX_SHARDS))
    assert shards == 2000 // keys.MEMBER_INDEX_SHARD_SIZE + (
        2000 % keys.MEMBER_INDEX_SHARD_SIZE > 0
    )
    shard_keys = [f"{index}{keys.MEMBER_INDEX_SHARD_SEP}{n}" for n in range(shards)]
    assert sum(redis.hlen(k) for k in shard_keys) == 2000
    assert {redis.object("encoding", k) for k in shard_keys} == {"listpack"}
    assert all(redis.ttl(k) > 0 for k in [index, *shard_keys])
    index_bytes = sum(redis.memory_usage(k, samples=0) for k in [index, *shard_keys])
    assert index_bytes / 2000 <= 60, index_bytes
    # and no number was sent twice
    sent = [n for b in _batches(cb_sandbox, set(phones)) for n in b]
    assert len(sent) == len(set(sent)) == 2500
    assert time.monotonic() - started < WAIT_S


def test_batch_false_sends_a_request_of_its_own(cb_producer, cb_sandbox, callbacks_worker):
    job_id = cb_producer.number_check(phones=["6591112222"], batch=False)
    record = cb_producer.wait([job_id], until="completed", timeout_s=WAIT_S)[job_id]
    assert record.state == JobState.COMPLETED, (record.state, record.error)
    # Its own batchNo (the job id), one number in the request
    assert _batches(cb_sandbox, {"6591112222"}) == [["6591112222"]]
    assert record.result["batchNo"] == job_id and "coalesced" not in record.result


def test_linger_sends_a_part_batch_once_it_has_waited(cb_producer, cb_sandbox, callbacks_worker):
    # Given a single number, far from a full batch
    started = time.monotonic()
    job_id = cb_producer.number_check(phones=["6597776666"])
    record = cb_producer.wait([job_id], until="submitted", timeout_s=WAIT_S)[job_id]
    elapsed = time.monotonic() - started
    # Then it is sent alone, no sooner than the linger (0.5 s by default)
    assert record.reached(JobState.SUBMITTED), record
    assert _batches(cb_sandbox, {"6597776666"}) == [["6597776666"]]
    assert elapsed >= cb_producer.coalesce.settings.linger_s


def _pool_children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        return [int(x) for x in fh.read().split()]


def test_worker_killed_holding_a_sent_batch_loses_nothing_and_checks_no_number_twice(
    cb_producer, cb_sandbox, callbacks_worker
):
    import os
    import signal

    # Given a batch whose request the provider takes but answers slowly
    cb_sandbox.configure(slow_rate=1.0, slow_seconds=3.0)
    phones = [f"6593{i:06d}" for i in range(30)]
    job_ids = cb_producer.enqueue_many("number-check", [{"phones": [p]} for p in phones])
    deadline = time.monotonic() + 10
    while not _batches(cb_sandbox, set(phones)):
        assert time.monotonic() < deadline, "the batch was never sent"
        time.sleep(0.05)
    cb_sandbox.configure(slow_rate=0.0)
    # When every pool process of the worker is killed while it waits for that answer
    for child in _pool_children(callbacks_worker.proc.pid):
        os.kill(child, signal.SIGKILL)
    # Then the redelivered flush finds the batch at the provider: every job completes
    records = cb_producer.wait(job_ids, until="completed", timeout_s=WAIT_S + 15)
    assert all(r.state == JobState.COMPLETED for r in records.values()), sorted(
        {(r.state, r.error.code if r.error else None) for r in records.values()}
    )
    # and no number was sent twice
    sent = [n for b in _batches(cb_sandbox, set(phones)) for n in b]
    assert sorted(sent) == sorted(phones)
    assert cb_sandbox.stats()["duplicates"]["number_check_batchno"] == 0
    assert any(r["endpoint"] == "lookup:/api/number/query" for r in records[job_ids[0]].request)


def test_too_frequent_retries_the_whole_batch_and_every_member_tells_it(producer, sandbox, worker):
    # Given the provider answers "too frequent" twice
    sandbox.script("/api/number/check", 2206, times=2)
    phones = [f"6594{i:06d}" for i in range(5)]
    job_ids = producer.enqueue_many("number-check", [{"phones": [p]} for p in phones])
    records = producer.wait(job_ids, timeout_s=WAIT_S)
    # Then the batch went through on its third attempt, with the same batchNo each time
    sent = _batches(sandbox, set(phones))
    assert len(sent) == 3 and all(sorted(b) == sorted(phones) for b in sent)
    batch_nos = {
        r["body"]["batchNo"]
        for r in sandbox.requests(path="/api/number/check", limit=1000)
        if set(phones) & set(str(r["body"]["phone"]).split(","))
    }
    assert len(batch_nos) == 1
    # and each member's record says so
    for record in records.values():
        assert record.state == JobState.SUBMITTED, (record.state, record.error)
        assert (record.attempts, record.throttles) == (3, 2)


def test_a_permanent_error_fails_every_member_with_the_providers_code(producer, sandbox, worker):
    sandbox.script("/api/number/check", 211, times=1, message="Insufficient customer balance")
    phones = [f"6595{i:06d}" for i in range(3)]
    job_ids = producer.enqueue_many("number-check", [{"phones": [p]} for p in phones])
    records = producer.wait(job_ids, timeout_s=WAIT_S)
    assert len(_batches(sandbox, set(phones))) == 1  # not retried
    for record in records.values():
        assert record.state == JobState.FAILED
        assert record.error.code == "211" and record.error.retryable is False
    dead = {e["job_id"] for e in producer.dead_letters.list(kind="number-check")}
    assert set(job_ids) <= dead


def test_the_sweep_sends_a_group_whose_flush_was_lost_without_scanning_keys(
    producer, sandbox, worker, monkeypatch
):
    from nxjobs import coalesce, keys

    # Given a number pushed by a producer that died before it published the flush
    monkeypatch.setattr(producer, "_send_flushes", lambda group, flushes: None)
    job_id = producer.number_check(phones=["6596660001"])
    producer.redis.delete(keys.coalesce_armed(coalesce.group_of(1)))
    scans = producer.redis.info("commandstats").get("cmdstat_scan", {}).get("calls", 0)
    # When beat's sweep of the api2 family runs
    producer._celery.send_task(
        coalesce.SWEEP_TASK, kwargs={"family": "api2"}, queue="api2", routing_key="api2"
    )
    # Then the number is sent, and the sweep read no keyspace
    record = producer.wait([job_id], until="submitted", timeout_s=WAIT_S)[job_id]
    assert record.reached(JobState.SUBMITTED), record
    assert _batches(sandbox, {"6596660001"}) == [["6596660001"]]
    assert producer.redis.info("commandstats").get("cmdstat_scan", {}).get("calls", 0) == scans
