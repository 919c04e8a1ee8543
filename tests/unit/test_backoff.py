import random

import pytest

from nxjobs.client.backoff import backoff_delay_s


class MaxRandom(random.Random):
    """Always the top of the range, so the ceiling itself is visible."""

    def uniform(self, a, b):
        return b


@pytest.mark.parametrize(
    "attempt, ceiling", [(1, 1.0), (2, 2.0), (3, 4.0), (6, 32.0), (7, 60.0), (50, 60.0)]
)
def test_ceiling_doubles_then_caps(attempt, ceiling):
    assert backoff_delay_s(attempt, base_s=1.0, cap_s=60.0, rng=MaxRandom()) == ceiling


def test_full_jitter_spreads_over_the_whole_range():
    rng = random.Random(7)
    delays = [backoff_delay_s(4, base_s=1.0, cap_s=60.0, rng=rng) for _ in range(2000)]
    assert min(delays) >= 0.0 and max(delays) <= 8.0
    assert min(delays) < 0.5 and max(delays) > 7.5  # not clustered near the ceiling


def test_attempt_counts_from_one():
    with pytest.raises(ValueError):
        backoff_delay_s(0, base_s=1, cap_s=2)
