"""The receiver's HTTP server (nxjobs/callbacks/http.py) over real sockets.

A stand-in handler (the HTTP layer never looks inside a callback) records what
it was given and answers with the request's body length, so each answer says
which request it belongs to. The server runs in a thread's event loop; the
tests talk raw HTTP/1.1 to it on 127.0.0.1, because what is under test is what
happens on the wire: keep-alive, pipelining order, limits, timeouts, stop.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from dataclasses import dataclass

import pytest

from nxjobs.callbacks.http import CallbackServer, HttpLimits

pytestmark = pytest.mark.timeout(30)

BODY_LIMIT = 1000


@dataclass(frozen=True)
class _Reply:
    status: int
    body: bytes


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

        self.thread = threading.Thread(target=lambda: self.loop.run_until_complete(main()), daemon=True)
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


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    _readers.pop(s.fileno(), None)  # a reused descriptor number starts with an empty buffer
    return s


def request(path: str, body: bytes = b"", *, extra: str = "", method: str = "POST") -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n").encode() + body


def read_response(s: socket.socket) -> tuple[int, dict, bytes]:
    """The next response (status, headers, body) on `s`, or (0, {}, b"") if the server closed first.

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
    return status, headers, reader.read(int(headers["content-length"]))


_readers: dict[int, object] = {}


def closed_by_server(s: socket.socket, within_s: float) -> bool:
    s.settimeout(within_s)
    try:
        return s.recv(1) == b""
    except (socket.timeout, TimeoutError):
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
        s.sendall(f"POST /cb HTTP/1.1\r\nHost: x\r\nContent-Length: {BODY_LIMIT + 1}\r\n\r\n".encode())
        # Then 413 comes back at once and the connection is closed; the handler saw nothing
        status, headers, _ = read_response(s)
        assert (status, headers.get("connection")) == (413, "close")
        assert closed_by_server(s, 2)
    assert st.handler.seen == [] and st.handler.refusals == [413]


def test_chunked_body_growing_past_the_limit_is_refused(serve):
    st = serve()
    chunk = b"x" * 600
    with connect(st.port) as s:
        s.sendall(b"POST /cb HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                  + b"%x\r\n%s\r\n" % (len(chunk), chunk) * 2 + b"0\r\n\r\n")
        assert read_response(s)[0] == 413
    assert st.handler.seen == []


def test_chunked_body_within_the_limit_is_joined(serve):
    st = serve()
    with connect(st.port) as s:
        s.sendall(b"POST /cb HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        assert read_response(s)[2] == b'{"len":5}'
    assert st.handler.seen[0][3] == b"abcde"


def test_oversized_head_is_refused_with_431(serve):
    st = serve(max_header_bytes=2048)
    with connect(st.port) as s:
        s.sendall(b"POST /cb HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 4096)  # never finished
        status, headers, _ = read_response(s)
        assert (status, headers.get("connection")) == (431, "close")
    assert st.handler.seen == []


@pytest.mark.parametrize("garbage", [b"NOT HTTP AT ALL\r\n\r\n", b"POST /cb HTTP/1.1\r\nContent-Length: x\r\n\r\n"])
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
        s.sendall(b"GET /cb HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
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
