"""Job records in Redis: one hash per job plus a list of its callbacks.

State changes go through one Lua script so the check "may this state follow
the current one?" and the write happen atomically in a single round trip.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable

import redis

from nxjobs import keys
from nxjobs.records import ALLOWED_FROM, JobRecord, JobState, utc_now_iso

_JSON_FIELDS = ("input", "request", "result", "error", "progress")

# KEYS[1] job hash. ARGV: new state, allowed-from (comma list), now, ttl
# seconds, counters to increment (comma list, may be empty), then field/value
# pairs to set. Returns {status, state before, attempts, throttles}: status 1
# on success, 0 if the state may not follow the current one, -1 if missing.
_TRANSITION_LUA = """
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur then return {-1, '', 0, 0} end
if not string.find(',' .. ARGV[2] .. ',', ',' .. cur .. ',', 1, true) then
  return {0, cur, 0, 0}
end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'updated_at', ARGV[3])
for counter in string.gmatch(ARGV[5], '[^,]+') do redis.call('HINCRBY', KEYS[1], counter, 1) end
for i = 6, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
local counts = redis.call('HMGET', KEYS[1], 'attempts', 'throttles')
return {1, cur, tonumber(counts[1] or '0'), tonumber(counts[2] or '0')}
"""

_COUNTERS = frozenset({"attempts", "throttles", "waits"})

# Count on an existing record only; never create a partial one.
_INCR_IF_EXISTS_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('HINCRBY', KEYS[1], ARGV[1], 1) end
return 0
"""


@dataclass(frozen=True)
class Transition:
    previous: str
    attempts: int
    throttles: int


class TransitionRefused(Exception):
    """The job is not in a state the requested one may follow."""

    def __init__(self, job_id: str, current: str | None, wanted: JobState):
        self.job_id = job_id
        self.current = current
        self.wanted = wanted
        super().__init__(f"job {job_id}: cannot move from {current or 'missing'} to {wanted.value}")


def _encode(fields: dict[str, Any]) -> dict[str, str]:
    out = {}
    for name, value in fields.items():
        if name in _JSON_FIELDS:
            out[name] = "" if value is None else json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        else:
            out[name] = str(value)
    return out


class RecordStore:
    def __init__(self, client: redis.Redis, ttl_s: int = 7 * 24 * 3600):
        self.redis = client
        self.ttl_s = ttl_s
        self._transition = client.register_script(_TRANSITION_LUA)
        self._incr = client.register_script(_INCR_IF_EXISTS_LUA)

    def create(self, job_id: str, kind: str, input: dict[str, Any]) -> JobRecord:
        now = utc_now_iso()
        fields = {
            "id": job_id,
            "kind": kind,
            "state": JobState.QUEUED.value,
            "attempts": 0,
            "created_at": now,
            "updated_at": now,
            "input": input,
            "request": [],
            "result": None,
            "error": None,
        }
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(keys.job(job_id), mapping=_encode(fields))
        pipe.expire(keys.job(job_id), self.ttl_s)
        pipe.execute()
        return JobRecord.model_validate({**fields, "state": JobState.QUEUED})

    def delete(self, job_id: str) -> None:
        self.redis.delete(keys.job(job_id), keys.job_callbacks(job_id))

    def transition(self, job_id: str, state: JobState, *, incr: Iterable[str] = (), **fields: Any) -> Transition:
        """Move `job_id` to `state`, bump the `incr` counters and set `fields`, if the
        state machine allows it (one round trip). Raises TransitionRefused otherwise."""
        counters = list(incr)
        if not set(counters) <= _COUNTERS:
            raise ValueError(f"unknown counters {counters}")
        allowed = ",".join(s.value for s in ALLOWED_FROM[state])
        args: list[str] = [state.value, allowed, utc_now_iso(), str(self.ttl_s), ",".join(counters)]
        for name, value in _encode(fields).items():
            args += [name, value]
        status, current, attempts, throttles = self._transition(keys=[keys.job(job_id)], args=args)
        if status != 1:
            raise TransitionRefused(job_id, current or None, state)
        return Transition(current, int(attempts), int(throttles))

    def incr(self, job_id: str, counter: str) -> None:
        if counter not in _COUNTERS:
            raise ValueError(f"unknown counter {counter}")
        self._incr(keys=[keys.job(job_id)], args=[counter])

    def update(self, job_id: str, **fields: Any) -> None:
        """Set fields without a state change (e.g. progress of a multi-step job)."""
        fields["updated_at"] = utc_now_iso()
        self.redis.hset(keys.job(job_id), mapping=_encode(fields))

    def get_progress(self, job_id: str) -> dict[str, Any]:
        raw = self.redis.hget(keys.job(job_id), "progress")
        return json.loads(raw) if raw else {}

    def get(self, job_id: str) -> JobRecord | None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(keys.job(job_id))
        pipe.lrange(keys.job_callbacks(job_id), 0, -1)
        raw, callbacks = pipe.execute()
        if not raw:
            return None
        return _decode(raw, callbacks)

    def get_many(self, job_ids: Iterable[str]) -> dict[str, JobRecord | None]:
        ids = list(job_ids)
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(keys.job(job_id))
            pipe.lrange(keys.job_callbacks(job_id), 0, -1)
        replies = pipe.execute()
        return {
            job_id: (_decode(replies[2 * i], replies[2 * i + 1]) if replies[2 * i] else None)
            for i, job_id in enumerate(ids)
        }


def _decode(raw: dict[str, str], callbacks: list[str]) -> JobRecord:
    data: dict[str, Any] = dict(raw)
    for name in _JSON_FIELDS:
        value = data.get(name)
        data[name] = json.loads(value) if value else None
    data["input"] = data["input"] or {}
    data["request"] = data["request"] or []
    for counter in _COUNTERS:
        data[counter] = int(data.get(counter, 0))
    data["callbacks"] = [json.loads(c) for c in callbacks]
    return JobRecord.model_validate(data)
