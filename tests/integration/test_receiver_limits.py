"""The receiver process (`python -m workers.web`) against clients that try to make it hold bytes,
descriptors or time, over real sockets on 127.0.0.1; and the RFC details a client sees.

One receiver with small limits (set through NXJOBS_CALLBACKS__* as in production) serves the
module, on a Redis db of its own. Sizes are a fraction of bench/receiver_attacks.py's; what is
asserted is that the receiver's memory, descriptors and answers do not depend on them.
"""

from __future__ import annotations

import json
import select
import socket
import time
import uuid

import pytest

from tests.conftest import CALLBACK_TOKEN
from workers.devstack import start_callbacks

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

CAP = 20
LIMITS = {
    "NXJOBS_CALLBACKS__MAX_CONNECTIONS": str(CAP),
    "NXJOBS_CALLBACKS__MAX_HEAD_BYTES": "16384",
    "NXJOBS_CALLBACKS__WRITE_BUFFER_BYTES": "4096",
    "NXJOBS_CALLBACKS__KEEP_ALIVE_S": "30",
    "NXJOBS_CALLBACKS__HEAD_TIMEOUT_S": "1",
    "NXJOBS_CALLBACKS__REQUEST_TIMEOUT_S": "2",
    "NXJOBS_CALLBACKS__MAX_REQUESTS_PER_CONNECTION": "1000000",
}


@pytest.fixture(scope="module")
def limited(callbacks_env, tmp_path_factory):
    env = {
        **callbacks_env,
        **LIMITS,
        "NXJOBS_REDIS_URL": callbacks_env["NXJOBS_REDIS_URL"].rsplit("/", 1)[0] + "/13",
    }
    proc, url = start_callbacks(env, log_dir=str(tmp_path_factory.mktemp("limited")))
    try:
        yield proc.proc.pid, int(url.rsplit(":", 1)[1]), proc
    finally:
        proc.stop()


@pytest.fixture()
def receiver_state(limited):
    """(pid, port, process), once the receiver has seen the connections of earlier tests close."""
    time.sleep(0.2)
    return limited


def open_fds(pid: int) -> int:
    import os

    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def connect(port: int, timeout: float = 5) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def read_answer(
    s: socket.socket, *, head_only: bool = False, timeout: float = 5
) -> tuple[int, dict, bytes]:
    """One answer read straight off the socket: (status, headers, body); (0, {}, b"") if closed
    first."""
    s.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return 0, {}, b""
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    status = int(lines[0].split()[1])
    want = 0 if head_only or status == 100 else int(headers.get("content-length", 0))
    while len(rest) < want:
        chunk = s.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, headers, rest


def read_until_closed(s: socket.socket, within_s: float) -> bytes:
    s.settimeout(within_s)
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    return data


def split_answers(data: bytes) -> list[tuple[int, dict, bytes]]:
    """Answers with Content-Length bodies, as read_answer returns them, from one byte stream."""
    out = []
    while data:
        head, rest = data.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = {
            k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])
        }
        size = int(headers.get("content-length", 0))
        out.append((int(lines[0].split()[1]), headers, rest[:size]))
        data = rest[size:]
    return out


def closed_by_server(s: socket.socket, within_s: float) -> bool:
    s.settimeout(within_s)
    try:
        while True:
            if not s.recv(65536):
                return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def callback(port: int, **extra_headers: str) -> bytes:
    """A Number Check result with the right token (for no job of ours: stored as unmatched, 200)."""
    body = json.dumps(
        {
            "requestId": uuid.uuid4().hex + "-000001",
            "code": 0,
            "phone": "6591000001",
            "batchNo": uuid.uuid4().hex,
        }
    ).encode()
    head = [
        f"POST /callbacks/number-check/{CALLBACK_TOKEN} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
    ]
    head += [f"{k.replace('_', '-')}: {v}" for k, v in extra_headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def legit_callback_answered(port: int) -> int:
    with connect(port) as s:
        s.sendall(callback(port))
        return read_answer(s)[0]


def send_all_or_stall(
    s: socket.socket, data: bytes, *, stall_s: float = 0.5, max_s: float = 6
) -> int:
    """Send `data` non-blocking until done, or until the receiver takes nothing for `stall_s`."""
    s.setblocking(False)
    sent, t0, progress = 0, time.monotonic(), time.monotonic()
    view = memoryview(data)
    while (
        sent < len(data) and time.monotonic() - t0 < max_s and time.monotonic() - progress < stall_s
    ):
        try:
            sent += s.send(view[sent : sent + 262144])
            progress = time.monotonic()
        except BlockingIOError:
            select.select([], [s], [], 0.05)
        except (BrokenPipeError, ConnectionResetError):
            break
    s.setblocking(True)
    return sent


def server_rx_queue(server_port: int, client_port: int) -> int | None:
    """Bytes the receiver has not read on its side of this connection (/proc/net/tcp)."""
    local, remote = f"0100007F:{server_port:04X}", f"0100007F:{client_port:04X}"
    with open("/proc/net/tcp") as fh:
        for line in fh.readlines()[1:]:
            fields = line.split()
            if fields[1] == local and fields[2] == remote:
                return int(fields[4].split(":")[1], 16)
    return None


CHUNKED = b"POST /callbacks/agent/cdr/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"


# ---- bytes a client can make it hold -------------------------------------------------------------


@pytest.mark.parametrize(
    "attack, status",
    [
        (
            CHUNKED + b"0\r\n" + b"X-Trailer: 0123456789abcdef0123456789abcdef\r\n" * 100_000,
            400,
        ),  # 4.5 MB
        (CHUNKED + b"0\r\nX-Trailer: " + b"v" * 4_000_000, 400),
        (CHUNKED + b"1;ext=" + b"e" * 4_000_000, 400),
        (b"POST /x HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 4_000_000, 431),
    ],
    ids=["trailer fields", "one trailer value", "chunk extension", "header value"],
)
def test_head_floods_are_refused_and_hold_nothing(receiver_state, attack, status):
    pid, port, _ = receiver_state
    rss0 = rss_kb(pid)
    with connect(port) as s:
        sent = send_all_or_stall(s, attack)
        got, headers, _ = read_answer(s)
        # Then the refusal comes (the rest was read and dropped: no reset lost it) and it is closed
        assert (got, headers.get("connection")) == (status, "close")
        assert closed_by_server(s, 5)
    assert sent == len(attack)
    assert rss_kb(pid) - rss0 < 2048
    assert legit_callback_answered(port) == 200


def test_answers_left_unread_stop_the_reading_and_hold_no_memory(receiver_state):
    # Given a client that pipelines 300 000 requests and reads none of the answers
    pid, port, _ = receiver_state
    burst = b"GET /nothing-here HTTP/1.1\r\nHost: x\r\n\r\n" * 300_000  # 11.7 MB
    rss0 = rss_kb(pid)
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", port))
        sent = send_all_or_stall(s, burst)
        # Then the receiver stopped reading it: bytes wait in its socket, not in its memory
        unread = server_rx_queue(port, s.getsockname()[1])
        time.sleep(0.5)
        assert sent < len(burst)
        assert unread and server_rx_queue(port, s.getsockname()[1]) == unread
        assert rss_kb(pid) - rss0 < 3072
        # And everyone else is still served meanwhile
        assert legit_callback_answered(port) == 200


# ---- descriptors and time ------------------------------------------------------------------------


def test_at_the_connection_cap_a_legit_sender_is_still_answered(receiver_state):
    # Given the cap filled with idle connections and more trickling heads arriving on top
    pid, port, _ = receiver_state
    base = open_fds(pid)
    idle = [connect(port) for _ in range(CAP)]
    time.sleep(0.1)
    trickling = [connect(port) for _ in range(5)]
    try:
        for s in trickling:
            s.sendall(b"POST /callbacks/agent/cdr/x HTTP/1.1\r\nHo")
        time.sleep(0.2)
        # When a legit sender connects
        status = legit_callback_answered(port)
        # Then it is answered; the oldest idle connections made room, the rest and the trickling
        # stay
        assert status == 200
        assert [closed_by_server(s, 0.05) for s in idle[:6]] == [True] * 6
        assert not any(closed_by_server(s, 0.02) for s in idle[6:] + trickling)
        assert open_fds(pid) <= base + CAP + 1
    finally:
        for s in idle + trickling:
            s.close()


def test_at_the_cap_of_trickling_heads_a_legit_sender_is_still_answered(receiver_state):
    pid, port, _ = receiver_state
    slow = [connect(port) for _ in range(CAP)]
    try:
        for s in slow:
            s.sendall(b"POST /callbacks/agent/cdr/x HTTP/1.1\r\nHost: x\r\n")
        time.sleep(0.2)
        assert legit_callback_answered(port) == 200
        assert closed_by_server(slow[0], 0.2) and not closed_by_server(slow[-1], 0.02)
    finally:
        for s in slow:
            s.close()


def test_a_slow_head_gets_408(receiver_state):
    _, port, _ = receiver_state
    with connect(port) as s:
        t0 = time.monotonic()
        for ch in b"POST /callbacks/agent/cdr/x HTTP/1.1\r\nHost: x\r\nX-Slow: 1234567890\r\n":
            if select.select([s], [], [], 0.05)[0]:
                break
            s.send(bytes([ch]))
        status, headers, _ = read_answer(s)
        assert (status, headers.get("connection")) == (408, "close")
        assert 0.9 < time.monotonic() - t0 < 3


def test_a_slow_body_gets_408(receiver_state):
    _, port, _ = receiver_state
    with connect(port) as s:
        t0 = time.monotonic()
        s.sendall(
            b"POST /callbacks/agent/cdr/x HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
        )
        while time.monotonic() - t0 < 5 and not select.select([s], [], [], 0.05)[0]:
            s.send(b"x")
        status, headers, _ = read_answer(s)
        assert (status, headers.get("connection")) == (408, "close")
        assert 1.9 < time.monotonic() - t0 < 4


def test_requests_per_connection_are_capped(callbacks_env, tmp_path):
    env = {**callbacks_env, "NXJOBS_CALLBACKS__MAX_REQUESTS_PER_CONNECTION": "3"}
    proc, url = start_callbacks(env, log_dir=str(tmp_path))
    try:
        port = int(url.rsplit(":", 1)[1])
        with connect(port) as s:
            s.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n" * 5)
            # Pipelined answers may share one recv: read to the close, then split them.
            answers = split_answers(read_until_closed(s, 5))
            assert [a[0] for a in answers] == [200, 200, 200]
            assert [a[1].get("connection") for a in answers] == [None, None, "close"]
    finally:
        proc.stop()


# ---- what the RFCs ask ---------------------------------------------------------------------------


def test_head_gets_the_headers_of_get_and_no_body(receiver_state):
    _, port, _ = receiver_state
    with connect(port) as s:
        s.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = read_answer(s)
        assert (status, body) == (200, b'{"ok":true}')
        s.sendall(
            b"HEAD /readyz HTTP/1.1\r\nHost: x\r\n\r\nGET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        status, head_headers, _ = read_answer(s, head_only=True)
        assert status == 200 and head_headers["content-length"] == headers["content-length"]
        # the very next bytes are the next answer: the HEAD answer carried no body
        assert read_answer(s) == (200, headers, b'{"ok":true}')


@pytest.mark.parametrize(
    "request_line, allow",
    [
        ("GET /callbacks/callbot/call", "POST"),
        (f"GET /callbacks/number-check/{CALLBACK_TOKEN}", "POST"),
        ("HEAD /callbacks/agent/cdr/" + CALLBACK_TOKEN, "POST"),
        ("POST /healthz", "GET, HEAD"),
        ("DELETE /readyz", "GET, HEAD"),
    ],
)
def test_405_says_which_methods_are_allowed(receiver_state, request_line, allow):
    _, port, _ = receiver_state
    with connect(port) as s:
        s.sendall(f"{request_line} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode())
        status, headers, _ = read_answer(s, head_only=request_line.startswith("HEAD"))
        assert (status, headers.get("allow")) == (405, allow)


def test_expect_100_continue_then_the_callback_is_stored(receiver_state):
    _, port, _ = receiver_state
    raw = callback(port, Expect="100-continue")
    head, body = raw.split(b"\r\n\r\n", 1)
    with connect(port) as s:
        s.sendall(head + b"\r\n\r\n")
        assert read_answer(s)[0] == 100
        s.sendall(body)
        assert read_answer(s)[0] == 200


def test_expect_100_continue_with_a_body_too_large_gets_413_at_once(receiver_state):
    _, port, _ = receiver_state
    with connect(port) as s:
        s.sendall(
            b"POST /callbacks/agent/cdr/x HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Length: 999999999\r\n\r\n"
        )
        assert read_answer(s)[0] == 413


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /readyz HTTP/1.1\r\n\r\n",
        b"GET /readyz\r\n",
        b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
    ],
    ids=["no host", "http/0.9", "content-length and chunked", "two content-lengths"],
)
def test_bad_requests_get_400(receiver_state, raw):
    _, port, _ = receiver_state
    with connect(port) as s:
        s.sendall(raw)
        status, headers, _ = read_answer(s, timeout=3)
        assert (status, headers.get("connection")) == (400, "close")


# ---- the descriptor limit at startup -------------------------------------------------------------


def test_the_connection_cap_is_fitted_to_the_descriptor_limit(monkeypatch, caplog):
    import resource

    from workers import web

    limits = {"soft": 256, "hard": 300}
    monkeypatch.setattr(resource, "getrlimit", lambda which: (limits["soft"], limits["hard"]))

    def setrlimit(which, value):
        limits["soft"] = value[0]

    monkeypatch.setattr(resource, "setrlimit", setrlimit)
    # Raised up to the hard limit when that is enough, silently
    assert web.fit_connection_cap(200, 96) == 200 and limits["soft"] == 296
    assert not caplog.records
    # Else lowered, with one warning
    limits.update(soft=256, hard=300)
    assert web.fit_connection_cap(512, 96) == 300 - 96
    assert limits["soft"] == 300
    assert len([r for r in caplog.records if "max_connections lowered" in r.getMessage()]) == 1
