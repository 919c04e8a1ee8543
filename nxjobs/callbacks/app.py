"""The callback receiver's logic, free of any web framework. Per request: the raw
body (bounded by the HTTP layer, nxjobs.callbacks.http) -> verify (signature or
URL token) -> parse (pydantic) -> apply (one Lua script; concurrent requests
share Redis round trips) -> 2xx. Nothing slow runs inline; the
answer goes out only once the callback is stored, so a 2xx means "recorded"
and anything we could not store gets a 5xx that NXCloud retries.

Rejections are 4xx and store nothing: 401 bad token / signature / stale
createTs, 400 malformed body, 413 too big, 404 unknown path. Duplicates and
callbacks matching no job are 200 (the latter kept in the unmatched list), so
NXCloud stops retrying them. Secrets (token, sign) are never logged or stored.

Build with `Receiver(ReceiverConfig(...))`, `await start()`, then `await handle(...)` per
request; `workers/web.py` does that from settings and serves it with nxjobs.callbacks.http.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import redis

from nxjobs import callback_urls, metrics
from nxjobs.callbacks import events
from nxjobs.callbacks.applier import BatchApplier
from nxjobs.callbacks.ledger import UNMATCHED, Applied, Ledger
from nxjobs.callbacks.verify import Rejected, check_callbot, check_token
from nxjobs.log_limit import LogLimiter
from nxjobs.redis_conn import RedisTarget, describe

log = logging.getLogger("nxjobs.callbacks")

# How often completion times collected by the receiver are written (nxjobs.metrics).
DELAY_FLUSH_S = 0.5
# Bodies are pre-encoded: the hot path builds no JSON for its answer.
_OK_CALLBOT = b'{"retCode":0,"retMsg":"success"}'
_OK_PLAIN = b'{"code":0,"message":"success"}'


@dataclass(frozen=True)
class ReceiverConfig:
    """Everything the receiver needs; secrets are plain strings here and never leave this object.

    Parameters
    ----------
    redis: where job records live: a URL or a nxjobs.redis_conn.RedisTarget (Sentinel, TLS).
    token: per-deployment token expected in unsigned callback URLs (>= 16 chars).
    callbot_uuid, callbot_secret_key, callbot_algorithm: to verify signed Callbot callbacks;
        without them Callbot callbacks are refused (401).
    max_body_bytes: larger bodies get 413.
    tolerance_s: allowed |now - createTs| of a signed callback, seconds.
    unmatched_max, unmatched_max_bytes: how many unmatched callbacks to keep, and their
        bytes in all;
    unmatched_body_bytes: how much of each one's body is kept.
    log_interval_s: at most one refusal log line per reason this often.
    clock: returns epoch seconds (tests pin it).
    """

    redis: str | RedisTarget
    token: str
    callbot_uuid: str | None = None
    callbot_secret_key: str | None = None
    callbot_algorithm: str = "md5"
    max_body_bytes: int = 64 * 1024
    tolerance_s: float = 300.0
    unmatched_max: int = 10_000
    unmatched_max_bytes: int = 8 * 1024 * 1024
    unmatched_body_bytes: int = 2048
    log_interval_s: float = 60.0
    clock: Callable[[], float] = time.time
    max_connections: int = 64

    def __repr__(self) -> str:  # never print the secrets
        return (
            f"ReceiverConfig(redis={describe(self.redis)!r}, "
            f"callbot_uuid={self.callbot_uuid!r}, ...)"
        )


@dataclass(frozen=True)
class Reply:
    """An answer: the HTTP status, a JSON body (already encoded) and any extra header fields as
    (name, value) pairs (the HTTP layer adds content-type, content-length and connection)."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


_REPLY_OK_CALLBOT = Reply(200, _OK_CALLBOT)
_REPLY_OK_PLAIN = Reply(200, _OK_PLAIN)
_REPLY_UNAVAILABLE = Reply(503, b'{"error":"storage unavailable"}')
# One body for every authentication failure: the reason goes to a counter and the log, never to the
# client, which must not learn which check it failed.
_REPLY_UNAUTHORIZED = Reply(401, b'{"error":"unauthorized"}')


def error_reply(status: int, reason: str, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    return Reply(status, json.dumps({"error": reason}).encode(), headers)


# Answers to requests any client can repeat as fast as it likes: built once.
_REPLY_NOT_FOUND = error_reply(404, "not found")
_REPLY_POST_ONLY = error_reply(405, "method not allowed", (("allow", "POST"),))
_REPLY_GET_ONLY = error_reply(405, "method not allowed", (("allow", "GET, HEAD"),))


class Receiver:
    """The receiver for one process: routes a request to its check, parse and store.

    `start()` opens the Redis client (and the background flush of completion
    times); `close()` flushes and closes it. `handle()` never raises for a bad
    request: every refusal is a 4xx Reply, a storage failure a 503.
    """

    def __init__(self, config: ReceiverConfig):
        if len(config.token or "") < 16:
            raise ValueError("the callbacks token must be set and at least 16 characters")
        self.config = config
        self.max_body_bytes = config.max_body_bytes
        self.stats: Counter = Counter()
        self._quiet = LogLimiter(log, config.log_interval_s)
        # Outcome and refusal counts not yet added to the shared metrics (nxjobs.metrics).
        self._outcomes: Counter = Counter()
        self._callbot_ready = bool(config.callbot_uuid and config.callbot_secret_key)
        self._ledger: Ledger | None = None
        self._applier: BatchApplier | None = None
        self._delays: list[tuple[str, float]] = []
        self._flusher: asyncio.Future | None = None
        # The unsigned paths end in "/<token>": matched by prefix, then the token checked.
        self._unsigned = {
            callback_urls.NUMBER_CHECK + "/": events.NUMBER_CHECK,
            callback_urls.AGENT_CDR + "/": events.CDR,
        }
        self._signed = {
            callback_urls.CALLBOT_CALL: events.CALLBOT_CALL,
            callback_urls.CALLBOT_ORDER: events.CALLBOT_ORDER,
            callback_urls.CALLBOT_TASK: events.CALLBOT_TASK,
        }

    # ---- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        c = self.config
        target = c.redis if isinstance(c.redis, RedisTarget) else RedisTarget(c.redis)
        client = target.connect_async(max_connections=c.max_connections)
        self._ledger = Ledger(
            client,
            unmatched_max=c.unmatched_max,
            unmatched_max_bytes=c.unmatched_max_bytes,
            unmatched_body_bytes=c.unmatched_body_bytes,
        )
        # Concurrent requests share Redis round trips (each callback still one atomic script).
        self._applier = BatchApplier(self._ledger)
        self._flusher = asyncio.ensure_future(self._flush_delays_forever())
        if not self._callbot_ready:
            log.warning(
                "callbot uuid/secret key not configured: Callbot callbacks will be refused (401)"
            )

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
        await self._flush_delays()
        if self._ledger is not None:
            await self._ledger.redis.aclose()

    # ---- requests --------------------------------------------------------------------------------

    def handle(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        body: bytes,
        respond: Callable[[Reply], None],
    ) -> None:
        """Answer one request by calling `respond` once: now for a refusal, once stored for a
        callback. `path` has no query string; `headers` names are lower-case.

        Callback style rather than a coroutine per request: at thousands of callbacks a second the
        task, futures and frames of an `async def` path were a measurable share of the CPU."""
        reply = self._route(method, path, headers, body, respond)
        if reply is not None:
            respond(reply)

    def _route(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        body: bytes,
        respond: Callable[[Reply], None],
    ) -> Reply | None:
        for prefix, kind in self._unsigned.items():
            if path.startswith(prefix):
                token = path[len(prefix) :]
                if "/" in token:
                    break
                if method != "POST":
                    return _REPLY_POST_ONLY
                return self._callback(
                    kind, _REPLY_OK_PLAIN, respond, self._unsigned_body, token, body
                )
        signed_kind = self._signed.get(path)
        if signed_kind is not None:
            if method != "POST":
                return _REPLY_POST_ONLY
            return self._callback(
                signed_kind, _REPLY_OK_CALLBOT, respond, self._signed_body, headers, body
            )
        if path in ("/healthz", "/readyz"):
            # HEAD is answered as GET would be; the HTTP layer leaves the body out.
            if method != "GET" and method != "HEAD":
                return _REPLY_GET_ONLY
            if path == "/healthz":
                return self._healthz()
            asyncio.get_running_loop().create_task(self._readyz(respond))
            return None
        return _REPLY_NOT_FOUND

    def refuse(self, kind: str, exc: Rejected) -> Reply:
        self._count_refusal(exc.status, exc.reason)
        self._quiet.warning(
            f"{exc.status} {exc.reason}",
            "callback rejected type=%s status=%d reason=%s",
            kind,
            exc.status,
            exc.reason,
        )
        return _REPLY_UNAUTHORIZED if exc.status == 401 else error_reply(exc.status, exc.reason)

    def refused(self, status: int, reason: str) -> None:
        """The HTTP layer refused a request itself (400 malformed HTTP, 408, 413, 431)."""
        self._count_refusal(status, reason)
        self._quiet.warning(
            f"{status} {reason}", "request refused status=%d reason=%s", status, reason
        )

    def _count_refusal(self, status: int, reason: str) -> None:
        # Reasons are our own fixed phrases; a malformed body's detail (after ":") is left out.
        label = reason.split(":", 1)[0]
        self.stats[f"rejected_{status}"] += 1
        self.stats[f"rejected_{status}:{label}"] += 1
        self._outcomes[f"refused:{status}:{label}"] += 1

    def _callback(
        self,
        kind: str,
        ok: Reply,
        respond: Callable[[Reply], None],
        authentic: Callable[..., bytes | str],
        *request: Any,
    ) -> Reply | None:
        """Check (`authentic(*request)` returns the body it vouches for), parse, then store."""
        try:
            event = events.parse(kind, authentic(*request))
        except Rejected as exc:
            return self.refuse(kind, exc)
        except events.Malformed as exc:
            return self.refuse(kind, Rejected(400, f"malformed: {exc}"))
        if authentic == self._signed_body:
            event = self._replay_guard(event, request[0])
        self._store(kind, event, ok, respond)
        return None

    def _unsigned_body(self, token: str, body: bytes) -> bytes:
        check_token(token, self.config.token)
        return body

    def _signed_body(self, headers: Mapping[str, str], body: bytes) -> str:
        c = self.config
        if not self._callbot_ready:
            raise Rejected(401, "callbot verification not configured")
        return check_callbot(
            body,
            headers,
            uuid=c.callbot_uuid or "",
            secret_key=c.callbot_secret_key or "",
            algorithm=c.callbot_algorithm,
            now_s=c.clock(),
            tolerance_s=c.tolerance_s,
        )

    def _replay_guard(self, event: events.Event, headers: Mapping[str, str]) -> events.Event:
        """A verified signed callback is remembered by its signature while its createTs is
        within the tolerance: a replay of it is answered 200 and stored nowhere
        (nxjobs.callbacks.ledger)."""
        until = int(headers.get("createts", "0")) + int(self.config.tolerance_s) + 1
        return event._replace(replay=headers.get("sign", "").upper(), replay_until=until)

    def _store(
        self, kind: str, event: events.Event, ok: Reply, respond: Callable[[Reply], None]
    ) -> None:
        assert self._applier is not None, "Receiver.start() was not awaited"
        self._applier.submit(event, lambda result: respond(self._stored(kind, event, ok, result)))

    def _stored(
        self, kind: str, event: events.Event, ok: Reply, result: Applied | Exception
    ) -> Reply:
        if isinstance(result, Exception):
            # Not stored (Redis unreachable, or the script failed on this one): a 5xx makes
            # NXCloud deliver it again later.
            self.stats["store_errors"] += 1
            self._outcomes["store_error"] += 1
            self._quiet.warning(
                "store error", "callback not stored type=%s: %s", kind, type(result).__name__
            )
            return _REPLY_UNAVAILABLE
        self.stats[result.outcome] += 1
        self._outcomes[result.outcome] += 1
        if result.status == UNMATCHED:
            self._quiet.warning(
                f"unmatched {kind}", "callback unmatched type=%s ids=%s", kind, event.ids
            )
        elif result.submitted_at:
            delay = metrics.callback_delay_s(result.submitted_at, self.config.clock())
            if delay is not None:
                self._delays.append((result.kind or event.job_kind, delay))
        return ok

    def _healthz(self) -> Reply:
        counts = dict(self.stats)
        if self._applier is not None:
            counts["redis_calls"] = self._applier.calls
            counts["callbacks_applied"] = self._applier.applied
        return Reply(200, json.dumps({"ok": True, "counts": counts}).encode())

    async def _readyz(self, respond: Callable[[Reply], None]) -> None:
        try:
            assert self._ledger is not None
            await self._ledger.redis.ping()
        except (redis.RedisError, OSError):
            respond(Reply(503, b'{"ok":false,"redis":"unreachable"}'))
            return
        respond(Reply(200, b'{"ok":true}'))

    # ---- completion times ------------------------------------------------------------------------

    async def _flush_delays(self) -> None:
        """Completion times and outcome counts leave in one pipelined trip per interval, not one
        per callback."""
        batch, self._delays = self._delays, []
        outcomes, self._outcomes = self._outcomes, Counter()
        if not (batch or outcomes) or self._ledger is None:
            return
        try:
            pipe = self._ledger.redis.pipeline(transaction=False)
            metrics.queue_callback_delays(pipe, batch)
            metrics.queue_callback_outcomes(pipe, outcomes)
            await pipe.execute()
        except Exception as exc:  # a metric must never cost a stored callback
            log.warning("%d completion metric(s) not recorded: %s", len(batch), type(exc).__name__)

    async def _flush_delays_forever(self) -> None:
        while True:
            await asyncio.sleep(DELAY_FLUSH_S)
            await self._flush_delays()
