"""Dead letters: jobs that failed for good, kept (bounded) so an operator can replay them.

A job lands here when it exhausts its retries or fails permanently (tasks/base.py),
or when reconciliation proves an ambiguous makecall was never placed
(`call_not_found`). Jobs failed as `ambiguous` are not here: they wait in
`nxjobs:reconcile` until the provider says what happened. `callbacks_timeout`
failures are not here either: the provider accepted those, a replay would resend.

Storage: a sorted set of job ids scored by failure time and a hash of JSON
entries. Every add trims both by age and count in the same Lua call, so the
store never grows past `max_entries` nor keeps anything older than `max_age_s`.

Replay (`Producer.replay_dead`) moves the record `failed` -> `queued` (the one
backwards transition there is, done only here, atomically with removing the
entry) and enqueues the same job id and payload through the normal task: the
in-flight marker, the record state machine and the rate limiter all apply.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from nxjobs import compact_json, keys, scripts, store
from nxjobs.records import utc_now_iso


class DeadLetters:
    def __init__(
        self, client: redis.Redis, *, max_entries: int = 10_000, max_age_s: float = 7 * 24 * 3600
    ):
        self.redis = client
        self.max_entries = max_entries
        self.max_age_s = max_age_s
        self._add = scripts.register(client, "deadletters_add")
        self._take = store.register_script(client, "deadletters_take")

    def add(
        self,
        job_id: str,
        kind: str,
        payload: dict[str, Any],
        error: dict[str, Any],
        record: dict[str, Any] | None = None,
    ) -> None:
        """Keep a failed job. `payload` is the raw input (a replay needs it, like the queued
        message did); `record` is the redacted record for operators."""
        now = time.time()
        entry = {
            "job_id": job_id,
            "kind": kind,
            "failed_at": utc_now_iso(),
            "reason": error,
            "payload": payload,
            "record": record,
        }
        self._add(
            keys=[keys.DEAD_INDEX, keys.DEAD_ENTRIES],
            args=[
                job_id,
                f"{now:.3f}",
                compact_json.dumps(entry),
                self.max_entries,
                f"{now - self.max_age_s:.3f}",
            ],
        )

    def list(self, *, kind: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Entries newest first (age bound applied on read too), optionally of one kind."""
        cutoff = time.time() - self.max_age_s
        ids: list[Any] = self.redis.zrevrangebyscore(keys.DEAD_INDEX, "+inf", f"{cutoff:.3f}")
        out = []
        for raw in self.redis.hmget(keys.DEAD_ENTRIES, ids) if ids else []:
            if not raw:
                continue
            entry = json.loads(raw)
            if kind is None or entry.get("kind") == kind:
                out.append(entry)
            if limit is not None and len(out) >= limit:
                break
        # The record's state now: not `failed` means the entry is stale (a replay skips it).
        pipe = self.redis.pipeline(transaction=False)
        for entry in out:
            pipe.hget(keys.job(entry["job_id"]), "state")
        for entry, state in zip(out, pipe.execute() if out else [], strict=True):
            entry["state"] = state or "expired"
        return out

    def remove(self, job_id: str) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.zrem(keys.DEAD_INDEX, job_id)
        pipe.hdel(keys.DEAD_ENTRIES, job_id)
        pipe.execute()

    def update_reason(self, job_id: str, reason: dict[str, Any]) -> None:
        """A later verdict on the same failure (reconciliation: ambiguous -> call_not_found)."""
        raw = self.redis.hget(keys.DEAD_ENTRIES, job_id)
        if raw:
            entry = json.loads(raw)
            entry["reason"] = reason
            self.redis.hset(keys.DEAD_ENTRIES, job_id, compact_json.dumps(entry))

    def count(self) -> int:
        return int(self.redis.zcard(keys.DEAD_INDEX))

    def take(self, job_id: str, record_ttl_s: int) -> tuple[int, Any]:
        """Take the entry for replay (nxjobs/lua/deadletters_take.lua): (status, entry or state)."""
        status, value = self._take(
            keys=[keys.job(job_id), keys.DEAD_INDEX, keys.DEAD_ENTRIES],
            args=[job_id, utc_now_iso(), record_ttl_s],
        )
        status = int(status)
        return status, (json.loads(value) if status in (1, 2) else value)

    def purge(self, *, kind: str | None = None) -> int:
        """Drop entries (of one kind, or all); returns how many."""
        if kind is None:
            n = self.count()
            self.redis.delete(keys.DEAD_INDEX, keys.DEAD_ENTRIES)
            return n
        ids = [e["job_id"] for e in self.list(kind=kind)]
        if ids:
            pipe = self.redis.pipeline(transaction=True)
            pipe.zrem(keys.DEAD_INDEX, *ids)
            pipe.hdel(keys.DEAD_ENTRIES, *ids)
            pipe.execute()
        return len(ids)
