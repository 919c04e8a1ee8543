"""The callback receiver's HTTP/1.1 server: asyncio (uvloop where installed) with
httptools, uvicorn's own parser, doing the parsing.

Why not uvicorn and an ASGI framework: NXCloud sends one short JSON POST per
checked number, so the per-request cost of the HTTP layer is the receiver's
throughput. Measured on this project's 2-core machine: uvicorn's ASGI cycle
costs ~85 us of CPU per request for an app that does nothing, a bare httptools
protocol ~18 us (bench/callbacks.py, bench/coalesce.py carry the end-to-end
numbers). Parsing, the part that must be exact, stays in httptools; this module
adds only what a callback endpoint needs:

- keep-alive and pipelining: requests are answered in order, one at a time per
  connection; reading pauses while MAX_PIPELINED requests wait.
- limits: request line + headers <= max_header_bytes (431); a body larger than
  the handler's `max_body_bytes` is refused (413) from its Content-Length before
  it is read, or as soon as it grows past it; malformed HTTP gets 400. After any
  of these the connection is closed.
- timeouts: an idle keep-alive connection is closed after keep_alive_s; a request
  not complete request_timeout_s after its first byte gets 408 and is closed.
- graceful stop: stop accepting, answer every request already received, close
  idle connections, and abort what is left after grace_s.

The handler (nxjobs.callbacks.app.Receiver) sees (method, path without query,
lower-case headers, body) and returns a Reply; it never sees the socket.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol

import httptools

log = logging.getLogger("nxjobs.callbacks.http")

MAX_PIPELINED = 16

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 413: "Content Too Large", 431: "Request Header Fields Too Large",
            500: "Internal Server Error", 503: "Service Unavailable"}


class Answer(Protocol):
    status: int
    body: bytes


class Handler(Protocol):
    max_body_bytes: int

    def handle(self, method: str, path: str, headers: Mapping[str, str], body: bytes,
               respond: Callable[[Answer], None]) -> None:
        """Answer by calling `respond` exactly once, at once or later from the event loop."""

    def refused(self, status: int, reason: str) -> None:
        """Told of each request the HTTP layer refused itself (to log and count it)."""


@dataclass(frozen=True)
class HttpLimits:
    max_header_bytes: int = 16 * 1024
    # Longer than NXCloud's pause between callbacks of a burst, shorter than a forgotten connection.
    keep_alive_s: float = 15.0
    request_timeout_s: float = 30.0
    grace_s: float = 10.0
    # How often idle and stuck connections are looked for (timeouts are this much late at most).
    sweep_interval_s: float = 1.0


def _head(status: int, length: int, close: bool) -> bytes:
    return (f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\ncontent-type: application/json\r\n"
            f"content-length: {length}\r\n{'connection: close' + chr(13) + chr(10) if close else ''}\r\n").encode()


# Keep-alive heads by (status, length): the hot path answers a few fixed bodies, built once.
_HEADS: dict[tuple[int, int], bytes] = {}


def _response(status: int, body: bytes, close: bool) -> bytes:
    if close:
        return _head(status, len(body), True) + body
    head = _HEADS.get((status, len(body)))
    if head is None:
        head = _head(status, len(body), False)
        if len(_HEADS) < 256:
            _HEADS[(status, len(body))] = head
    return head + body


class _Refuse(Exception):
    """Raised inside a parser callback: answer `status` and close the connection."""

    def __init__(self, status: int, reason: str):
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class _Reply:
    status: int
    body: bytes


class _Connection(asyncio.Protocol):
    def __init__(self, server: "CallbackServer"):
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
        self.dispatching = False
        self.paused = False
        self.failed = False
        self.last_active = self.loop.time()
        self.request_started: float | None = None
        self.reading_head = True
        self.head_bytes = 0
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._size = 0

    # ---- transport events -------------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.server.connections.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # Answers are one small write each: send them now, not after the peer's delayed ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.queue.clear()

    def data_received(self, data: bytes) -> None:
        if self.failed:
            return
        if self.request_started is None:
            self.request_started = self.loop.time()
        if self.reading_head:
            self.head_bytes += len(data)
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
            self.failed = True
            self.transport.pause_reading()
            if not (self.queue or self.busy):
                self.transport.close()
            return
        except httptools.HttpParserError:
            self._fail(400, "malformed HTTP request")
            return
        # httptools holds a header being read in memory until it ends: bound what that can be.
        if self.reading_head and self.head_bytes > self.limits.max_header_bytes:
            self._fail(431, "request head too large")

    # ---- parser callbacks (httptools) --------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._body = []
        self._size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.reading_head = False
        declared = self._headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.handler.max_body_bytes:
            raise _Refuse(413, "body too large")

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self.handler.max_body_bytes:
            raise _Refuse(413, "body too large")
        self._body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode("ascii", "replace")
        path = self._url.split(b"?", 1)[0].decode("utf-8", "replace")
        keep_alive = self.parser.should_keep_alive() and not self.parser.should_upgrade()
        self.queue.append((method, path, self._headers, b"".join(self._body), keep_alive))
        self._body = []
        self.request_started = None
        self.reading_head = True
        self.head_bytes = 0
        if len(self.queue) >= MAX_PIPELINED and not self.paused:
            self.paused = True
            self.transport.pause_reading()
        self._dispatch()

    # ---- answering ----------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        """Hand queued requests to the handler, one at a time; a failure answer ends the connection."""
        if self.dispatching:  # `respond` called from inside handle(): the loop below goes on
            return
        self.dispatching = True
        try:
            while self.queue and not self.busy:
                item = self.queue.popleft()
                if isinstance(item, _Reply):  # queued by _fail: the last answer on this connection
                    self._write(_response(item.status, item.body, True), close=True)
                    self.queue.clear()
                    return
                method, path, headers, body, self.keep_alive = item
                self.busy = True
                try:
                    self.handler.handle(method, path, headers, body, self._respond)
                except Exception:
                    log.exception("callback handler failed")
                    if self.busy:
                        self._respond(_Reply(500, b'{"error":"internal error"}'))
        finally:
            self.dispatching = False

    def _respond(self, reply: Answer) -> None:
        if not self.busy:
            log.error("a request was answered twice; the second answer is dropped")
            return
        self.busy = False
        # During a stop, what was already received is still answered, then the connection closes.
        close = not self.keep_alive or (self.server.stopping and not self.queue)
        self._write(_response(reply.status, reply.body, close), close=close)
        if close or self.transport.is_closing():
            self.queue.clear()
            return
        if self.paused and len(self.queue) < MAX_PIPELINED // 2:
            self.paused = False
            self.transport.resume_reading()
        self.last_active = self.loop.time()
        self._dispatch()

    def _write(self, data: bytes, *, close: bool) -> None:
        if self.transport.is_closing():
            return
        self.transport.write(data)
        if close:
            self.transport.close()

    def _fail(self, status: int, reason: str) -> None:
        """Answer `status` after anything queued before it, then close; read nothing more."""
        self.failed = True
        self.handler.refused(status, reason)
        self.transport.pause_reading()
        self.queue.append(_Reply(status, json.dumps({"error": reason}).encode()))
        self._dispatch()

    def check_timeouts(self, now: float) -> None:
        if self.busy or self.queue or self.failed:
            return
        if self.request_started is not None:
            if now - self.request_started > self.limits.request_timeout_s:
                self._fail(408, "request not complete in time")
        elif now - self.last_active > self.limits.keep_alive_s or self.server.stopping:
            self.transport.close()


class CallbackServer:
    """Serves `handler` on an already bound, listening socket until `stop` is set."""

    def __init__(self, handler: Handler, limits: HttpLimits = HttpLimits()):
        self.handler = handler
        self.limits = limits
        self.connections: set[_Connection] = set()
        self.stopping = False
        self.loop: Any = None

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
