"""The sandbox's callback sender: a background thread that POSTs what the handlers queued.

Handlers only append to `state.stores.outbox` (they stay pure); this thread
takes the outbox, rolls the dice (drop, duplicate), schedules each delivery
`callback_delay_s` (+ up to `callback_jitter_s`, which reorders them) ahead,
and sends when due. Callbot callbacks are signed like NXCloud signs them
(docs/provider.md §4: requestID, uuid, createTs, sign over the raw body), freshly on
every attempt. Anything but a 2xx is tried again every `callback_retry_s`
until `callback_retry_window_s` after the first attempt (NXCloud: every minute
for up to an hour, §5.4), then given up.

Sending is one asyncio event loop in that thread (uvloop when installed) with
up to CONNECTIONS_PER_ORIGIN keep-alive HTTP/1.1 connections per (scheme, host,
port), each carrying one request at a time, written as prebuilt bytes; answers
are read by httptools' response parser (llhttp, as the receiver's server uses).
Benchmarks feed thousands of DRs a second to a receiver on the same machine, so
CPU spent here is CPU the receiver lacks (`requests` from threads and a coroutine
awaiting a future per request both cost more). A kept-alive connection is driven by
callbacks: its answer counts the attempt in `data_received` and queues the
connection, and once the loop iteration has read every answer it got, the next
requests go out together. Only opening a connection is a coroutine. What is
left is mostly the kernel's (a send and a receive per callback) and encoding JSON.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import ssl
import threading
import time
import uuid
from base64 import b64encode
from collections import deque
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import httptools
from pydantic_core import to_json

from nxjobs.client.signing import callbot_headers
from sandbox import accounts
from sandbox.endpoints_callbot import start_due
from sandbox.state import SandboxState

# Connect timeout, and the longest silence while waiting for an answer (requests' timeout=).
SEND_TIMEOUT_S = 5.0
CONNECTIONS_PER_ORIGIN = 32
# Connections being opened at once to one origin. A burst of 32 SYNs overflows the listen backlog
# of small servers (socketserver's is 5) and the dropped ones wait a whole second to be resent.
CONNECTS_PER_ORIGIN = 4
IDLE_WAIT_S = 0.02
# Below common servers' keep-alive timeouts (uvicorn's default is 5 s), so we close idle connections
# before the server does and rarely write into one it is closing.
IDLE_CLOSE_S = 4.0
MAX_HEAD_BYTES = 64 * 1024


@dataclass(order=True, slots=True)
class _Delivery:
    due: float
    seq: int
    kind: str = field(compare=False)
    url: str = field(compare=False)
    text: str = field(compare=False)
    signed: bool = field(compare=False)
    epoch: int = field(compare=False)
    first_attempt: float | None = field(default=None, compare=False)
    attempts: int = field(default=0, compare=False)
    # The request as sent, kept for re-sends of unsigned callbacks (signed ones are re-signed).
    raw: bytes | None = field(default=None, compare=False)


@lru_cache(maxsize=4096)
def _target(url: str) -> tuple[tuple[str, str, int], bytes] | str:
    """((scheme, host, port), request head up to the per-attempt headers), or an error name."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "InvalidURL"
    scheme = parts.scheme.lower()
    if not scheme:
        return "MissingSchema"
    if scheme not in ("http", "https"):
        return "InvalidSchema"
    if not parts.hostname:
        return "InvalidURL"
    target = quote(parts.path or "/", safe="/%!$&'()*+,;=:@~-._")
    if parts.query:
        target += "?" + quote(parts.query, safe="/%!$&'()*+,;=:@~-._?")
    head = (
        f"POST {target} HTTP/1.1\r\nHost: {parts.netloc.rpartition('@')[2]}\r\n"
        "User-Agent: nxjobs-sandbox\r\nContent-Type: application/json; charset=utf-8\r\n"
    )
    if parts.username is not None:
        user_pass = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode(
            "latin-1", "replace"
        )
        head += f"Authorization: Basic {b64encode(user_pass).decode()}\r\n"
    return (scheme, parts.hostname, port or (443 if scheme == "https" else 80)), head.encode(
        "latin-1", "replace"
    )


class _ResponseReader:
    """The answers on one connection, read with httptools (llhttp): one final response per request.

    `expect()` before each request; `feed()` gives (status, reusable) once the final response is
    complete (1xx skipped), None for "need more", and raises ValueError if the answer is malformed.
    Content-Length, chunked and close-delimited bodies (`eof()` settles those) are understood.
    """

    __slots__ = ("parser", "status", "keep_alive", "framed", "head_done", "done", "head_bytes")

    def __init__(self) -> None:
        # One parser per connection: after a keep-alive answer it reads the next one.
        self.parser = httptools.HttpResponseParser(self)
        self.expect()

    def expect(self) -> None:
        self.status = 0
        self.keep_alive = False
        self.framed = False  # a Content-Length or chunked body (else: until the server closes)
        self.head_done = False  # the final (not 1xx) response's head was read
        self.done = False
        self.head_bytes = 0

    def feed(self, data: bytes) -> tuple[int, bool] | None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # 101: the connection is no longer HTTP
            return self.status, False
        except httptools.HttpParserError as exc:
            if self.done:  # bytes after the answer (or after Connection: close): not reusable
                return self.status, False
            raise ValueError(f"malformed response: {exc}") from None
        if self.done:
            return self.status, self.keep_alive
        if not self.head_done:
            self.head_bytes += len(data)
            if self.head_bytes > MAX_HEAD_BYTES:
                raise ValueError("response head too large")
        return None

    def eof(self) -> int | None:
        """The status if the server's close ended the answer (a close-delimited body), else None."""
        if self.done or (self.head_done and not self.framed):
            return self.status
        return None

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self.done:
            raise BufferError("bytes after the answer")  # stops the parser; feed() reports it
        self.framed = False

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-length":
            self.framed = True
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            self.framed = True

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if not 100 <= status < 200 or status == 101:
            self.status, self.head_done = status, True

    def on_message_complete(self) -> None:
        if self.head_done:
            self.done = True
            # Read now: llhttp forgets the answer's Connection header once the next one begins.
            self.keep_alive = self.parser.should_keep_alive()


class _Conn(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time.

    An answer (or a failure: the status is then an error name, as requests names it) goes to the
    dispatcher's `_answered`, except the first one on a new connection, which resolves `first()`
    for the coroutine that opened it.
    """

    __slots__ = (
        "owner",
        "origin",
        "loop",
        "transport",
        "closed",
        "reader",
        "d",
        "started",
        "data",
        "waiter",
        "deadline",
        "got_bytes",
        "used",
        "idle_since",
    )

    def __init__(self, owner: CallbackDispatcher, origin: _Origin, loop: asyncio.AbstractEventLoop):
        self.owner = owner
        self.origin = origin
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reader = _ResponseReader()
        self.d: _Delivery | None = None  # the delivery in flight
        self.started = 0.0  # its attempt's start (monotonic)
        self.data = b""  # its request bytes, for a re-send on a new connection
        self.waiter: asyncio.Future | None = None
        self.deadline = 0.0
        self.got_bytes = False
        self.used = 0  # answers read
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.owner._conns.add(self)

    def usable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    def first(self, d: _Delivery, started: float, data: bytes) -> asyncio.Future:
        """Send the first request; the future resolves to (status or error name, reusable)."""
        self.waiter = waiter = self.loop.create_future()
        self.send(d, started, data)
        return waiter

    def send(self, d: _Delivery, started: float, data: bytes) -> None:
        self.d, self.started, self.data = d, started, data
        self.got_bytes = False
        self.reader.expect()
        self.deadline = self.loop.time() + SEND_TIMEOUT_S
        try:
            self.transport.write(data)  # type: ignore[union-attr]
        except Exception as exc:  # never lose a delivery to a surprise: it is a failed attempt
            self.loop.call_soon(
                self._fail, type(exc).__name__
            )  # (not from inside another answer's callback)

    def data_received(self, data: bytes) -> None:
        if self.d is None:
            self.abort()  # nothing was asked: the stream is out of step
            return
        try:
            parsed = self.reader.feed(data)
        except ValueError:
            self.got_bytes = True
            self._fail("ConnectionError")
            return
        if parsed is None:  # a partial answer (the parser keeps it): the silence timer restarts
            self.got_bytes = True
            self.deadline = self.loop.time() + SEND_TIMEOUT_S
            return
        self.used += 1
        self._finish(*parsed)

    def _finish(self, status: int | str, reusable: bool) -> None:
        d, self.d = self.d, None
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result((status, reusable))
            return
        self.owner._answered(self, d, status, reusable)  # type: ignore[arg-type]

    def _fail(self, name: str) -> None:
        self.abort()
        if self.d is not None:
            self._finish(name, False)

    def check_deadline(self, now: float) -> None:
        if self.d is not None and now >= self.deadline:
            self._fail("ReadTimeout")

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost settles a close-delimited answer

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.owner._conns.discard(self)
        if self.d is None:
            return
        status = self.reader.eof()
        if status is None:
            self._finish("ConnectionError", False)
        else:
            self.used += 1
            self._finish(status, False)

    def abandon(self) -> None:
        """stop(): close without answering anyone."""
        self.d = self.waiter = None
        self.abort()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class _Origin:
    """Deliveries waiting for a connection to one (scheme, host, port), and its idle connections."""

    __slots__ = ("key", "queue", "idle", "workers", "connecting")

    def __init__(self, key: tuple[str, str, int]):
        self.key = key
        self.queue: deque[_Delivery] = deque()
        self.idle: list[_Conn] = []
        # Connections carrying a request or being opened for one; at most CONNECTIONS_PER_ORIGIN.
        self.workers = 0
        self.connecting = asyncio.Semaphore(CONNECTS_PER_ORIGIN)

    def take_idle(self) -> _Conn | None:
        while self.idle:
            conn = self.idle.pop()  # the most recently used: the rest can age out
            if conn.usable():
                return conn
        return None


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        # a dependency (the receiver runs on it); roughly halves the cost of a request
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class CallbackDispatcher:
    """Start with `start()`, stop with `stop()`; owned by the sandbox handle."""

    def __init__(self, state: SandboxState):
        self.state = state
        # Scheduled deliveries. Those due no earlier than the last one queued (all of them, without
        # jitter) wait in a FIFO; the rest (retries, jittered ones) in a heap of (due, seq,
        # delivery), whose pops cost log(n) comparisons (tuples compare in C, the dataclass's __lt__
        # does not).
        self._fifo: deque[_Delivery] = deque()
        self._heap: list[tuple[float, int, _Delivery]] = []
        self._seq = itertools.count()
        self._stopped = False  # set by stop() from another thread; read between callbacks
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main_task: asyncio.Task | None = None
        self._origins: dict[tuple[str, str, int], _Origin] = {}
        self._tasks: set[asyncio.Task] = set()
        self._conns: set[_Conn] = set()  # every open connection, idle or not
        # Connections whose answer came this loop iteration (closed if they cannot be reused).
        self._answered_conns: list[_Conn] = []
        self._ssl: ssl.SSLContext | None = None
        self._thread = threading.Thread(target=self._run, name="sandbox-callbacks", daemon=True)

    def start(self) -> CallbackDispatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sending now: in-flight attempts are abandoned uncounted, connections closed."""
        self._stopped = True
        loop, task = self._loop, self._main_task
        if loop is not None and task is not None:
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:  # the loop already closed
                pass
        if self._thread.ident is not None:
            self._thread.join(timeout=5)

    def pending(self) -> int:
        """Deliveries scheduled but not yet due (including retries waiting for their time)."""
        with self._lock:
            return len(self._fifo) + len(self._heap)

    # ---- the loop -------------------------------------------------------------

    def _run(self) -> None:
        loop = _new_loop()
        task = loop.create_task(self._main())
        self._main_task, self._loop = task, loop
        try:
            loop.run_until_complete(task)
        except asyncio.CancelledError:
            pass
        finally:
            try:
                loop.run_until_complete(self._close_all())
                loop.run_until_complete(loop.shutdown_default_executor())  # getaddrinfo threads
            finally:
                loop.close()

    async def _main(self) -> None:
        last_sweep = time.monotonic()
        while not self._stopped:
            start_due(self.state)  # tasks whose scheduled start came queue their callbacks
            self._schedule(self.state.take_outbox())
            self._route(self._due())
            now = time.monotonic()
            if self._conns:
                loop_now = self._loop.time()  # type: ignore[union-attr]
                for conn in [c for c in self._conns if c.d is not None]:
                    conn.check_deadline(loop_now)
            if now - last_sweep >= 1.0:
                last_sweep = now
                self._sweep_idle(now)
            await asyncio.sleep(IDLE_WAIT_S)

    async def _close_all(self) -> None:
        self._stopped = True  # (also when _main failed): nothing new is sent from here on
        # Connections first: an answer arriving while the tasks wind down must not be counted.
        for conn in list(self._conns):
            conn.abandon()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for origin in self._origins.values():
            origin.idle.clear()
        for conn in list(self._conns):
            conn.abandon()
        await asyncio.sleep(
            0
        )  # let the aborted transports run connection_lost and free their sockets

    def _schedule(self, items: list[dict[str, Any]]) -> None:
        if not items:
            return
        config = self.state.config
        # Read once: the dice are rolled only for rates above 0, as roll() itself does (seeded runs
        # stay stable).
        drop_rate, duplicate_rate = config.callback_drop_rate, config.callback_duplicate_rate
        delay_s, jitter_s = config.callback_delay_s, config.callback_jitter_s
        now = time.monotonic()
        fifo, heap = self._fifo, self._heap
        with self._lock:
            for item in items:
                if drop_rate > 0 and self.state.roll(drop_rate):
                    self.state.callbacks["dropped"] += 1
                    continue
                copies = 2 if duplicate_rate > 0 and self.state.roll(duplicate_rate) else 1
                if copies == 2:
                    self.state.callbacks["duplicated"] += 1
                # Signed bodies are signed over exactly this text, so any compact JSON will do;
                # pydantic-core's encoder is several times faster than json.dumps.
                text = to_json(item["body"]).decode("utf-8")
                for _ in range(copies):
                    due = now + (delay_s + self._jitter(jitter_s) if jitter_s > 0 else delay_s)
                    d = _Delivery(
                        due,
                        next(self._seq),
                        item["kind"],
                        item["url"],
                        text,
                        item["signed"],
                        item["epoch"],
                    )
                    if not fifo or due >= fifo[-1].due:
                        fifo.append(d)
                    else:
                        heapq.heappush(heap, (due, d.seq, d))

    def _jitter(self, upto: float) -> float:
        with self.state.lock:
            return self.state.rng.uniform(0, upto)

    def _due(self) -> list[_Delivery]:
        """Deliveries due now, in (due, seq) order, without those scheduled before a reset."""
        now = time.monotonic()
        out = []
        fifo, heap = self._fifo, self._heap
        with self._lock:
            epoch = self.state.epoch
            while True:
                if (
                    fifo
                    and fifo[0].due <= now
                    and not (heap and heap[0] < (fifo[0].due, fifo[0].seq))
                ):
                    delivery = fifo.popleft()
                elif heap and heap[0][0] <= now:
                    delivery = heapq.heappop(heap)[2]
                else:
                    break
                if delivery.epoch == epoch:
                    out.append(delivery)
        return out

    def _route(self, deliveries: list[_Delivery]) -> None:
        """Queue each delivery on its origin and put connections to work, up to the
        origin's limit."""
        touched = {}
        for d in deliveries:
            target = _target(d.url)
            if isinstance(
                target, str
            ):  # not a URL we can POST to: a failed attempt, like requests raised
                if d.epoch == self.state.epoch:
                    self._account(d, self._begin(d), target)
                continue
            origin = self._origins.get(target[0])
            if origin is None:
                origin = self._origins[target[0]] = _Origin(target[0])
            origin.queue.append(d)
            touched[target[0]] = origin
        for origin in touched.values():
            for _ in range(min(CONNECTIONS_PER_ORIGIN - origin.workers, len(origin.queue))):
                origin.workers += 1
                self._feed(origin, None)

    def _sweep_idle(self, now: float) -> None:
        for key, origin in list(self._origins.items()):
            keep = []
            for conn in origin.idle:
                if conn.usable() and now - conn.idle_since < IDLE_CLOSE_S:
                    keep.append(conn)
                else:
                    conn.abort()
            origin.idle = keep
            if not keep and not origin.queue and not origin.workers:
                del self._origins[key]

    # ---- one request at a time per connection, driven by its answers -------------------

    def _feed(self, origin: _Origin, conn: _Conn | None) -> None:
        """Give a working slot of `origin` (with `conn`, if it has one) its next request,
        or end the slot.

        Called when a slot starts and whenever its request was answered. No task, future or
        coroutine per request: a kept-alive connection's next request is written from a plain
        callback; only opening a connection is a coroutine, as it waits for a connect slot.
        """
        queue = origin.queue
        if not self._stopped:
            epoch = self.state.epoch
            while queue:
                d = queue.popleft()
                if d.epoch != epoch:  # the sandbox was reset since this was scheduled
                    continue
                started = self._begin(d)
                data = self._request_bytes(d)
                if conn is None or not conn.usable():
                    conn = origin.take_idle()
                if conn is None:
                    self._spawn(self._open(origin, d, started, data))
                else:
                    conn.send(d, started, data)
                return
        origin.workers -= 1
        if conn is not None:
            if conn.usable() and not self._stopped:
                conn.idle_since = time.monotonic()
                origin.idle.append(conn)
            else:
                conn.abort()

    def _answered(self, conn: _Conn, d: _Delivery, status: int | str, reusable: bool) -> None:
        """A kept-alive connection's request is over: count the attempt, and have the next
        one sent."""
        if not reusable:
            conn.abort()
            if status == "ConnectionError" and not conn.got_bytes:
                # A kept-alive connection the server closed just as we wrote: nothing of ours was
                # answered, so send once more on a new connection (browsers and urllib3 do the
                # same).
                self._spawn(self._open(conn.origin, d, conn.started, conn.data))
                return
        self._account(d, conn.started, status)
        # The next requests go out together once this loop iteration has read every answer it got,
        # and the receiver takes them in a burst: written one by one from here, each would wake an
        # idle receiver, and its answer us, for about one request.
        self._answered_conns.append(conn)
        if len(self._answered_conns) == 1:
            self._loop.call_soon(self._feed_answered)  # type: ignore[union-attr]

    def _feed_answered(self) -> None:
        conns, self._answered_conns = self._answered_conns, []
        for conn in conns:
            self._feed(
                conn.origin, conn
            )  # (one that cannot be reused is closed: _feed passes it over)

    def _spawn(self, coro: Any) -> None:
        task = self._loop.create_task(coro)  # type: ignore[union-attr]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _open(self, origin: _Origin, d: _Delivery, started: float, data: bytes) -> None:
        """Send `d` on a new connection, count the attempt, and keep the slot working."""
        conn: _Conn | None = None
        reusable = False
        try:
            # The slot is held until the server answers on the new connection: a connect completes
            # in the kernel before the server accept()s it, so only this bounds how many wait in its
            # backlog.
            async with origin.connecting:
                try:
                    conn = await self._connect(origin)
                except TimeoutError:
                    status: int | str = "ConnectTimeout"
                except ssl.SSLError:
                    status = "SSLError"
                except OSError:
                    status = "ConnectionError"
                except Exception as exc:
                    status = type(exc).__name__
                else:
                    status, reusable = await conn.first(d, started, data)
        except (
            asyncio.CancelledError
        ):  # stop(): the attempt is abandoned, no half-used connection survives
            if conn is not None:
                conn.abandon()
            origin.workers -= 1
            raise
        if conn is not None and not reusable:
            conn.abort()
            conn = None
        self._account(d, started, status)
        self._feed(origin, conn)

    async def _connect(self, origin: _Origin) -> _Conn:
        scheme, host, port = origin.key
        loop = asyncio.get_running_loop()
        context = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        _, conn = await asyncio.wait_for(
            loop.create_connection(lambda: _Conn(self, origin, loop), host, port, ssl=context),
            SEND_TIMEOUT_S,
        )
        return conn

    def _request_bytes(self, d: _Delivery) -> bytes:
        if d.raw is not None:
            return d.raw
        target = _target(d.url)
        assert not isinstance(target, str)  # only deliveries to a valid URL reach an origin
        head = target[1]
        body = d.text.encode("utf-8")
        if d.signed:
            headers = callbot_headers(
                secret_key=accounts.CALLBOT_SECRET_KEY,
                uuid=accounts.CALLBOT_UUID,
                request_id=uuid.uuid4().hex,
                create_ts_s=int(time.time()),
                body_text=d.text,
                algorithm=accounts.CALLBOT_ALGORITHM,
            )
            signed = "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode(
                "latin-1", "replace"
            )
            return head + signed + b"Content-Length: %d\r\n\r\n" % len(body) + body
        d.raw = head + b"Content-Length: %d\r\n\r\n" % len(body) + body
        return d.raw

    # ---- counting, identical for every attempt -----------------------------------

    def _begin(self, d: _Delivery) -> float:
        now = time.monotonic()
        if d.first_attempt is None:
            d.first_attempt = now
        d.attempts += 1
        return now

    def _account(self, d: _Delivery, now: float, status: int | str) -> None:
        ok = isinstance(status, int) and 200 <= status < 300
        state = self.state
        entry = {
            "ts": time.time(),
            "kind": d.kind,
            "url": d.url,
            "status": status,
            "attempt": d.attempts,
            "body": d.text,
        }
        with (
            state.lock
        ):  # re-entrant: log_callback takes it again, but counts and log change together
            if d.epoch != state.epoch:  # reset while in flight: not part of the new run's counts
                return
            counts = state.callbacks
            counts["attempts"] += 1
            counts["delivered" if ok else "failed_attempts"] += 1
            state.log_callback(entry)
            if ok:
                return
            config = state.config
            retry_at = now + config.callback_retry_s
            if retry_at - d.first_attempt > config.callback_retry_window_s:  # type: ignore[operator]
                counts["expired"] += 1
                return
        d.due = retry_at
        with self._lock:
            heapq.heappush(self._heap, (retry_at, d.seq, d))
