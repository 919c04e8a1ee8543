"""The in-flight marker (`nxjobs:inflight:<job or batch id>`): the one home of its protocol.

Set right before a request with a side effect is sent; cleared once the outcome is
recorded, or when the provider answered (or was never reached), since nothing then
happened; kept when the answer was lost, so the next delivery looks the request up
at the provider instead of resending it. A marker younger than the busy window may
belong to an attempt still waiting for its answer: that delivery waits instead.
"""

from __future__ import annotations

import time
from typing import Any

from nxjobs import keys
from nxjobs.client.errors import TransportError

# Seconds after its in-flight marker was set that an earlier attempt may still be waiting
# for its answer (connect + read timeout, plus this slack): a redelivery that finds a younger
# marker waits instead of looking up, so it never races a live send.
INFLIGHT_SLACK_S = 2.0


def inflight_busy_until(marker_set_at: str, http: Any) -> float:
    """Unix time until which the attempt that set an in-flight marker may still be in flight."""
    return float(marker_set_at) + http.connect_timeout_s + http.read_timeout_s + INFLIGHT_SLACK_S


class InflightMarker:
    def __init__(self, client: Any, owner_id: str):
        self.redis = client
        self.owner_id = owner_id
        self.key = keys.inflight(owner_id)

    def busy_until(self, http: Any) -> float | None:
        """Unix time until which the attempt that set the marker may still be in flight
        (in the past: it is stale, look the request up); None when there is no marker."""
        set_at = self.redis.get(self.key)
        return None if set_at is None else inflight_busy_until(set_at, http)

    def set(self, *, ttl_s: int) -> None:
        """Right before the request is sent."""
        self.redis.set(self.key, f"{time.time():.3f}", ex=ttl_s)

    def clear(self, *also: str) -> None:
        """Recorded, proven not sent, or nothing to find: drop it (and `also`, in the same call)."""
        self.redis.delete(self.key, *also)

    def on_error(self, err: BaseException) -> None:
        """After the request failed: the provider answered (or was never reached), so a resend is
        safe and the marker goes; a lost answer keeps it, so the retry looks the request up first.
        """
        if not (isinstance(err, TransportError) and err.may_have_reached):
            self.clear()
