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
        api2 = settings.api2
        limits = [
            Limit(f"api2:{api2.access_key}", api2.rate_per_s, api2.rate_per_s * keep, api2.burst)
        ]
        if endpoint == NUMBER_CHECK_PATH and _numbers(body) > BIG_BATCH_NUMBERS:
            limits.append(
                Limit(
                    f"api2-big:{api2.access_key}",
                    api2.big_batch_rate_per_s,
                    api2.big_batch_rate_per_s * keep,
                )
            )
        return limits
    if family == "callbot":
        callbot = settings.callbot
        return [
            Limit(
                f"callbot:{callbot.uuid}",
                callbot.rate_per_s,
                callbot.rate_per_s * keep,
                callbot.burst,
            )
        ]
    if family == "agent" and endpoint == MAKECALL_PATH:
        agent = settings.agent
        return [
            Limit(
                f"makecall:{agent.username}", agent.rate_per_s, agent.rate_per_s * keep, agent.burst
            )
        ]
    if family == "cdr" or endpoint == CDR_BY_ORDERID_PATH:
        agent = settings.agent
        return [Limit(f"cdr:{agent.appkey}", agent.cdr_rate_per_s, agent.cdr_rate_per_s * keep)]
    return []  # token fetches: no published quota


def _numbers(body: Any) -> int:
    phone = body.get("phone") if isinstance(body, dict) else None
    return phone.count(",") + 1 if phone else 0
