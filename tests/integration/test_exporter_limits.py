"""The exporter's HTTP server against slow, idle and concurrent clients, over real sockets:
a connection that sends nothing or trickles is closed at the read deadline, idle connections
never cost a thread each (a fixed pool, then a 503 and close), and concurrent scrapes share
one computation."""

from __future__ import annotations

import os
import select
import socket
import threading
import time
from pathlib import Path

import pytest
import redis
import requests

from nxjobs.redis_conn import connect
from nxjobs.store import RecordStore
from tests.integration.test_operations import samples, start_exporter
from workers.devstack import ServiceProcess
from workers.exporter import DEFAULT_READ_TIMEOUT_S, Exporter, SingleFlight, make_server

pytestmark = pytest.mark.integration

DB = 14


@pytest.fixture()
def db_url(redis_url) -> str:
    url = redis_url.rsplit("/", 1)[0] + f"/{DB}"
    client = connect(url)
    client.flushdb()
    client.close()
    return url


def start(env_url: str, log_dir: Path, *args: str) -> tuple[ServiceProcess, str, tuple[str, int]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NXJOBS_")}
    env["NXJOBS_REDIS_URL"] = env_url
    proc, url = start_exporter(env, str(log_dir), *args)
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return proc, url, (host, int(port))


def closed_within(sock: socket.socket, timeout_s: float) -> bool:
    """True once the peer closed `sock` (EOF or reset) within timeout_s; False if still open."""
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([sock], [], [], left)
        if not readable:
            continue
        try:
            if sock.recv(4096) == b"":
                return True
        except OSError:
            return True
    return False


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def test_silent_and_trickling_connections_are_closed_at_the_default_read_deadline(db_url, tmp_path):
    # Given the exporter as shipped (default read deadline, a few seconds)
    assert 1 <= DEFAULT_READ_TIMEOUT_S <= 10
    proc, url, addr = start(db_url, tmp_path)
    silent = socket.create_connection(addr, timeout=5)
    trickle = socket.create_connection(addr, timeout=5)
    try:
        started = time.monotonic()
        # When one client sends nothing and another sends its request a byte every 0.25 s
        request = b"GET /metrics HTTP/1.0\r\nX-Slow: " + b"a" * 200
        closed = {}
        for i in range(int((DEFAULT_READ_TIMEOUT_S + 5) / 0.25)):  # bounded: well past the deadline
            for name, sock in (("silent", silent), ("trickle", trickle)):
                if name not in closed and closed_within(sock, 0.0 if name == "trickle" else 0.01):
                    closed[name] = time.monotonic() - started
            if "trickle" not in closed:
                try:
                    trickle.send(request[i % len(request) : i % len(request) + 1])
                except OSError:
                    closed["trickle"] = time.monotonic() - started
            if len(closed) == 2:
                break
            time.sleep(0.25)
        # Then both are closed once the deadline passes, the trickler despite its steady bytes
        assert set(closed) == {"silent", "trickle"}, closed
        for name, after in closed.items():
            assert DEFAULT_READ_TIMEOUT_S - 0.5 <= after <= DEFAULT_READ_TIMEOUT_S + 2.5, (
                name,
                after,
            )
        # And the exporter still serves
        assert requests.get(url + "/livez", timeout=5).status_code == 200
    finally:
        silent.close()
        trickle.close()
        proc.stop()


def test_many_idle_connections_use_a_fixed_pool_and_the_rest_are_refused_quickly(db_url, tmp_path):
    if not Path("/proc/self/task").is_dir():
        pytest.skip("needs /proc to count the exporter's threads")
    # Given an exporter with 4 handler threads, 4 waiting places and a 2 s read deadline
    proc, url, addr = start(
        db_url, tmp_path, "--threads", "4", "--pending", "4", "--read-timeout-s", "2"
    )
    idle: list[socket.socket] = []
    try:
        before = thread_count(proc.proc.pid)
        # When 150 clients connect and send nothing
        idle = [socket.create_connection(addr, timeout=5) for _ in range(150)]
        time.sleep(0.5)
        # Then the process has no more threads than before
        assert thread_count(proc.proc.pid) <= before
        # and all but the 8 it can hold were answered 503 and closed at once
        refused = 0
        for sock in idle:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                data = sock.recv(4096)
                assert data == b"" or data.startswith(b"HTTP/1.0 503 "), data
                refused += 1
        assert refused >= 150 - 8 - 2, refused  # a few may not have been accepted yet
        # And once the deadline passed for the held ones, it serves again, having counted the
        # refusals
        for sock in idle:
            assert closed_within(sock, 2 + 2 + 3), "a held idle connection outlived its deadline"
        resp = requests.get(url + "/metrics", timeout=10)
        assert resp.status_code == 200
        ((_, counted),) = samples(resp.text)["nxjobs_exporter_connections_refused_total"]
        assert counted >= refused - 2
        assert thread_count(proc.proc.pid) <= before
    finally:
        for sock in idle:
            sock.close()
        proc.stop()


@pytest.fixture()
def in_process(db_url):
    """The exporter's server in a thread of this process, on its own Redis db."""
    exporter = Exporter(connect(db_url), stall_s=300)
    server = make_server(exporter, "127.0.0.1", 0, threads=16, pending=4, read_timeout_s=5)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield exporter, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
        exporter.redis.close()


def wait_until(fn, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if fn():
            return True
        time.sleep(0.01)
    return fn()


def test_concurrent_scrapes_share_one_answer(in_process):
    exporter, url = in_process
    RecordStore(exporter.redis).create("one", "call", {})
    # Given job counts that do not come back until the test says so
    release = threading.Event()
    real_counts = exporter.jobs_by_state
    calls = []

    def held_counts():
        calls.append(1)
        assert release.wait(20), "the test never released the job counts"
        return real_counts()

    exporter.jobs_by_state = held_counts
    # When 10 scrapes arrive while the first one is computing
    n = 10
    results: list[requests.Response | BaseException] = []

    def scrape():
        try:
            results.append(requests.get(url + "/metrics", timeout=30))
        except BaseException as exc:  # reported by the assertions below
            results.append(exc)

    threads = [threading.Thread(target=scrape) for _ in range(n)]
    for t in threads:
        t.start()
    try:
        assert wait_until(lambda: exporter.metrics_flight.waiting == n - 1, 10), (
            exporter.metrics_flight.waiting
        )
    finally:
        release.set()
        for t in threads:
            t.join(30)
    # Then Redis was read once, and every scrape got its answer
    assert len(calls) == 1
    assert len(results) == n and all(
        isinstance(r, requests.Response) and r.status_code == 200 for r in results
    ), results
    bodies = {r.text for r in results}
    assert len(bodies) == 1
    got = samples(bodies.pop())
    assert "nxjobs_exporter_scans_total" not in got
    assert ('{kind="call",state="queued"}', 1.0) in got["nxjobs_jobs"]
    # And a scrape after it reads anew (shared while running, never a stale answer)
    assert requests.get(url + "/metrics", timeout=10).status_code == 200
    assert len(calls) == 2


def test_a_failed_shared_scrape_fails_every_waiter_and_the_next_one_retries():
    flight: SingleFlight[int] = SingleFlight(wait_s=10)
    started, release = threading.Event(), threading.Event()
    calls = []

    def failing():
        calls.append(1)
        started.set()
        assert release.wait(10)
        raise redis.ConnectionError("down")

    errors: list[BaseException] = []

    def call(fn):
        try:
            flight.do(fn)
        except BaseException as exc:
            errors.append(exc)

    leader = threading.Thread(target=call, args=(failing,))
    leader.start()
    assert started.wait(10)
    followers = [threading.Thread(target=call, args=(failing,)) for _ in range(3)]
    for t in followers:
        t.start()
    assert wait_until(lambda: flight.waiting == 3, 10)
    release.set()
    for t in (leader, *followers):
        t.join(10)
    assert (
        len(calls) == 1
        and len(errors) == 4
        and all(isinstance(e, redis.ConnectionError) for e in errors)
    )
    assert flight.do(lambda: 7) == 7
