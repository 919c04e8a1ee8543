"""Every countdown we set must come back inside the broker's visibility timeout, or
Redis hands the held message to a second worker (a phone rung twice). These fail if
someone raises a countdown bound, or the time limit, past it."""

from __future__ import annotations

import random

import pytest

from config.settings import Settings
from workers.delivery import DeliveryTimingError, check_visibility, countdown_bounds_s


def test_defaults_are_consistent():
    settings = Settings(_env_file=None)
    check_visibility(settings)
    assert settings.broker_visibility_timeout_s > settings.task_time_limit_s + max(
        countdown_bounds_s(settings).values()
    )


@pytest.mark.parametrize(
    "change",
    [
        {"ratelimit": {"cooldown_cap_s": 4000}},
        {"ratelimit": {"max_wait_s": 3500}},
        {"ratelimit": {"horizon_s": 3400}},
        {"retry": {"cap_s": 3590}},
        {"task_time_limit_s": 3590},
        {"broker_visibility_timeout_s": 300},
    ],
)
def test_a_countdown_past_the_visibility_timeout_refuses_to_start(change):
    with pytest.raises(DeliveryTimingError, match="NXJOBS_BROKER_VISIBILITY_TIMEOUT_S"):
        check_visibility(Settings(_env_file=None, **change))


def test_the_celery_app_uses_the_checked_visibility_timeout():
    from workers.celery_app import app, settings

    assert (
        app.conf.broker_transport_options["visibility_timeout"]
        == settings.broker_visibility_timeout_s
    )


def test_a_slot_far_behind_the_horizon_waits_at_most_max_wait_s():
    # A backlog of hours must not become a countdown of hours (pure logic: retry is captured).
    from nxjobs.attempts.job import wait_for_slot
    from nxjobs.ratelimit.limiter import Grant
    from tasks.base import JobTask

    settings = Settings(_env_file=None)
    task = JobTask()
    seen = {}

    def retry(**kw):
        seen.update(kw)
        return RuntimeError("retry")

    task.retry = retry
    grant = Grant(go=False, reserved=False, wait_s=50_000.0, slot_at_us=0, member="")
    with pytest.raises(RuntimeError):
        task.carry_out("j", {}, wait_for_slot(grant, settings.ratelimit, random.Random(1)))
    assert 0 < seen["countdown"] <= settings.ratelimit.max_wait_s
