"""The Redis side of callbacks: apply one in a single round trip, list the
unmatched ones, and the waiting sets reconciliation works from.

One Lua script per callback finds the job (correlation index keys, then a
direct id), drops a repeat, stores the entry in the job's own hash (field
`cb:<dedupe key>`, nxjobs.keys.CALLBACK_FIELD: one key per job, so one TTL and
no key to create per callback), counts completion units and, when the last one
arrived and the job is submitted, completes it and takes it off the waiting
set. A callback whose job is not submitted yet is kept and counted; the submit
step (nxjobs.store, _SUBMIT_LUA) completes the job if nothing is left to wait for.

`Ledger` works with a sync client (reconciliation, operators);
`nxjobs.callbacks.applier.BatchApplier` serves the asyncio receiver. The script derives the job's
keys from its id, so it needs a single Redis (not a cluster), as the rest of nxjobs.
"""

from __future__ import annotations

import json
import time
from typing import Any, NamedTuple

from pydantic_core import to_json

from nxjobs import keys
from nxjobs.callbacks.events import Event
from nxjobs.jobs import KINDS
from nxjobs.records import utc_now_iso

# KEYS[1] unmatched list, KEYS[2] waiting zset of the job kind's family,
#   KEYS[3] the ambiguous-call reconcile zset, KEYS[4..] correlation index keys.
# ARGV[1] key prefix, [2] direct job id or '', [3] job kind expected, [4] dedupe key,
#   [5] completion unit or '' (equal to [4]: each distinct callback is one), [6] entry JSON (an object),
#   [7] the correlating ids (JSON), [8] now ISO,
#   [9] unmatched max, [10] result JSON for a call job failed as ambiguous that this proves, or '',
#   [11] a second job kind it may belong to (found by an index key) or '', [12] its completion unit there or ''.
# Returns {status, job id, state[, submitted_at, job kind]}: 1 recorded, 2 duplicate (nothing written),
#   0 unmatched; submitted_at (unix s) only from the callback that completed the job, once per job.
_APPLY_LUA = """
local job_id = false
for i = 4, #KEYS do
  job_id = redis.call('GET', KEYS[i])
  if job_id then break end
end
if not job_id and ARGV[2] ~= '' then job_id = ARGV[2] end
local jk = job_id and (ARGV[1] .. ':job:' .. job_id)
local kind, state, done, need = false, false, 0, -1
if jk then
  local h = redis.call('HMGET', jk, 'kind', 'state', 'callbacks_done', 'callbacks_needed')
  kind, state, done, need = h[1], h[2], tonumber(h[3] or '0'), tonumber(h[4] or '-1')
end
local unit = ARGV[5]
if kind and ARGV[11] and ARGV[11] ~= '' and kind == ARGV[11] then
  unit = ARGV[12] or ''
elseif kind ~= ARGV[3] then
  -- the entry with its ids first: {"ids":{...},"type":...}
  redis.call('LPUSH', KEYS[1], '{"ids":' .. ARGV[7] .. ',' .. string.sub(ARGV[6], 2))
  redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[9]) - 1)
  return {0, '', ''}
end
-- Stored in the job's own hash, keyed by its dedupe key: a repeat writes nothing.
if redis.call('HSETNX', jk, 'cb:' .. ARGV[4], ARGV[6]) == 0 then
  return {2, job_id, state}
end
if unit == ARGV[4] then
  -- Each distinct callback is a unit (a Number Check DR): the line above has just counted it.
  done = done + 1
elseif unit ~= '' then
  done = done + redis.call('HSETNX', jk, 'cu:' .. unit, '1')
end
local completes = false
if need >= 0 and done >= need then
  if state == 'submitted' then
    completes = true
  elseif state == 'failed' and ARGV[10] ~= '' then
    local err = redis.call('HGET', jk, 'error') or ''
    if string.find(err, '"code":"ambiguous"', 1, true) or string.find(err, '"code":"call_not_found"', 1, true) then
      -- The makecall whose answer was lost did reach the provider: this CDR proves it.
      completes = true
      redis.call('HSET', jk, 'error', '', 'result', ARGV[10])
      redis.call('ZREM', KEYS[3], job_id)
    end
  end
end
if not completes then
  redis.call('HSET', jk, 'callbacks_done', done, 'updated_at', ARGV[8])
  return {1, job_id, state, '', kind}
end
redis.call('HSET', jk, 'callbacks_done', done, 'updated_at', ARGV[8], 'state', 'completed')
redis.call('ZREM', KEYS[2], job_id)
-- Completed by this callback: hand back when it was submitted, once per job, so the caller
-- can time it (nxjobs.metrics) without another round trip.
if redis.call('HSETNX', jk, 'completion_observed', '1') == 1 then
  return {1, job_id, 'completed', redis.call('HGET', jk, 'submitted_at') or '', kind}
end
return {1, job_id, 'completed', '', kind}
"""

RECORDED, DUPLICATE, UNMATCHED = 1, 2, 0
_OUTCOMES = {RECORDED: "recorded", DUPLICATE: "duplicate", UNMATCHED: "unmatched"}


class Applied(NamedTuple):
    # A NamedTuple rather than a frozen dataclass: one is built per callback, 3-4x faster.
    status: int  # RECORDED, DUPLICATE or UNMATCHED
    job_id: str
    state: str
    # Set only on the callback that completed its job: when the job was submitted (unix s).
    submitted_at: str = ""
    # The kind of the job it was recorded on (a Callbot order may belong to a list or a contact job).
    kind: str = ""

    @property
    def outcome(self) -> str:
        return _OUTCOMES[self.status]


def family_of(job_kind: str) -> str:
    """The API family (= queue) of a job kind; reconciliation runs per family."""
    return KINDS[job_kind].queue


class Ledger:
    """Parameters: `client` a Redis client with decode_responses=True (sync for `apply` and the
    listing methods; an asyncio one for BatchApplier);
    `unmatched_max` how many unmatched callbacks to keep (oldest dropped)."""

    def __init__(self, client: Any, *, unmatched_max: int = 10_000):
        self.redis = client
        self.unmatched_max = unmatched_max
        self._apply = client.register_script(_APPLY_LUA) if not _is_async(client) else None

    def _call(self, event: Event, source: str, received_at: str) -> tuple[list[str], list[str]]:
        entry = {"type": event.type, "source": source, "received_at": received_at, "data": event.data}
        keys_ = [keys.CALLBACKS_UNMATCHED, keys.callbacks_waiting(family_of(event.job_kind)), keys.RECONCILE,
                 *event.index_keys]
        args = [keys.PREFIX, event.direct_id, event.job_kind, event.dedupe, event.unit, _dumps(entry),
                _dumps(event.ids), received_at, str(self.unmatched_max),
                _dumps(event.resolves) if event.resolves else "", event.alt_kind, event.alt_unit]
        return keys_, args

    def apply(self, event: Event, *, source: str = "callback") -> Applied:
        """Record `event` on its job (one round trip, sync client)."""
        keys_, args = self._call(event, source, utc_now_iso())
        return _applied(self._apply(keys=keys_, args=args))

    # ---- for operators and reconciliation (sync client) -------------------

    def unmatched(self, limit: int = 50) -> list[dict[str, Any]]:
        """The newest `limit` callbacks that matched no job, newest first."""
        return [json.loads(x) for x in self.redis.lrange(keys.CALLBACKS_UNMATCHED, 0, max(limit, 1) - 1)]

    def due(self, family: str, *, now: float | None = None, limit: int = 50) -> list[str]:
        """Job ids of `family` whose reconciliation is due."""
        now = time.time() if now is None else now
        return list(self.redis.zrangebyscore(keys.callbacks_waiting(family), "-inf", now, start=0, num=limit))

    def recheck_at(self, family: str, job_id: str, at: float) -> None:
        self.redis.zadd(keys.callbacks_waiting(family), {job_id: at})

    def forget(self, family: str, job_id: str) -> None:
        self.redis.zrem(keys.callbacks_waiting(family), job_id)


def _is_async(client: Any) -> bool:
    import redis.asyncio

    return isinstance(client, redis.asyncio.Redis)


def _applied(reply: list) -> Applied:
    status, job_id, state = reply[:3]
    return Applied(int(status), job_id or "", state or "", (reply[3] if len(reply) > 3 else "") or "",
                   (reply[4] if len(reply) > 4 else "") or "")


def _dumps(value: Any) -> str:
    # Compact UTF-8 JSON, as nxjobs.store writes; pydantic-core's encoder is several times faster.
    return to_json(value).decode("utf-8")
