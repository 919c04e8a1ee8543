"""Delivery timing: every countdown we set must come back well inside the broker's
visibility timeout, or Redis hands the held message to a second worker while the
first still holds it (the known Celery-on-Redis duplicate for ETA/countdown tasks).

Checked when the Celery app is built (workers/celery_app.py), so a worker with an
inconsistent configuration refuses to start instead of ringing a phone twice.
"""

from __future__ import annotations

from typing import Any

from config.settings import Settings
from nxjobs.redis_conn import RedisTarget, target

# Callbot "maintenance" (retCode 5) backs off from this many seconds (nxjobs.client.errors);
# the backoff cap is max(retry cap, this). Repeated here: config/ imports nothing of ours.
CALLBOT_MAINTENANCE_BACKOFF_S = 30.0
# Margin for the random extras added to each countdown (cooldown jitter, +0.1 s) and clock slop.
SLACK_S = 5.0


class DeliveryTimingError(RuntimeError):
    """A countdown or time limit could outlive the broker's visibility timeout."""


def countdown_bounds_s(settings: Settings) -> dict[str, float]:
    """The longest countdown each re-queue path can set (nxjobs/attempts/), by name."""
    rl, retry = settings.ratelimit, settings.retry
    return {
        "NXJOBS_RATELIMIT__HORIZON_S (reserved rate-limit slot)": rl.horizon_s,
        "NXJOBS_RATELIMIT__MAX_WAIT_S (slot beyond the horizon)": rl.max_wait_s,
        "NXJOBS_RATELIMIT__COOLDOWN_CAP_S (too frequent)": rl.cooldown_cap_s + 0.1,
        "NXJOBS_RETRY__CAP_S (retry backoff)": max(retry.cap_s, CALLBOT_MAINTENANCE_BACKOFF_S),
    }


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    """Celery's broker_transport_options; also what names the queue lists (nxjobs.broker).
    A Sentinel broker adds its master's name (nxjobs.redis_conn)."""
    return {
        "visibility_timeout": settings.broker_visibility_timeout_s,
        **broker_target(settings).kombu_transport_options(),
    }


def broker_target(settings: Settings) -> RedisTarget:
    """The broker's Redis: NXJOBS_BROKER_URL, or the record store's."""
    return target(**settings.broker_redis())


def store_target(settings: Settings) -> RedisTarget:
    """The record store's Redis: NXJOBS_REDIS_URL."""
    return target(**settings.store_redis())


def check_visibility(settings: Settings) -> None:
    """Raise DeliveryTimingError unless visibility timeout > time limit + longest
    countdown + slack."""
    bounds = countdown_bounds_s(settings)
    name, longest = max(bounds.items(), key=lambda kv: kv[1])
    needed = settings.task_time_limit_s + longest + SLACK_S
    if settings.broker_visibility_timeout_s <= needed:
        raise DeliveryTimingError(
            f"NXJOBS_BROKER_VISIBILITY_TIMEOUT_S={settings.broker_visibility_timeout_s} "
            f"must exceed NXJOBS_TASK_TIME_LIMIT_S ({settings.task_time_limit_s}) "
            f"+ {name} ({longest:g}) + {SLACK_S:g} s "
            f"= {needed:g} s: a held countdown message would be handed to a second worker"
        )
