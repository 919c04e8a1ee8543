"""An asyncio producer: the methods of nxjobs.producers.Producer, awaitable.

    from nxjobs.aio import Producer
    async with Producer() as jobs:                       # NXJOBS_REDIS_URL
        job_id = await jobs.ota_init(phone="8615800001795", user_ip="203.0.113.7")
        record = (await jobs.wait([job_id], until="completed", timeout_s=30))[job_id]

Reads (`get`, `get_many`, `callbacks`, `wait`) use redis.asyncio. `wait` sleeps on the jobs'
channels (every state change is published there, lib/state.lua) instead of polling: it
subscribes first, then reads the records, then re-reads a record each time its job moves.
Enqueueing (`enqueue`, `call`, `number_check`, ...) runs the sync Producer in a worker thread
(asyncio.to_thread): Celery publishes synchronously, and validation, errors (InvalidJob,
RedisUnavailable, EnqueueError) and arguments are exactly the sync ones.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import redis.asyncio as aioredis

from nxjobs import keys, producers, store
from nxjobs.deadletters import DeadLetters
from nxjobs.jobs import InvalidJob
from nxjobs.producers import EnqueueError, ProducerSettings
from nxjobs.records import JobRecord, JobState
from nxjobs.redis_conn import RedisUnavailable

__all__ = ["Producer", "InvalidJob", "RedisUnavailable", "EnqueueError", "JobRecord", "JobState"]

T = TypeVar("T")


class Producer:
    def __init__(self, redis_url: str | None = None, *, record_ttl_s: int | None = None):
        self.redis_url = redis_url or ProducerSettings().redis_url
        self.sync = producers.Producer(self.redis_url, record_ttl_s=record_ttl_s)
        # Typed Any: redis-py types replies bytes | str, and decode_responses makes them str.
        self.redis: Any = aioredis.Redis.from_url(
            self.redis_url, decode_responses=True, socket_connect_timeout=3
        )

    async def _in_thread(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.to_thread(fn, *args, **kwargs)

    # ---- enqueue (the sync Producer, in a thread) -------------------------------------------

    async def enqueue(self, kind: str, payload: dict[str, Any], **options: Any) -> str:
        """producers.Producer.enqueue (batch=, notify_url=)."""
        return await self._in_thread(self.sync.enqueue, kind, payload, **options)

    async def enqueue_many(
        self, kind: str, payloads: Iterable[dict[str, Any]], **options: Any
    ) -> list[str]:
        return await self._in_thread(self.sync.enqueue_many, kind, list(payloads), **options)

    async def call(self, **arguments: Any) -> str:
        return await self._in_thread(self.sync.call, **arguments)

    async def callbot_list(self, **arguments: Any) -> str:
        return await self._in_thread(self.sync.callbot_list, **arguments)

    async def callbot_contact(self, **arguments: Any) -> str:
        return await self._in_thread(self.sync.callbot_contact, **arguments)

    async def number_check(self, **arguments: Any) -> str:
        return await self._in_thread(self.sync.number_check, **arguments)

    async def ota_init(self, **arguments: Any) -> str:
        return await self._in_thread(self.sync.ota_init, **arguments)

    async def wa_calling(self, **arguments: Any) -> str:
        return await self._in_thread(self.sync.wa_calling, **arguments)

    @property
    def dead_letters(self) -> DeadLetters:
        """The sync producer's (nxjobs.deadletters, blocking calls)."""
        return self.sync.dead_letters

    async def replay_dead(self, job_id: str) -> str:
        return await self._in_thread(self.sync.replay_dead, job_id)

    # ---- read back (redis.asyncio) ----------------------------------------------------------

    async def get(self, job_id: str) -> JobRecord | None:
        return (await self.get_many([job_id]))[job_id]

    async def get_many(self, job_ids: Iterable[str]) -> dict[str, JobRecord | None]:
        """As RecordStore.get_many: a paged job's record carries its first callbacks only."""
        ids = list(job_ids)
        if not ids:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hgetall(keys.job(job_id))
            raws: list[dict[str, str]] = await pipe.execute()
        batch_ids = store.batch_ids_of(raws)
        wanted = store.first_items_wanted(ids, raws)
        shared: dict[str, dict[str, str]] = {}
        first: dict[str, list[dict[str, Any]]] = {job_id: [] for job_id, _ in wanted}
        wanted = [(job_id, fields) for job_id, fields in wanted if fields]
        if batch_ids or wanted:
            async with self.redis.pipeline(transaction=False) as pipe:
                for batch_id in batch_ids:
                    pipe.hmget(keys.coalesce_batch(batch_id), *store.BATCH_READ)
                for job_id, fields in wanted:
                    pipe.hmget(store.callbacks_home(job_id, True), fields)
                replies = await pipe.execute()
            for batch_id, values in zip(batch_ids, replies, strict=False):
                shared[batch_id] = store.shared_fields(values)
            for (job_id, _), values in zip(wanted, replies[len(batch_ids) :], strict=True):
                first[job_id] = [json.loads(v) for v in values if v]
        return {
            job_id: (
                store.decode_record(
                    raw, shared.get(raw.get("coalesce_batch", "")), first.get(job_id), job_id
                )
                if raw
                else None
            )
            for job_id, raw in zip(ids, raws, strict=True)
        }

    async def callbacks(
        self, job_id: str, cursor: str = "0", limit: int = 100
    ) -> store.CallbackPage | None:
        """As producers.Producer.callbacks."""
        start = store.parse_cursor(cursor)
        if not 1 <= limit <= store.MAX_PAGE:
            raise ValueError(f"count must be 1..{store.MAX_PAGE}, not {limit}")
        kind, paged, stored = await self.redis.hmget(
            keys.job(job_id), "kind", keys.CALLBACKS_PAGED, "callbacks_stored"
        )
        if kind is None:
            return None
        if store.is_paged(paged):
            total = int(stored or 0)
            end = min(start + limit, total)
            values = (
                await self.redis.hmget(
                    store.callbacks_home(job_id, True), store.item_fields(start, end)
                )
                if end > start
                else []
            )
            items = [json.loads(v) for v in values if v]
        else:
            entries = store.inline_callbacks(await self.redis.hgetall(keys.job(job_id)))
            total = len(entries)
            end = min(start + limit, total)
            items = entries[start:end]
        return store.CallbackPage(items, str(end) if end < total else None, total)

    async def wait(
        self,
        job_ids: Iterable[str],
        *,
        until: str | JobState = JobState.SUBMITTED,
        timeout_s: float = 60.0,
    ) -> dict[str, JobRecord | None]:
        """Until every job reached `until` or failed, or `timeout_s` passed; the last records.
        Wakes when a job's state changes (its channel), never on a timer."""
        target = JobState(until)
        ids = list(dict.fromkeys(job_ids))
        if not ids:
            return {}
        deadline = time.monotonic() + timeout_s
        by_channel = {keys.job_channel(job_id): job_id for job_id in ids}
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        try:
            # Subscribed before the first read: a move between the two is not missed.
            await pubsub.subscribe(*by_channel)
            records = await self.get_many(ids)
            while not _done(records, target):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                message = await pubsub.get_message(timeout=left)
                if message is None:
                    continue
                moved = {by_channel[message["channel"]]}
                while True:  # whatever else has arrived, in the same re-read
                    more = await pubsub.get_message(timeout=0)
                    if more is None:
                        break
                    moved.add(by_channel[more["channel"]])
                records.update(await self.get_many(moved))
            return records
        finally:
            await pubsub.aclose()

    async def close(self) -> None:
        await self.redis.aclose()
        await self._in_thread(self.sync.close)

    async def __aenter__(self) -> Producer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _done(records: dict[str, JobRecord | None], target: JobState) -> bool:
    return all(
        r is not None and (r.reached(target) or r.state == JobState.FAILED)
        for r in records.values()
    )
