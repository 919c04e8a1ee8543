"""The sandbox's callback dispatcher over real HTTP: what it sends, signing,
retries of unacknowledged callbacks, drops, duplicates and reordering.

No Redis: a recording HTTP server in a thread stands in for our receiver.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from nxjobs.callbacks.verify import check_callbot
from sandbox import accounts, dispatch
from sandbox.dispatch import CallbackDispatcher
from sandbox.server import start_in_thread
from sandbox.state import SandboxConfig, SandboxState
from tests.integration.test_sandbox import NUMBER_CHECK, post_api2, post_callbot

FAST = dict(
    callback_delay_s=0.0, callback_jitter_s=0.0, callback_retry_s=0.1, callback_retry_window_s=5.0
)


class Recorder:
    """An HTTP server recording every POST; answers `statuses` in turn, then 200."""

    def __init__(self):
        self.received: list[dict] = []
        self.statuses: list[int] = []
        self.lock = threading.Lock()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with recorder.lock:
                    recorder.received.append(
                        {
                            "path": self.path,
                            "headers": {k.lower(): v for k, v in self.headers.items()},
                            "raw": body,
                        }
                    )
                    status = recorder.statuses.pop(0) if recorder.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def wait_for(self, count: int, timeout_s: float = 5.0) -> list[dict]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.received) >= count:
                    return list(self.received)
            time.sleep(0.02)
        with self.lock:
            return list(self.received)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def sandbox():
    with start_in_thread() as handle:
        yield handle


@pytest.fixture
def sb(sandbox):
    sandbox.state.reset(config=True)
    sandbox.state.configure(**FAST)
    return sandbox


@pytest.fixture
def recorder():
    r = Recorder()
    yield r
    r.close()


def _number_check(sb, recorder, phones):
    with requests.Session() as http:
        body = {
            "phone": ",".join(phones),
            "batchNo": "B1",
            "appkey": accounts.API2_APPKEY,
            "drUrl": recorder.url + "/dr/secret-token",
        }
        resp = post_api2(http, sb.url, NUMBER_CHECK, body)
    assert resp.json()["code"] == 0
    return resp.json()["data"]


def test_one_dr_per_accepted_number_to_the_dr_url(sb, recorder):
    # Given a number check of three numbers, one of them not a real number
    data = _number_check(sb, recorder, ["8613800138000", "6591234567", "9991234567"])
    # When the callbacks arrive
    got = recorder.wait_for(2)
    time.sleep(0.2)
    # Then exactly the two accepted numbers got a DR each, at the drUrl, with per-number ids
    assert len(recorder.received) == 2
    bodies = [json.loads(r["raw"]) for r in got]
    assert {r["path"] for r in got} == {"/dr/secret-token"}
    assert sorted(b["phone"] for b in bodies) == ["6591234567", "8613800138000"]
    assert all(
        b["requestId"].startswith(data["requestId"] + "-") and b["batchNo"] == "B1" for b in bodies
    )


def test_callbot_callbacks_are_signed_the_way_our_receiver_checks(sb, recorder):
    # Given a started task with callback URLs for calls, orders and the task
    with requests.Session() as http:
        body = {
            "productID": "callbot",
            "userTaskID": "T1",
            "sceneID": "s",
            "taskCreateSetting": {"taskName": "t", "taskCallbackUrl": recorder.url + "/task"},
            "callInfoList": {
                "callCallbackUrl": recorder.url + "/call",
                "orderCallbackUrl": recorder.url + "/order",
                "callList": [{"orderID": "O1", "userPhone": "8613900139000"}],
            },
        }
        assert post_callbot(http, sb.url, "createAndCall", body).json()["retCode"] == 0
        assert (
            post_callbot(
                http,
                sb.url,
                "mgrTaskStatus",
                {"productID": "callbot", "userTaskID": "T1", "taskOperate": 1},
            ).json()["retCode"]
            == 0
        )
    # When the call, order and task callbacks arrive
    got = recorder.wait_for(3)
    # Then each verifies with the account's secret over the raw body, and says what happened
    assert sorted(r["path"] for r in got) == ["/call", "/order", "/task"]
    for r in got:
        text = check_callbot(
            r["raw"],
            r["headers"],
            uuid=accounts.CALLBOT_UUID,
            secret_key=accounts.CALLBOT_SECRET_KEY,
            algorithm="md5",
            now_s=time.time(),
            tolerance_s=300,
        )
        body = json.loads(text)
        assert body["userTaskID"] == "T1"
    task = next(json.loads(r["raw"]) for r in got if r["path"] == "/task")
    assert task["taskStatus"] == 3 and task["taskStat"]["totalOrderCount"] == 1


def test_unacknowledged_callback_is_retried_until_a_2xx(sb, recorder):
    # Given a receiver that fails twice (503, then 500) before accepting
    recorder.statuses = [503, 500]
    # When one DR is sent
    _number_check(sb, recorder, ["8613800138000"])
    got = recorder.wait_for(3)
    # Then it was attempted three times, re-sent every retry interval, and counted delivered once
    assert len(got) == 3 and len({r["raw"] for r in got}) == 1
    # (the dispatcher counts an attempt once its answer is back, just after the receiver saw it)
    deadline = time.monotonic() + 2.0
    while sb.state.stats()["callbacks"]["delivered"] < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    stats = sb.state.stats()["callbacks"]
    assert (stats["attempts"], stats["failed_attempts"], stats["delivered"]) == (3, 2, 1)


def test_callback_is_given_up_after_the_retry_window(sb, recorder):
    # Given a receiver that always fails, and a 0.35 s retry window
    sb.state.configure(callback_retry_window_s=0.35)
    recorder.statuses = [500] * 100
    # When one DR is sent
    _number_check(sb, recorder, ["8613800138000"])
    time.sleep(1.0)
    # Then it was tried every 0.1 s within the window, then dropped as expired
    stats = sb.state.stats()["callbacks"]
    assert stats["expired"] == 1 and stats["delivered"] == 0
    assert 3 <= stats["attempts"] <= 5


def test_drops_duplicates_and_reordering_are_configurable(sb, recorder):
    # Given every callback is sent twice, with up to 0.5 s of random delay
    sb.state.configure(callback_duplicate_rate=1.0, callback_jitter_s=0.5, seed=7)
    phones = [str(6591234500 + i) for i in range(20)]
    # When 20 numbers are checked
    _number_check(sb, recorder, phones)
    got = recorder.wait_for(40)
    # Then 40 DRs arrived, each number twice, not in submission order
    ids = [json.loads(r["raw"])["requestId"] for r in got]
    assert len(ids) == 40 and len(set(ids)) == 20
    firsts = list(dict.fromkeys(ids))
    assert firsts != sorted(firsts)
    # And with every callback dropped, none arrives
    sb.state.reset()
    sb.state.configure(callback_drop_rate=1.0, callback_duplicate_rate=0.0, callback_jitter_s=0.0)
    before = len(recorder.received)
    _number_check(sb, recorder, ["8613800138000"])
    time.sleep(0.3)
    assert len(recorder.received) == before
    assert sb.state.stats()["callbacks"]["dropped"] == 1


def test_cdr_goes_to_the_configured_url(sb, recorder):
    # Given a CDR callback URL registered for the account
    sb.state.configure(cdr_callback_url=recorder.url + "/cdr/tok")
    with requests.Session() as http:
        token = http.post(
            sb.url + "/v1/call/token",
            data={"appkey": accounts.AGENT_APPKEY, "secretkey": accounts.AGENT_SECRETKEY},
            timeout=5,
        ).json()
        # When a call is placed
        answer = http.post(
            sb.url + "/v1/call/makecall",
            data={
                "token": token["token"],
                "username": accounts.AGENT_USERNAME,
                "phone": "8613800138000",
                "orderid": "ORDER0001",
            },
            timeout=5,
        ).json()
    got = recorder.wait_for(1)
    # Then its CDR arrives there, matching the call
    cdr = json.loads(got[0]["raw"])
    assert got[0]["path"] == "/cdr/tok"
    assert (cdr["orderid"], cdr["sessionid"], cdr["hangup_cause"]) == (
        "ORDER0001",
        answer["sessionid"],
        "NORMAL_CLEARING",
    )
    assert cdr["start_time"].isdigit()


# ---- the sender itself: connections, failures, timeouts, stop ------------------------------------


class KeepAliveRecorder:
    """An HTTP/1.1 (keep-alive) server recording every POST with the status it answered.

    `close_every`: every n-th answer says "Connection: close" and closes; `silent_close`: every
    answer closes the connection without saying so; `statuses` are answered in turn, then 200;
    `hang_s` delays every answer (the first `hang_count` of them) by that long.
    """

    def __init__(
        self,
        close_every: int = 0,
        silent_close: bool = False,
        hang_s: float = 0.0,
        hang_count: int = 0,
    ):
        self.received: list[dict] = []
        self.statuses: list[int] = []
        self.connections = 0
        self.lock = threading.Lock()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def setup(self):
                super().setup()
                with recorder.lock:
                    recorder.connections += 1

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with recorder.lock:
                    n = len(recorder.received) + 1
                    status = recorder.statuses.pop(0) if recorder.statuses else 200
                    recorder.received.append(
                        {
                            "headers": {k.lower(): v for k, v in self.headers.items()},
                            "raw": body,
                            "status": status,
                        }
                    )
                if hang_s and n <= (hang_count or n):
                    time.sleep(hang_s)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                if close_every and n % close_every == 0:
                    self.send_header("Connection", "close")
                self.end_headers()
                if silent_close:
                    self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False  # close() must not wait for a handler that is sleeping
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _state(**changes) -> SandboxState:
    return SandboxState(SandboxConfig(**{**FAST, **changes}))


def _queue_drs(state: SandboxState, url: str, n: int, signed: bool = False) -> list[str]:
    ids = [f"{'ab' * 16}-{i:06d}" for i in range(1, n + 1)]
    for rid in ids:
        state.queue_callback(
            "number-check", url, {"requestId": rid, "code": 0, "batchNo": "B1"}, signed=signed
        )
    return ids


def _wait_counted(state: SandboxState, key: str, count: int, timeout_s: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while state.stats()["callbacks"][key] < count and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)  # anything extra would show now
    return state.stats()["callbacks"]


@pytest.fixture
def dispatcher_for():
    started = []

    def make(state: SandboxState) -> CallbackDispatcher:
        d = CallbackDispatcher(state).start()
        started.append(d)
        return d

    yield make
    for d in started:
        d.stop()


@pytest.mark.parametrize(
    "close", [dict(close_every=7), dict(silent_close=True)], ids=["connection-close", "silent"]
)
def test_receiver_closing_keep_alive_connections_gets_every_callback_exactly_once(
    dispatcher_for, close
):
    # Given a keep-alive receiver that closes connections (announced, or silently after each answer)
    rec = KeepAliveRecorder(**close)
    try:
        state = _state()
        ids = _queue_drs(state, rec.url + "/dr/tok", 150)
        # When 150 DRs are sent
        dispatcher_for(state)
        stats = _wait_counted(state, "delivered", 150)
        # Then each arrived exactly once, and each was one successful attempt
        got = [json.loads(r["raw"])["requestId"] for r in rec.received]
        assert sorted(got) == ids
        assert (stats["attempts"], stats["delivered"], stats["failed_attempts"]) == (150, 150, 0)
    finally:
        rec.close()


def test_keep_alive_connections_are_reused():
    # Given a keep-alive receiver
    rec = KeepAliveRecorder()
    state = _state()
    _queue_drs(state, rec.url + "/dr/tok", 200)
    # When 200 DRs are sent
    d = CallbackDispatcher(state).start()
    try:
        _wait_counted(state, "delivered", 200)
    finally:
        d.stop()
        rec.close()
    # Then they shared at most the pool's connections
    assert len(rec.received) == 200
    assert rec.connections <= dispatch.CONNECTIONS_PER_ORIGIN


def test_500_then_200_on_keep_alive_counts_each_callback_delivered_once(dispatcher_for):
    # Given a keep-alive receiver whose first 5 answers are 500
    rec = KeepAliveRecorder()
    rec.statuses = [500] * 5
    try:
        state = _state()
        ids = _queue_drs(state, rec.url + "/dr/tok", 20)
        # When 20 DRs are sent
        dispatcher_for(state)
        stats = _wait_counted(state, "delivered", 20)
        # Then the 5 refused ones came again, and every DR was accepted exactly once
        accepted = [json.loads(r["raw"])["requestId"] for r in rec.received if r["status"] == 200]
        assert sorted(accepted) == ids and len(rec.received) == 25
        assert (
            stats["attempts"],
            stats["delivered"],
            stats["failed_attempts"],
            stats["expired"],
        ) == (25, 20, 5, 0)
        assert (
            sorted(r["status"] for r in state.recent_callbacks(limit=100)) == [200] * 20 + [500] * 5
        )
    finally:
        rec.close()


def test_signed_callback_is_signed_afresh_on_each_attempt(dispatcher_for):
    # Given a receiver that refuses the first attempt
    rec = KeepAliveRecorder()
    rec.statuses = [503]
    try:
        state = _state()
        _queue_drs(state, rec.url + "/call", 1, signed=True)
        # When one signed callback is sent
        dispatcher_for(state)
        _wait_counted(state, "delivered", 1)
        # Then both attempts verify, each with its own requestID
        assert len(rec.received) == 2
        for r in rec.received:
            check_callbot(
                r["raw"],
                r["headers"],
                uuid=accounts.CALLBOT_UUID,
                secret_key=accounts.CALLBOT_SECRET_KEY,
                algorithm="md5",
                now_s=time.time(),
                tolerance_s=300,
            )
        assert rec.received[0]["headers"]["requestid"] != rec.received[1]["headers"]["requestid"]
    finally:
        rec.close()


def test_no_answer_in_time_is_a_failed_attempt_and_retried(dispatcher_for, monkeypatch):
    # Given a 0.3 s send timeout and a receiver that answers its first request after 1 s
    monkeypatch.setattr(dispatch, "SEND_TIMEOUT_S", 0.3)
    rec = KeepAliveRecorder(hang_s=1.0, hang_count=1)
    try:
        state = _state()
        _queue_drs(state, rec.url + "/dr/tok", 1)
        # When one DR is sent
        dispatcher_for(state)
        stats = _wait_counted(state, "delivered", 1)
        # Then the first attempt timed out, and the retry was delivered
        assert (stats["attempts"], stats["failed_attempts"], stats["delivered"]) == (2, 1, 1)
        assert [r["status"] for r in state.recent_callbacks()] == ["ReadTimeout", 200]
    finally:
        rec.close()


def test_refused_connection_is_retried_until_expired(dispatcher_for):
    # Given a URL nobody listens on, and a 0.35 s retry window
    from workers.devstack import free_port

    state = _state(callback_retry_window_s=0.35)
    _queue_drs(state, f"http://127.0.0.1:{free_port()}/dr/tok", 1)
    # When one DR is sent
    dispatcher_for(state)
    stats = _wait_counted(state, "expired", 1, timeout_s=3.0)
    # Then every attempt failed to connect, and it was given up
    assert stats["expired"] == 1 and stats["delivered"] == 0 and 3 <= stats["attempts"] <= 5
    assert {r["status"] for r in state.recent_callbacks()} == {"ConnectionError"}


def test_a_url_that_is_not_http_is_a_failed_attempt(dispatcher_for):
    # Given a callback URL with a scheme we cannot POST to
    state = _state(callback_retry_window_s=0.15)
    _queue_drs(state, "ftp://127.0.0.1/dr", 1)
    # When it is due
    dispatcher_for(state)
    stats = _wait_counted(state, "expired", 1, timeout_s=3.0)
    # Then it failed like any unreachable URL, and was given up
    assert stats["failed_attempts"] >= 1 and stats["expired"] == 1
    assert {r["status"] for r in state.recent_callbacks()} == {"InvalidSchema"}


def test_reset_forgets_callbacks_not_yet_sent():
    # Given callbacks due in 0.3 s
    rec = KeepAliveRecorder()
    state = _state(callback_delay_s=0.3)
    _queue_drs(state, rec.url + "/dr/tok", 10)
    d = CallbackDispatcher(state).start()
    try:
        time.sleep(0.1)
        assert d.pending() == 10
        # When the sandbox is reset before they are due
        state.reset()
        time.sleep(0.5)
        # Then none is sent or counted
        assert (
            rec.received == [] and state.stats()["callbacks"]["attempts"] == 0 and d.pending() == 0
        )
    finally:
        d.stop()
        rec.close()


def test_stop_is_prompt_with_requests_in_flight_and_leaves_no_thread():
    # Given a receiver that takes 3 s to answer, and callbacks in flight to it (50 queued)
    rec = KeepAliveRecorder(hang_s=3.0)
    before = set(threading.enumerate())
    state = _state()
    _queue_drs(state, rec.url + "/dr/tok", 50)
    d = CallbackDispatcher(state).start()
    deadline = time.monotonic() + 2
    while len(rec.received) < dispatch.CONNECTS_PER_ORIGIN and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (
        len(rec.received) == dispatch.CONNECTS_PER_ORIGIN
    )  # new connections wait for a first answer
    # When the dispatcher is stopped
    t0 = time.monotonic()
    d.stop()
    # Then it returns at once, and no thread of it is left running
    assert time.monotonic() - t0 < 1.0
    assert not d._thread.is_alive()
    new = [
        t.name
        for t in set(threading.enumerate()) - before
        if "process_request_thread" not in t.name
    ]
    assert new == []
    d.stop()  # twice is fine
    rec.close()


def test_stop_before_start_is_harmless():
    CallbackDispatcher(_state()).stop()


class RawServer:
    """Answers each request it reads with the next canned response; closes after a
    close-delimited one.

    A response given as a list of byte strings is sent in those pieces, 50 ms apart. `connections`
    counts accepted connections; `pipelined` is set if a request arrived before the previous answer.
    """

    def __init__(self, responses: list[bytes | list[bytes]]):
        import socket

        self.responses = list(responses)
        self.requests = 0
        self.connections = 0
        self.pipelined = False
        self.lock = threading.Lock()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        buf = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, _, rest = buf.partition(b"\r\n\r\n")
                length = int(
                    next(
                        line.split(b":")[1]
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    )
                )
                while len(rest) < length:
                    rest += conn.recv(65536)
                buf = rest[length:]
                with self.lock:
                    self.requests += 1
                    self.pipelined |= bool(buf)
                    response = self.responses.pop(0)
                pieces = response if isinstance(response, list) else [response]
                for i, piece in enumerate(pieces):
                    if i:
                        time.sleep(0.05)
                    conn.sendall(piece)
                whole = b"".join(pieces).lower()
                if b"content-length" not in whole and b"chunked" not in whole:
                    return  # close-delimited body: closing ends it

    def close(self):
        self.sock.close()


def test_chunked_informational_and_close_delimited_answers_are_understood(dispatcher_for):
    # Given a receiver answering in three framings
    raw = RawServer(
        [
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"4;x=1\r\nok!!\r\n0\r\nTrailer: t\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\nok",
            b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end",
        ]
    )
    try:
        state = _state()
        _queue_drs(state, raw.url + "/dr/tok", 3)
        # When three DRs are sent
        dispatcher_for(state)
        stats = _wait_counted(state, "delivered", 3)
        # Then each answer counted as a delivery
        assert (stats["attempts"], stats["delivered"], stats["failed_attempts"]) == (3, 3, 0)
        assert raw.requests == 3
    finally:
        raw.close()


def test_answers_in_pieces_or_with_extra_bytes_one_request_at_a_time(dispatcher_for):
    # Given a receiver whose first answer comes in three pieces and whose second has bytes after it
    raw = RawServer(
        [
            [b"HTTP/1.1 200 OK\r\nContent-Le", b"ngth: 2\r\n\r\n", b"ok"],
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        ]
    )
    try:
        state = _state()
        dispatcher_for(state)
        # When three DRs are sent one after another
        for n in (1, 2, 3):
            _queue_drs(state, raw.url + "/dr/tok", 1)
            stats = _wait_counted(state, "delivered", n)
        # Then each answer counted once; the pieced one kept its connection, the one with extra
        # bytes did not; and no request was written before the previous one was answered
        assert (stats["attempts"], stats["delivered"], stats["failed_attempts"]) == (3, 3, 0)
        assert (raw.requests, raw.connections, raw.pipelined) == (3, 2, False)
    finally:
        raw.close()


def test_many_callbacks_over_few_connections_are_never_pipelined(dispatcher_for, monkeypatch):
    # Given at most two connections to a receiver
    monkeypatch.setattr(dispatch, "CONNECTIONS_PER_ORIGIN", 2)
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    raw = RawServer([ok] * 60)
    try:
        state = _state()
        _queue_drs(state, raw.url + "/dr/tok", 60)
        # When 60 DRs are sent at once
        dispatcher_for(state)
        stats = _wait_counted(state, "delivered", 60)
        # Then every one was delivered once, one request at a time on each of the two connections
        assert (stats["attempts"], stats["delivered"]) == (60, 60)
        assert (raw.requests, raw.connections, raw.pipelined) == (60, 2, False)
    finally:
        raw.close()


def test_a_malformed_answer_is_a_failed_attempt_and_retried_on_a_new_connection(dispatcher_for):
    # Given a receiver whose first answer has two Content-Lengths (ambiguous framing)
    raw = RawServer(
        [
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 5\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        ]
    )
    try:
        state = _state()
        _queue_drs(state, raw.url + "/dr/tok", 1)
        # When one DR is sent
        dispatcher_for(state)
        stats = _wait_counted(state, "delivered", 1)
        # Then the first attempt failed like a broken connection, and the retry was delivered
        assert (stats["attempts"], stats["failed_attempts"], stats["delivered"]) == (2, 1, 1)
        assert [r["status"] for r in state.recent_callbacks()] == ["ConnectionError", 200]
        assert (raw.requests, raw.connections) == (2, 2)
    finally:
        raw.close()
