"""Which quotas a provider request spends, from settings (docs/provider.md §8).

Keyed by credential and API family, so different credentials never wait on
each other and every worker using one credential shares one quota.
"""

from __future__ import annotations

from typing import Any

from config.settings import Settings
from nxjobs.client.agent import CDR_BY_ORDERID_PATH, MAKECALL_PATH
from nxjobs.client.operations import NUMBER_CHECK_PATH

# Number Check batches above this many numbers fall under the lower quota.
from nxjobs.coalesce import BIG_BATCH_NUMBERS
from nxjobs.ratelimit.limiter import Limit


def limits_for(settings: Settings, family: str, endpoint: str, body: Any) -> list[Limit]:
    keep = 1.0 - settings.ratelimit.headroom
    if family == "api2":
        s = settings.api2
        limits = [Limit(f"api2:{s.access_key}", s.rate_per_s, s.rate_per_s * keep, s.burst)]
        if endpoint == NUMBER_CHECK_PATH and _numbers(body) > BIG_BATCH_NUMBERS:
            limits.append(Limit(f"api2-big:{s.access_key}", s.big_batch_rate_per_s, s.big_batch_rate_per_s * keep))
        return limits
    if family == "callbot":
        s = settings.callbot
        return [Limit(f"callbot:{s.uuid}", s.rate_per_s, s.rate_per_s * keep, s.burst)]
    if family == "agent" and endpoint == MAKECALL_PATH:
        s = settings.agent
        return [Limit(f"makecall:{s.username}", s.rate_per_s, s.rate_per_s * keep, s.burst)]
    if family == "cdr" or endpoint == CDR_BY_ORDERID_PATH:
        s = settings.agent
        return [Limit(f"cdr:{s.appkey}", s.cdr_rate_per_s, s.cdr_rate_per_s * keep)]
    return []  # token fetches: no published quota


def _numbers(body: Any) -> int:
    phone = body.get("phone") if isinstance(body, dict) else None
    return phone.count(",") + 1 if phone else 0
