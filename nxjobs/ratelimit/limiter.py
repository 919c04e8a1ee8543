"""A Redis-backed GCRA limiter that hands out *future* slots.

Each request reserves the next free slot for its credential (one Lua script,
one round trip, Redis's own clock so worker hosts may disagree about time). The
job then waits for its slot outside the worker (a countdown re-queue) and
sends exactly then, so requests leave evenly spaced at the quota: no double
rate at window edges, no herd at a window start. A shared cooldown, set when
the provider still says "too frequent", pushes every worker's next slot back.

Times inside Redis are integer microseconds since the epoch (Redis TIME).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

import redis

from nxjobs import keys

# Two checks in one script. Scheduling: GCRA over a TAT (theoretical arrival
# time) per limit hands out evenly spaced future slots. Sending: when a slot is
# due, an exact sliding-window log of real sends (what the provider itself
# counts) must have room, so a late sender delays the next by a few ms rather
# than putting quota + 1 requests inside one provider window.
# KEYS: per limit i: TAT, cooldown-until, send log (3 keys each).
# ARGV: n, horizon_us, prepaid_us (0 = none), early_us, then per limit:
#       interval_us, tolerance_us, window_limit (0 = no log), window_us.
# Returns {status, wait_us, slot_us, log member}:
#   2 = go now (the send is logged under that member); 1 = slot_us is reserved for us, come back in wait_us;
#   0 = nothing reserved: the next slot is beyond the horizon, come back in about wait_us.
_ACQUIRE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = tonumber(ARGV[1])
local horizon = tonumber(ARGV[2])
local prepaid = tonumber(ARGV[3])
local early = tonumber(ARGV[4])
local function arg(i, j) return tonumber(ARGV[4 + 4 * (i - 1) + j]) end
local start = now
for i = 1, n do
  local cd = tonumber(redis.call('GET', KEYS[3 * i - 1]) or '0')
  if cd > start then start = cd end
end
local slot
if prepaid > 0 and start == now then
  slot = prepaid  -- reserved earlier, and no cooldown began since
else
  slot = start
  local tats = {}
  for i = 1, n do
    local tat = tonumber(redis.call('GET', KEYS[3 * i - 2]) or '0')
    tats[i] = tat
    if tat - arg(i, 2) > slot then slot = tat - arg(i, 2) end
  end
  if slot - now > horizon then return {0, slot - now, slot} end
  for i = 1, n do
    local new_tat = math.max(tats[i], slot) + arg(i, 1)
    redis.call('SET', KEYS[3 * i - 2], string.format('%d', new_tat), 'PX', math.floor((new_tat - now) / 1000) + 1000)
  end
end
if slot - now > early then return {1, slot - now, slot} end
local hold = 0
for i = 1, n do
  local limit, window = arg(i, 3), arg(i, 4)
  if limit > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[3 * i], '-inf', now - window)
    if redis.call('ZCARD', KEYS[3 * i]) >= limit then
      local oldest = tonumber(redis.call('ZRANGE', KEYS[3 * i], 0, 0, 'WITHSCORES')[2])
      if oldest + window - now > hold then hold = oldest + window - now end
    end
  end
end
if hold > 0 then return {1, hold, now + hold} end
local member = string.format('%d-%d', now, slot)
for i = 1, n do
  if arg(i, 3) > 0 then
    redis.call('ZADD', KEYS[3 * i], now, member)
    redis.call('PEXPIRE', KEYS[3 * i], math.floor(arg(i, 4) / 1000) + 1000)
  end
end
return {2, 0, slot, member}
"""

# The provider counts a request when it arrives, which on a busy host can be
# well after we logged it. Once its answer is back we know it arrived no later
# than now: move its log entry there, so the window never undercounts it.
# KEYS: send logs. ARGV: member.
_ANSWERED_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
for i = 1, #KEYS do redis.call('ZADD', KEYS[i], 'XX', now, ARGV[1]) end
return 0
"""

# KEYS: per limit i, KEYS[2i-1] = strikes counter, KEYS[2i] = cooldown-until.
# ARGV: n, base_us, cap_us, jitter (0..1, fraction of the step to randomise), strike_ttl_ms.
# Returns the cooldown length in microseconds.
_COOLDOWN_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = tonumber(ARGV[1])
local base = tonumber(ARGV[2])
local cap = tonumber(ARGV[3])
local jitter = tonumber(ARGV[4])
local longest = 0
for i = 1, n do
  local strikes = redis.call('INCR', KEYS[2 * i - 1])
  redis.call('PEXPIRE', KEYS[2 * i - 1], tonumber(ARGV[5]))
  local step = math.min(cap, base * 2 ^ (strikes - 1))
  local length = step * (1 - jitter)
  local untl = now + length
  local cur = tonumber(redis.call('GET', KEYS[2 * i]) or '0')
  if untl > cur then
    redis.call('SET', KEYS[2 * i], string.format('%d', untl), 'PX', math.floor(length / 1000) + 1000)
    cur = untl
  end
  if cur - now > longest then longest = cur - now end
end
return longest
"""


# Entries are re-scored when their answer arrives (an upper bound on when the
# provider counted them), and the oldest entry of a one-second window has long
# been answered, so the window needs only a hair of slack for clock rounding.
NETWORK_SLACK_US = 2_000


@dataclass(frozen=True)
class Limit:
    """One credential's quota.

    Parameters: `name` — credential and API family, e.g. ``api2:<accessKey>``;
    `quota_per_s` — what the provider allows (no more than this many requests in
    any sliding second); `spacing_per_s` — the pace slots are handed out at,
    a little under the quota (0 = `quota_per_s`); `burst` — slots that may be
    used back to back after a quiet spell.
    """

    name: str
    quota_per_s: float
    spacing_per_s: float = 0.0
    burst: int = 1

    @property
    def interval_us(self) -> int:
        return int(1_000_000 / (self.spacing_per_s or self.quota_per_s))

    @property
    def window(self) -> tuple[int, int]:
        """(requests, window length in microseconds) the provider counts."""
        if self.quota_per_s >= 1:
            return int(self.quota_per_s), 1_000_000 + NETWORK_SLACK_US
        return 1, int(1_000_000 / self.quota_per_s) + NETWORK_SLACK_US


@dataclass(frozen=True)
class Grant:
    """The limiter's answer: `go` — send now; else if `reserved`, the slot at
    `slot_at_us` is ours in `wait_s`; else nothing is held, ask again in about `wait_s`."""

    go: bool
    reserved: bool
    wait_s: float
    slot_at_us: int
    # The send-log entry of a `go`, to move to the answer's time (see answered()).
    member: str = ""


class RateLimiter:
    """Parameters: `horizon_s` — reserve at most this far ahead (longer waits come back
    later unreserved, so held messages stay far below the broker's visibility timeout)."""

    def __init__(self, client: redis.Redis, *, horizon_s: float = 30.0):
        self.redis = client
        self.horizon_us = int(horizon_s * 1_000_000)
        self._acquire = client.register_script(_ACQUIRE_LUA)
        self._cooldown = client.register_script(_COOLDOWN_LUA)
        self._answered = client.register_script(_ANSWERED_LUA)

    def acquire(self, limits: Sequence[Limit], *, prepaid_at_us: int | None = None, early_s: float = 0.0) -> Grant:
        """Reserve the next slot free under every limit (or spend `prepaid_at_us`)."""
        active = [lim for lim in limits if lim.quota_per_s > 0]
        if not active:
            return Grant(True, True, 0.0, 0)
        redis_keys: list[str] = []
        args: list[int] = [len(active), self.horizon_us, prepaid_at_us or 0, int(early_s * 1_000_000)]
        for lim in active:
            redis_keys += [keys.rate_tat(lim.name), keys.rate_cooldown(lim.name), keys.rate_log(lim.name)]
            window_limit, window_us = lim.window
            args += [lim.interval_us, lim.interval_us * (max(lim.burst, 1) - 1), window_limit, window_us]
        status, wait_us, slot_us, *member = self._acquire(keys=redis_keys, args=args)
        return Grant(status == 2, status >= 1, max(int(wait_us), 0) / 1_000_000, int(slot_us),
                     member[0] if member else "")

    def answered(self, limits: Sequence[Limit], member: str) -> None:
        """The request logged as `member` has its answer: count it from now on."""
        logs = [keys.rate_log(lim.name) for lim in limits if lim.quota_per_s > 0]
        if logs and member:
            self._answered(keys=logs, args=[member])

    def cool_down(self, limits: Sequence[Limit], *, base_s: float, cap_s: float, repeat_within_s: float = 5.0,
                  rng: random.Random | None = None) -> float:
        """The provider still said "too frequent": every worker backs off these credentials.

        A repeat within `repeat_within_s` of the last doubles the cooldown, up to
        `cap_s`; an isolated one costs only `base_s`. Jitter (the cooldown is
        drawn from [step/2, step]) keeps workers from all resuming in the same
        instant. Returns the cooldown in seconds.
        """
        active = [lim for lim in limits if lim.quota_per_s > 0] or list(limits)
        if not active:
            return 0.0
        redis_keys: list[str] = []
        for lim in active:
            redis_keys += [keys.rate_strikes(lim.name), keys.rate_cooldown(lim.name)]
        jitter = (rng or random).uniform(0.0, 0.5)
        longest_us = self._cooldown(keys=redis_keys, args=[len(active), int(base_s * 1_000_000),
                                                            int(cap_s * 1_000_000), jitter,
                                                            int(repeat_within_s * 1000)])
        return int(longest_us) / 1_000_000
