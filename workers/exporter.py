"""`python -m workers.exporter [--host H] [--port P]`: Prometheus metrics and the stall
health check.

One process per deployment. Every scrape reads Redis: the counters and histograms
the workers and the receiver add to (nxjobs.metrics), plus state that is already
there — queue lists, Celery's unacked hash, the callbacks waiting sets, the
rate-limiter keys and the job indexes (a sorted set per kind and state, kept by every state
write: one ZCARD each, never a scan). Nothing is kept in this process except when each queue
was first seen non-empty, and its own counter.

    GET /metrics   Prometheus text format
    GET /healthz   200 {"ok": true, ...}; 503 when a queue has had messages for longer than
                   NXJOBS_METRICS__STALL_S while no worker finished an attempt from it, or
                   Redis is down
    GET /livez     200 while the process serves (the container health check)

The HTTP server is bounded against slow or idle clients: a fixed pool of handler threads
(--threads), a short queue of accepted connections waiting for one (--pending; beyond it a
new connection gets a 503 and is closed at once, never a thread of its own), and a deadline
for each request (--read-timeout-s: a client that sends nothing, or trickles its request,
is disconnected once it passes). Scrapes that arrive while one is being computed wait for
that one's answer instead of reading Redis again.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import queue
import socket
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, Generic, TypeVar, cast

import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from nxjobs import broker, keys, metrics
from nxjobs.jobs import KINDS, QUEUES

log = logging.getLogger("nxjobs.exporter")

DEFAULT_PORT = 9808

# HTTP server bounds (see the module docstring); each is a command-line option.
DEFAULT_THREADS = 8
DEFAULT_PENDING = 16
DEFAULT_READ_TIMEOUT_S = 5.0
# Sending an answer: a client that does not read it for this long is dropped.
WRITE_TIMEOUT_S = 10.0
# A scrape waiting for another's answer gives up after this long (Redis calls are bounded
# well below it by nxjobs.redis_conn's timeouts and retries).
SHARED_WAIT_S = 60.0

T = TypeVar("T")


class SingleFlight(Generic[T]):
    """Runs fn() for the first caller; callers arriving while it runs wait for that result
    (or that exception) instead of running fn() again. The next call after it ends runs anew."""

    class _Call:
        def __init__(self) -> None:
            self.done = threading.Event()
            self.result: Any = None
            self.error: BaseException | None = None

    def __init__(self, wait_s: float = SHARED_WAIT_S) -> None:
        self.wait_s = wait_s
        self._lock = threading.Lock()
        self._call: SingleFlight._Call | None = None
        # Callers currently waiting for someone else's call (read by tests and nothing else).
        self.waiting = 0

    def do(self, fn: Callable[[], T]) -> T:
        with self._lock:
            call, leader = self._call, self._call is None
            if leader:
                call = self._call = self._Call()
            else:
                self.waiting += 1
        assert call is not None
        if leader:
            try:
                call.result = fn()
            except BaseException as exc:
                call.error = exc
            finally:
                with self._lock:
                    self._call = None
                call.done.set()
        else:
            try:
                finished = call.done.wait(self.wait_s)
            finally:
                with self._lock:
                    self.waiting -= 1
            if not finished:
                raise TimeoutError(f"shared call still running after {self.wait_s:g}s")
        if call.error is not None:
            raise call.error
        return call.result


def dead_letter_key() -> str | None:
    """The dead-letter index (a sorted set of job ids, nxjobs/deadletters.py); None if
    this build lacks it."""
    for name in ("DEAD_INDEX",):
        value = getattr(keys, name, None)
        if isinstance(value, str):
            return value
    return None


class Exporter:
    """Reads the metrics from Redis; also decides health. Thread-safe (one lock)."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        stall_s: float,
        clock=time.time,
        transport_options: dict[str, Any] | None = None,
        broker_client: redis.Redis | None = None,
    ):
        self.redis = client
        # kombu's queue lists and unacked hash: on the broker's Redis (the record store's unless
        # NXJOBS_BROKER_URL sets it apart).
        self.broker = broker_client if broker_client is not None else client
        self.stall_s = stall_s
        self.clock = clock
        # Celery's broker_transport_options: they name the queue lists and the unacked hash.
        self.transport_options = dict(transport_options or {})
        self._lock = threading.Lock()
        self._nonempty_since: dict[str, float] = {}
        # One /metrics answer at a time, shared by the scrapes that arrive while it is computed.
        self.metrics_flight: SingleFlight[bytes] = SingleFlight()
        self.refused = (
            0  # connections closed unserved, pool busy (nxjobs_exporter_connections_refused_total)
        )

    # ---- reads --------------------------------------------------------------

    def queue_depths(self) -> dict[str, int]:
        pipe = self.broker.pipeline(transaction=False)
        lists = {qname: broker.queue_lists(qname, self.transport_options) for qname in QUEUES}
        for names in lists.values():
            for key in names:
                pipe.llen(key)
        lengths = iter(pipe.execute())
        return {qname: sum(next(lengths) for _ in names) for qname, names in lists.items()}

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Unhealthy if any queue has had messages for over stall_s with no attempt
        finished from it."""
        now = self.clock()
        try:
            depths = self.queue_depths()
            consumed = {q: float(t) for q, t in self.redis.hgetall(keys.METRICS_CONSUMED).items()}
        except (redis.RedisError, OSError) as exc:
            return False, {"ok": False, "redis": f"unreachable: {type(exc).__name__}"}
        queues = {}
        ok = True
        with self._lock:
            for queue, depth in depths.items():
                if depth == 0:
                    self._nonempty_since.pop(queue, None)
                    since = None
                else:
                    since = self._nonempty_since.setdefault(queue, now)
                last = consumed.get(queue)
                idle_s = now - max(last or 0.0, since or now)
                stalled = depth > 0 and idle_s > self.stall_s
                ok = ok and not stalled
                queues[queue] = {
                    "depth": depth,
                    "last_consumed_s_ago": None if last is None else round(now - last, 1),
                    "stalled": stalled,
                }
        return ok, {"ok": ok, "stall_s": self.stall_s, "queues": queues}

    def jobs_by_state(self) -> dict[tuple[str, str], int]:
        """(kind, state) -> number of jobs in a live state, from the job indexes: one pipeline of
        kinds x INDEXED_STATES ZCARDs, whatever the size of Redis."""
        cells = [(kind, state) for kind in KINDS for state in keys.INDEXED_STATES]
        pipe = self.redis.pipeline(transaction=False)
        for kind, state in cells:
            pipe.zcard(keys.job_index(kind, state))
        return dict(zip(cells, (int(n) for n in pipe.execute()), strict=True))

    # ---- the Prometheus collector ---------------------------------------------

    def collect(self):
        client = self.redis
        pipe = client.pipeline(transaction=False)
        pipe.hgetall(keys.METRICS_COUNTERS)
        pipe.hgetall(keys.METRICS_HISTOGRAMS)
        pipe.hgetall(keys.METRICS_CONSUMED)
        for family in QUEUES:
            pipe.zcard(keys.callbacks_waiting(family))
        dead = dead_letter_key()
        if dead:
            pipe.exists(dead)
            pipe.type(dead)
        pipe.info("memory")
        pipe.zcard(keys.NOTIFY_DUE)
        pipe.time()
        replies = pipe.execute()
        counters, hists, consumed = replies[:3]
        waiting = replies[3 : 3 + len(QUEUES)]
        unacked = self.broker.hlen(broker.unacked_key(self.transport_options))
        memory, notify_due = replies[-3], replies[-2]
        redis_now_s = float(replies[-1][0]) + float(replies[-1][1]) / 1e6

        jobs = GaugeMetricFamily(
            "nxjobs_jobs",
            "Jobs in a live state (scheduled, queued, running, retrying, submitted), by kind",
            labels=["kind", "state"],
        )
        for (kind, state), n in sorted(self.jobs_by_state().items()):
            jobs.add_metric([kind, state], n)
        yield jobs

        attempts = CounterMetricFamily(
            "nxjobs_attempts",
            "Job attempts finished, by kind and outcome",
            labels=["kind", "outcome"],
        )
        responses = CounterMetricFamily(
            "nxjobs_provider_responses",
            "Attempt results by provider code ('0' accepted; also ambiguous, "
            "read_timeout, http_5xx, ...)",
            labels=["kind", "code"],
        )
        throttles = CounterMetricFamily(
            "nxjobs_ratelimit_throttles",
            "'Too frequent' answers from the provider, per credential (hashed id)",
            labels=["credential"],
        )
        finished = CounterMetricFamily(
            "nxjobs_jobs_finished",
            "Jobs that entered a finished state (completed, failed, cancelled), by kind",
            labels=["kind", "state"],
        )
        callbacks = CounterMetricFamily(
            "nxjobs_callbacks",
            "Requests the callback receiver answered, by outcome (recorded, duplicate, "
            "unmatched, dropped, deferred, store_error, refused) and refusal reason",
            labels=["outcome", "reason"],
        )
        restored = CounterMetricFamily(
            "nxjobs_held_restored",
            "Messages put back on their queue because no live worker held them (a worker "
            "killed; nxjobs/held.py), by queue",
            labels=["queue"],
        )
        notify_posts = CounterMetricFamily(
            "nxjobs_notify_posts",
            "Job-end webhook POSTs, by outcome (delivered, retry; gave_up: a delivery dropped "
            "after NXJOBS_NOTIFY__MAX_AGE_S)",
            labels=["outcome"],
        )
        for field, value in counters.items():
            what, _, rest = field.partition("|")
            if what == "attempt":
                attempts.add_metric(rest.split("|", 1), float(value))
            elif what == "response":
                responses.add_metric(rest.split("|", 1), float(value))
            elif what == "throttle":
                throttles.add_metric([rest], float(value))
            elif what == "finished":
                finished.add_metric(rest.split("|", 1), float(value))
            elif what == "callback":
                # `refused:<status>:<reason>` or a plain outcome
                # (nxjobs.metrics.queue_callback_outcomes).
                outcome, _, reason = rest.partition(":")
                callbacks.add_metric([outcome, reason], float(value))
            elif what == "restored":
                restored.add_metric([rest], float(value))
            elif what == "notify":
                notify_posts.add_metric([rest], float(value))
        yield attempts
        yield finished
        yield responses
        yield throttles
        yield callbacks
        yield restored
        yield notify_posts
        backlog = GaugeMetricFamily(
            "nxjobs_notify_retries_due",
            "Webhook deliveries not done: waiting for a retry, or on their way (nxjobs.webhooks)",
        )
        backlog.add_metric([], float(notify_due))
        yield backlog

        for name, series, buckets, label_name, help_text in (
            (
                "nxjobs_provider_latency_seconds",
                metrics.HIST_LATENCY,
                metrics.LATENCY_BUCKETS_S,
                "kind",
                "Duration of one provider HTTP request (also one that timed out or failed)",
            ),
            (
                "nxjobs_attempt_duration_seconds",
                metrics.HIST_ATTEMPT,
                metrics.ATTEMPT_BUCKETS_S,
                "kind",
                "Duration of one attempt: rate-limit gate, provider request(s), recording",
            ),
            (
                "nxjobs_ratelimit_wait_seconds",
                metrics.HIST_RATE_WAIT,
                metrics.RATE_WAIT_BUCKETS_S,
                "credential",
                "Waits jobs were sent back to serve for a rate-limit slot, "
                "per credential (hashed id)",
            ),
            (
                "nxjobs_callback_delay_seconds",
                metrics.HIST_CALLBACK_DELAY,
                metrics.CALLBACK_DELAY_BUCKETS_S,
                "kind",
                "Time from the provider accepting a job to its final callback",
            ),
        ):
            hist = HistogramMetricFamily(name, help_text, labels=[label_name])
            for label, (cumulative, total) in sorted(
                metrics.histogram_series(hists, series, buckets).items()
            ):
                hist.add_metric([label], cumulative, total)
            yield hist

        next_slot, cooldown = self._rate_limiter(redis_now_s)
        g = GaugeMetricFamily(
            "nxjobs_ratelimit_next_slot_seconds",
            "Wait a new request would have now for its rate-limit slot, per credential",
            labels=["credential"],
        )
        for cred, value in sorted(next_slot.items()):
            g.add_metric([cred], value)
        yield g
        g = GaugeMetricFamily(
            "nxjobs_ratelimit_cooldown_seconds",
            "Shared cooldown left after a 'too frequent' answer, per credential",
            labels=["credential"],
        )
        for cred, value in sorted(cooldown.items()):
            g.add_metric([cred], value)
        yield g

        g = GaugeMetricFamily(
            "nxjobs_jobs_awaiting_callbacks",
            "Submitted jobs still waiting for callbacks",
            labels=["family"],
        )
        for family, n in zip(QUEUES, waiting, strict=True):
            g.add_metric([family], n)
        yield g

        g = GaugeMetricFamily(
            "nxjobs_queue_depth",
            "Messages waiting in each Celery queue (all priorities)",
            labels=["queue"],
        )
        for qname, n in self.queue_depths().items():
            g.add_metric([qname], n)
        yield g
        yield GaugeMetricFamily(
            "nxjobs_queue_unacked",
            "Messages taken by workers and not yet acknowledged "
            "(running, or held for a retry/rate-limit countdown)",
            value=unacked,
        )

        g = GaugeMetricFamily(
            "nxjobs_queue_last_consumed_timestamp_seconds",
            "Unix time a worker last finished an attempt from each queue",
            labels=["queue"],
        )
        for qname, t in sorted(consumed.items()):
            g.add_metric([qname], float(t))
        yield g

        if dead:
            exists, kind = replies[3 + len(QUEUES)], replies[4 + len(QUEUES)]
            size = 0
            if exists:
                size = {
                    "list": client.llen,
                    "zset": client.zcard,
                    "set": client.scard,
                    "hash": client.hlen,
                    "stream": client.xlen,
                }.get(kind, lambda _k: 0)(dead)
            yield GaugeMetricFamily(
                "nxjobs_dead_letters", "Jobs in the dead-letter store", value=size
            )

        yield GaugeMetricFamily(
            "nxjobs_redis_memory_used_bytes",
            "Redis used_memory (INFO memory): queues, job records and everything else",
            value=float(memory.get("used_memory", 0)),
        )
        yield GaugeMetricFamily(
            "nxjobs_redis_memory_max_bytes",
            "Redis maxmemory, the limit past which a noeviction Redis refuses writes "
            "(0 = no limit set)",
            value=float(memory.get("maxmemory", 0)),
        )

        ok, _ = self.health()
        yield GaugeMetricFamily(
            "nxjobs_workers_healthy",
            "1 unless a queue has waited NXJOBS_METRICS__STALL_S with no attempt finished",
            value=1 if ok else 0,
        )

        with self._lock:
            refused = self.refused
        yield CounterMetricFamily(
            "nxjobs_exporter_connections_refused",
            "Connections closed unserved because every handler thread was busy",
            value=refused,
        )

    def count_refused(self) -> None:
        with self._lock:
            self.refused += 1

    def _rate_limiter(self, now_s: float) -> tuple[dict[str, float], dict[str, float]]:
        """Per credential the workers used: seconds until its next free slot (TAT) and
        cooldown left."""
        # str members: the client decodes responses (nxjobs.redis_conn.connect).
        names = sorted(cast(set[str], self.redis.smembers(keys.METRICS_CREDENTIALS)))
        values = (
            self.redis.mget([k for n in names for k in (keys.rate_tat(n), keys.rate_cooldown(n))])
            if names
            else []
        )
        now_us = now_s * 1e6
        wait: dict[str, float] = {}
        cooldown: dict[str, float] = {}
        for i, name in enumerate(names):
            cred = metrics.credential_label(name)
            tat, until = (float(v or 0) for v in values[2 * i : 2 * i + 2])
            wait[cred] = max(wait.get(cred, 0.0), (tat - now_us) / 1e6, (until - now_us) / 1e6, 0.0)
            cooldown[cred] = max(cooldown.get(cred, 0.0), (until - now_us) / 1e6, 0.0)
        return wait, cooldown


class _Overlong(TimeoutError):
    """A request head past MAX_HEAD_BYTES. A TimeoutError so that BaseHTTPRequestHandler
    discards the connection quietly, as it does for a request that took too long."""


# GET requests only: the request line and headers of a scrape fit in far less.
MAX_HEAD_BYTES = 64 * 1024


class _DeadlineReader(io.RawIOBase):
    """The socket's read side, failing with TimeoutError once the handler's deadline passes:
    each recv waits at most the time left, so a client trickling bytes cannot extend it."""

    def __init__(self, sock: socket.socket, handler: _Handler) -> None:
        self._sock = sock
        self._handler = handler
        self._read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        left = self._handler.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("request not received in time")
        if self._read >= MAX_HEAD_BYTES:
            raise _Overlong(f"request head over {MAX_HEAD_BYTES} bytes")
        self._sock.settimeout(left)
        with memoryview(buffer) as view:
            n = self._sock.recv_into(view[: MAX_HEAD_BYTES - self._read])
        self._read += n
        return n


class _TimedWriter(io.BufferedIOBase):
    """The socket's write side: every write completes within WRITE_TIMEOUT_S or fails."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._sock.settimeout(WRITE_TIMEOUT_S)
        self._sock.sendall(data)
        with memoryview(data) as view:
            return view.nbytes


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.0: one request per connection, read within read_timeout_s of the handler taking it."""

    server_version = "nxjobs-exporter"
    read_timeout_s = DEFAULT_READ_TIMEOUT_S
    deadline = 0.0

    def setup(self) -> None:
        # StreamRequestHandler.setup, with the bounded reader and writer instead of makefile().
        self.connection = self.request
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, self))
        self.wfile = _TimedWriter(self.connection)

    def handle_one_request(self) -> None:
        self.deadline = time.monotonic() + self.read_timeout_s
        super().handle_one_request()

    def log_message(self, format: str, *args: Any) -> None:
        pass


_BUSY = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n"
    b"Connection: close\r\n\r\nbusy\n"
)


class BoundedHTTPServer(HTTPServer):
    """An HTTPServer whose connections are served by a fixed pool of `threads` threads.

    Accepted connections wait in a queue of at most `pending` for a free thread; one that
    finds the queue full gets a 503 (best effort, never blocking) and is closed at once.
    """

    request_queue_size = (
        128  # the kernel's listen backlog: bursts are accepted, then sorted out here
    )

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        *,
        threads: int = DEFAULT_THREADS,
        pending: int = DEFAULT_PENDING,
        on_refused: Callable[[], None] | None = None,
    ) -> None:
        if threads < 1 or pending < 0:
            raise ValueError("threads must be >= 1 and pending >= 0")
        super().__init__(address, handler)
        # Never more than threads + pending entries: process_request counts them in _busy.
        self._queue: queue.Queue = queue.Queue()
        self._pending = pending
        self._busy = 0  # connections handed over and not yet closed (queued or being served)
        self._busy_lock = threading.Lock()
        self._threads_n = threads
        self._on_refused = on_refused
        self._pool = [
            threading.Thread(target=self._serve_queue, name=f"exporter-http-{i}", daemon=True)
            for i in range(threads)
        ]
        for thread in self._pool:
            thread.start()

    def process_request(self, request, client_address) -> None:
        # Called by serve_forever's thread for each accepted connection: hand it over, never block.
        with self._busy_lock:
            room = self._busy < self._threads_n + self._pending
            if room:
                self._busy += 1
                self._queue.put_nowait((request, client_address))
        if not room:
            self._refuse(request)

    def _refuse(self, request: socket.socket) -> None:
        if self._on_refused is not None:
            self._on_refused()
        try:
            request.setblocking(False)
            request.send(_BUSY)
        except OSError:
            pass
        self.shutdown_request(request)

    def _serve_queue(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            request, client_address = item
            try:
                self.finish_request(request, client_address)
            except Exception:
                self.handle_error(request, client_address)
            finally:
                self.shutdown_request(request)
                with self._busy_lock:
                    self._busy -= 1

    def handle_error(self, request, client_address) -> None:
        exc = sys.exc_info()[1]
        peer = client_address[0] if client_address else "?"
        if isinstance(exc, OSError):  # the client went away or stopped reading: nothing to fix here
            log.debug("exporter: connection from %s ended: %r", peer, exc)
        else:
            log.warning("exporter: error serving %s", peer, exc_info=True)

    def server_close(self) -> None:
        super().server_close()
        # Connections still queued are closed unserved; each pool thread then gets its stop mark.
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                self.shutdown_request(item[0])
        for _ in self._pool:
            self._queue.put(None)
        # Wait a bounded time for threads still serving; they are daemons, so none holds the
        # process.
        deadline = time.monotonic() + WRITE_TIMEOUT_S + DEFAULT_READ_TIMEOUT_S
        for thread in self._pool:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))


def make_server(
    exporter: Exporter,
    host: str,
    port: int,
    *,
    threads: int = DEFAULT_THREADS,
    pending: int = DEFAULT_PENDING,
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
) -> BoundedHTTPServer:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(exporter)

    class Handler(_Handler):
        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                try:
                    body = exporter.metrics_flight.do(lambda: generate_latest(registry))
                except (redis.RedisError, OSError) as exc:
                    self._send(
                        503, f"redis unreachable: {type(exc).__name__}\n".encode(), "text/plain"
                    )
                    return
                self._send(200, body, CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                ok, detail = exporter.health()
                self._send(200 if ok else 503, json.dumps(detail).encode(), "application/json")
            elif path == "/livez":
                self._send(200, b'{"ok": true}', "application/json")
            else:
                self._send(404, b"not found\n", "text/plain")

    Handler.read_timeout_s = read_timeout_s
    return BoundedHTTPServer(
        (host, port), Handler, threads=threads, pending=pending, on_refused=exporter.count_refused
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m workers.exporter",
        description="Serve nxjobs metrics (/metrics) and the stall health check (/healthz).",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 = pick a free port")
    p.add_argument(
        "--threads", type=int, default=DEFAULT_THREADS, help="HTTP handler threads (fixed pool)"
    )
    p.add_argument(
        "--pending",
        type=int,
        default=DEFAULT_PENDING,
        help="accepted connections that may wait for a handler thread; beyond: 503 and closed",
    )
    p.add_argument(
        "--read-timeout-s",
        type=float,
        default=DEFAULT_READ_TIMEOUT_S,
        help="a request must arrive within this long of its connection being taken up",
    )
    args = p.parse_args(argv)
    if args.threads < 1 or args.pending < 0 or args.read_timeout_s <= 0:
        p.error("--threads must be >= 1, --pending >= 0 and --read-timeout-s > 0")

    from config.settings import load_settings
    from workers.delivery import broker_target, broker_transport_options, store_target
    from workers.logs import setup_logging

    settings = load_settings()
    setup_logging(settings.log_format)
    exporter = Exporter(
        store_target(settings).connect(),
        stall_s=settings.metrics.stall_s,
        transport_options=broker_transport_options(settings),
        broker_client=broker_target(settings).connect(),
    )
    server = make_server(
        exporter,
        args.host,
        args.port,
        threads=args.threads,
        pending=args.pending,
        read_timeout_s=args.read_timeout_s,
    )
    host, port = cast(
        tuple[str, int], server.server_address[:2]
    )  # bound: getsockname() gives a str host
    print(f"exporter listening on http://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
