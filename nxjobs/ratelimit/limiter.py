"""A Redis-backed GCRA limiter that hands out *future* slots.

Each request reserves the next free slot for its credential (one Lua script,
nxjobs/lua/ratelimit_acquire.lua: one round trip, Redis's own clock so worker
hosts may disagree about time). The
job then waits for its slot outside the worker (a countdown re-queue) and
sends exactly then, so requests leave evenly spaced at the quota: no double
rate at window edges, no herd at a window start. A shared cooldown, set when
the provider still says "too frequent", pushes every worker's next slot back.

Times inside Redis are integer microseconds since the epoch (Redis TIME).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from nxjobs import keys, scripts

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
        self._acquire = scripts.register(client, "ratelimit_acquire")
        self._cooldown = scripts.register(client, "ratelimit_cooldown")
        self._answered = scripts.register(client, "ratelimit_answered")

    def acquire(
        self, limits: Sequence[Limit], *, prepaid_at_us: int | None = None, early_s: float = 0.0
    ) -> Grant:
        """Reserve the next slot free under every limit (or spend `prepaid_at_us`)."""
        active = [lim for lim in limits if lim.quota_per_s > 0]
        if not active:
            return Grant(True, True, 0.0, 0)
        redis_keys: list[str] = []
        args: list[int] = [
            len(active),
            self.horizon_us,
            prepaid_at_us or 0,
            int(early_s * 1_000_000),
        ]
        for lim in active:
            redis_keys += [
                keys.rate_tat(lim.name),
                keys.rate_cooldown(lim.name),
                keys.rate_log(lim.name),
            ]
            window_limit, window_us = lim.window
            args += [
                lim.interval_us,
                lim.interval_us * (max(lim.burst, 1) - 1),
                window_limit,
                window_us,
            ]
        status, wait_us, slot_us, *member = self._acquire(keys=redis_keys, args=args)
        return Grant(
            status == 2,
            status >= 1,
            max(int(wait_us), 0) / 1_000_000,
            int(slot_us),
            member[0] if member else "",
        )

    def answered(self, limits: Sequence[Limit], member: str) -> None:
        """The request logged as `member` has its answer: count it from now on."""
        logs = [keys.rate_log(lim.name) for lim in limits if lim.quota_per_s > 0]
        if logs and member:
            self._answered(keys=logs, args=[member])

    def cool_down(
        self,
        limits: Sequence[Limit],
        *,
        base_s: float,
        cap_s: float,
        repeat_within_s: float = 5.0,
        rng: random.Random | None = None,
    ) -> float:
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
        longest_us = self._cooldown(
            keys=redis_keys,
            args=[
                len(active),
                int(base_s * 1_000_000),
                int(cap_s * 1_000_000),
                jitter,
                int(repeat_within_s * 1000),
            ],
        )
        return int(longest_us) / 1_000_000
