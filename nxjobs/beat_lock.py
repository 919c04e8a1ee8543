"""One beat at a time: the lock every Celery beat must hold to send periodic tasks.

Each beat (workers/beat.py) calls `hold()` before each tick: the first takes `keys.BEAT_LOCK`
with its own token and a TTL, and renews it every tick; any other beat finds it taken and sends
nothing. When the holder dies (or loses Redis for longer than the TTL), the lock lapses and the
next beat to tick takes it, so the periodic work goes on within `ttl_s` plus one tick.
"""

from __future__ import annotations

import uuid
from typing import Any

from nxjobs import keys, scripts


class BeatLock:
    """Parameters: `client` a redis-py client (the record store's); `ttl_s` seconds the lock
    outlives its holder's last renewal (renew well within it: every `ttl_s / 3`)."""

    def __init__(self, client: Any, *, ttl_s: float, token: str | None = None):
        self.redis = client
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.token = token or uuid.uuid4().hex
        self._hold = scripts.register(client, "lock_hold")
        self._release = scripts.register(client, "token_delete_if_equal")

    def hold(self) -> bool:
        """Take or renew the lock; True while we are the beat that sends."""
        return bool(self._hold(keys=[keys.BEAT_LOCK], args=[self.token, self.ttl_ms]))

    def release(self) -> None:
        """Give it up at once (a clean shutdown), if it is still ours."""
        self._release(keys=[keys.BEAT_LOCK], args=[self.token])
