"""When a job (or a coalesced batch) goes back to the queue, and how soon: pure decisions
shared by job.py (one job) and batch.py (a batch of them). Settings arrive as arguments
(config.settings' RetrySettings, RateLimitSettings, HttpSettings, or anything shaped alike)."""

from __future__ import annotations

import random
from typing import Any

from nxjobs.client.backoff import backoff_delay_s
from nxjobs.client.errors import Action, Classification
from nxjobs.jobs import PRIORITY_NEW, PRIORITY_RESERVED_SLOT
from nxjobs.ratelimit.limiter import Grant


def slot_wait(grant: Grant, limits: Any, rng: random.Random) -> tuple[float, int]:
    """(countdown s, broker priority) of a re-queue that waits for a rate-limit slot."""
    if grant.reserved:
        return grant.wait_s, PRIORITY_RESERVED_SLOT
    # Beyond the reservation horizon: come back while the slot is still ahead, spread out so
    # the waiting backlog does not wake all at once; never past max_wait_s, so the held
    # message comes back inside the visibility timeout.
    countdown = max(0.5, grant.wait_s - limits.horizon_s * rng.uniform(0.25, 0.75))
    return min(countdown, limits.max_wait_s), PRIORITY_NEW


def retry_delay(
    cls: Classification, error_attempts: int, retry: Any, rng: random.Random
) -> float | None:
    """Seconds to back off before the next attempt, or None if this error is final.
    `error_attempts` excludes "too frequent" answers: they never use up error retries."""
    bounded = cls.bounded or cls.action is Action.REFRESH
    limit = retry.bounded_attempts if bounded else retry.max_attempts
    if not cls.retryable or error_attempts >= limit:
        return None
    base = max(retry.base_s, cls.min_backoff_s)
    return backoff_delay_s(error_attempts, base_s=base, cap_s=max(retry.cap_s, base), rng=rng)
