"""Re-queue decisions shared by single jobs and coalesced batches (nxjobs/attempts/policy.py)."""

import random

from config.settings import HttpSettings, RateLimitSettings, RetrySettings
from nxjobs import inflight
from nxjobs.attempts import policy
from nxjobs.client.errors import BOUNDED, PERMANENT, RETRY
from nxjobs.jobs import PRIORITY_NEW, PRIORITY_RESERVED_SLOT
from nxjobs.ratelimit.limiter import Grant


def test_a_reserved_slot_is_waited_for_exactly_and_jumps_the_queue():
    grant = Grant(go=False, reserved=True, wait_s=0.3, slot_at_us=123, member="")
    assert policy.slot_wait(grant, RateLimitSettings(), random.Random(1)) == (
        0.3,
        PRIORITY_RESERVED_SLOT,
    )


def test_a_slot_beyond_the_horizon_comes_back_early_but_never_past_max_wait():
    limits = RateLimitSettings(horizon_s=30, max_wait_s=100)
    far = Grant(go=False, reserved=False, wait_s=5000.0, slot_at_us=0, member="")
    near = Grant(go=False, reserved=False, wait_s=40.0, slot_at_us=0, member="")
    assert policy.slot_wait(far, limits, random.Random(1)) == (100, PRIORITY_NEW)
    countdown, _ = policy.slot_wait(near, limits, random.Random(1))
    assert 40 - 30 * 0.75 <= countdown <= 40 - 30 * 0.25


def test_retries_stop_at_the_limit_of_their_class():
    retry = RetrySettings(max_attempts=8, bounded_attempts=3, base_s=1, cap_s=60)
    rng = random.Random(1)
    assert policy.retry_delay(RETRY, 7, retry, rng) is not None
    assert policy.retry_delay(RETRY, 8, retry, rng) is None
    assert policy.retry_delay(BOUNDED, 2, retry, rng) is not None
    assert policy.retry_delay(BOUNDED, 3, retry, rng) is None
    assert policy.retry_delay(PERMANENT, 1, retry, rng) is None


def test_an_in_flight_marker_is_busy_for_connect_plus_read_timeout_plus_slack():
    http = HttpSettings(connect_timeout_s=3, read_timeout_s=15)
    assert inflight.inflight_busy_until("100.0", http) == 100 + 3 + 15 + inflight.INFLIGHT_SLACK_S
