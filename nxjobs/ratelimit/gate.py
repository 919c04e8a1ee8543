"""The check every provider request passes before it is sent.

A job waits for its slot outside the worker: when the slot is not now, the
gate raises SlotNotReady carrying the reserved slot, the task re-queues itself
for that moment and hands the slot back on its next run (prepaid).
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Sequence

from nxjobs.ratelimit.limiter import Grant, Limit, RateLimiter

# Sending up to this early (or late) is "on time"; the Lua script measures to the microsecond.
ON_TIME_S = 0.002
# An ETA that fired a hair early sleeps the remainder rather than making a round trip.
MAX_INLINE_WAIT_S = 0.05


class SlotNotReady(Exception):
    """Wait `grant.wait_s`; if `grant.reserved`, the slot at `grant.slot_at_us` is held for us."""

    def __init__(self, grant: Grant):
        self.grant = grant
        super().__init__(f"next rate-limit slot in {grant.wait_s:.3f}s")


class RateGate:
    def __init__(self, limiter: RateLimiter, limits_for: Callable[[str, str, object], Sequence[Limit]]):
        self.limiter = limiter
        self.limits_for = limits_for
        self._local = threading.local()

    def begin_attempt(self, *, first_slot_paid: bool = False, prepaid_at_us: int | None = None) -> None:
        """`first_slot_paid`: the caller already took the next request's slot (and logged it);
        `prepaid_at_us`: a slot reserved earlier that the next request should spend."""
        self._local.first_paid = first_slot_paid
        self._local.prepaid_at_us = prepaid_at_us

    @property
    def last_limits(self) -> Sequence[Limit]:
        return getattr(self._local, "last_limits", ())

    def take(self, limits: Sequence[Limit], prepaid_at_us: int | None = None) -> None:
        """Return when a slot under `limits` is ours now; else raise SlotNotReady."""
        self._local.last_limits = tuple(limits)
        self._local.member = ""
        for _ in range(20):
            grant = self.limiter.acquire(limits, prepaid_at_us=prepaid_at_us, early_s=ON_TIME_S)
            if grant.go:
                self._local.member = grant.member
                return
            if not (grant.reserved and grant.wait_s <= MAX_INLINE_WAIT_S):
                raise SlotNotReady(grant)
            # Our slot is a few ms away: sleep to it and spend it.
            time.sleep(grant.wait_s)
            prepaid_at_us = grant.slot_at_us
        raise SlotNotReady(grant)

    def __call__(self, family: str, endpoint: str, body: object) -> Callable[[], None] | None:
        """The hook clients call before sending `body` to `endpoint` of API `family`;
        they call what it returns once the answer (or an error) is back."""
        limits = self.limits_for(family, endpoint, body)
        if not limits:
            return None
        if getattr(self._local, "first_paid", False):
            # The task already took this request's slot before it claimed the job.
            self._local.first_paid = False
        else:
            prepaid, self._local.prepaid_at_us = getattr(self._local, "prepaid_at_us", None), None
            self.take(limits, prepaid_at_us=prepaid)
        member = getattr(self._local, "member", "")
        return lambda: self.limiter.answered(limits, member)

