"""The callback receiver's HTTP/1.1 server: asyncio (uvloop where installed) with
httptools, uvicorn's own parser, doing the parsing.

Why not uvicorn, granian or hypercorn: NXCloud sends one short JSON POST per
checked number, so the per-request cost of the HTTP layer is the receiver's
throughput, and none of them enforces every limit below (docs/callbacks.md;
the figures are in bench/README.md). Parsing, the part that must be exact, stays in httptools; this
module adds only what a callback endpoint needs, and bounds what any client can
make it hold (bench/receiver_attacks.py runs the attacks):

- keep-alive and pipelining: requests are answered in order, one at a time per
  connection; reading pauses while MAX_PIPELINED requests wait, and while the
  client leaves more than write_buffer_bytes of answers unread (then no further
  request is handed to the handler either).
- limits: everything of a request but its body (request line, headers, chunk
  sizes and extensions, trailers) <= max_head_bytes, to one read's precision
  (431 while in the head, 400 after it); a body larger than the handler's
  `max_body_bytes` is refused (413) from its Content-Length before it is read
  (and before any 100 Continue), or as soon as it grows past it; malformed HTTP
  gets 400, as do HTTP/0.9, HTTP/1.1 without (or with two) Host, and
  Transfer-Encoding in HTTP/1.0; other transfer codings than chunked get 501,
  an Expect other than 100-continue 417. After any of these the connection is
  closed. httptools itself refuses Content-Length with Transfer-Encoding and a
  repeated Content-Length (400). Trailer fields are read and dropped.
- connections: at most max_connections; at the cap a new one is admitted by
  closing, in this order, one already closing with an unread last answer, the
  longest idle, one whose client reads no answers, the slowest request still in
  its head, the slowest still in its body. A connection is closed after
  max_requests_per_connection requests or max_connection_age_s (its last
  answer says `connection: close`).
- timeouts: an idle keep-alive connection is closed after keep_alive_s; a request
  whose head is not complete head_timeout_s after its first byte, or which is
  not complete request_timeout_s after it, gets 408 and is closed; a client that
  reads no answer for keep_alive_s is dropped.
- closing after an answer: our side is shut down and what the client still
  sends is read and dropped for up to LINGER_S (closing with unread bytes would
  reset the connection, and the client could lose the answer), then it is closed.
- graceful stop: stop accepting, answer every request already received, close
  idle connections, and abort what is left after grace_s.

The handler (nxjobs.callbacks.app.Receiver) sees (method, path without query,
lower-case headers, body) and returns a Reply; it never sees the socket. HEAD is
handed over as HEAD; the answer's body is left out here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httptools

log = logging.getLogger("nxjobs.callbacks.http")

MAX_PIPELINED = 16
# Every read is at most this much and is parsed whole, so the head count is exact to one read.
READ_BYTES = 8 * 1024
# Reads while requests already wait on the connection: fewer parsed ahead of reading pausing.
READ_BYTES_QUEUED = 1024
# How often the connection cap's closes are reported (one log line at most per interval).
CAP_LOG_INTERVAL_S = 10.0
# After a connection's last answer: how long what the client still sends is read and dropped.
LINGER_S = 2.0

_REASONS = {
    100: "Continue",
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    417: "Expectation Failed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class Answer(Protocol):
    # Read-only members, so frozen dataclasses (the handler's replies) qualify.
    @property
    def status(self) -> int: ...
    @property
    def body(self) -> bytes: ...
    # Extra (name, value) header fields, e.g. Allow on a 405; optional.
    @property
    def headers(self) -> Sequence[tuple[str, str]]: ...


class Handler(Protocol):
    max_body_bytes: int

    def handle(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        body: bytes,
        respond: Callable[[Answer], None],
    ) -> None:
        """Answer by calling `respond` exactly once, at once or later from the event loop."""

    def refused(self, status: int, reason: str) -> None:
        """Told of each request the HTTP layer refused itself (to log and count it)."""


@dataclass(frozen=True)
class HttpLimits:
    # Request line, headers, chunk framing and trailers of one request.
    max_head_bytes: int = 16 * 1024
    max_connections: int = 512
    # Unread answers per connection before it stops being read (the transport's high-water mark).
    write_buffer_bytes: int = 64 * 1024
    # Longer than NXCloud's pause between callbacks of a burst, shorter than a forgotten connection.
    keep_alive_s: float = 15.0
    head_timeout_s: float = 10.0
    request_timeout_s: float = 30.0
    max_requests_per_connection: int = 10_000
    max_connection_age_s: float = 600.0
    grace_s: float = 10.0
    # How often idle and stuck connections are looked for (timeouts are this much late at most).
    sweep_interval_s: float = 1.0


def _head(
    status: int, length: int, close: bool, extra: Sequence[tuple[str, str]] | None = None
) -> bytes:
    lines = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}",
        "content-type: application/json",
        f"content-length: {length}",
    ]
    if extra:
        lines += [f"{name}: {value}" for name, value in extra]
    if close:
        lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# Keep-alive heads by (status, length): the hot path answers a few fixed bodies, built once.
_HEADS: dict[tuple[int, int], bytes] = {}


def _keep_alive_head(status: int, length: int) -> bytes:
    head = _HEADS.get((status, length))
    if head is None:
        head = _head(status, length, False)
        if len(_HEADS) < 256:
            _HEADS[(status, length)] = head
    return head


class _Refuse(Exception):
    """Raised inside a parser callback: answer `status` and close the connection."""

    def __init__(self, status: int, reason: str):
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class _Reply:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


class _Dropped(dict):
    def __setitem__(self, key: str, value: str) -> None:
        pass


_TRAILERS = _Dropped()


class _Connection(asyncio.BufferedProtocol):
    # Slots: attribute access stays fast with this many attributes (and each connection is smaller).
    __slots__ = (
        "server",
        "handler",
        "limits",
        "loop",
        "transport",
        "parser",
        "queue",
        "busy",
        "keep_alive",
        "head_only",
        "dispatching",
        "finished",
        "reading_paused",
        "write_paused",
        "retiring",
        "lingering",
        "opened_at",
        "last_active",
        "stalled_at",
        "closing_at",
        "requests",
        "request_started",
        "head_done",
        "in_line",
        "expect_continue",
        "head_bytes",
        "read_body",
        "completed",
        "_url",
        "_headers",
        "fields",
        "_body",
        "_size",
        "read_view",
        "small_view",
        "order",
        "__weakref__",
    )

    def __init__(self, server: CallbackServer):
        self.server = server
        self.handler = server.handler
        self.limits = server.limits
        self.loop = server.loop
        self.transport: Any = None
        self.parser = httptools.HttpRequestParser(self)
        self.queue: deque = deque()
        # A request is with the handler (its answer not written yet): the next one waits, so
        # pipelined answers go out in order.
        self.busy = False
        self.keep_alive = True
        self.head_only = False  # the answer being prepared is for a HEAD request
        self.dispatching = False
        # Nothing more is read: refused, upgraded, or its last request read.
        self.finished = False
        self.reading_paused = False
        self.write_paused = False
        self.retiring = False  # too old: the next answer closes it
        self.lingering = False  # the last answer is written: reading only to drop what comes
        self.opened_at = self.last_active = self.loop.time()
        self.stalled_at = 0.0  # when writing paused
        self.closing_at = 0.0  # when close() was called (the last answer may still be unread)
        self.requests = 0
        # The request being read: when its first byte came, whether its head is complete,
        # whether it is still in its request line, and whether it waits for 100 Continue.
        self.request_started: float | None = None
        self.head_done = False
        self.in_line = False
        self.expect_continue = False
        # Bytes of the current request that were not body, counted per read (see buffer_updated).
        self.head_bytes = 0
        self.read_body = 0
        self.completed = False
        self._url = b""
        self._headers: dict[str, str] = {}  # where on_header writes
        self.fields: dict[str, str] = {}  # the head's fields, once complete
        self._body: list[bytes] = []
        self._size = 0
        self.read_view = server.read_view
        self.small_view = server.small_view
        # Ties on the loop's clock (one reading per loop iteration) go to the older connection.
        server.opened += 1
        self.order = server.opened

    # ---- transport events ------------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        server = self.server
        if len(server.connections) >= self.limits.max_connections and not server.make_room():
            self.finished = True
            server.turned_away += 1
            server.report_cap()
            transport.abort()
            return
        server.connections.add(self)
        transport.set_write_buffer_limits(high=self.limits.write_buffer_bytes)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # Answers are one small write each: send them now, not after the peer's delayed ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.finished = True
        self.server.connections.discard(self)
        self.queue.clear()

    def eof_received(self) -> bool | None:
        if self.busy or self.queue:  # the client sent its last request and waits for the answers
            self.finished = True
            return True  # keep our side open; the last answer closes it
        return None

    def pause_writing(self) -> None:
        self.write_paused = True
        self.stalled_at = self.loop.time()
        self._pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.transport.is_closing():
            return
        self._resume_reading()
        self._dispatch()

    def get_buffer(self, sizehint: int) -> memoryview:
        # One buffer for every connection: each read is parsed whole before the next one.
        return self.small_view if self.queue else self.read_view

    def buffer_updated(self, nbytes: int) -> None:
        if self.finished:
            return
        data = self.read_view[:nbytes]
        self.read_body = 0
        self.completed = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _Refuse):
                self._fail(cause.status, cause.reason)
            else:
                log.error("HTTP parser callback failed: %s", type(cause).__name__)
                self._fail(500, "internal error")
            return
        except httptools.HttpParserUpgrade:
            # The request asking for it was parsed first and is answered as plain HTTP with
            # `connection: close` (on_message_complete); what follows would be the other protocol.
            self.finished = True
            if not self.lingering:
                self._pause_reading()
            return
        except httptools.HttpParserError:
            self._fail(400, "malformed HTTP request")
            return
        if self.finished:
            return
        # What was not body counts against the head limit: httptools holds a header or trailer
        # value in memory until it ends, and reads chunk extensions without bound. The count
        # restarts after a read that completed a request, so pipelined small requests never add up.
        if self.completed:
            self.head_bytes = 0
        else:
            self.head_bytes += nbytes - self.read_body
            if self.head_bytes > self.limits.max_head_bytes:
                if self.head_done:
                    self._fail(400, "chunk framing or trailers too large")
                else:
                    self._fail(431, "request head too large")
                return
        if self.in_line:
            self._check_request_line(data)
        if self.expect_continue and not (self.busy or self.queue):
            self._send_continue()

    def _check_request_line(self, data: memoryview) -> None:
        # httptools takes "GET /" + CRLF as HTTP/0.9 and waits for headers that never come.
        version = self.parser.get_http_version()
        if version == "0.9" or (version == "0.0" and data[-1] in (10, 13)):
            self._fail(400, "HTTP/0.9 request")

    # ---- parser callbacks (httptools) ------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._body = []
        self._size = 0
        self.request_started = self.loop.time()
        self.head_done = False
        self.in_line = True

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        headers = self._headers
        if key == "host" and key in headers:
            raise _Refuse(400, "more than one Host field")
        headers[key] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.head_done = True
        self.in_line = False
        headers = self.fields = self._headers
        self._headers = _TRAILERS  # trailer fields: counted against the head limit, then dropped
        if self.parser.get_http_version() != "1.1" or "host" not in headers:
            self._check_version(headers)
        if "transfer-encoding" in headers or "expect" in headers:
            self._check_framing(headers)
        declared = headers.get("content-length")
        if (
            declared is not None
            and declared.isdigit()
            and int(declared) > self.handler.max_body_bytes
        ):
            raise _Refuse(413, "body too large")

    def _check_version(self, headers: dict[str, str]) -> None:
        version = self.parser.get_http_version()
        if version == "1.1":
            raise _Refuse(400, "HTTP/1.1 request without Host")
        if version != "1.0":
            raise _Refuse(505 if version[0] not in "01" else 400, f"HTTP/{version} request")

    def _check_framing(self, headers: dict[str, str]) -> None:
        coding = headers.get("transfer-encoding")
        if coding is not None:
            if self.parser.get_http_version() == "1.0":
                raise _Refuse(400, "Transfer-Encoding in an HTTP/1.0 request")
            if coding.lower() != "chunked":
                raise _Refuse(501, "transfer coding not supported")
        expect = headers.get("expect")
        if expect is not None:
            if expect.lower() != "100-continue":
                raise _Refuse(417, "expectation not supported")
            # HTTP/1.0 clients do not wait for it; sent once the head is read and nothing is before
            # it.
            self.expect_continue = self.parser.get_http_version() == "1.1"

    def on_body(self, body: bytes) -> None:
        n = len(body)
        self.read_body += n
        self._size += n
        if self._size > self.handler.max_body_bytes:
            raise _Refuse(413, "body too large")
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.completed = True
        self.expect_continue = False
        if self.finished:  # pipelined after the connection's last request: dropped
            return
        method = self.parser.get_method().decode("ascii", "replace")
        url = self._url
        query = url.find(b"?")
        path = (url if query < 0 else url[:query]).decode("utf-8", "replace")
        keep_alive = self.parser.should_keep_alive() and not self.parser.should_upgrade()
        self.requests += 1
        if self.requests >= self.limits.max_requests_per_connection:
            keep_alive = False
        if not keep_alive:
            self.finished = True
            self._pause_reading()
        self.queue.append((method, path, self.fields, b"".join(self._body), keep_alive))
        self._body = []
        self.request_started = None
        if len(self.queue) >= MAX_PIPELINED:
            self._pause_reading()
        self._dispatch()

    # ---- answering -------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        """Hand queued requests to the handler, one at a time; a failure answer ends the
        connection."""
        if self.dispatching:  # `respond` called from inside handle(): the loop below goes on
            return
        self.dispatching = True
        try:
            while self.queue and not self.busy and not self.write_paused:
                item = self.queue.popleft()
                if isinstance(item, _Reply):  # queued by _fail: the last answer on this connection
                    self._write(_head(item.status, len(item.body), True) + item.body, close=True)
                    return
                method, path, headers, body, self.keep_alive = item
                self.head_only = method == "HEAD"
                self.busy = True
                try:
                    self.handler.handle(method, path, headers, body, self._respond)
                except Exception:
                    log.exception("callback handler failed")
                    if self.busy:
                        self._respond(_Reply(500, b'{"error":"internal error"}'))
        finally:
            self.dispatching = False
        if self.expect_continue and not (self.busy or self.queue):
            self._send_continue()

    def _respond(self, reply: Answer) -> None:
        if not self.busy:
            log.error("a request was answered twice; the second answer is dropped")
            return
        self.busy = False
        # After its last request (or during a stop) what was received is still answered, then it
        # closes.
        close = (
            not self.keep_alive
            or self.retiring
            or ((self.finished or self.server.stopping) and not self.queue)
        )
        body = reply.body
        extra = getattr(reply, "headers", None)
        if close or extra:
            head = _head(reply.status, len(body), close, extra)
        else:
            head = _HEADS.get((reply.status, len(body))) or _keep_alive_head(
                reply.status, len(body)
            )
        self._write(head if self.head_only else head + body, close=close)
        if close or self.lingering or self.transport.is_closing():
            return
        if self.reading_paused:
            self._resume_reading()
        self.last_active = self.loop.time()
        self._dispatch()

    def _send_continue(self) -> None:
        self.expect_continue = False
        if not self.transport.is_closing():
            self.transport.write(_CONTINUE)

    def _write(self, data: bytes, *, close: bool) -> None:
        transport = self.transport
        if transport.is_closing() or self.lingering:
            return
        transport.write(data)
        if not close:
            return
        self.queue.clear()
        if not transport.can_write_eof():
            self._close()
            return
        self.finished = self.lingering = True
        self.closing_at = self.loop.time()
        transport.write_eof()
        self.reading_paused = False
        # buffer_updated drops it all; the client's EOF closes the transport
        transport.resume_reading()

    def _close(self) -> None:
        self.finished = True
        self.closing_at = self.loop.time()
        self.transport.close()

    def _pause_reading(self) -> None:
        if not self.reading_paused and not self.lingering:
            self.reading_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if (
            self.reading_paused
            and not self.finished
            and not self.write_paused
            and len(self.queue) < MAX_PIPELINED // 2
        ):
            self.reading_paused = False
            self.transport.resume_reading()

    def _fail(self, status: int, reason: str) -> None:
        """Answer `status` after anything queued before it, then close; read nothing more."""
        self.finished = True
        self.expect_continue = False
        self.handler.refused(status, reason)
        self._pause_reading()
        self.queue.append(_Reply(status, json.dumps({"error": reason}).encode()))
        self._dispatch()

    def drop(self) -> None:
        """Close now, whatever is buffered (the connection cap, a client that reads nothing)."""
        self.finished = True
        self.server.connections.discard(self)
        self.queue.clear()
        self.transport.abort()

    def check_timeouts(self, now: float) -> None:
        limits = self.limits
        if self.lingering or self.transport.is_closing():  # after its last answer
            if now - self.closing_at > LINGER_S:
                self.drop()
            elif self.server.stopping and not self.transport.get_write_buffer_size():
                # the answer is with the kernel: no need to wait for the client
                self.transport.close()
            return
        if self.write_paused:
            if now - self.stalled_at > limits.keep_alive_s:
                self.drop()
            return
        if now - self.opened_at > limits.max_connection_age_s:
            self.retiring = True
        if self.busy or self.queue or self.finished:
            return
        started = self.request_started
        if started is not None:
            if now - started > limits.request_timeout_s:
                self._fail(408, "request not complete in time")
            elif not self.head_done and now - started > limits.head_timeout_s:
                self._fail(408, "request head not complete in time")
        elif self.retiring or now - self.last_active > limits.keep_alive_s or self.server.stopping:
            self._close()

    def eviction_rank(self) -> tuple[int, float, int] | None:
        """Which connection the cap closes first (lowest); None: never (its answer is being
        made)."""
        if self.lingering or self.transport.is_closing():
            return 0, self.closing_at, self.order
        if self.write_paused:
            return 2, self.stalled_at, self.order
        if self.busy or self.queue:
            return None
        if self.request_started is None:
            return 1, self.last_active, self.order
        return (3 if not self.head_done else 4), self.request_started, self.order


class CallbackServer:
    """Serves `handler` on an already bound, listening socket until `stop` is set."""

    def __init__(self, handler: Handler, limits: HttpLimits = HttpLimits()):
        self.handler = handler
        self.limits = limits
        self.connections: set[_Connection] = set()
        self.stopping = False
        self.loop: Any = None
        self.read_view = memoryview(bytearray(READ_BYTES))
        self.small_view = self.read_view[:READ_BYTES_QUEUED]
        # Connections closed to admit new ones / new ones closed at once, since the last report.
        self.evicted = 0
        self.turned_away = 0
        self.opened = 0
        self._reported_at = float("-inf")

    async def serve(self, sock: socket.socket, stop: asyncio.Event) -> None:
        self.loop = asyncio.get_running_loop()
        server = await self.loop.create_server(lambda: _Connection(self), sock=sock, backlog=2048)
        sweeper = self.loop.create_task(self._sweep_forever())
        try:
            await stop.wait()
        finally:
            self.stopping = True
            server.close()
            sweeper.cancel()
            await self._drain()

    def make_room(self) -> bool:
        """At the cap: close the connection least likely to be a sender about to be answered."""
        victim, best = None, None
        for conn in self.connections:
            rank = conn.eviction_rank()
            if rank is not None and (best is None or rank < best):
                victim, best = conn, rank
        if victim is None:
            return False
        victim.drop()
        self.evicted += 1
        self.report_cap()
        return True

    def report_cap(self) -> None:
        now = self.loop.time()
        if now - self._reported_at >= CAP_LOG_INTERVAL_S:
            self._reported_at = now
            log.warning(
                "connection cap %d reached: %d connection(s) closed to admit new ones, "
                "%d new one(s) closed (no room) since the last report",
                self.limits.max_connections,
                self.evicted,
                self.turned_away,
            )
            self.evicted = self.turned_away = 0

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.limits.sweep_interval_s)
            now = self.loop.time()
            for conn in list(self.connections):
                conn.check_timeouts(now)

    async def _drain(self) -> None:
        deadline = self.loop.time() + self.limits.grace_s
        while self.connections and self.loop.time() < deadline:
            now = self.loop.time()
            for conn in list(self.connections):
                conn.check_timeouts(now)  # idle ones close now that we are stopping
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.transport.abort()
