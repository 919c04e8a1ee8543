"""The metrics that used to miss part of the story, on a real Redis: the rate-limit waits jobs
actually served (per hashed credential), provider latency per HTTP request apart from the whole
attempt, and submit -> completion timed wherever a job completes (the receiver, reconciliation,
or the submit step itself when every callback came first)."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
import redis
import requests

from nxjobs import keys, metrics
from nxjobs.callbacks import events
from nxjobs.callbacks.ledger import Ledger
from nxjobs.callbacks.reconcile import Clients, Policy, Reconciler
from nxjobs.client.errors import TransportError
from nxjobs.client.transport import Transport
from nxjobs.records import JobState
from nxjobs.redis_conn import connect
from nxjobs.store import RecordStore
from sandbox import accounts
from tests.integration.test_operations import samples, start_exporter
from workers.devstack import free_port, start_worker

pytestmark = pytest.mark.integration

WAIT_S = 20


def _db_url(redis_url: str, db: int) -> str:
    return redis_url.rsplit("/", 1)[0] + f"/{db}"


@pytest.fixture()
def db(redis_url):
    """A Redis db of this module's own, empty for each test."""
    client = connect(_db_url(redis_url, 11))
    client.flushdb()
    yield client
    client.close()


def cell(client, field: str) -> float:
    return float(client.hget(keys.METRICS_HISTOGRAMS, field) or 0)


# ---- (a) rate-limit waits served, per credential ----------------------------------------------


def test_a_job_sent_back_for_its_slot_shows_its_wait_under_the_hashed_credential(
    worker_env, sandbox, redis_url, tmp_path
):
    # Given a worker on its own db whose api2 credential allows one request a second
    env = {**worker_env, "NXJOBS_REDIS_URL": _db_url(redis_url, 12), "NXJOBS_API2__RATE_PER_S": "1"}
    connect(env["NXJOBS_REDIS_URL"]).flushdb()
    worker = start_worker(env, queues="api2", concurrency=1, log_dir=str(tmp_path / "w"))
    exporter, url = start_exporter(env, str(tmp_path / "e"))
    try:
        from nxjobs.producers import Producer

        # When two OTA inits arrive together, so the second must wait about a second for its slot
        with Producer(env["NXJOBS_REDIS_URL"]) as producer:
            ids = [
                producer.ota_init(phone="8615800001795", user_ip="203.0.113.7") for _ in range(2)
            ]
            records = producer.wait(ids, until="submitted", timeout_s=WAIT_S)
        assert all(r.reached(JobState.SUBMITTED) for r in records.values()), records
        assert sum(r.waits for r in records.values()) >= 1
        text = requests.get(f"{url}/metrics", timeout=10).text
        got = samples(text)
    finally:
        worker.stop()
        exporter.stop()

    def value(name: str, label: str) -> float:
        return sum(v for lbl, v in got.get(name, []) if label in lbl)

    # Then the wait it served is a histogram observation under the hashed credential
    cred = f'credential="{metrics.credential_label("api2:" + accounts.API2_ACCESS_KEY)}"'
    assert value("nxjobs_ratelimit_wait_seconds_count", cred) >= 1
    assert value("nxjobs_ratelimit_wait_seconds_sum", cred) >= 0.5
    # and the wait a new request would have now is the renamed gauge
    assert "nxjobs_ratelimit_next_slot_seconds" in got
    # And each provider request is one latency observation, each attempt one duration
    assert value("nxjobs_provider_latency_seconds_count", 'kind="ota-init"') == len(
        sandbox.requests(path="/api/ota/init")
    )
    assert value("nxjobs_attempt_duration_seconds_count", 'kind="ota-init"') == 2
    # And the access key itself appears nowhere
    assert accounts.API2_ACCESS_KEY not in text


# ---- (b) provider latency is the HTTP request ---------------------------------------------------


class _SlowHandler(BaseHTTPRequestHandler):
    """POST /sleep/<ms> answers after that long; /status/<code> answers that status at once."""

    disable_nagle_algorithm = True  # TCP_NODELAY: small answers leave at once, timings stay exact

    def log_message(self, format, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        what, _, number = self.path.strip("/").partition("/")
        status = int(number) if what == "status" else 200
        if what == "sleep":
            time.sleep(int(number) / 1000)
        body = b'{"code":0}'
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass  # the client gave up (read timeout)


@pytest.fixture(scope="module")
def slow_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SlowHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_every_request_is_timed_also_when_it_fails(slow_server):
    transport = Transport(connect_timeout_s=1, read_timeout_s=0.5)
    post = lambda url: transport.post(url, data=b"{}", headers={"Content-Type": "application/json"})  # noqa: E731
    try:
        # Given an answer after 200 ms, a 503, a read timeout and a refused connection
        assert post(f"{slow_server}/sleep/200").latency_s >= 0.2
        codes = []
        for url in (
            f"{slow_server}/status/503",
            f"{slow_server}/sleep/900",
            f"http://127.0.0.1:{free_port()}/",
        ):
            with pytest.raises(TransportError) as err:
                post(url)
            codes.append(err.value.code)
        assert codes == ["http_503", "read_timeout", "connection_error"]
        # Then each one was timed, in order, the timeout for as long as it waited
        taken = transport.take_latencies()
        assert len(taken) == 4
        assert taken[0] >= 0.2 and taken[2] >= 0.5
        # And taking them clears them; another thread's requests are its own
        assert transport.take_latencies() == []
        other = threading.Thread(target=post, args=(f"{slow_server}/sleep/10",))
        other.start()
        other.join()
        assert transport.take_latencies() == []
    finally:
        transport.close()


def test_an_attempt_reports_its_requests_apart_from_the_whole_attempt(db, slow_server, caplog):
    from nxjobs.attempts import report

    transport = Transport(connect_timeout_s=1, read_timeout_s=2)
    svc = SimpleNamespace(redis=db, transport=transport)
    try:
        # Given a request left over from an earlier job on this thread
        transport.post(f"{slow_server}/sleep/10", data=b"{}", headers={})
        report.take_request_latencies(svc)  # what the start of an attempt does
        # When an attempt sends two requests (200 ms and 100 ms) and takes 200 ms more for itself
        started = time.monotonic()
        for ms in (200, 100):
            transport.post(f"{slow_server}/sleep/{ms}", data=b"{}", headers={})
        time.sleep(0.2)
        with caplog.at_level(logging.INFO, logger="nxjobs.jobs"):
            report.log_attempt(svc, "job-latency", "ota-init", 1, "submitted", "0", started)
    finally:
        transport.close()
    # Then provider latency has exactly those two requests, and the attempt its own duration
    assert cell(db, "provider_latency|ota-init|count") == 2
    assert 0.3 <= cell(db, "provider_latency|ota-init|sum") < 0.5
    assert cell(db, "attempt_duration|ota-init|count") == 1
    assert cell(db, "attempt_duration|ota-init|sum") >= 0.5
    # And the log line says both: the provider's part and the whole attempt
    line = next(r for r in caplog.records if r.getMessage().startswith("job=job-latency"))
    assert 300 <= line.latency_ms < 500 and line.attempt_ms >= 500
    assert f"latency_ms={line.latency_ms} attempt_ms={line.attempt_ms}" in line.getMessage()


def test_an_attempt_in_a_process_without_a_transport_does_not_build_one(db):
    from config.settings import Settings
    from nxjobs.attempts import report
    from tasks.services import Services

    svc = Services(Settings(redis_url=_url_of(db)))
    # When an attempt that sent nothing (an invalid payload) is reported
    report.log_attempt(
        svc, "job-none", "ota-init", 1, "failed", "invalid_payload", time.monotonic()
    )
    # Then it is counted, with no provider latency, and no HTTP pool was opened for it
    assert cell(db, "attempt_duration|ota-init|count") == 1
    assert cell(db, "provider_latency|ota-init|count") == 0
    assert "transport" not in svc.__dict__


def _url_of(client) -> str:
    kw = client.connection_pool.connection_kwargs
    return f"redis://{kw['host']}:{kw['port']}/{kw['db']}"


# ---- (c) submit -> completion, wherever a job completes -----------------------------------------


def _record(db, kind: str, *, needed: str, submitted_ago_s: float) -> str:
    job_id = f"job-{uuid.uuid4().hex[:12]}"
    db.hset(
        keys.job(job_id),
        mapping={
            "kind": kind,
            "state": "completed",
            "callbacks_needed": needed,
            "submitted_at": f"{time.time() - submitted_ago_s:.3f}",
        },
    )
    return job_id


def test_a_completion_is_observed_once_and_only_for_jobs_with_callbacks(db):
    # Given a number check completed 42 s after submission, and an OTA init (no callbacks)
    nc = _record(db, "number-check", needed="2", submitted_ago_s=42)
    ota = _record(db, "ota-init", needed="0", submitted_ago_s=1)
    # When each completion is reported twice (say, receiver and reconciliation both saw it)
    for _ in range(2):
        metrics.observe_completion(db, nc)
        metrics.observe_completion(db, ota)
    # Then the number check is one observation of about 42 s, the OTA init none
    assert cell(db, "callback_delay|number-check|count") == 1
    assert 41 <= cell(db, "callback_delay|number-check|sum") <= 44
    assert cell(db, "callback_delay|ota-init|count") == 0
    # And a job whose record is gone is not observed, nor left behind as a stray key
    metrics.observe_completion(db, "job-expired")
    assert not db.exists(keys.job("job-expired"))


def test_observing_a_completion_never_raises(db):
    down = redis.Redis(port=free_port(), socket_connect_timeout=0.2, decode_responses=True)
    metrics.observe_completion(down, "job-x")  # Redis unreachable: logged, not raised
    db.hset(
        keys.job("job-bad"),
        mapping={"kind": "call", "submitted_at": "not a time", "callbacks_needed": "1"},
    )
    metrics.observe_completion(db, "job-bad")
    assert cell(db, "callback_delay|call|count") == 0


def _submitted_call(store: RecordStore) -> str:
    job_id = f"call-{uuid.uuid4().hex[:12]}"
    store.create(job_id, "call", {"phone": "861******8000"})
    store.transition(job_id, JobState.RUNNING, incr=["attempts"])
    return job_id


def test_reconciliation_completing_a_job_observes_its_callback_delay(db):
    # Given a call submitted and waiting for its CDR, which never came
    store, ledger = RecordStore(db), Ledger(db)
    job_id = _submitted_call(store)
    assert (
        store.transition(job_id, JobState.SUBMITTED, result={"orderid": job_id}).state
        == "submitted"
    )
    # When reconciliation runs past its deadline (30 min) and the CDR lookup finds the call
    later = time.time() + 3600
    agent = SimpleNamespace(
        cdr_by_orderid=lambda orderids: [{"orderid": o, "id": 7} for o in orderids]
    )
    report = Reconciler(
        store,
        ledger,
        Policy(deadlines_s={}, give_up_s={}),
        Clients(agent=agent),
        clock=lambda: later,
    ).run("agent")
    # Then the job is completed, and its submit -> completion time observed once
    assert report.counts["completed"] == 1 and store.get(job_id).state == JobState.COMPLETED
    assert cell(db, "callback_delay|call|count") == 1
    assert 3595 <= cell(db, "callback_delay|call|sum") <= 3605


def test_a_submit_that_completes_the_job_says_so(db):
    # Given a call whose CDR arrived while it was still running
    store, ledger = RecordStore(db), Ledger(db)
    job_id = _submitted_call(store)
    cdr = events.from_dict(events.CDR, {"orderid": job_id, "sessionid": "s-1"})
    assert ledger.apply(cdr).state == "running"
    # When its submit is recorded, Then the transition reports the job completed
    assert (
        store.transition(job_id, JobState.SUBMITTED, result={"orderid": job_id}).state
        == "completed"
    )
    assert store.get(job_id).state == JobState.COMPLETED


def test_a_job_completed_at_submit_by_early_callbacks_is_observed_by_the_worker(
    cb_producer, cb_sandbox, callbacks_worker
):
    r = cb_producer.redis
    before = cell(r, "callback_delay|number-check|count")
    # Given the provider answers the submit 1 s late but sends the DRs at once
    cb_sandbox.configure(
        slow_rate=1.0, slow_seconds=1.0, callback_delay_s=0.0, callback_jitter_s=0.0
    )
    job_id = cb_producer.number_check(phones=["8613800138000", "6591234567"])
    ota = cb_producer.ota_init(phone="8615800001795", user_ip="203.0.113.7")
    early = cb_producer.wait([job_id], until="completed", timeout_s=0.8)[job_id]
    records = cb_producer.wait([job_id, ota], until="completed", timeout_s=WAIT_S)
    # When the submit step completes it (the receiver only ever saw it running)
    assert early.state == JobState.RUNNING and records[job_id].state == JobState.COMPLETED
    # Then the worker observed its completion; the OTA init, final at submit, was not observed
    assert r.hget(keys.job(job_id), metrics.COMPLETION_MARKER) == "1"
    assert cell(r, "callback_delay|number-check|count") >= before + 1
    assert records[ota].state == JobState.COMPLETED
    assert r.hget(keys.job(ota), metrics.COMPLETION_MARKER) is None
