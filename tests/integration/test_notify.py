"""Job-end notifications against a real Redis, a real worker of the api2 and notify queues, the
sandbox, and a local HTTP receiver (127.0.0.1, a free port) that answers 500 when told to:
webhook delivery, its signature, retries after a 500 with the same event id, a per-job URL, a
duplicate delivery keeping its id, giving up; the events stream read through a consumer group;
the asyncio producer's wait waking on the job's channel.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from nxjobs import keys, notify, webhooks
from nxjobs.jobs import InvalidJob
from nxjobs.records import JobState
from nxjobs.redis_conn import connect
from nxjobs.store import RecordStore
from workers.devstack import start_worker

SECRET = "whsec-notify-test-0123456789abcdef"
PHONE = "8615800001795"


class Receiver:
    """A webhook receiver: records every request; the next `fail` requests get a 500."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.fail = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    status = 500 if receiver.fail > 0 else 200
                    receiver.fail -= status == 500
                    receiver.requests.append(
                        {
                            "path": self.path,
                            "body": body,
                            "signature": self.headers.get(notify.HEADER),
                            "status": status,
                            "at": time.monotonic(),
                        }
                    )
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def for_job(self, job_id: str) -> list[dict]:
        with self.lock:
            return [r for r in self.requests if json.loads(r["body"])["job"]["id"] == job_id]

    def wait_for(self, job_id: str, n: int, timeout_s: float = 20.0) -> list[dict]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            got = self.for_job(job_id)
            if len(got) >= n:
                return got
            time.sleep(0.05)
        raise AssertionError(f"{len(self.for_job(job_id))} of {n} deliveries for {job_id}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def notify_url(redis_server) -> str:
    return redis_server.url.rsplit("/", 1)[0] + "/10"


@pytest.fixture(scope="module")
def notify_worker(worker_env, notify_url, receiver, tmp_path_factory):
    """A worker of the api2 and notify queues (its dispatcher thread too), POSTing every job's
    end to `receiver`, retrying after 0.2 s, 0.4 s, ..."""
    env = {
        **worker_env,
        "NXJOBS_REDIS_URL": notify_url,
        "NXJOBS_NOTIFY__URL": receiver.url + "/hooks",
        "NXJOBS_NOTIFY__SECRET": SECRET,
        "NXJOBS_NOTIFY__BASE_S": "0.2",
        "NXJOBS_NOTIFY__CAP_S": "1",
        "NXJOBS_NOTIFY__BLOCK_S": "0.2",
    }
    connect(notify_url).flushdb()
    proc = start_worker(
        env, queues="api2,notify", concurrency=2, log_dir=str(tmp_path_factory.mktemp("notify"))
    )
    # The dispatcher's group exists once its thread has started.
    client = connect(notify_url)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if client.exists(keys.EVENTS) and client.xinfo_groups(keys.EVENTS):
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the notify dispatcher did not create its consumer group")
    yield proc
    proc.stop()


@pytest.fixture()
def jobs(notify_url):
    from nxjobs.producers import Producer

    with Producer(notify_url) as p:
        yield p


def test_a_finished_job_is_posted_signed_and_retried_after_500s_with_one_event_id(
    sandbox, notify_worker, receiver, jobs, notify_url
):
    # Given a receiver that answers 500 twice
    receiver.fail = 2
    # When a job completes
    job_id = jobs.ota_init(phone=PHONE, user_ip="203.0.113.7")
    assert jobs.wait([job_id], until="completed", timeout_s=20)[job_id].state == "completed"
    # Then it is POSTed three times: two 500s, then a 200, backing off in between
    got = receiver.wait_for(job_id, 3)
    assert [r["status"] for r in got] == [500, 500, 200]
    assert got[2]["at"] - got[1]["at"] >= 0.3 and got[1]["at"] - got[0]["at"] >= 0.15
    # Every attempt is the same bytes, the same event id, and its signature verifies
    assert len({r["body"] for r in got}) == 1
    events = [notify.verify(r["body"], r["signature"], SECRET) for r in got]
    event = events[0]
    assert event["id"].startswith("evt_") and {e["id"] for e in events} == {event["id"]}
    assert event["type"] == "job.completed" and isinstance(event["created"], int)
    assert event["job"]["id"] == job_id and event["job"]["kind"] == "ota-init"
    assert event["job"]["state"] == "completed" and event["job"]["error"] is None
    assert set(event["job"]) == {"id", "kind", "state", "result", "error"}
    assert event["job"]["result"] == jobs.get(job_id).result
    assert {r["path"] for r in got} == {"/hooks"}
    # And a wrong secret does not verify it
    with pytest.raises(notify.SignatureError):
        notify.verify(got[0]["body"], got[0]["signature"], "not-the-secret")
    # Nothing of the delivery is left once it succeeded; the outcomes are counted
    client = connect(notify_url)
    delivery_id = event["id"]
    deadline = time.monotonic() + 5
    while client.exists(keys.notify_delivery(delivery_id)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not client.exists(keys.notify_delivery(delivery_id))
    assert client.zscore(keys.NOTIFY_DUE, delivery_id) is None
    counters = client.hgetall(keys.METRICS_COUNTERS)
    assert int(counters["notify|retry"]) >= 2 and int(counters["notify|delivered"]) >= 1
    # and the secret is in no key the deployment keeps
    for key in client.scan_iter(count=1000):
        if client.type(key) == "hash":
            assert SECRET not in json.dumps(client.hgetall(key))


def test_a_job_of_its_own_url_gets_that_post_too_with_the_same_event_id(
    sandbox, notify_worker, receiver, jobs
):
    # Given a job with its own notify_url (with a query string), and a receiver failing once
    receiver.fail = 1
    job_id = jobs.wa_calling(
        business_phone="6581234567", notify_url=receiver.url + "/mine?token=t0ken"
    )
    assert jobs.get(job_id).notify_url == receiver.url + "/mine?token=t0ken"
    # When it ends, then both URLs get the event (one of them after a retry), with one id
    got = receiver.wait_for(job_id, 3)
    delivered = sorted(r["path"] for r in got if r["status"] == 200)
    assert delivered == ["/hooks", "/mine?token=t0ken"]
    assert len({json.loads(r["body"])["id"] for r in got}) == 1
    for r in got:
        notify.verify(r["body"], r["signature"], SECRET)
    # And the worker's log names the retried delivery without the URL's query string or the
    # secret
    time.sleep(0.5)
    log = notify_worker.logfile.read_text()
    retried = [line for line in log.splitlines() if "again in" in line and job_id not in line]
    assert any("/mine?..." in line or "/hooks" in line for line in retried), retried
    assert "t0ken" not in log and SECRET not in log


def test_a_notify_worker_without_the_secret_does_not_start(worker_env, notify_url):
    import subprocess
    import sys

    env = {k: v for k, v in worker_env.items() if not k.startswith("NXJOBS_NOTIFY__")}
    env["NXJOBS_REDIS_URL"] = notify_url
    # A notify worker with no secret at all
    out = subprocess.run(
        [sys.executable, "-m", "workers", "worker", "-Q", "notify"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "NXJOBS_NOTIFY__SECRET" in out.stderr
    # Any worker with a notify URL and no secret
    env["NXJOBS_NOTIFY__URL"] = "https://app.example/hook"
    out = subprocess.run(
        [sys.executable, "-m", "workers", "worker", "-Q", "api2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "NXJOBS_NOTIFY__SECRET" in out.stderr


def test_a_bad_notify_url_is_refused_and_nothing_is_stored(jobs, notify_url):
    client = connect(notify_url)
    before = client.dbsize()
    for url in ("ftp://example.com/x", "example.com/hook", "https://", "x" * 3000):
        with pytest.raises(InvalidJob) as err:
            jobs.ota_init(phone=PHONE, user_ip="203.0.113.7", notify_url=url)
        assert err.value.field == "notify_url"
        with pytest.raises(InvalidJob) as err:
            jobs.number_check(phones=[PHONE], notify_url=url)  # the coalesced path
        assert err.value.field == "notify_url"
    assert client.dbsize() == before


def test_the_aio_producer_enqueues_and_waits_for_the_end(sandbox, notify_worker, notify_url):
    from nxjobs.aio import Producer

    async def run():
        async with Producer(notify_url) as jobs:
            job_id = await jobs.ota_init(phone=PHONE, user_ip="203.0.113.7")
            records = await jobs.wait([job_id], until="completed", timeout_s=20)
            assert (await jobs.get(job_id)).state == "completed"
            return records[job_id]

    record = asyncio.run(run())
    assert record.state == JobState.COMPLETED and record.result


# ---- without a worker: the dispatcher, the stream and aio wait on their own database ----


@pytest.fixture()
def db(redis_server):
    client = connect(redis_server.url.rsplit("/", 1)[0] + "/8")
    client.flushdb()
    yield client
    client.flushdb()


def _failed_job(store: RecordStore, job_id: str) -> None:
    store.create(job_id, "ota-init", {"phone": "86158****795"})
    store.transition(job_id, JobState.FAILED, error={"code": "x", "message": "m", "retryable": 0})


def test_a_redelivered_event_keeps_its_id(db):
    # Given a dispatcher that sent a delivery and died before acknowledging its event
    webhooks.ensure_group(db)
    store = RecordStore(db)
    _failed_job(store, "j-dup")
    sent: list[tuple[str, str]] = []

    def send_then_die(delivery_id: str) -> None:
        sent.append((delivery_id, db.hget(keys.notify_delivery(delivery_id), "body")))
        raise RuntimeError("killed")

    policy = webhooks.Policy(claim_idle_s=0.1, block_s=0.1)
    first = webhooks.Dispatcher(db, send_then_die, policy, consumer="a", url="http://h/x")
    with pytest.raises(RuntimeError):
        first.run_once(block=False)
    # When another dispatcher takes the event over once it is stale
    time.sleep(0.15)
    second = webhooks.Dispatcher(
        db,
        lambda d: sent.append((d, db.hget(keys.notify_delivery(d), "body"))),
        policy,
        consumer="b",
        url="http://h/x",
    )
    report = second.run_once(block=False)
    # Then the event is delivered again, with the same id and body: receivers dedupe by it
    assert report["events"] == 1 and len(sent) == 2
    assert sent[0] == sent[1]
    assert json.loads(sent[0][1])["id"] == sent[0][0]
    assert json.loads(sent[0][1])["type"] == "job.failed"
    # and it is acknowledged now: a third pass has nothing
    assert second.run_once(block=False)["events"] == 0
    assert db.xpending(keys.EVENTS, keys.NOTIFY_GROUP)["pending"] == 0


def test_a_delivery_whose_message_was_lost_is_sent_again(db):
    # Given a delivery whose message never reached a notify worker
    webhooks.ensure_group(db)
    _failed_job(RecordStore(db), "j-lost")
    sent: list[str] = []
    policy = webhooks.Policy(connect_timeout_s=0.01, read_timeout_s=0.01, lost_margin_s=0.1)
    dispatcher = webhooks.Dispatcher(db, sent.append, policy, consumer="a", url="http://h/x")
    dispatcher.run_once(block=False)
    assert len(sent) == 1
    # When its POST's timeouts and the queue margin have passed with no outcome
    assert dispatcher.run_once(block=False)["retries"] == 0
    time.sleep(0.2)
    # Then the dispatcher sends it again, once, under the same id
    assert dispatcher.run_once(block=False)["retries"] == 1
    assert sent == [sent[0], sent[0]]
    assert db.zscore(keys.NOTIFY_DUE, sent[0]) is not None  # armed again for the resend


def test_a_delivery_past_its_max_age_is_given_up_and_counted(db, receiver):
    webhooks.ensure_group(db)
    _failed_job(RecordStore(db), "j-old")
    made: list[str] = []
    policy = webhooks.Policy(base_s=0.01, max_age_s=0.5)
    webhooks.Dispatcher(db, made.append, policy, consumer="a", url=receiver.url + "/old").run_once(
        block=False
    )
    (delivery_id,) = made
    receiver.fail = 100
    try:
        outcome = webhooks.deliver(db, delivery_id, SECRET, policy)
        assert outcome.status == "retry" and db.zscore(keys.NOTIFY_DUE, delivery_id) is not None
        # When it keeps failing past its max age
        outcome = webhooks.deliver(db, delivery_id, SECRET, policy, now=lambda: time.time() + 1)
    finally:
        receiver.fail = 0
    # Then it is dropped and counted
    assert outcome.status == "gave_up"
    assert not db.exists(keys.notify_delivery(delivery_id))
    assert db.zscore(keys.NOTIFY_DUE, delivery_id) is None
    assert db.hget(keys.METRICS_COUNTERS, "notify|gave_up") == "1"
    assert webhooks.deliver(db, delivery_id, SECRET, policy).status == "gone"
    # and the exporter shows the outcomes and the retries waiting
    from prometheus_client import generate_latest
    from prometheus_client.core import CollectorRegistry

    from workers.exporter import Exporter

    db.zadd(keys.NOTIFY_DUE, {"evt_other": time.time() + 60})
    registry = CollectorRegistry()
    registry.register(Exporter(db, stall_s=300))
    text = generate_latest(registry).decode()
    assert 'nxjobs_notify_posts_total{outcome="gave_up"} 1.0' in text
    assert 'nxjobs_notify_posts_total{outcome="retry"} 1.0' in text
    assert "nxjobs_notify_retries_due 1.0" in text


def test_applications_read_job_ends_through_a_consumer_group_and_the_stream_is_bounded(db):
    # Given an application's consumer group
    db.xgroup_create(keys.EVENTS, "billing", id="$", mkstream=True)
    store = RecordStore(db)
    # When a job ends (and one that is only claimed does not add an event)
    _failed_job(store, "j-stream")
    store.create("j-live", "ota-init", {})
    store.transition("j-live", JobState.RUNNING)
    # Then the group reads one entry for it, with its id, kind, state and time
    reply = db.xreadgroup("billing", "app-1", {keys.EVENTS: ">"}, count=10)
    ((_stream, entries),) = reply
    assert len(entries) == 1
    entry_id, fields = entries[0]
    assert fields["id"] == "j-stream" and fields["kind"] == "ota-init"
    assert fields["state"] == "failed" and abs(int(fields["at"]) / 1000 - time.time()) < 5
    assert db.xack(keys.EVENTS, "billing", entry_id) == 1
    # And the stream keeps about its maxlen entries
    webhooks.set_maxlen(db, 1000)
    for n in range(2500):
        _failed_job(store, f"j-{n}")
    assert 1000 <= db.xlen(keys.EVENTS) < 1200


def test_aio_wait_wakes_on_the_move_without_polling(db, redis_server):
    from nxjobs.aio import Producer

    url = redis_server.url.rsplit("/", 1)[0] + "/8"
    store = RecordStore(db)
    store.create("j-aio", "ota-init", {})

    async def run():
        async with Producer(url) as jobs:
            reads = []
            read = jobs.get_many

            async def counted(ids):
                reads.append(list(ids))
                return await read(reads[-1])

            jobs.get_many = counted  # counts the waiter's reads of records
            waiting = asyncio.create_task(jobs.wait(["j-aio"], until="submitted", timeout_s=10))
            await asyncio.sleep(0.2)
            # Nothing moves for a second: the waiter read the record once, and nothing since
            await asyncio.sleep(1.0)
            assert reads == [["j-aio"]]
            # Then the job fails: the waiter wakes at once
            moved = time.monotonic()
            await asyncio.to_thread(
                store.transition,
                "j-aio",
                JobState.FAILED,
                error={"code": "x", "message": "m", "retryable": 0},
            )
            records = await waiting
            assert reads == [["j-aio"], ["j-aio"]]  # one re-read, on the move
            return records, time.monotonic() - moved

    records, woke_after_s = asyncio.run(run())
    assert records["j-aio"].state == JobState.FAILED
    assert woke_after_s < 0.15
