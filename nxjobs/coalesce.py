"""Coalescing: one-number Number Check jobs gathered into one provider request.

The provider's quota counts requests, not numbers (reference §5.1, §8): one
request carries up to 5 000 numbers. A producer enqueueing single numbers
(a sign-up form, a CRM row) would otherwise spend a request per number.

How a job travels:

1. The producer stores the job's record (state `queued`, one callback needed)
   and appends `<job id>|<phone>` to its group's pending list, in one script.
   A group is one check level: every member of a batch is sent with the same
   credential and appkey, those of the api2 workers consuming the queue.
   The script says when a flush message is due: when this push filled a whole
   batch (send one now), or when the list had no flush on its way (send one
   after the linger). That flag expires, so a flush lost with its producer is
   re-armed by the next push or by the periodic sweep.
2. A flush (the Celery task `nxjobs.number_check_batch`) takes its rate-limit
   slot, then takes up to `max_numbers` entries into a batch named after its
   own task id, in one script: members go `running`, and each member's
   correlation key `(batchNo, phone) -> job id` is set before anything is
   sent, so a callback that beats the fan-out still finds its job. A redelivered
   flush finds its batch already built and sends (or looks up) that batch.
   Two jobs with the same phone never share a batch: the second waits for the next.
3. After the answer, one script fans the result out: each member becomes
   `submitted` with its share of the result (or `failed`, if the provider
   rejected its number in `failNumber`), or `completed` at once if its
   callback came early. The batch is then dropped.

Callbacks carry a per-number id `<requestId>-NNNNNN` (§5.1's id rule) plus
`batchNo` and `phone`; the receiver finds a member by `(batchNo, phone)` and
deduplicates by the per-number id, like any Number Check result.

Imports nothing of the service packages: producers use the enqueue half.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable

from pydantic import BaseModel, Field

from nxjobs import keys
from nxjobs.jobs import NUMBER_CHECK_MAX_PHONES, PRIORITY_NEW

FLUSH_TASK = "nxjobs.number_check_batch"
SWEEP_TASK = "nxjobs.coalesce_sweep"
# Batches above this many numbers fall under the provider's lower quota (1 request/s,
# reference §8): 2 000-number batches at 10 requests/s carry four times as many numbers.
BIG_BATCH_NUMBERS = 2000
# Jobs per enqueue script call: bounds one script's time inside Redis.
ENQUEUE_CHUNK = 1000
# The flush-armed flag outlives the linger by this much: long enough for a flush waiting for
# its rate-limit slot, short enough that a flush lost with its producer is soon re-armed.
ARMED_GRACE_S = 30.0


class CoalesceSettings(BaseModel):
    """Shared by producers (when to send a flush) and workers (how much a flush takes)."""

    # Longest a queued number waits for company before its batch is sent anyway.
    linger_s: float = Field(default=0.5, gt=0, le=60)
    # Numbers per provider request. Above 2 000 the provider allows 1 request/s instead of 10.
    max_numbers: int = Field(default=BIG_BATCH_NUMBERS, ge=1, le=NUMBER_CHECK_MAX_PHONES)
    # How often beat looks for pending numbers with no flush on its way, and for stuck batches.
    sweep_interval_s: float = Field(default=5.0, gt=0)
    # A built batch untouched this long is re-flushed by the sweep (its flush message was lost).
    # Every wait or retry of a batch touches it, and none is longer than ratelimit.max_wait_s (600 s).
    stale_batch_s: float = Field(default=900.0, gt=0)


def group_of(check_level: int) -> str:
    return f"nc{int(check_level)}"


def level_of(group: str) -> int:
    return int(group.removeprefix("nc"))


def member_index_key(batch_no: str, phone: str) -> str:
    """Correlation index of one member: a callback's (batchNo, phone) -> job id."""
    return keys.callback_index("nc-num", f"{batch_no}:{phone}")


# The producer half. KEYS[1] pending list, KEYS[2] flush-armed flag.
# ARGV[1] key prefix, [2] record ttl s, [3] max numbers, [4] armed ttl ms, [5] now ISO, [6] group,
# then per job: id, phone, redacted input JSON.
# Returns {flushes due now (a push filled a batch), 1 if a lingering flush must be sent}.
_ENQUEUE_LUA = """
local prefix, ttl, max = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local full = 0
local len = 0
for i = 7, #ARGV, 3 do
  local id = ARGV[i]
  local jk = prefix .. ':job:' .. id
  redis.call('HSET', jk, 'id', id, 'kind', 'number-check', 'state', 'queued', 'attempts', 0,
             'created_at', ARGV[5], 'updated_at', ARGV[5], 'input', ARGV[i + 2], 'request', '[]',
             'result', '', 'error', '', 'callbacks_needed', 1, 'coalesce_group', ARGV[6])
  redis.call('EXPIRE', jk, ttl)
  len = redis.call('RPUSH', KEYS[1], id .. '|' .. ARGV[i + 1])
  if len % max == 0 then full = full + 1 end
end
local linger = 0
if len % max ~= 0 and redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[4]) then linger = 1 end
return {full, linger}
"""

# The flush half: build batch ARGV[1] from the pending list, or return it if built before.
# KEYS[1] batch hash, KEYS[2] pending list, KEYS[3] open batches zset, KEYS[4] flush-armed flag.
# ARGV[1] batch id, [2] max numbers, [3] batchNo, [4] now unix s, [5] now ISO, [6] ttl s, [7] key prefix,
# [8] member index prefix, [9] group.
# Returns {0 nothing taken | 1 built before | 2 built now | 3 already sent and recorded,
#          members JSON [[id, phone], ...], pending left}.
_TAKE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('HGET', KEYS[1], 'done') then return {3, '[]', redis.call('LLEN', KEYS[2])} end
  redis.call('ZADD', KEYS[3], 'XX', ARGV[4], ARGV[1])
  return {1, redis.call('HGET', KEYS[1], 'members'), redis.call('LLEN', KEYS[2])}
end
local max, ttl, prefix = tonumber(ARGV[2]), tonumber(ARGV[6]), ARGV[7]
local items = redis.call('LRANGE', KEYS[2], 0, max - 1)
if #items == 0 then return {0, '[]', 0} end
redis.call('LTRIM', KEYS[2], #items, -1)
local seen, members, again = {}, {}, {}
for _, item in ipairs(items) do
  local sep = string.find(item, '|', 1, true)
  local id, phone = string.sub(item, 1, sep - 1), string.sub(item, sep + 1)
  local jk = prefix .. ':job:' .. id
  if seen[phone] then
    table.insert(again, item)
  elseif redis.call('HGET', jk, 'state') == 'queued' then
    seen[phone] = true
    table.insert(members, {id, phone})
    redis.call('HSET', jk, 'state', 'running', 'updated_at', ARGV[5], 'coalesce_batch', ARGV[1])
    redis.call('HINCRBY', jk, 'attempts', 1)
    redis.call('SET', ARGV[8] .. ARGV[3] .. ':' .. phone, id, 'EX', ttl)
  end
end
for i = #again, 1, -1 do redis.call('LPUSH', KEYS[2], again[i]) end
local left = redis.call('LLEN', KEYS[2])
if #members == 0 then return {0, '[]', left} end
local encoded = cjson.encode(members)
redis.call('HSET', KEYS[1], 'group', ARGV[9], 'batch_no', ARGV[3], 'members', encoded, 'created_at', ARGV[4],
           'created_iso', ARGV[5], 'attempts', 0, 'throttles', 0)
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
redis.call('DEL', KEYS[4])
return {2, encoded, left}
"""

# Fan the provider's answer out to the members, then drop the batch.
# KEYS[1] waiting zset (api2), KEYS[2] batch hash, KEYS[3] open batches zset.
# ARGV[1] key prefix, [2] now ISO, [3] now unix s, [4] callbacks due-at unix s, [5] ttl s, [6] batch id,
# [7] request JSON (shared), [8] the batch's attempts, [9] its throttles,
# then per member: id, 's' (submitted) or 'f' (failed), result or error JSON.
# A member no longer running (e.g. failed by an operator) is left as it is. The batch is marked done.
# Returns the ids of members completed at once (their callback came first).
_FAN_OUT_LUA = """
local prefix, ttl = ARGV[1], tonumber(ARGV[5])
local completed = {}
for i = 10, #ARGV, 3 do
  local id, outcome, doc = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local jk = prefix .. ':job:' .. id
  local cur = redis.call('HGET', jk, 'state')
  if cur == 'running' or cur == 'retrying' then
    -- The member's own story: its request was tried as often as its batch was.
    redis.call('HSET', jk, 'attempts', ARGV[8], 'throttles', ARGV[9])
    if outcome == 'f' then
      redis.call('HSET', jk, 'state', 'failed', 'error', doc, 'request', ARGV[7], 'updated_at', ARGV[2])
    else
      redis.call('HSET', jk, 'state', 'submitted', 'result', doc, 'error', '', 'request', ARGV[7],
                 'updated_at', ARGV[2], 'submitted_at', ARGV[3])
      local done = tonumber(redis.call('HGET', jk, 'callbacks_done') or '0')
      if done >= 1 then
        redis.call('HSET', jk, 'state', 'completed')
        table.insert(completed, id)
      else
        redis.call('ZADD', KEYS[1], ARGV[4], id)
      end
    end
    redis.call('EXPIRE', jk, ttl)
  end
end
-- Kept (without its members) as proof it was sent: a late duplicate of its flush stops here.
redis.call('HDEL', KEYS[2], 'members')
redis.call('HSET', KEYS[2], 'done', '1')
redis.call('ZREM', KEYS[3], ARGV[6])
return completed
"""


@dataclass(frozen=True)
class Taken:
    status: int  # 0 nothing taken, 1 built by an earlier delivery, 2 built now, 3 already sent and recorded
    members: list[tuple[str, str]]  # (job id, phone)
    pending_left: int


@dataclass(frozen=True)
class Flushes:
    now: int  # flush messages to send at once (pushes that filled a batch)
    linger: bool  # a flush to send after the linger


@dataclass(frozen=True)
class MemberOutcome:
    job_id: str
    failed: bool
    document: dict[str, Any]  # the member's result, or its error


class CoalesceQueue:
    """The Redis side of coalescing; `client` is a sync redis client (decode_responses=True)."""

    def __init__(self, client: Any, settings: CoalesceSettings, *, ttl_s: int):
        self.redis = client
        self.settings = settings
        self.ttl_s = ttl_s
        self._enqueue = client.register_script(_ENQUEUE_LUA)
        self._take = client.register_script(_TAKE_LUA)
        self._fan_out = client.register_script(_FAN_OUT_LUA)

    # ---- producer half ------------------------------------------------------

    def enqueue(self, group: str, jobs: Iterable[tuple[str, str, str]], now_iso: str) -> Flushes:
        """Store queued records for (job id, phone, redacted input JSON) and add them to `group`.
        Chunks of ENQUEUE_CHUNK go to Redis in one transaction (all or nothing, and one round
        trip): keep a call to some 10 000 jobs, which holds Redis for about 0.1 s."""
        head = [keys.PREFIX, str(self.ttl_s), str(self.settings.max_numbers), str(self.armed_ms), now_iso, group]
        script_keys = [keys.coalesce_pending(group), keys.coalesce_armed(group)]
        pipe = self.redis.pipeline(transaction=True)
        chunk: list[str] = []
        calls = 0
        for job_id, phone, input_json in jobs:
            chunk += [job_id, phone, input_json]
            if len(chunk) >= 3 * ENQUEUE_CHUNK:
                self._enqueue(keys=script_keys, args=head + chunk, client=pipe)
                chunk, calls = [], calls + 1
        if chunk:
            self._enqueue(keys=script_keys, args=head + chunk, client=pipe)
            calls += 1
        if not calls:
            return Flushes(0, False)
        replies = pipe.execute()
        return Flushes(sum(int(r[0]) for r in replies), any(int(r[1]) for r in replies))

    # ---- worker half ----------------------------------------------------------

    def pending(self, group: str) -> int:
        return int(self.redis.llen(keys.coalesce_pending(group)))

    def take(self, group: str, batch_id: str, now_s: float, now_iso: str) -> Taken:
        status, members, left = self._take(
            keys=[keys.coalesce_batch(batch_id), keys.coalesce_pending(group), keys.COALESCE_OPEN, keys.coalesce_armed(group)],
            args=[batch_id, self.settings.max_numbers, batch_no_of(batch_id), f"{now_s:.3f}", now_iso,
                  self.ttl_s, keys.PREFIX, keys.callback_index("nc-num", ""), group])
        decoded = json.loads(members) if members not in ("", "{}") else []
        return Taken(int(status), [(str(m[0]), str(m[1])) for m in decoded], int(left))

    def batch_state(self, batch_id: str) -> str | None:
        """None (not built), "built" or "done" (sent and recorded)."""
        done, group = self.redis.hmget(keys.coalesce_batch(batch_id), "done", "group")
        return "done" if done else ("built" if group else None)

    def touch(self, batch_id: str, now_s: float) -> None:
        """A built batch is still being worked on (retry, wait): not stale for the sweep."""
        self.redis.zadd(keys.COALESCE_OPEN, {batch_id: now_s}, xx=True)

    def batch_counter(self, batch_id: str, name: str) -> int:
        """Bump and return the batch's `attempts` or `throttles` (0 if the batch is gone)."""
        if not self.redis.exists(keys.coalesce_batch(batch_id)):
            return 0
        return int(self.redis.hincrby(keys.coalesce_batch(batch_id), name, 1))

    def fan_out(self, batch_id: str, request: list[dict[str, Any]], outcomes: list[MemberOutcome], *,
                now_s: float, now_iso: str, due_at_s: float) -> list[str]:
        """Record each member's outcome and mark the batch done; return members completed at once."""
        attempts, throttles = self.redis.hmget(keys.coalesce_batch(batch_id), "attempts", "throttles")
        args: list[Any] = [keys.PREFIX, now_iso, f"{now_s:.3f}", f"{due_at_s:.3f}", self.ttl_s, batch_id,
                           _json(request), int(attempts or 1), int(throttles or 0)]
        for o in outcomes:
            args += [o.job_id, "f" if o.failed else "s", _json(o.document)]
        return list(self._fan_out(keys=[keys.callbacks_waiting("api2"), keys.coalesce_batch(batch_id), keys.COALESCE_OPEN],
                                  args=args))

    def stale_batches(self, older_than_s: float, now_s: float) -> list[tuple[str, str]]:
        """(batch id, group) of built batches older than `older_than_s` (their flush may be lost)."""
        ids = self.redis.zrangebyscore(keys.COALESCE_OPEN, "-inf", now_s - older_than_s, start=0, num=100)
        if not ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for batch_id in ids:
            pipe.hget(keys.coalesce_batch(batch_id), "group")
        out = []
        for batch_id, group in zip(ids, pipe.execute()):
            if group is None:
                self.redis.zrem(keys.COALESCE_OPEN, batch_id)  # expired with its record ttl
            else:
                out.append((batch_id, group))
        return out

    def unarmed_groups(self) -> list[str]:
        """Groups with pending numbers and no flush on its way (its message was lost)."""
        out = []
        for key in self.redis.scan_iter(match=keys.coalesce_pending("*"), count=100):
            group = key.removeprefix(f"{keys.PREFIX}:coalesce:").removesuffix(":pending")
            if self.arm(group):
                out.append(group)
        return out

    @property
    def armed_ms(self) -> int:
        return int((self.settings.linger_s + ARMED_GRACE_S) * 1000)

    def arm(self, group: str) -> bool:
        """True if no lingering flush of `group` was on its way: the caller must now send one."""
        return bool(self.redis.set(keys.coalesce_armed(group), "1", nx=True, px=self.armed_ms))


def send_flush(app: Any, group: str, trigger: str, *, countdown: float | None = None, producer: Any = None) -> None:
    """Publish a flush of `group` on the api2 queue ("full": a whole batch waits; "linger": send what is there)."""
    app.send_task(FLUSH_TASK, kwargs={"group": group, "trigger": trigger, "slot_at_us": None}, queue="api2",
                  routing_key="api2", priority=PRIORITY_NEW, countdown=countdown, producer=producer)


def batch_no_of(batch_id: str) -> str:
    # The flush task id (a uuid) without dashes: 32 characters, within the 64 allowed.
    return batch_id.replace("-", "")


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def rejected_members(members: list[tuple[str, str]], fail_numbers: list[Any]) -> dict[str, str]:
    """job id -> reason, for members whose number the provider listed in `failNumber`.

    Entries may carry the number whole or masked (`999***6789`, reference §5.1). A masked entry
    that fits more than one member names none of them for sure: those members stay submitted,
    and their callback (or reconciliation's query) settles them. Never fails a job on a guess."""
    by_phone = {phone: job_id for job_id, phone in members}
    out: dict[str, str] = {}
    for entry in fail_numbers:
        number = str(entry.get("number", "")) if isinstance(entry, dict) else str(entry)
        reason = str(entry.get("reason") or "rejected by the provider") if isinstance(entry, dict) else \
            "rejected by the provider"
        if number in by_phone:
            out[by_phone[number]] = reason
            continue
        head, stars, tail = number.partition("*")
        tail = tail.lstrip("*")
        if not stars or not head.isdigit() or not tail.isdigit():
            continue
        fits = [job_id for phone, job_id in by_phone.items()
                if phone.startswith(head) and phone.endswith(tail) and len(phone) > len(head) + len(tail)]
        if len(fits) == 1:
            out[fits[0]] = reason
    return out
