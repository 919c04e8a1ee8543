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

from nxjobs import keys
from nxjobs.records import utc_now_iso

# KEYS[1] index zset, KEYS[2] entries hash. ARGV: job id, score, entry JSON,
# max entries, oldest score to keep. Returns entries dropped by the bounds.
_ADD_LUA = """
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
local dropped = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[5])
local extra = redis.call('ZCARD', KEYS[1]) - #dropped - tonumber(ARGV[4])
if extra > 0 then
  for _, id in ipairs(redis.call('ZRANGE', KEYS[1], #dropped, #dropped + extra - 1)) do
    table.insert(dropped, id)
  end
end
for _, id in ipairs(dropped) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
end
return #dropped
"""

# Take an entry for replay. KEYS[1] job hash, KEYS[2] index, KEYS[3] entries.
# ARGV: job id, now (ISO), record ttl. Returns {status, entry or state}:
#  1 record moved failed -> queued, counters reset, `replays` bumped; entry removed
#  2 record expired (caller recreates it); entry removed
#  0 record is no longer failed (e.g. reconciliation completed it): stale entry removed
# -1 no such entry
_TAKE_LUA = """
local entry = redis.call('HGET', KEYS[3], ARGV[1])
if not entry then return {-1, ''} end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {2, entry} end
if state ~= 'failed' then return {0, state} end
redis.call('HSET', KEYS[1], 'state', 'queued', 'updated_at', ARGV[2], 'attempts', 0, 'throttles', 0,
           'waits', 0, 'error', '')
redis.call('HINCRBY', KEYS[1], 'replays', 1)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return {1, entry}
"""


class DeadLetters:
    def __init__(self, client: redis.Redis, *, max_entries: int = 10_000, max_age_s: float = 7 * 24 * 3600):
        self.redis = client
        self.max_entries = max_entries
        self.max_age_s = max_age_s
        self._add = client.register_script(_ADD_LUA)
        self._take = client.register_script(_TAKE_LUA)

    def add(self, job_id: str, kind: str, payload: dict[str, Any], error: dict[str, Any],
            record: dict[str, Any] | None = None) -> None:
        """Keep a failed job. `payload` is the raw input (a replay needs it, like the queued
        message did); `record` is the redacted record for operators."""
        now = time.time()
        entry = {"job_id": job_id, "kind": kind, "failed_at": utc_now_iso(), "reason": error,
                 "payload": payload, "record": record}
        self._add(keys=[keys.DEAD_INDEX, keys.DEAD_ENTRIES], args=[
            job_id, f"{now:.3f}", json.dumps(entry, ensure_ascii=False, separators=(",", ":")),
            self.max_entries, f"{now - self.max_age_s:.3f}"])

    def list(self, *, kind: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Entries newest first (age bound applied on read too), optionally of one kind."""
        cutoff = time.time() - self.max_age_s
        ids = self.redis.zrevrangebyscore(keys.DEAD_INDEX, "+inf", f"{cutoff:.3f}")
        out = []
        for raw in (self.redis.hmget(keys.DEAD_ENTRIES, ids) if ids else []):
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
        for entry, state in zip(out, pipe.execute() if out else []):
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
            self.redis.hset(keys.DEAD_ENTRIES, job_id, json.dumps(entry, ensure_ascii=False, separators=(",", ":")))

    def count(self) -> int:
        return int(self.redis.zcard(keys.DEAD_INDEX))

    def take(self, job_id: str, record_ttl_s: int) -> tuple[int, Any]:
        status, value = self._take(keys=[keys.job(job_id), keys.DEAD_INDEX, keys.DEAD_ENTRIES],
                                   args=[job_id, utc_now_iso(), record_ttl_s])
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
