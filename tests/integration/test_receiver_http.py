"""The receiver's HTTP server (nxjobs/callbacks/http.py) over real sockets.

A stand-in handler (the HTTP layer never looks inside a callback) records what
it was given and answers with the request's body length, so each answer says
which request it belongs to. The server runs in a thread's event loop; the
tests talk raw HTTP/1.1 to it on 127.0.0.1, because what is under test is what
happens on the wire: keep-alive, pipelining order, limits, timeouts, stop, the
RFC 9110/9112 details, back-pressure and the connection cap (which can look at
the server's own state, being in this process). tests/integration/test_receiver_limits.py
runs the same attacks against the real receiver process.
"""

from __future__ import annotations

import asyncio
import select
import socket
import threading
import time
from dataclasses import dataclass

import pytest

from nxjobs.callbacks.http import MAX_PIPELINED, READ_BYTES, CallbackServer, HttpLimits

pytestmark = pytest.mark.timeout(30)

BODY_LIMIT = 1000


@dataclass(frozen=True)
class _Reply:
    status: int
    body: bytes
    headers: tuple = ()


class RecordingHandler:
    max_body_bytes = BODY_LIMIT

    def __init__(self):
        self.seen: list[tuple[str, str, dict, bytes]] = []
        self.refusals: list[int] = []
        self.gate: asyncio.Event | None = None  # when set up, /slow waits for it

    def handle(self, method, path, headers, body, respond):
        self.seen.append((method, path, dict(headers), body))
        answer = _Reply(200, b'{"len":%d}' % len(body))
        if path == "/boom":
            raise RuntimeError("handler bug")
        if path == "/allow":
            answer = _Reply(405, b'{"error":"no"}', (("allow", "POST"),))
        if path in ("/slow", "/held"):  # answered later, from the event loop
            asyncio.get_running_loop().create_task(self._later(path, answer, respond))
            return
        respond(answer)

    async def _later(self, path, answer, respond):
        if path == "/slow":
            await asyncio.sleep(0.2)
        else:
            await self.gate.wait()
        respond(answer)

    def refused(self, status, reason):
        self.refusals.append(status)


class ServerThread:
    def __init__(self, limits: HttpLimits):
        self.handler = RecordingHandler()
        self.server = CallbackServer(self.handler, limits)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.loop = asyncio.new_event_loop()
        self.stop_event: asyncio.Event | None = None
        ready = threading.Event()

        async def main():
            self.stop_event = asyncio.Event()
            self.handler.gate = asyncio.Event()
            ready.set()
            await self.server.serve(self.sock, self.stop_event)

        self.thread = threading.Thread(
            target=lambda: self.loop.run_until_complete(main()), daemon=True
        )
        self.thread.start()
        assert ready.wait(5)

    def call(self, fn):
        self.loop.call_soon_threadsafe(fn)

    def stop(self):
        if self.thread.is_alive():
            self.call(self.stop_event.set)
            self.thread.join(15)
        self.sock.close()


@pytest.fixture()
def serve():
    started = []

    def start(**limits) -> ServerThread:
        st = ServerThread(HttpLimits(**{"sweep_interval_s": 0.05, **limits}))
        started.append(st)
        return st

    yield start
    for st in started:
        st.stop()


class _Client(socket.socket):
    """A client socket whose close() also closes its buffered reader (else the descriptor stays
    open)."""

    def close(self):
        if self.fileno() >= 0:
            reader = _readers.pop(self.fileno(), None)
            if reader is not None:
                reader.close()
        super().close()


def connect(port: int) -> socket.socket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    s = _Client(raw.family, raw.type, raw.proto, fileno=raw.detach())
    s.settimeout(5)
    _readers.pop(s.fileno(), None)  # a reused descriptor number starts with an empty buffer
    return s


def request(path: str, body: bytes = b"", *, extra: str = "", method: str = "POST") -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


def read_response(s: socket.socket, *, body: bool = True) -> tuple[int, dict, bytes]:
    """The next response (status, headers, body) on `s`, or (0, {}, b"") if the server closed first;
    `body=False` for the answer to a HEAD request (its content-length is not followed by a body).

    Bytes past it stay buffered for the next call (pipelined answers arrive together)."""
    reader = _readers.setdefault(s.fileno(), s.makefile("rb"))
    line = reader.readline()
    if not line:
        return 0, {}, b""
    status = int(line.split()[1])
    headers = {}
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, value = line.decode().split(":", 1)
        headers[name.lower()] = value.strip()
    if not body or status == 100:
        return status, headers, b""
    return status, headers, reader.read(int(headers["content-length"]))


_readers: dict[int, object] = {}


def closed_by_server(s: socket.socket, within_s: float) -> bool:
    s.settimeout(within_s)
    try:
        return s.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_keep_alive_serves_many_requests_on_one_connection(serve):
    st = serve()
    with connect(st.port) as s:
        for i in range(5):
            s.sendall(request("/cb", b"x" * i))
            status, headers, body = read_response(s)
            assert (status, body) == (200, b'{"len":%d}' % i)
            assert "connection" not in headers
    assert [b for _, _, _, b in st.handler.seen] == [b"x" * i for i in range(5)]


def test_pipelined_requests_are_answered_in_order(serve):
    # Given three requests in one write, the first one slow to handle
    st = serve()
    with connect(st.port) as s:
        s.sendall(request("/slow", b"a") + request("/cb", b"bb") + request("/cb", b"ccc"))
        # Then the answers come back in the order asked, the slow one first
        bodies = [read_response(s)[2] for _ in range(3)]
    assert bodies == [b'{"len":1}', b'{"len":2}', b'{"len":3}']


def test_query_string_is_not_part_of_the_path_and_headers_are_lower_case(serve):
    st = serve()
    with connect(st.port) as s:
        s.sendall(request("/cb?x=1", b"{}", extra="Sign: ABC\r\n"))
        assert read_response(s)[0] == 200
    method, path, headers, body = st.handler.seen[0]
    assert (method, path, headers["sign"], body) == ("POST", "/cb", "ABC", b"{}")


def test_declared_oversized_body_is_refused_before_it_is_sent(serve):
    # Given a head declaring a body over the limit, and no body sent at all
    st = serve()
    with connect(st.port) as s:
        s.sendall(
            f"POST /cb HTTP/1.1\r\nHost: x\r\nContent-Length: {BODY_LIMIT + 1}\r\n\r\n".encode()
        )
        # Then 413 comes back at once and the connection is closed; the handler saw nothing
        status, headers, _ = read_response(s)
        assert (status, headers.get("connection")) == (413, "close")
        assert closed_by_server(s, 2)
    assert st.handler.seen == [] and st.handler.refusals == [413]


def test_chunked_body_growing_past_the_limit_is_refused(serve):
    st = serve()
    chunk = b"x" * 600
    with connect(st.port) as s:
        s.sendall(
            b"POST /cb HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n%s\r\n" % (len(chunk), chunk) * 2
            + b"0\r\n\r\n"
        )
        assert read_response(s)[0] == 413
    assert st.handler.seen == []


def test_chunked_body_within_the_limit_is_joined(serve):
    st = serve()
    with connect(st.port) as s:
        s.sendall(
            b"POST /cb HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        )
        assert read_response(s)[2] == b'{"len":5}'
    assert st.handler.seen[0][3] == b"abcde"


def test_oversized_head_is_refused_with_431(serve):
    st = serve(max_head_bytes=2048)
    with connect(st.port) as s:
        s.sendall(b"POST /cb HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 4096)  # never finished
        status, headers, _ = read_response(s)
        assert (status, headers.get("connection")) == (431, "close")
    assert st.handler.seen == []


@pytest.mark.parametrize(
    "garbage", [b"NOT HTTP AT ALL\r\n\r\n", b"POST /cb HTTP/1.1\r\nContent-Length: x\r\n\r\n"]
)
def test_malformed_http_gets_400_and_is_closed(serve, garbage):
    st = serve()
    with connect(st.port) as s:
        s.sendall(garbage)
        status, headers, _ = read_response(s)
        assert (status, headers.get("connection")) == (400, "close")
        assert closed_by_server(s, 2)
    assert st.handler.seen == []


def test_upgrade_is_not_performed_the_request_is_answered_once_then_closed(serve):
    st = serve()
    with connect(st.port) as s:
        s.sendall(
            b"GET /cb HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
        status, headers, _ = read_response(s)
        assert (status, headers.get("connection")) == (200, "close")
        assert closed_by_server(s, 2)
    assert len(st.handler.seen) == 1


def test_request_not_finished_in_time_gets_408(serve):
    # Given a request whose body never finishes arriving
    st = serve(request_timeout_s=0.3)
    with connect(st.port) as s:
        s.sendall(b"POST /cb HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        t0 = time.monotonic()
        # Then 408 comes after the request timeout, and the connection is closed
        status, headers, _ = read_response(s)
        assert (status, headers.get("connection")) == (408, "close")
        assert 0.25 < time.monotonic() - t0 < 3
    assert st.handler.seen == []


def test_idle_keep_alive_connection_is_closed(serve):
    st = serve(keep_alive_s=0.3)
    with connect(st.port) as s:
        s.sendall(request("/cb", b"1"))
        assert read_response(s)[0] == 200
        assert closed_by_server(s, 3)


def test_connection_close_is_honoured(serve):
    st = serve()
    with connect(st.port) as s:
        s.sendall(request("/cb", b"1", extra="Connection: close\r\n"))
        status, headers, _ = read_response(s)
        assert (status, headers.get("connection")) == (200, "close")
        assert closed_by_server(s, 2)


def test_handler_error_is_a_500_and_the_connection_stays_usable(serve):
    st = serve()
    with connect(st.port) as s:
        s.sendall(request("/boom", b"1"))
        assert read_response(s)[0] == 500
        s.sendall(request("/cb", b"22"))
        assert read_response(s)[2] == b'{"len":2}'


def test_stop_answers_requests_already_received_then_closes(serve):
    # Given a request being handled (held) when the server is told to stop
    st = serve(grace_s=5)
    with connect(st.port) as s:
        s.sendall(request("/held", b"123"))
        deadline = time.monotonic() + 5
        while not st.handler.seen and time.monotonic() < deadline:
            time.sleep(0.01)
        st.call(st.stop_event.set)
        time.sleep(0.2)
        # Then no new connection is accepted
        with pytest.raises(OSError):
            connect(st.port).recv(1)
        # And once the handler finishes, its answer still goes out, with connection: close
        st.call(st.handler.gate.set)
        status, headers, body = read_response(s)
        assert (status, headers.get("connection"), body) == (200, "close", b'{"len":3}')
    st.thread.join(10)
    assert not st.thread.is_alive()


# ---- protocol details (RFC 9110 / 9112) ----------------------------------------------------------


def test_head_gets_the_get_head_and_no_body(serve):
    st = serve()
    with connect(st.port) as s:
        s.sendall(b"HEAD /cb HTTP/1.1\r\nHost: x\r\n\r\n" + request("/cb", b"22"))
        # Then the HEAD answer says how long the body would be, and the next answer follows at once
        status, headers, _ = read_response(s, body=False)
        assert (status, headers["content-length"]) == (200, str(len(b'{"len":0}')))
        assert _readers[s.fileno()].peek(9)[:9] == b"HTTP/1.1 "
        assert read_response(s) == (
            200,
            {"content-type": "application/json", "content-length": "9"},
            b'{"len":2}',
        )
    assert [m for m, _, _, _ in st.handler.seen] == ["HEAD", "POST"]


def test_extra_answer_headers_are_sent(serve):
    st = serve()
    with connect(st.port) as s:
        s.sendall(request("/allow", method="GET"))
        status, headers, _ = read_response(s)
        assert (status, headers.get("allow")) == (405, "POST")
        s.sendall(request("/cb"))  # and the connection stays usable
        assert read_response(s)[0] == 200


def test_expect_100_continue_is_answered_before_the_body_is_sent(serve):
    st = serve()
    with connect(st.port) as s:
        s.sendall(
            b"POST /cb HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"
        )
        assert read_response(s)[0] == 100
        s.sendall(b"abc")
        assert read_response(s)[2] == b'{"len":3}'


def test_100_continue_waits_for_the_answers_before_it(serve):
    # Given a held request, then one expecting 100-continue pipelined behind it
    st = serve()
    with connect(st.port) as s:
        s.sendall(
            request("/held", b"1")
            + b"POST /cb HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
        )
        time.sleep(0.2)
        # Then nothing is sent until the first answer can go, and the 100 comes after it
        st.call(st.handler.gate.set)
        assert read_response(s)[2] == b'{"len":1}'
        assert read_response(s)[0] == 100
        s.sendall(b"xy")
        assert read_response(s)[2] == b'{"len":2}'


def test_expect_with_a_body_too_large_gets_413_and_no_100(serve):
    st = serve()
    with connect(st.port) as s:
        s.sendall(
            f"POST /cb HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            f"Content-Length: {BODY_LIMIT + 1}"
            f"\r\n\r\n".encode()
        )
        assert read_response(s)[0] == 413
        assert closed_by_server(s, 2)


@pytest.mark.parametrize(
    "raw, status",
    [
        (b"GET /cb HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 without Host
        (b"GET /cb HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET /cb\r\n", 400),  # HTTP/0.9: answered at once, not left waiting
        (b"GET /cb\r\nHost: x\r\n\r\n", 400),
        (b"GET /cb HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (
            b"POST /cb HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        (
            b"POST /cb HTTP/1.1\r\nHost: x\r\n"
            b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
            400,
        ),
        (
            b"POST /cb HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            400,
        ),
        (b"POST /cb HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400),
        (b"POST /cb HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"POST /cb HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
        (b"POST /cb HTTP/1.1\r\nHost: x\r\nExpect: something\r\nContent-Length: 1\r\n\r\n", 417),
    ],
    ids=[
        "no host",
        "two hosts",
        "http/0.9",
        "http/0.9 with fields",
        "http/2.0 text",
        "cl+te",
        "te+cl",
        "differing cl",
        "repeated cl",
        "te in http/1.0",
        "gzip coding",
        "unknown expect",
    ],
)
def test_requests_refused_by_the_rfcs(serve, raw, status):
    st = serve()
    with connect(st.port) as s:
        s.sendall(raw)
        got, headers, _ = read_response(s)
        assert (got, headers.get("connection")) == (status, "close")
        assert closed_by_server(s, 2)
    assert st.handler.seen == [] and st.handler.refusals == [status]


def test_http_1_0_without_host_is_served(serve):
    st = serve()
    with connect(st.port) as s:
        s.sendall(b"POST /cb HTTP/1.0\r\nContent-Length: 2\r\n\r\nab")
        assert read_response(s)[:1] == (200,)


def test_trailer_fields_are_dropped_not_merged_into_the_head(serve):
    st = serve()
    with connect(st.port) as s:
        s.sendall(
            b"POST /cb HTTP/1.1\r\nHost: x\r\nSign: good\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\nab\r\n0\r\nSign: forged\r\nX-Late: 1\r\n\r\n"
        )
        assert read_response(s)[0] == 200
    headers = st.handler.seen[0][2]
    assert headers["sign"] == "good" and "x-late" not in headers


# ---- what a client can make the server hold ------------------------------------------------------


@pytest.mark.parametrize(
    "tail",
    [
        b"0\r\n" + b"X-Trailer: 0123456789abcdef\r\n" * 20_000,  # many trailer fields
        b"0\r\nX-Trailer: " + b"v" * 400_000,  # one trailer value that never ends
        b"1;" + b"e" * 400_000,  # one chunk extension that never ends
        b"1;e=1\r\nx\r\n" * 40_000,  # many one-byte chunks: framing, no body to speak of
    ],
    ids=["trailer fields", "trailer value", "chunk extension", "chunk framing"],
)
def test_chunk_framing_and_trailers_count_against_the_head_limit(serve, tail):
    # Given a chunked request whose framing or trailers go on far past the head limit
    st = serve(max_head_bytes=4096)
    with connect(st.port) as s:
        s.sendall(b"POST /cb HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + tail)
        # Then it is refused (the rest is read and dropped, so the answer is not lost to a reset)
        status, headers, _ = read_response(s)
        assert (status, headers.get("connection")) == (400, "close")
        assert closed_by_server(s, 3)
    assert st.handler.seen == [] and st.handler.refusals == [400]


def test_head_limit_counts_a_header_value_that_never_ends(serve):
    st = serve(max_head_bytes=4096)
    with connect(st.port) as s:
        s.sendall(b"POST /cb HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 300_000)
        assert read_response(s)[0] == 431


def test_pipelined_small_requests_never_add_up_to_the_head_limit(serve):
    st = serve(max_head_bytes=1024)
    burst = request("/cb", b"x" * 10) * 2000  # ~100 KB in one write, each head ~50 bytes
    with connect(st.port) as s:
        s.sendall(burst)
        statuses = [read_response(s)[0] for _ in range(2000)]
    assert statuses == [200] * 2000 and st.handler.refusals == []


def test_a_head_just_under_the_limit_split_over_reads_is_served(serve):
    st = serve(max_head_bytes=4096)
    head = (
        b"POST /cb HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 3900 + b"\r\nContent-Length: 1\r\n\r\nz"
    )
    with connect(st.port) as s:
        for i in range(0, len(head), 700):
            s.sendall(head[i : i + 700])
            time.sleep(0.01)
        assert read_response(s)[2] == b'{"len":1}'


def _server_connection(st):
    conns = list(st.server.connections)
    assert len(conns) == 1
    return conns[0]


def test_answers_the_client_does_not_read_stop_reading_and_handling(serve):
    # Given a client that pipelines many requests and reads no answer
    st = serve(write_buffer_bytes=4096, max_requests_per_connection=1_000_000)
    burst = request("/cb") * 100_000  # ~4 MB
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", st.port))
        s.setblocking(False)
        sent, deadline, last_progress = 0, time.monotonic() + 5, time.monotonic()
        while (
            sent < len(burst)
            and time.monotonic() < deadline
            and time.monotonic() - last_progress < 0.5
        ):
            try:
                sent += s.send(burst[sent : sent + 65536])
                last_progress = time.monotonic()
            except BlockingIOError:
                time.sleep(0.01)
        # (the kernel's buffers take some answers: wait until no more are handled)
        handled, deadline = -1, time.monotonic() + 5
        while handled != len(st.handler.seen) and time.monotonic() < deadline:
            handled = len(st.handler.seen)
            time.sleep(0.3)
        conn = _server_connection(st)
        # Then the server stopped handing requests over and stopped reading: only a bounded number
        # of requests were parsed ahead, and of answers held, however much the client sent
        assert conn.write_paused and conn.reading_paused
        assert len(conn.queue) <= MAX_PIPELINED + READ_BYTES // len(request("/cb"))
        assert conn.transport.get_write_buffer_size() <= 4096 + 100
        assert handled < 100_000
        # When the client reads again, everything is answered, in order
        s.setblocking(True)
        s.settimeout(10)
        if sent < len(burst):
            s.sendall(burst[sent:])
        assert all(read_response(s)[0] == 200 for _ in range(100_000))
    assert len(st.handler.seen) == 100_000


# ---- connections: cap, lifetime, timeouts --------------------------------------------------------


def _open(port, n):
    socks = [connect(port) for _ in range(n)]
    time.sleep(0.1)
    return socks


def _is_open(s: socket.socket) -> bool:
    return not closed_by_server(s, 0.05)


def test_at_the_cap_the_oldest_idle_connection_makes_room(serve):
    st = serve(max_connections=4)
    socks = _open(st.port, 4)
    try:
        with connect(st.port) as new:
            new.sendall(request("/cb", b"1"))
            assert read_response(new)[0] == 200
        assert [_is_open(s) for s in socks] == [False, True, True, True]
    finally:
        for s in socks:
            s.close()


def test_at_the_cap_idle_then_slow_heads_make_room_and_never_a_request_being_answered(serve):
    # Given the cap filled by: a body trickling in (the oldest), a request being handled, and two
    # heads trickling in
    st = serve(max_connections=4)
    body_slow = connect(st.port)
    body_slow.sendall(b"POST /cb HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nab")
    held = connect(st.port)
    held.sendall(request("/held", b"1"))
    heads = _open(st.port, 2)
    for s in heads:
        s.sendall(b"POST /cb HTTP/1.1\r\nHo")
        time.sleep(0.02)
    first = second = None
    try:
        time.sleep(0.1)
        # When a sender arrives, the oldest head is closed for it (not the older body)
        first = connect(st.port)
        first.sendall(request("/cb", b"22"))
        assert read_response(first)[0] == 200
        assert [_is_open(s) for s in (body_slow, *heads)] == [True, False, True]
        # When another arrives, the idle one (the first sender, answered) goes before any request
        second = connect(st.port)
        second.sendall(request("/cb", b"333"))
        assert read_response(second)[0] == 200
        assert [_is_open(s) for s in (first, body_slow, *heads)] == [False, True, False, True]
        # And the request being handled was never closed: it is answered
        st.call(st.handler.gate.set)
        assert read_response(held)[2] == b'{"len":1}'
    finally:
        for s in [body_slow, held, *heads, first, second]:
            if s is not None:
                s.close()


def test_at_the_cap_with_nothing_to_close_the_new_connection_is_closed(serve):
    st = serve(max_connections=2)
    held = [connect(st.port) for _ in range(2)]
    for s in held:
        s.sendall(request("/held", b"1"))
    try:
        time.sleep(0.1)
        with connect(st.port) as new:
            assert closed_by_server(new, 2)
        st.call(st.handler.gate.set)
        assert [read_response(s)[0] for s in held] == [200, 200]
    finally:
        for s in held:
            s.close()


def test_the_last_request_allowed_on_a_connection_says_close(serve):
    st = serve(max_requests_per_connection=3)
    with connect(st.port) as s:
        s.sendall(request("/cb", b"1") * 5)  # two more pipelined than allowed
        answers = [read_response(s) for _ in range(3)]
        assert [a[0] for a in answers] == [200, 200, 200]
        assert [a[1].get("connection") for a in answers] == [None, None, "close"]
        assert read_response(s)[0] == 0 and closed_by_server(s, 2)
    assert len(st.handler.seen) == 3


def test_a_connection_past_its_age_limit_is_closed_with_its_answer_or_when_idle(serve):
    st = serve(max_connection_age_s=0.3)
    with connect(st.port) as busy, connect(st.port) as idle:
        # Given a request being handled when the connection grows too old
        busy.sendall(request("/cb") + request("/held", b"1"))
        assert read_response(busy)[1].get("connection") is None
        time.sleep(0.5)
        # Then its answer says close, and an idle one that old is closed
        st.call(st.handler.gate.set)
        status, headers, _ = read_response(busy)
        assert (status, headers.get("connection")) == (200, "close")
        assert closed_by_server(busy, 2) and closed_by_server(idle, 2)


def test_a_head_trickling_in_gets_408_after_the_head_timeout(serve):
    st = serve(head_timeout_s=0.3, request_timeout_s=5)
    with connect(st.port) as s:
        t0 = time.monotonic()
        for ch in b"POST /cb HTTP/1.1\r\nHost: x\r\n":
            s.send(bytes([ch]))
            if time.monotonic() - t0 > 1:
                break
            time.sleep(0.01)
        status, headers, _ = read_response(s)
        assert (status, headers.get("connection")) == (408, "close")
        assert 0.25 < time.monotonic() - t0 < 1.5
    assert st.handler.refusals == [408]


def test_a_body_trickling_in_gets_408_after_the_request_timeout_not_the_head_timeout(serve):
    st = serve(head_timeout_s=0.2, request_timeout_s=0.8)
    with connect(st.port) as s:
        t0 = time.monotonic()
        s.sendall(b"POST /cb HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        while time.monotonic() - t0 < 3 and not select.select([s], [], [], 0.05)[0]:
            s.send(b"x")
        status, headers, _ = read_response(s)
        assert (status, headers.get("connection")) == (408, "close")
        assert 0.7 < time.monotonic() - t0 < 2


def test_requests_sent_before_the_client_shut_its_side_are_answered(serve):
    st = serve()
    with connect(st.port) as s:
        s.sendall(request("/slow", b"1") + request("/cb", b"22"))
        s.shutdown(socket.SHUT_WR)
        first, second = read_response(s), read_response(s)
        assert (first[0], first[2], second[2]) == (200, b'{"len":1}', b'{"len":2}')
        assert second[1].get("connection") == "close"
        assert closed_by_server(s, 2)
