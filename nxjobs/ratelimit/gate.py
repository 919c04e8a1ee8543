"""The check every provider request passes before it is sent.

A job waits for its slot outside the worker: when the slot is not now, the
gate raises SlotNotReady carrying the reserved slot, the task re-queues itself
for that moment and hands the slot back on its next run (prepaid).

An attempt takes its first request's slot itself (`take`, before it claims the
job) and gets a `Permit`; it binds that permit for its duration (`bind`), so the
clients' hook spends it on the first request and takes each later slot on its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace

from nxjobs.ratelimit.limiter import Grant, Limit, RateLimiter

# Sending up to this early (or late) is "on time"; the Lua script measures to the microsecond.
ON_TIME_S = 0.002
# An ETA that fired a hair early sleeps the remainder rather than making a round trip.
MAX_INLINE_WAIT_S = 0.05


class SlotNotReady(Exception):
    """Wait `grant.wait_s`; if `grant.reserved`, the slot at `grant.slot_at_us` is held for us.
    `limits`: the quotas the slot was asked under."""

    def __init__(self, grant: Grant, limits: Sequence[Limit] = ()):
        self.grant = grant
        self.limits = tuple(limits)
        super().__init__(f"next rate-limit slot in {grant.wait_s:.3f}s")


@dataclass(frozen=True)
class Permit:
    """A slot taken under `limits`, its send logged as `member`. `paid`: not yet spent, the next
    gated request sends on it instead of taking its own."""

    limits: tuple[Limit, ...] = ()
    member: str = ""
    paid: bool = False

    @property
    def credentials(self) -> list[str]:
        return [lim.name for lim in self.limits]


class Slots:
    """One attempt's slots while it is bound (RateGate.bind): `permit` is the latest one taken
    (the attempt's own, or the one the hook took for a later request)."""

    def __init__(self, permit: Permit | None = None):
        self.permit = permit or Permit()
        self.prepaid_at_us: int | None = None

    def prepay(self, slot_at_us: int) -> None:
        """The next gated request spends this slot, reserved earlier."""
        self.prepaid_at_us = slot_at_us

    def unpay(self) -> None:
        """The held slot is not for the next request (it goes to another quota)."""
        self.permit = replace(self.permit, paid=False)
        self.prepaid_at_us = None


class RateGate:
    def __init__(
        self, limiter: RateLimiter, limits_for: Callable[[str, str, object], Sequence[Limit]]
    ):
        self.limiter = limiter
        self.limits_for = limits_for
        # Per attempt, through a ContextVar: the clients' hook keeps its (family, endpoint, body)
        # signature, and the attempt reads the Slots object it holds, not gate state.
        self._bound: ContextVar[Slots | None] = ContextVar(f"slots-{id(self)}", default=None)

    def take(self, limits: Sequence[Limit], prepaid_at_us: int | None = None) -> Permit:
        """Return a permit once a slot under `limits` is ours now; else raise SlotNotReady."""
        for _ in range(20):
            grant = self.limiter.acquire(limits, prepaid_at_us=prepaid_at_us, early_s=ON_TIME_S)
            if grant.go:
                return Permit(tuple(limits), grant.member, paid=bool(limits))
            if not (grant.reserved and grant.wait_s <= MAX_INLINE_WAIT_S):
                raise SlotNotReady(grant, limits)
            # Our slot is a few ms away: sleep to it and spend it.
            time.sleep(grant.wait_s)
            prepaid_at_us = grant.slot_at_us
        raise SlotNotReady(grant, limits)

    @contextmanager
    def bind(self, permit: Permit | None = None) -> Iterator[Slots]:
        """The hook spends `permit` (if paid) on the next request, then takes its own slots."""
        slots = Slots(permit)
        token = self._bound.set(slots)
        try:
            yield slots
        finally:
            self._bound.reset(token)

    def __call__(self, family: str, endpoint: str, body: object) -> Callable[[], None] | None:
        """The hook clients call before sending `body` to `endpoint` of API `family`;
        they call what it returns once the answer (or an error) is back."""
        limits = self.limits_for(family, endpoint, body)
        if not limits:
            return None
        slots = self._bound.get()
        if slots is None:
            permit = self.take(limits)
        elif slots.permit.paid:
            # The attempt already took this request's slot before it claimed the job.
            permit = slots.permit = replace(slots.permit, paid=False)
        else:
            prepaid, slots.prepaid_at_us = slots.prepaid_at_us, None
            permit = slots.permit = replace(self.take(limits, prepaid_at_us=prepaid), paid=False)
        return lambda: self.limiter.answered(limits, permit.member)
