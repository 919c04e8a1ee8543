"""Scheduled and cancelled jobs on a real Redis (with its AOF), real workers and the sandbox over
HTTP: a scheduled job is not sent before its time and is sent after, through a worker kill -9, a
Redis restart and a promoter that died holding its lease; a cancelled job is never sent whatever
state it was cancelled from (its late message is skipped, a coalesced member's batch goes out
without it); cancel and claim race with exactly one winner; what cannot be cancelled is refused,
changing nothing."""

from __future__ import annotations

import json
import random
import signal
import threading
import time
import uuid
from pathlib import Path

import pytest

from nxjobs import broker, cancel, keys
from nxjobs.cancel import Canceller
from nxjobs.coalesce import CoalesceQueue, group_of
from nxjobs.jobs import QUEUE_API2
from nxjobs.producers import Producer, ProducerCoalesceSettings
from nxjobs.records import JobState, utc_now_iso
from nxjobs.redis_conn import connect
from nxjobs.schedule import Schedule
from nxjobs.store import RecordStore, TransitionRefused
from tests.conftest import cli_runner
from workers.devstack import RedisServer, free_port, start_worker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

NC_PATH = "/api/number/check"
REPO = Path(__file__).resolve().parents[2]
# A due job starts within this of its time (promotion every 0.2 s here, plus load on a shared
# machine).
ON_TIME_S = 3.0


def _phone() -> str:
    return "86139" + "".join(random.choice("0123456789") for _ in range(8))


def _sent(sandbox, *, batch_no: str | None = None, phone: str | None = None) -> list[dict]:
    out = []
    for r in sandbox.requests(path=NC_PATH, limit=1000):
        body = r["body"]
        if batch_no is not None and body.get("batchNo") == batch_no:
            out.append(r)
        elif phone is not None and phone in str(body.get("phone", "")).split(","):
            out.append(r)
    return out


@pytest.fixture(scope="module")
def own_redis(redis_server):
    with RedisServer(appendonly=True) as server:
        yield server


@pytest.fixture(scope="module")
def own_env(worker_env, own_redis) -> dict[str, str]:
    return {
        **worker_env,
        "NXJOBS_REDIS_URL": own_redis.url,
        "NXJOBS_SCHEDULE__INTERVAL_S": "0.2",
        "NXJOBS_SCHEDULE__LEASE_S": "2",
        # A throttled job stays `retrying` long enough to be cancelled there.
        "NXJOBS_RATELIMIT__COOLDOWN_BASE_S": "3",
        "NXJOBS_RATELIMIT__COOLDOWN_CAP_S": "3",
        "NXJOBS_COALESCE__LINGER_S": "0.3",
    }


def _waiting(client) -> int:
    """Messages waiting on the api2 queue (every priority step's list)."""
    return sum(client.llen(name) for name in broker.queue_lists(QUEUE_API2))


def _wait_state(producer: Producer, job_id: str, states: set[str], timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        record = producer.get(job_id)
        if record is not None and record.state.value in states:
            return record.state.value
        if time.monotonic() > deadline:
            raise AssertionError(f"{job_id}: {record and record.state} never reached {states}")
        time.sleep(0.03)


def test_scheduled_jobs_wait_through_a_kill_9_a_redis_restart_and_a_dead_promoter(
    own_redis, own_env, sandbox, tmp_path
):
    client = connect(own_redis.url)
    phones = {name: _phone() for name in ("single", "coalescible", "leased")}
    with Producer(own_redis.url) as producer:
        # Given two jobs due in 10 s (one of a coalescible kind) and one due in 1 s
        single = producer.number_check(phones=[phones["single"]], batch=False, delay_s=10)
        coalescible = producer.number_check(phones=[phones["coalescible"]], delay_s=10)
        leased = producer.number_check(phones=[phones["leased"]], batch=False, delay_s=1)
        due = time.time() + 10
        for job_id in (single, coalescible, leased):
            record = producer.get(job_id)
            assert record.state == JobState.SCHEDULED and record.run_at, record
            assert client.zscore(keys.job_index("number-check", "scheduled"), job_id)
        assert client.zcard(keys.SCHEDULE) == 3
        # Nothing is on the broker: the jobs wait in Redis only
        assert _waiting(client) == 0

        # When a worker runs for a while, before the two are due, and is killed with -9
        worker = start_worker(own_env, log_dir=str(tmp_path / "w1"))
        try:
            _wait_state(producer, leased, {"submitted", "completed"}, 15)
            assert producer.get(single).state == JobState.SCHEDULED
            worker.signal(signal.SIGKILL)
        finally:
            worker.stop()
        assert len(_sent(sandbox, phone=phones["leased"])) == 1
        assert not _sent(sandbox, phone=phones["single"])
        # and Redis restarts (its AOF is all it keeps)
        own_redis.restart()
        client = connect(own_redis.url)
        assert client.zcard(keys.SCHEDULE) == 2
        assert {producer.get(j).state for j in (single, coalescible)} == {JobState.SCHEDULED}

        # And a promoter takes them once due and dies before publishing (its lease holds them)
        while time.time() < due:
            time.sleep(0.05)
        taken = Schedule(client, 3600).take(lease_s=2)
        assert {d.job_id for d in taken} == {single, coalescible}
        lease_end = time.time() + 2

        # Then a new worker sends each once, when the lease ends, not before its time
        worker = start_worker(own_env, log_dir=str(tmp_path / "w2"))
        try:
            records = producer.wait([single, coalescible], until="submitted", timeout_s=30)
        finally:
            worker.stop()
        for job_id, phone in ((single, phones["single"]), (coalescible, phones["coalescible"])):
            assert records[job_id].reached(JobState.SUBMITTED), records[job_id]
            sent = _sent(sandbox, phone=phone)
            assert len(sent) == 1, sent
            # the coalescible one went as a single job: a request of its own, its own batchNo
            assert sent[0]["body"]["batchNo"] == job_id
        submitted_at = [
            float(client.hget(keys.job(j), "submitted_at")) for j in (single, coalescible)
        ]
        assert all(due <= at <= max(due, lease_end) + ON_TIME_S for at in submitted_at), (
            submitted_at,
            due,
            lease_end,
        )
        # And nothing of the schedule is left behind
        assert client.zcard(keys.SCHEDULE) == 0
        assert not client.exists(*(keys.scheduled_message(j) for j in (single, coalescible)))


def test_a_cancelled_job_is_never_sent_whatever_it_was_waiting_in(
    own_redis, own_env, sandbox, tmp_path
):
    client = connect(own_redis.url)
    with Producer(own_redis.url) as producer:
        # Given, with no worker running: a queued job (its message on the broker), a scheduled
        # one, and three coalesced members waiting for their flush
        queued = producer.number_check(phones=[_phone()], batch=False)
        scheduled = producer.number_check(phones=[_phone()], batch=False, delay_s=1.5)
        member_phones = [_phone() for _ in range(3)]
        members = [producer.number_check(phones=[p], check_level=4) for p in member_phones]
        assert _waiting(client) >= 2  # the queued job's message and a flush

        # When three are cancelled
        answers = {j: producer.cancel(j) for j in (queued, scheduled, members[1])}

        # Then each is cancelled from where it was, and its waiting keys are gone
        assert {j: (a.cancelled, a.previous) for j, a in answers.items()} == {
            queued: (True, "queued"),
            scheduled: (True, "scheduled"),
            members[1]: (True, "queued"),
        }
        assert client.zscore(keys.SCHEDULE, scheduled) is None
        assert not client.exists(keys.scheduled_message(scheduled), keys.job_payload(queued))
        assert client.zscore(keys.job_index("number-check", "scheduled"), scheduled) is None

        # And once a worker runs, past the scheduled one's time: the batch goes out without the
        # cancelled member, the queued job's message is consumed and skipped
        worker = start_worker(own_env, log_dir=str(tmp_path / "w"))
        try:
            kept = [members[0], members[2]]
            records = producer.wait(kept, until="submitted", timeout_s=30)
            assert all(records[j].reached(JobState.SUBMITTED) for j in kept), records
            batch = _sent(sandbox, phone=member_phones[0])
            assert len(batch) == 1
            sent_phones = str(batch[0]["body"]["phone"]).split(",")
            assert member_phones[2] in sent_phones and member_phones[1] not in sent_phones
            deadline = time.monotonic() + 15
            while _waiting(client) or client.hlen(broker.unacked_key()):
                assert time.monotonic() < deadline, "the cancelled job's message was not consumed"
                time.sleep(0.1)
            time.sleep(2.0)  # past the scheduled one's time
            for job_id in (queued, scheduled, members[1]):
                record = producer.get(job_id)
                assert record.state == JobState.CANCELLED, record
                assert record.attempts == 0 and not record.request
            assert not _sent(sandbox, batch_no=queued) and not _sent(sandbox, batch_no=scheduled)

            # And a job cancelled while `retrying` (throttled: its countdown message held by the
            # worker) is skipped when that message comes
            sandbox.script(NC_PATH, 2206, times=1)
            retrying = producer.number_check(phones=[_phone()], batch=False)
            _wait_state(producer, retrying, {"retrying"}, 15)
            answer = producer.cancel(retrying)
            assert (answer.cancelled, answer.previous) == (True, "retrying"), answer
            time.sleep(4.0)  # past the cooldown: the countdown message came and was skipped
            assert producer.get(retrying).state == JobState.CANCELLED
            assert len(_sent(sandbox, batch_no=retrying)) == 1  # the throttled one only
        finally:
            worker.stop()


def test_what_cannot_be_cancelled_is_refused_and_nothing_changes(producer, sandbox, worker):
    client = producer.redis
    # A submitted call cannot be un-rung
    call = producer.call(phone="8613800138000")
    assert producer.wait([call], timeout_s=30)[call].state == JobState.SUBMITTED
    before = client.hgetall(keys.job(call))
    answer = producer.cancel(call)
    assert (answer.cancelled, answer.previous, answer.reason) == (
        False,
        "submitted",
        cancel.ALREADY_SENT,
    )
    assert client.hgetall(keys.job(call)) == before
    # A finished job, an unknown id
    done = producer.ota_init(phone="8613800138000", user_ip="203.0.113.7")
    assert producer.wait([done], timeout_s=30)[done].state == JobState.COMPLETED
    assert producer.cancel(done).reason == "already finished (completed)"
    assert producer.cancel(uuid.uuid4().hex).reason == cancel.NOT_FOUND
    # The same job twice: the second answer says so and changes nothing
    later = producer.call(phone="8613800138000", delay_s=3600)
    assert producer.cancel(later).cancelled
    before = client.hgetall(keys.job(later))
    again = producer.cancel(later)
    assert (again.cancelled, again.reason) == (False, cancel.ALREADY_CANCELLED)
    assert client.hgetall(keys.job(later)) == before
    assert producer.get(later).cancelled_from == "scheduled"
    # Being sent right now, possibly reached the provider, a submitted callbot list
    store = producer.store
    fakes = {
        "running": ("ota-init", "running", cancel.BEING_SENT),
        "inflight": ("call", "retrying", cancel.MAY_HAVE_REACHED),
        "list": ("callbot-list", "submitted", cancel.CALLBOT_LIST_SUBMITTED),
        "member": ("number-check", "retrying", cancel.BATCH_BUILT),
    }
    try:
        for name, (kind, state, reason) in fakes.items():
            job_id = f"fake-{name}-{uuid.uuid4().hex[:8]}"
            fakes[name] = (kind, state, reason, job_id)  # type: ignore[assignment]
            now = "2026-12-03T00:00:00.000Z"
            client.hset(
                keys.job(job_id),
                mapping={"state": state, "kind": kind, "created_at": now, "updated_at": now},
            )
            client.expire(keys.job(job_id), 60)
            if name == "inflight":
                client.set(keys.inflight(job_id), "1", ex=60)
            if name == "member":  # retrying with the batch it was built into
                client.hset(keys.job(job_id), "coalesce_batch", "b1")
            answer = producer.cancel(job_id, timeout_s=1)
            assert answer.cancelled is False and answer.reason.startswith(reason), name
            assert client.hget(keys.job(job_id), "state") == state
    finally:
        for *_, job_id in fakes.values():
            store.delete(job_id)
            client.delete(keys.inflight(job_id))
    with pytest.raises(Exception) as err:
        producer.cancel("")
    assert getattr(err.value, "field", None) == "job_id"


def _race_once(client, store, canceller, sched, queue, i: int) -> bool:
    """One job made ready to claim (queued, scheduled and due, or a coalesced member), then its
    claim and its cancel at the same moment from two threads. True if the claim won."""
    job_id = f"race{i}"
    mode = ("queued", "scheduled", "member")[i % 3]
    if mode == "queued":
        store.create(job_id, "ota-init", {})
    elif mode == "scheduled":
        pipe = client.pipeline(transaction=True)
        store.create(job_id, "ota-init", {}, pipe=pipe, state=JobState.SCHEDULED)
        pipe.zadd(keys.SCHEDULE, {job_id: 0})
        pipe.set(keys.scheduled_message(job_id), "{}", ex=60)
        pipe.execute()
    else:
        queue.enqueue(group_of(1), [(job_id, f"86139{i:08d}", "{}")], utc_now_iso())
    start = threading.Barrier(2)
    got: dict[str, bool] = {}

    def claim() -> None:
        start.wait()
        if mode == "member":  # the flush's take (coalesce_take.lua)
            taken = queue.take(group_of(1), f"batch{i}", time.time(), utc_now_iso())
            got["claim"] = any(m[0] == job_id for m in taken.members)
            return
        if mode == "scheduled":  # the promotion's confirm, then the worker's claim
            sched.confirm([job_id], utc_now_iso())
        try:
            store.transition(job_id, JobState.RUNNING)
            got["claim"] = True
        except TransitionRefused:
            got["claim"] = False

    def cancel_it() -> None:
        start.wait()
        got["cancel"] = canceller.try_cancel(job_id)[0] == 1

    threads = [threading.Thread(target=claim), threading.Thread(target=cancel_it)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    state = client.hget(keys.job(job_id), "state")
    assert got["claim"] != got["cancel"], (mode, got, state)
    assert state == ("running" if got["claim"] else "cancelled"), (mode, got, state)
    return got["claim"]


def test_cancel_and_claim_race_with_exactly_one_winner(redis_url):
    client = connect(redis_url.rsplit("/", 1)[0] + "/15")
    client.flushdb()
    store = RecordStore(client, ttl_s=60)
    canceller = Canceller(client, 60)
    sched = Schedule(client, 60)
    queue = CoalesceQueue(client, ProducerCoalesceSettings(), ttl_s=60)
    try:
        claims = [_race_once(client, store, canceller, sched, queue, i) for i in range(300)]
        # The race was run, not decided the same way every time.
        assert any(claims) and not all(claims), sum(claims)
    finally:
        client.flushdb()


def test_cli_schedules_and_cancels_with_its_exit_codes(redis_url, worker, sandbox):
    nxjobs = cli_runner(redis_url, REPO)
    client = connect(redis_url)
    # --in: scheduled, status shows run_at
    out = nxjobs("submit", "number-check", "--phone", _phone(), "--no-batch", "--in", "2h")
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.strip()
    status = nxjobs("status", job_id)
    assert "scheduled" in status.stdout and "run_at=" in status.stdout, status.stdout
    # cancel: 0, then 1 with its reason; --json; an unknown id is 1
    assert nxjobs("cancel", job_id).returncode == 0
    again = nxjobs("cancel", job_id, "--json")
    assert again.returncode == 1 and '"already cancelled"' in again.stdout, again.stdout
    mixed = nxjobs("cancel", uuid.uuid4().hex)
    assert mixed.returncode == 1 and "no such job" in mixed.stdout
    # Bad input: exit 2 naming the field, nothing scheduled
    scheduled_before = client.zcard(keys.SCHEDULE)
    for args, field in (
        (["--at", "2026-12-24T09:00:00"], "needs a time zone"),
        (["--at", "Christmas"], "--at"),
        (["--in", "soon"], "--in"),
    ):
        bad = nxjobs("submit", "number-check", "--phone", _phone(), "--no-batch", *args)
        assert bad.returncode == 2 and field in bad.stderr, (args, bad.stderr)
    assert nxjobs("cancel", "not an id").returncode == 2
    assert client.zcard(keys.SCHEDULE) == scheduled_before
    # --at in the past runs now, and the record says so
    past = nxjobs(
        "submit", "number-check", "--phone", _phone(), "--no-batch", "--at", "2020-01-01T00:00Z"
    )
    assert past.returncode == 0, past.stderr
    ran = past.stdout.strip()
    with Producer(redis_url) as producer:
        record = producer.wait([ran], timeout_s=30)[ran]
    assert record.reached(JobState.SUBMITTED) and "already past" in (record.schedule_note or "")
    assert "already past" in nxjobs("status", ran).stdout


def test_a_scheduled_callbot_list_is_started_by_the_provider_on_time_while_we_are_down(
    own_redis, own_env, sandbox, tmp_path
):
    order_id = "sched" + uuid.uuid4().hex[:12]
    # Callbacks go nowhere (a closed port): the sandbox logs each attempt with its body.
    dead_end = f"http://127.0.0.1:{free_port()}/cb"
    worker = start_worker(own_env, log_dir=str(tmp_path / "w"))
    with Producer(own_redis.url) as producer:
        try:
            # Given a list due in 8 s (within the lead: it is created at once, the provider to
            # start it)
            job_id = producer.callbot_list(
                scene_id="123",
                task_name="scheduled",
                contacts=[{"user_phone": _phone(), "order_id": order_id}],
                call_callback_url=dead_end,
                delay_s=8,
            )
            start = int(time.time() + 8)
            record = producer.wait([job_id], until="submitted", timeout_s=30)[job_id]
        finally:
            worker.stop()  # and then no worker is up
    # Then it was created with the provider's scheduled start, and not started by us
    assert record.state == JobState.SUBMITTED, record
    assert record.result["startupAt"] in (start - 1, start) and record.result["taskStatus"] == 1
    assert "startupAt" in (record.schedule_note or "") and record.run_at
    created = [
        r
        for r in sandbox.requests(path="/callcentre/api/v3/createAndCall", limit=100)
        if r["body"].get("userTaskID") == job_id
    ]
    assert len(created) == 1
    setting = created[0]["body"]["taskCreateSetting"]
    assert (setting["startupType"], setting["startupAt"]) == (2, record.result["startupAt"])
    started_by_us = [
        r
        for r in sandbox.requests(path="/callcentre/api/v3/mgrTaskStatus", limit=100)
        if r["body"].get("userTaskID") == job_id
    ]
    assert started_by_us == []

    def dialled() -> list[int]:
        out = []
        for entry in sandbox.callbacks(kind="callbot-call", limit=1000):
            body = json.loads(entry["body"]) if isinstance(entry["body"], str) else entry["body"]
            if body.get("orderID") == order_id:
                out.append(int(body["callInfoDetail"]["callStartTs"]))
        return out

    assert dialled() == [], "dialled before its scheduled start"
    # And the provider dials it at its time, with no worker running
    deadline = time.time() + 20
    while not dialled():
        assert time.time() < deadline, "the provider never started the list"
        time.sleep(0.2)
    assert all(ts >= record.result["startupAt"] for ts in dialled()), dialled()
