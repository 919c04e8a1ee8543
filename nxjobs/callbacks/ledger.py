"""The Redis side of callbacks: apply one in a single round trip, list the
unmatched ones, and the waiting sets reconciliation works from.

One Lua script per callback finds the job (correlation index keys, then a
direct id), proves the callback is the job's own, drops a repeat, stores the
entry in the job's own hash (field `cb:<dedupe key>`, nxjobs.keys.CALLBACK_FIELD:
one key per job, so one TTL and no key to create per callback), counts
completion units and, when the last one arrived and the job is submitted,
completes it and takes it off the waiting set. A callback whose job is not
submitted yet is kept and counted; the submit step (nxjobs.store, _SUBMIT_LUA)
completes the job if nothing is left to wait for.

Whoever holds the URL token can post an unsigned callback, so finding a job
proves nothing by itself. A callback from the receiver changes a job only when
its ids agree with what the job recorded (nxjobs.keys.PROOF_*):
- Number Check DR: its batchNo is the job's, its number one of the job's
  (compared masked), and its per-number id `<requestId>-<suffix>` carries the
  job's requestId (a coalesced member's: its batch's). Before the submit answer
  names the requestId, the first DR fixes it and the submit step drops every
  early DR if the answer names another (nxjobs.correlate.PROVE_EARLY_LUA).
- Agent CDR: its sessionid is the makecall's (the same early rule). A call that
  failed `ambiguous` or `call_not_found` is never resolved by a callback: the
  callback makes its provider lookup due now, and only that answer moves it.
- Callbot call/order: a contact's userTaskID is its task; a list's orderID is
  one of its contacts' (`<job id>-<index>`, or an explicit one marked at enqueue).
A job stores at most `callbacks_max` entries (a Number Check: one per number);
distinct ones past that are counted (`callbacks_dropped`) and not kept.
Whatever proves nothing goes to the unmatched store with its reason: bounded in
count and bytes, a body cut to a prefix, a repeat stored once and counted. A
signed callback is remembered by its signature until its createTs leaves the
tolerance window, so a replay is answered and stored nowhere. Answers from the
provider's query APIs (reconciliation, `source` other than "callback") are the
provider's own word and skip the proof.

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

# KEYS[1] unmatched zset, KEYS[2] unmatched entries hash, KEYS[3] waiting zset of the job kind's
#   family, KEYS[4] the ambiguous-call reconcile zset, KEYS[5] this callback's replay key,
#   KEYS[6..] correlation index keys.
# ARGV[1] key prefix, [2] direct job id or '', [3] job kind expected, [4] dedupe key,
#   [5] completion unit or '' (equal to [4]: each distinct callback is one), [6] entry JSON (an object),
#   [7] the correlating ids (JSON), [8] now ISO,
#   [9] unmatched max count, [10] result JSON for a call job failed as ambiguous that this proves, or '',
#   [11] a second job kind it may belong to (found by an index key) or '', [12] its completion unit there or '',
#   [13] source ('callback' is proved against the job; any other is the provider's own query answer),
#   [14] check (events.CHECK_*) or '', [15..17] its proof ids, [18] replay key expiry (unix s) or '' (unsigned),
#   [19] unmatched max bytes, [20] unmatched body bytes kept, [21] now (unix ms), [22] callback type.
# Returns {status, job id, state[, submitted_at, job kind]}: 1 recorded, 2 duplicate or replay (nothing
#   written), 0 unmatched, 3 dropped (the job has all the callbacks it can have: counted), 4 deferred
#   (a failed call is looked up at the provider instead); submitted_at (unix s) only from the callback
#   that completed the job, once per job.
_APPLY_LUA = """
local replay = ARGV[18] ~= ''
if replay and redis.call('EXISTS', KEYS[5]) == 1 then return {2, '', ''} end
local function seen(reply)
  if replay then redis.call('SET', KEYS[5], '1', 'EXAT', ARGV[18]) end
  return reply
end
local function unmatched(reason)
  local fp, eh = ARGV[4], KEYS[2]
  redis.call('ZADD', KEYS[1], ARGV[21], fp)
  if redis.call('HINCRBY', eh, 'n:' .. fp, 1) > 1 then return seen({0, '', ''}) end
  local body, n = ARGV[6], tonumber(ARGV[20])
  local cut = #body > n
  if cut then
    -- Never cut inside a UTF-8 sequence: back off continuation bytes.
    while n > 0 and string.byte(body, n + 1) >= 128 and string.byte(body, n + 1) < 192 do n = n - 1 end
    body = string.sub(body, 1, n)
  end
  local entry = '{"ids":' .. ARGV[7] .. ',"reason":' .. cjson.encode(reason) .. ',"type":"' .. ARGV[22] ..
    '","source":"' .. ARGV[13] .. '","received_at":"' .. ARGV[8] .. '","truncated":' .. tostring(cut) ..
    ',"callback":' .. cjson.encode(body) .. '}'
  redis.call('HSET', eh, 'e:' .. fp, entry)
  local total = redis.call('HINCRBY', eh, 'bytes', #entry)
  local max_n, max_b = tonumber(ARGV[9]), tonumber(ARGV[19])
  while total > max_b or redis.call('ZCARD', KEYS[1]) > max_n do
    local oldest = redis.call('ZPOPMIN', KEYS[1])
    if #oldest == 0 then break end
    local len = redis.call('HSTRLEN', eh, 'e:' .. oldest[1])
    redis.call('HDEL', eh, 'e:' .. oldest[1], 'n:' .. oldest[1])
    total = redis.call('HINCRBY', eh, 'bytes', -len)
  end
  return seen({0, '', ''})
end
local job_id = false
for i = 6, #KEYS do
  job_id = redis.call('GET', KEYS[i])
  if job_id then break end
end
if not job_id and ARGV[2] ~= '' then job_id = ARGV[2] end
local jk = job_id and (ARGV[1] .. ':job:' .. job_id)
local kind, state, done, need, stored, cap = false, false, 0, -1, 0, false
-- What the proof needs comes in the same read: keys.PROOF_ID, PROOF_SEEN, PROOF_BATCH, PROOF_TASK, PROOF_ORDERS.
local proof = {}
if jk then
  local h = redis.call('HMGET', jk, 'kind', 'state', 'callbacks_done', 'callbacks_needed', 'callbacks_stored',
                       'callbacks_max', '""" + keys.PROOF_ID + """', '""" + keys.PROOF_SEEN + """',
                       '""" + keys.PROOF_BATCH + """', '""" + keys.PROOF_TASK + """', '""" + keys.PROOF_ORDERS + """')
  kind, state, done, need = h[1], h[2], tonumber(h[3] or '0'), tonumber(h[4] or '-1')
  stored, cap = tonumber(h[5] or '0'), tonumber(h[6] or '')
  proof = {id = h[7], seen = h[8], batch = h[9], task = h[10], orders = tonumber(h[11] or '0')}
end
local unit = ARGV[5]
local alt = kind and ARGV[11] ~= '' and kind == ARGV[11]
if alt then
  unit = ARGV[12]
elseif kind ~= ARGV[3] then
  return unmatched(kind and 'job of another kind' or 'no job')
end
-- Finding the job is not enough: its ids must be the ones the job recorded (keys.PROOF_*).
local check, trusted = ARGV[14], ARGV[13] ~= 'callback'
local function provisional(id)
  if proof.id then return proof.id == id end
  if proof.seen then return proof.seen == id end
  -- The submit answer (and its id) is not recorded yet: the first callback fixes the id the rest
  -- must carry, and the submit step drops them all if the answer names another (correlate.PROVE_EARLY_LUA).
  if state == 'queued' or state == 'running' or state == 'retrying' then
    redis.call('HSET', jk, '""" + keys.PROOF_SEEN + """', id)
  end
  return true
end
if check == 'nc' and not trusted then
  if ARGV[16] == '' or proof.batch ~= ARGV[16] then
    return unmatched('batchNo disagrees')
  end
  if ARGV[17] == '' or redis.call('HEXISTS', jk, '""" + keys.PHONE_FIELD + """' .. ARGV[17]) == 0 then
    return unmatched('phone not in the job')
  end
  if not provisional(ARGV[15]) then return unmatched('requestId disagrees') end
elseif check == 'cdr' and not trusted then
  if state == 'failed' then
    local err = redis.call('HGET', jk, 'error') or ''
    if string.find(err, '"code":"ambiguous"', 1, true) or string.find(err, '"code":"call_not_found"', 1, true) then
      -- A callback never resolves a call whose placing is in doubt: the provider's lookup does (now).
      redis.call('ZADD', KEYS[4], 0, job_id)
      return seen({4, job_id, state})
    end
  end
  if ARGV[15] == '' or not provisional(ARGV[15]) then return unmatched('sessionid disagrees') end
elseif check == 'order' and not trusted then
  if alt then
    if proof.task ~= ARGV[15] then
      return unmatched('userTaskID disagrees')
    end
  else
    local oid, head = ARGV[16], job_id .. '-'
    local index = string.sub(oid, 1, #head) == head and string.match(string.sub(oid, #head + 1), '^%d+$')
    if not ((index and tonumber(index) < proof.orders) or
            redis.call('HEXISTS', jk, '""" + keys.ORDER_FIELD + """' .. oid) == 1) then
      return unmatched('orderID not in the task')
    end
  end
end
-- Stored in the job's own hash, keyed by its dedupe key: a repeat writes nothing. A job holds at
-- most `callbacks_max` entries (a Number Check: one per number); distinct ones past it are counted.
if cap and stored >= cap then
  if redis.call('HEXISTS', jk, 'cb:' .. ARGV[4]) == 1 then return seen({2, job_id, state}) end
  redis.call('HINCRBY', jk, 'callbacks_dropped', 1)
  return seen({3, job_id, state})
end
if redis.call('HSETNX', jk, 'cb:' .. ARGV[4], ARGV[6]) == 0 then
  return seen({2, job_id, state})
end
stored = stored + 1
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
  elseif state == 'failed' and ARGV[10] ~= '' and trusted then
    local err = redis.call('HGET', jk, 'error') or ''
    if string.find(err, '"code":"ambiguous"', 1, true) or string.find(err, '"code":"call_not_found"', 1, true) then
      -- The makecall whose answer was lost did reach the provider: its CDR lookup proves it.
      completes = true
      redis.call('HSET', jk, 'error', '', 'result', ARGV[10])
      redis.call('ZREM', KEYS[4], job_id)
    end
  end
end
if not completes then
  redis.call('HSET', jk, 'callbacks_done', done, 'callbacks_stored', stored, 'updated_at', ARGV[8])
  return seen({1, job_id, state, '', kind})
end
redis.call('HSET', jk, 'callbacks_done', done, 'callbacks_stored', stored, 'updated_at', ARGV[8],
           'state', 'completed')
redis.call('ZREM', KEYS[3], job_id)
-- Completed by this callback: hand back when it was submitted, once per job, so the caller
-- can time it (nxjobs.metrics) without another round trip.
if redis.call('HSETNX', jk, 'completion_observed', '1') == 1 then
  return seen({1, job_id, 'completed', redis.call('HGET', jk, 'submitted_at') or '', kind})
end
return seen({1, job_id, 'completed', '', kind})
"""

RECORDED, DUPLICATE, UNMATCHED, DROPPED, DEFERRED = 1, 2, 0, 3, 4
_OUTCOMES = {RECORDED: "recorded", DUPLICATE: "duplicate", UNMATCHED: "unmatched", DROPPED: "dropped",
             DEFERRED: "deferred"}


class Applied(NamedTuple):
    # A NamedTuple rather than a frozen dataclass: one is built per callback, 3-4x faster.
    status: int  # RECORDED, DUPLICATE, UNMATCHED, DROPPED or DEFERRED
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
    listing methods; an asyncio one for BatchApplier); `unmatched_max` how many unmatched callbacks
    to keep and `unmatched_max_bytes` how many bytes they may take in all (oldest dropped first),
    each keeping at most `unmatched_body_bytes` of its body."""

    def __init__(self, client: Any, *, unmatched_max: int = 10_000, unmatched_max_bytes: int = 8 * 1024 * 1024,
                 unmatched_body_bytes: int = 2048):
        self.redis = client
        self.unmatched_max = unmatched_max
        self.unmatched_max_bytes = unmatched_max_bytes
        self.unmatched_body_bytes = unmatched_body_bytes
        self._apply = client.register_script(_APPLY_LUA) if not _is_async(client) else None

    def _call(self, event: Event, source: str, received_at: str) -> tuple[list[str], list[str]]:
        entry = {"type": event.type, "source": source, "received_at": received_at, "data": event.data}
        proof = (*event.proof, "", "", "")[:3]
        keys_ = [keys.CALLBACKS_UNMATCHED, keys.CALLBACKS_UNMATCHED_ENTRIES,
                 keys.callbacks_waiting(family_of(event.job_kind)), keys.RECONCILE,
                 keys.callback_replay(event.replay) if event.replay else keys.callback_replay("-"),
                 *event.index_keys]
        args = [keys.PREFIX, event.direct_id, event.job_kind, event.dedupe, event.unit, _dumps(entry),
                _dumps(event.ids), received_at, str(self.unmatched_max),
                _dumps(event.resolves) if event.resolves else "", event.alt_kind, event.alt_unit,
                source, event.check, *proof, str(event.replay_until) if event.replay else "",
                str(self.unmatched_max_bytes), str(self.unmatched_body_bytes), str(int(time.time() * 1000)),
                event.type]
        return keys_, args

    def apply(self, event: Event, *, source: str = "callback") -> Applied:
        """Record `event` on its job (one round trip, sync client)."""
        keys_, args = self._call(event, source, utc_now_iso())
        return _applied(self._apply(keys=keys_, args=args))

    # ---- for operators and reconciliation (sync client) -------------------

    def unmatched(self, limit: int = 50) -> list[dict[str, Any]]:
        """The `limit` most recently seen callbacks that matched no job, newest first, each with
        `repeats` (times it came) and its callback (a cut one as `truncated` text)."""
        fps = self.redis.zrevrange(keys.CALLBACKS_UNMATCHED, 0, max(limit, 1) - 1)
        if not fps:
            return []
        fields = [f"{p}:{fp}" for fp in fps for p in ("e", "n")]
        values = self.redis.hmget(keys.CALLBACKS_UNMATCHED_ENTRIES, fields)
        out = []
        for entry, repeats in zip(values[::2], values[1::2]):
            if entry is None:
                continue
            row = json.loads(entry)
            if not row["truncated"]:
                row.update(json.loads(row.pop("callback")))  # type, source, received_at, data
            row["repeats"] = int(repeats or 1)
            out.append(row)
        return out

    def unmatched_count(self) -> int:
        return int(self.redis.zcard(keys.CALLBACKS_UNMATCHED))

    def unmatched_bytes(self) -> int:
        return int(self.redis.hget(keys.CALLBACKS_UNMATCHED_ENTRIES, "bytes") or 0)

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
