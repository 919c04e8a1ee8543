"""Capped exponential backoff with full jitter. Pure: the random source is an argument."""

from __future__ import annotations

import random


def backoff_delay_s(
    attempt: int, *, base_s: float, cap_s: float, rng: random.Random | None = None
) -> float:
    """Delay before retry number `attempt` (1 = first retry): uniform in
    [0, min(cap, base * 2**(attempt-1))].

    Full jitter spreads retries from many workers that failed together, so they
    do not hit a throttled API again in lockstep.
    """
    if attempt < 1:
        raise ValueError("attempt counts from 1")
    ceiling = min(cap_s, base_s * (2 ** min(attempt - 1, 32)))
    return (rng or random).uniform(0.0, ceiling)
