"""The sandbox's callback sender: a background thread that POSTs what the handlers queued.

Handlers only append to `state.stores.outbox` (they stay pure); this thread
takes the outbox, rolls the dice (drop, duplicate), schedules each delivery
`callback_delay_s` (+ up to `callback_jitter_s`, which reorders them) ahead,
and sends when due. Callbot callbacks are signed like NXCloud signs them
(reference §4: requestID, uuid, createTs, sign over the raw body), freshly on
every attempt. Anything but a 2xx is tried again every `callback_retry_s`
until `callback_retry_window_s` after the first attempt (NXCloud: every minute
for up to an hour, §5.4), then given up.

Sending is one asyncio event loop in that thread (uvloop when installed) with
up to CONNECTIONS_PER_ORIGIN keep-alive HTTP/1.1 connections per (scheme, host,
port), each carrying one request at a time, written as prebuilt bytes. A
benchmark feeds ~100 000 DRs at thousands per second to a receiver on the same
cores; `requests` from 8 threads spent ~2 ms of CPU per POST and topped out
near 500/s (bench/sandbox_callbacks.py), this ~0.05-0.1 ms.
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

from pydantic_core import to_json

from nxjobs.client.signing import callbot_headers
from nxjobs.sandbox import accounts
from nxjobs.sandbox.state import SandboxState

# Connect timeout, and the longest silence while waiting for an answer (requests' timeout=).
SEND_TIMEOUT_S = 5.0
CONNECTIONS_PER_ORIGIN = 32
# Connections being opened at once to one origin. A burst of 32 SYNs overflows the listen backlog
# of small servers (socketserver's is 5) and the dropped ones wait a whole second to be resent.
CONNECTS_PER_ORIGIN = 4
IDLE_WAIT_S = 0.02
# Below common servers' keep-alive timeouts (uvicorn's default is 5 s), so we close idle connections before the
# server does and rarely write into one it is closing.
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


class _SendError(Exception):
    """An attempt without an HTTP answer; `name` is what the callback log shows (requests' names)."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


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
    head = (f"POST {target} HTTP/1.1\r\nHost: {parts.netloc.rpartition('@')[2]}\r\n"
            "User-Agent: nxjobs-sandbox\r\nContent-Type: application/json; charset=utf-8\r\n")
    if parts.username is not None:
        user_pass = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode("latin-1", "replace")
        head += f"Authorization: Basic {b64encode(user_pass).decode()}\r\n"
    return (scheme, parts.hostname, port or (443 if scheme == "https" else 80)), head.encode("latin-1", "replace")


def _parse_response(buf: bytearray, eof: bool) -> tuple[int, bool, int] | None:
    """(status, reusable, bytes used) of the first complete final response in `buf`, or None for "need more".

    Handles Content-Length, chunked and close-delimited bodies, skips 1xx; raises ValueError if malformed.
    """
    start = 0
    while True:
        end = buf.find(b"\r\n\r\n", start)
        if end < 0:
            if len(buf) - start > MAX_HEAD_BYTES:
                raise ValueError("response head too large")
            return None
        lines = bytes(buf[start:end]).split(b"\r\n")
        line = lines[0]
        if not line.startswith(b"HTTP/1.") or len(line) < 12 or line[12:13] not in (b"", b" "):
            raise ValueError("not an HTTP/1.x status line")
        status = int(line[9:12])
        keep_alive = line[7:8] == b"1"  # HTTP/1.1 persists by default, 1.0 does not
        length: int | None = None
        chunked = False
        for header in lines[1:]:
            name, _, value = header.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                value = value.lower()
                if b"close" in value:
                    keep_alive = False
                elif b"keep-alive" in value:
                    keep_alive = True
        body = end + 4
        if 100 <= status < 200 and status != 101:
            start = body
            continue
        if status in (101, 204, 304):
            return status, keep_alive and status != 101, body
        if chunked:
            pos = body
            while True:
                nl = buf.find(b"\r\n", pos)
                if nl < 0:
                    return None
                size = int(bytes(buf[pos:nl]).split(b";")[0], 16)
                pos = nl + 2
                if size == 0:
                    while True:  # trailers, up to an empty line
                        nl = buf.find(b"\r\n", pos)
                        if nl < 0:
                            return None
                        if nl == pos:
                            return status, keep_alive, nl + 2
                        pos = nl + 2
                pos += size + 2
                if pos > len(buf):
                    return None
        if length is not None:
            return (status, keep_alive, body + length) if len(buf) >= body + length else None
        return (status, False, len(buf)) if eof else None


class _Conn(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time; `request()` resolves to (status, reusable)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.waiter: asyncio.Future | None = None
        self.buf = bytearray()
        self.deadline = 0.0
        self.got_bytes = False
        self.used = 0
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def usable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    def request(self, data: bytes) -> asyncio.Future:
        self.waiter = waiter = self.loop.create_future()
        self.got_bytes = False
        self.deadline = self.loop.time() + SEND_TIMEOUT_S
        self.transport.write(data)  # type: ignore[union-attr]
        return waiter

    def data_received(self, data: bytes) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():
            self.abort()  # nothing was asked: the stream is out of step
            return
        self.got_bytes = True
        self.deadline = self.loop.time() + SEND_TIMEOUT_S
        buf = self.buf
        buf += data
        self._settle(False)

    def _settle(self, eof: bool) -> None:
        try:
            parsed = _parse_response(self.buf, eof)
        except ValueError:
            self._fail("ConnectionError")
            return
        if parsed is None:
            return
        status, keep_alive, used = parsed
        # Extra bytes after the answer: the connection cannot be trusted with another request.
        reusable = keep_alive and used == len(self.buf) and not eof
        self.buf.clear()
        self.used += 1
        self.waiter.set_result((status, reusable))  # type: ignore[union-attr]

    def _fail(self, name: str) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(_SendError(name))
        self.abort()

    def timed_out(self, now: float) -> bool:
        if self.waiter is not None and not self.waiter.done() and now >= self.deadline:
            self._fail("ReadTimeout")
            return True
        return False

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost settles a close-delimited answer

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            self._settle(True)
            if not waiter.done():
                waiter.set_exception(_SendError("ConnectionError"))

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
        import uvloop  # a dependency (the receiver runs on it); roughly halves the cost of a request
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class CallbackDispatcher:
    """Start with `start()`, stop with `stop()`; owned by the sandbox handle."""

    def __init__(self, state: SandboxState):
        self.state = state
        # (due, seq, delivery): tuples compare in C, the dataclass's generated __lt__ does not.
        self._heap: list[tuple[float, int, _Delivery]] = []
        self._seq = itertools.count()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main_task: asyncio.Task | None = None
        self._origins: dict[tuple[str, str, int], _Origin] = {}
        self._tasks: set[asyncio.Task] = set()
        self._inflight: set[_Conn] = set()
        self._ssl: ssl.SSLContext | None = None
        self._thread = threading.Thread(target=self._run, name="sandbox-callbacks", daemon=True)

    def start(self) -> "CallbackDispatcher":
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sending now: in-flight attempts are abandoned uncounted, connections closed."""
        self._stop.set()
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
            return len(self._heap)

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
        while not self._stop.is_set():
            self._schedule(self.state.take_outbox())
            self._route(self._due())
            now = time.monotonic()
            if self._inflight:
                loop_now = self._loop.time()  # type: ignore[union-attr]
                for conn in [c for c in self._inflight if c.timed_out(loop_now)]:
                    self._inflight.discard(conn)
            if now - last_sweep >= 1.0:
                last_sweep = now
                self._sweep_idle(now)
            await asyncio.sleep(IDLE_WAIT_S)

    async def _close_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for origin in self._origins.values():
            for conn in origin.idle:
                conn.abort()
            origin.idle.clear()
        for conn in self._inflight:
            conn.abort()
        await asyncio.sleep(0)  # let the aborted transports run connection_lost and free their sockets

    def _schedule(self, items: list[dict[str, Any]]) -> None:
        if not items:
            return
        config = self.state.config
        now = time.monotonic()
        with self._lock:
            for item in items:
                if self.state.roll(config.callback_drop_rate):
                    self.state.callbacks["dropped"] += 1
                    continue
                copies = 2 if self.state.roll(config.callback_duplicate_rate) else 1
                if copies == 2:
                    self.state.callbacks["duplicated"] += 1
                # Signed bodies are signed over exactly this text, so any compact JSON will do;
                # pydantic-core's encoder is several times faster than json.dumps.
                text = to_json(item["body"]).decode("utf-8")
                for _ in range(copies):
                    delay = config.callback_delay_s + self._jitter(config.callback_jitter_s)
                    d = _Delivery(now + delay, next(self._seq), item["kind"], item["url"], text, item["signed"],
                                  item["epoch"])
                    heapq.heappush(self._heap, (d.due, d.seq, d))

    def _jitter(self, upto: float) -> float:
        if upto <= 0:
            return 0.0
        with self.state.lock:
            return self.state.rng.uniform(0, upto)

    def _due(self) -> list[_Delivery]:
        now = time.monotonic()
        out = []
        heap = self._heap
        with self._lock:
            epoch = self.state.epoch
            while heap and heap[0][0] <= now:
                delivery = heapq.heappop(heap)[2]
                if delivery.epoch == epoch:  # scheduled before a reset: forget it
                    out.append(delivery)
        return out

    def _route(self, deliveries: list[_Delivery]) -> None:
        """Queue each delivery on its origin and start senders, up to the origin's connection limit."""
        touched = {}
        for d in deliveries:
            target = _target(d.url)
            if isinstance(target, str):  # not a URL we can POST to: a failed attempt, like requests raised
                if d.epoch == self.state.epoch:
                    self._account(d, self._begin(d), target)
                continue
            origin = self._origins.get(target[0])
            if origin is None:
                origin = self._origins[target[0]] = _Origin(target[0])
            origin.queue.append(d)
            touched[target[0]] = origin
        loop = self._loop
        for origin in touched.values():
            for _ in range(min(CONNECTIONS_PER_ORIGIN - origin.workers, len(origin.queue))):
                origin.workers += 1
                task = loop.create_task(self._sender(origin))  # type: ignore[union-attr]
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

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

    # ---- one sender per connection ---------------------------------------------

    async def _sender(self, origin: _Origin) -> None:
        conn = origin.take_idle()
        try:
            while origin.queue and not self._stop.is_set():
                d = origin.queue.popleft()
                if d.epoch != self.state.epoch:  # the sandbox was reset since this was scheduled
                    continue
                now = self._begin(d)
                status, conn = await self._post(origin, conn, self._request_bytes(d))
                self._account(d, now, status)
        finally:
            origin.workers -= 1
            if conn is not None:
                if conn.usable() and not self._stop.is_set():
                    conn.idle_since = time.monotonic()
                    origin.idle.append(conn)
                else:
                    conn.abort()

    def _request_bytes(self, d: _Delivery) -> bytes:
        if d.raw is not None:
            return d.raw
        head = _target(d.url)[1]  # type: ignore[index]
        body = d.text.encode("utf-8")
        if d.signed:
            headers = callbot_headers(
                secret_key=accounts.CALLBOT_SECRET_KEY, uuid=accounts.CALLBOT_UUID, request_id=uuid.uuid4().hex,
                create_ts_s=int(time.time()), body_text=d.text, algorithm=accounts.CALLBOT_ALGORITHM)
            signed = "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode("latin-1", "replace")
            return head + signed + b"Content-Length: %d\r\n\r\n" % len(body) + body
        d.raw = head + b"Content-Length: %d\r\n\r\n" % len(body) + body
        return d.raw

    async def _post(self, origin: _Origin, conn: _Conn | None, data: bytes) -> tuple[int | str, _Conn | None]:
        """(status or error name, the connection to keep using)."""
        if conn is None or not conn.usable():
            conn = origin.take_idle()
        if conn is not None:
            status, conn, stale = await self._exchange(conn, data)
            if not stale:
                return status, conn
            # A kept-alive connection the server closed just as we wrote: nothing of ours was
            # answered, so send once more on a new connection (browsers and urllib3 do the same).
        # The slot is held until the server answers on the new connection: a connect completes in
        # the kernel before the server accept()s it, so only this bounds how many wait in its backlog.
        async with origin.connecting:
            try:
                conn = await self._connect(origin.key)
            except TimeoutError:
                return "ConnectTimeout", None
            except ssl.SSLError:
                return "SSLError", None
            except OSError:
                return "ConnectionError", None
            except Exception as exc:
                return type(exc).__name__, None
            status, conn, _ = await self._exchange(conn, data)
            return status, conn

    async def _exchange(self, conn: _Conn, data: bytes) -> tuple[int | str, _Conn | None, bool]:
        """(status or error name, the connection if reusable, whether it failed as a stale keep-alive one)."""
        reused = conn.used > 0
        self._inflight.add(conn)
        try:
            status, reusable = await conn.request(data)
        except _SendError as exc:
            conn.abort()
            return exc.name, None, reused and not conn.got_bytes and exc.name == "ConnectionError"
        except asyncio.CancelledError:  # stop(): no half-used connection survives
            conn.abort()
            raise
        except Exception as exc:  # never lose a delivery to a surprise: it is a failed attempt
            conn.abort()
            return type(exc).__name__, None, False
        finally:
            self._inflight.discard(conn)
        if not reusable:
            conn.abort()
            return status, None, False
        return status, conn, False

    async def _connect(self, key: tuple[str, str, int]) -> _Conn:
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        context = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        _, conn = await asyncio.wait_for(
            loop.create_connection(lambda: _Conn(loop), host, port, ssl=context), SEND_TIMEOUT_S)
        return conn  # type: ignore[return-value]

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
        if d.epoch != state.epoch:  # reset while in flight: not part of the new run's counts
            return
        with state.lock:
            state.callbacks["attempts"] += 1
            state.callbacks["delivered" if ok else "failed_attempts"] += 1
        state.log_callback({"ts": time.time(), "kind": d.kind, "url": d.url, "status": status,
                            "attempt": d.attempts, "body": d.text})
        if ok:
            return
        config = state.config
        retry_at = now + config.callback_retry_s
        if retry_at - d.first_attempt > config.callback_retry_window_s:  # type: ignore[operator]
            with state.lock:
                state.callbacks["expired"] += 1
            return
        d.due = retry_at
        with self._lock:
            heapq.heappush(self._heap, (retry_at, d.seq, d))
