"""No job lost, no side effect twice: the in-flight marker, dead letters and an
unreachable Redis, on a real Redis, a real worker and real HTTP to the sandbox."""

from __future__ import annotations

import contextlib
import io
import json
import socket
import threading
import time

import pytest

from nxjobs import keys
from nxjobs.deadletters import DeadLetters
from nxjobs.jobs import KINDS
from nxjobs.records import JobState

WAIT_S = 30


def _republish(producer, kind: str, job_id: str, payload: dict) -> None:
    """Deliver the job's message again, as the broker does after its worker died."""
    job_kind = KINDS[kind]
    producer._celery.send_task(
        job_kind.task_name,
        kwargs={"job_id": job_id, "payload": payload},
        task_id=job_id,
        queue=job_kind.queue,
        routing_key=job_kind.queue,
    )


def _as_if_worker_died_after_sending(producer, job_id: str) -> None:
    """What a worker killed between sending and recording leaves behind: the record
    `running`, the in-flight marker set (long enough ago that nobody is still waiting)."""
    producer.redis.hset(keys.job(job_id), mapping={"state": JobState.RUNNING.value, "result": ""})
    producer.redis.set(keys.inflight(job_id), f"{time.time() - 60:.3f}")


def _wait_state(producer, job_id: str, pred, timeout_s: float = WAIT_S):
    deadline = time.monotonic() + timeout_s
    while True:
        record = producer.get(job_id)
        if record is not None and pred(record):
            return record
        assert time.monotonic() < deadline, f"timed out; last record: {record}"
        time.sleep(0.1)


def test_redelivered_call_is_looked_up_by_orderid_not_rung_again(producer, sandbox, worker):
    # Given a call the provider accepted, whose worker died before recording it
    job_id = producer.call(phone="8613800138000")
    assert producer.wait([job_id], until="submitted", timeout_s=WAIT_S)[job_id].reached(
        JobState.SUBMITTED
    )
    _as_if_worker_died_after_sending(producer, job_id)
    # When the broker delivers the message again
    _republish(producer, "call", job_id, {"phone": "8613800138000"})
    record = _wait_state(producer, job_id, lambda r: r.state != JobState.RUNNING)
    # Then the CDR lookup found the call: submitted, and the phone rang once
    assert record.state in (JobState.SUBMITTED, JobState.COMPLETED), record
    assert record.result["orderid"] == job_id
    assert any(r["endpoint"].startswith("lookup:") for r in record.request)
    stats = sandbox.stats()
    assert stats["accepted"]["makecall"] == 1
    assert stats["duplicates"]["makecall_orderid"] == 0
    assert producer.redis.exists(keys.inflight(job_id)) == 0


def test_redelivered_call_without_a_cdr_is_parked_ambiguous_never_resent(producer, sandbox, worker):
    # Given a call whose worker died after setting the marker; the provider has no CDR for it
    job_id = producer.call(phone="8613800138000")
    producer.wait([job_id], until="submitted", timeout_s=WAIT_S)
    sandbox.reset()  # the provider forgets the call: its CDR lookup finds nothing
    sandbox.configure(api2_rate=0, callbot_rate=0, makecall_rate=0, cdr_rate=0)
    _as_if_worker_died_after_sending(producer, job_id)
    _republish(producer, "call", job_id, {"phone": "8613800138000"})
    record = _wait_state(producer, job_id, lambda r: r.state == JobState.FAILED)
    # Then nothing was sent: the job waits for reconciliation and is in the dead letters
    assert record.error.code == "ambiguous"
    assert sandbox.stats()["accepted"].get("makecall", 0) == 0
    assert producer.redis.zscore(keys.RECONCILE, job_id) is not None
    assert job_id in {e["job_id"] for e in DeadLetters(producer.redis).list(kind="call")}


def test_number_check_whose_answer_was_lost_is_found_by_batch_no_not_resent(
    producer, sandbox, worker
):
    # Given the provider applies the number check, then answers after the client gave up
    sandbox.configure(slow_rate=1.0, slow_seconds=3.0)
    job_id = producer.number_check(phones=["8613800138000", "6591234567"], check_level=1)
    deadline = time.monotonic() + 10
    while not sandbox.requests("/api/number/check"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    sandbox.configure(slow_rate=0.0)
    # When the retry runs (it waits out the first attempt's timeout, then asks by batchNo)
    record = _wait_state(
        producer, job_id, lambda r: r.reached(JobState.SUBMITTED) or r.state == JobState.FAILED
    )
    # Then it found the batch instead of submitting it again
    assert record.reached(JobState.SUBMITTED), record
    assert record.result["batchNo"] == job_id and record.result["requestId"]
    assert any(r["endpoint"] == "lookup:/api/number/query" for r in record.request)
    stats = sandbox.stats()
    assert stats["accepted"]["number_check"] == 1
    assert stats["duplicates"]["number_check_batchno"] == 0


def _cli(redis_url: str, monkeypatch, *argv: str) -> tuple[int, str, str]:
    from nxjobs import cli

    monkeypatch.setenv("NXJOBS_REDIS_URL", redis_url)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_permanent_failure_is_dead_lettered_and_replays_under_the_same_id(
    producer, sandbox, worker, redis_url, monkeypatch
):
    producer.dead_letters.purge()
    # Given a number check the provider refuses permanently (9906)
    sandbox.script("/api/number/check", 9906, times=1)
    job_id = producer.number_check(phones=["8613800138000"], check_level=1, batch=False)
    failed = _wait_state(producer, job_id, lambda r: r.state == JobState.FAILED)
    assert failed.error.code == "9906"
    # Then `nxjobs dead list` shows it with its reason, without the raw payload
    code, out, _ = _cli(redis_url, monkeypatch, "dead", "list", "--json")
    rows = json.loads(out)
    assert code == 0 and [r["job_id"] for r in rows] == [job_id]
    assert (
        rows[0]["reason"]["code"] == "9906"
        and rows[0]["state"] == "failed"
        and "payload" not in rows[0]
    )
    # When it is replayed
    code, out, _ = _cli(redis_url, monkeypatch, "dead", "replay", job_id)
    assert code == 0 and out.strip() == f"{job_id} replayed"
    # Then the same job (same id = same batchNo) goes through the normal task and is accepted
    record = _wait_state(
        producer, job_id, lambda r: r.reached(JobState.SUBMITTED) or r.state == JobState.FAILED
    )
    assert record.reached(JobState.SUBMITTED), record
    assert record.replays == 1 and record.attempts == 1 and record.result["batchNo"] == job_id
    assert producer.dead_letters.count() == 0
    assert sandbox.stats()["accepted"]["number_check"] == 1
    # And a replay of something not (or no longer) dead is refused with a message
    code, _, err = _cli(redis_url, monkeypatch, "dead", "replay", job_id)
    assert code == 1 and "not in the dead letters" in err


def test_dead_letter_purge_and_replay_all_by_kind(producer, redis_url, monkeypatch):
    dead = producer.dead_letters
    dead.purge()
    dead.add(
        "a" * 32, "ota-init", {"phone": "8615800001795", "user_ip": "203.0.113.7"}, {"code": "x"}
    )
    dead.add("b" * 32, "wa-calling", {"business_phone": "6581234567"}, {"code": "y"})
    code, out, _ = _cli(redis_url, monkeypatch, "dead", "purge", "--kind", "wa-calling")
    assert code == 0 and "purged 1" in out
    assert [e["job_id"] for e in dead.list()] == ["a" * 32]
    # A replay of a job whose record expired recreates it as queued, under the same id.
    code, out, _ = _cli(redis_url, monkeypatch, "dead", "replay", "--all", "--kind", "ota-init")
    assert code == 0 and "replayed 1" in out
    assert producer.get("a" * 32) is not None and dead.count() == 0


def test_dead_letters_are_bounded_by_count_and_age(redis_url):
    from nxjobs.redis_conn import connect

    client = connect(redis_url.rsplit("/", 1)[0] + "/4")
    client.flushdb()
    dead = DeadLetters(client, max_entries=3, max_age_s=3600)
    for i in range(5):
        dead.add(f"job{i}", "ota-init", {}, {"code": "x"})
    # Only the newest 3 are kept.
    assert [e["job_id"] for e in dead.list()] == ["job4", "job3", "job2"]
    assert client.hlen(keys.DEAD_ENTRIES) == 3
    short = DeadLetters(client, max_entries=100, max_age_s=0.2)
    time.sleep(0.3)
    short.add("fresh", "ota-init", {}, {"code": "x"})
    # Everything older than max_age_s went with that add.
    assert [e["job_id"] for e in short.list()] == ["fresh"] and client.hlen(keys.DEAD_ENTRIES) == 1
    client.flushdb()


@pytest.fixture()
def refusing_server():
    """A loopback port that accepts TCP connections and closes them at once, counting them."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    count = {"n": 0}
    stop = threading.Event()

    def serve():
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            count["n"] += 1
            conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield f"redis://127.0.0.1:{srv.getsockname()[1]}/0", count
    stop.set()
    t.join(2)
    srv.close()


def test_producer_retries_an_unreachable_redis_a_bounded_number_of_times(refusing_server):
    from nxjobs.producers import Producer, RedisUnavailable

    url, count = refusing_server
    started = time.monotonic()
    with Producer(url) as producer:
        with pytest.raises(RedisUnavailable, match="cannot reach Redis at redis://127.0.0.1"):
            producer.call(phone="8613800138000")
    elapsed = time.monotonic() - started
    # It tried more than once (the retry is real), a bounded number of times (redis-py retries
    # the connect inside each of the 1 + 3 command attempts: 16), and gave up in seconds.
    assert 2 <= count["n"] <= 16, count
    assert elapsed < 10
