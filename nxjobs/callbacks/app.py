"""The callback receiver: a thin Starlette app. Per request: read the raw body
(bounded) -> verify (signature or URL token) -> parse (pydantic) -> apply (one
Lua script, one Redis round trip) -> 2xx. Nothing slow runs inline; the
answer goes out only once the callback is stored, so a 2xx means "recorded"
and anything we could not store gets a 5xx that NXCloud retries.

Rejections are 4xx and store nothing: 401 bad token / signature / stale
createTs, 400 malformed body, 413 too big, 404 unknown path. Duplicates and
callbacks matching no job are 200 (the latter kept in the unmatched list), so
NXCloud stops retrying them. Secrets (token, sign) are never logged or stored.

Build with `create_app(ReceiverConfig(...))`; `workers/web.py` does that from settings.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Callable

import redis
import redis.asyncio as aioredis
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, Router

from nxjobs import callback_urls, metrics
from nxjobs.callbacks import events
from nxjobs.callbacks.ledger import BatchingApplier, Ledger
from nxjobs.callbacks.verify import Rejected, check_callbot, check_token

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
    redis_url: where job records live.
    token: per-deployment token expected in unsigned callback URLs (>= 16 chars).
    callbot_uuid, callbot_secret_key, callbot_algorithm: to verify signed Callbot callbacks;
        without them Callbot callbacks are refused (401).
    max_body_bytes: larger bodies get 413.
    tolerance_s: allowed |now - createTs| of a signed callback, seconds.
    unmatched_max: how many unmatched callbacks to keep.
    clock: returns epoch seconds (tests pin it).
    """

    redis_url: str
    token: str
    callbot_uuid: str | None = None
    callbot_secret_key: str | None = None
    callbot_algorithm: str = "md5"
    max_body_bytes: int = 64 * 1024
    tolerance_s: float = 300.0
    unmatched_max: int = 10_000
    clock: Callable[[], float] = time.time
    max_connections: int = 64

    def __repr__(self) -> str:  # never print the secrets
        return f"ReceiverConfig(redis_url={self.redis_url!r}, callbot_uuid={self.callbot_uuid!r}, ...)"


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refusing (413) anything over `limit` bytes before reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise Rejected(400, "bad Content-Length")
        if int(declared) > limit:
            raise Rejected(413, "body too large")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Rejected(413, "body too large")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(config: ReceiverConfig) -> Router:
    if len(config.token or "") < 16:
        raise ValueError("the callbacks token must be set and at least 16 characters")
    stats: Counter = Counter()
    holder: dict[str, Any] = {}
    callbot_ready = bool(config.callbot_uuid and config.callbot_secret_key)

    @asynccontextmanager
    async def lifespan(app: Router):
        client = aioredis.Redis.from_url(config.redis_url, decode_responses=True, socket_connect_timeout=3,
                                         socket_timeout=5, max_connections=config.max_connections)
        holder["ledger"] = ledger = Ledger(client, unmatched_max=config.unmatched_max)
        # Concurrent requests share Redis round trips (each callback still one atomic script).
        holder["applier"] = BatchingApplier(ledger)
        holder["delays"] = []
        flusher = asyncio.ensure_future(flush_delays_forever())
        if not callbot_ready:
            log.warning("callbot uuid/secret key not configured: Callbot callbacks will be refused (401)")
        try:
            yield
        finally:
            flusher.cancel()
            await flush_delays()
            await client.aclose()

    def reject(kind: str, exc: Rejected) -> Response:
        stats[f"rejected_{exc.status}"] += 1
        log.warning("callback rejected type=%s status=%d reason=%s", kind, exc.status, exc.reason)
        return JSONResponse({"error": exc.reason}, status_code=exc.status)

    async def store(kind: str, event: events.Event, ok_body: bytes) -> Response:
        try:
            applied = await holder["applier"].apply(event)
        except (redis.RedisError, OSError) as exc:
            # Not stored: a 5xx makes NXCloud deliver it again later.
            stats["store_errors"] += 1
            log.error("callback not stored type=%s: %s", kind, type(exc).__name__)
            return JSONResponse({"error": "storage unavailable"}, status_code=503)
        stats[applied.outcome] += 1
        if applied.status == 0:
            log.info("callback unmatched type=%s ids=%s", kind, event.ids)
        elif applied.submitted_at:
            delay = metrics.callback_delay_s(applied.submitted_at, config.clock())
            if delay is not None:
                holder["delays"].append((event.job_kind, delay))
        return Response(ok_body, media_type="application/json")

    async def flush_delays() -> None:
        """Completion times leave in one pipelined trip per interval, not one per callback."""
        batch, holder["delays"] = holder["delays"], []
        if not batch:
            return
        try:
            pipe = holder["ledger"].redis.pipeline(transaction=False)
            metrics.queue_callback_delays(pipe, batch)
            await pipe.execute()
        except Exception as exc:  # a metric must never cost a stored callback
            log.warning("%d completion metric(s) not recorded: %s", len(batch), type(exc).__name__)

    async def flush_delays_forever() -> None:
        while True:
            await asyncio.sleep(DELAY_FLUSH_S)
            await flush_delays()

    def unsigned(kind: str):
        async def endpoint(request: Request) -> Response:
            try:
                check_token(request.path_params["token"], config.token)
                raw = await read_body(request, config.max_body_bytes)
                event = events.parse(kind, raw)
            except Rejected as exc:
                return reject(kind, exc)
            except events.Malformed as exc:
                return reject(kind, Rejected(400, f"malformed: {exc}"))
            return await store(kind, event, _OK_PLAIN)

        return endpoint

    def signed(kind: str):
        async def endpoint(request: Request) -> Response:
            try:
                if not callbot_ready:
                    raise Rejected(401, "callbot verification not configured")
                raw = await read_body(request, config.max_body_bytes)
                text = check_callbot(
                    raw, request.headers, uuid=config.callbot_uuid or "",
                    secret_key=config.callbot_secret_key or "", default_algorithm=config.callbot_algorithm,
                    now_s=config.clock(), tolerance_s=config.tolerance_s)
                event = events.parse(kind, text)
            except Rejected as exc:
                return reject(kind, exc)
            except events.Malformed as exc:
                return reject(kind, Rejected(400, f"malformed: {exc}"))
            return await store(kind, event, _OK_CALLBOT)

        return endpoint

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True, "counts": dict(stats)})

    async def readyz(request: Request) -> Response:
        try:
            await holder["ledger"].redis.ping()
        except (redis.RedisError, OSError):
            return JSONResponse({"ok": False, "redis": "unreachable"}, status_code=503)
        return JSONResponse({"ok": True})

    routes = [
        Route(callback_urls.NUMBER_CHECK + "/{token}", unsigned(events.NUMBER_CHECK), methods=["POST"]),
        Route(callback_urls.AGENT_CDR + "/{token}", unsigned(events.CDR), methods=["POST"]),
        Route(callback_urls.CALLBOT_CALL, signed(events.CALLBOT_CALL), methods=["POST"]),
        Route(callback_urls.CALLBOT_ORDER, signed(events.CALLBOT_ORDER), methods=["POST"]),
        Route(callback_urls.CALLBOT_TASK, signed(events.CALLBOT_TASK), methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
    ]
    # A bare Router (Starlette's own ASGI router) rather than the Starlette app: it skips two
    # exception middlewares on the hot path; an unexpected error still ends as uvicorn's 500.
    app = Router(routes=routes, lifespan=lifespan)
    app.stats = stats  # type: ignore[attr-defined]
    return app
