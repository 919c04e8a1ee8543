"""Celery beat's scheduler: sends periodic tasks only while it holds the beat lock
(nxjobs.beat_lock), so a second beat started by mistake (or a standby) sends nothing until the
first is gone.

Celery's `PersistentScheduler`: its schedule file (`--schedule`) remembers the last runs across a
restart and, rewritten every few minutes by holder and standby alike, is what the container's
health check watches; on a read-only root filesystem point `--schedule` at a writable volume
(docs/operations.md § One beat). A beat taking the lock over runs the entries that are due by
its own file at once; every periodic task is safe to run again.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery.beat import PersistentScheduler

from nxjobs.beat_lock import BeatLock

log = logging.getLogger("nxjobs.beat")


class LockedScheduler(PersistentScheduler):
    def __init__(self, *args: Any, **kwargs: Any):
        from config.settings import load_settings
        from workers.delivery import store_target

        settings = load_settings()
        self.lock_ttl_s = settings.beat.lock_ttl_s
        self.lock = BeatLock(store_target(settings).connect(), ttl_s=self.lock_ttl_s)
        self.holding: bool | None = None  # unknown until the first tick
        super().__init__(*args, **kwargs)

    def renew_s(self) -> float:
        return self.lock_ttl_s / 3

    def tick(self, *args: Any, **kwargs: Any) -> float:
        try:
            holding = self.lock.hold()
        except (redis.RedisError, OSError) as exc:
            holding = False
            log.warning("beat lock: Redis unreachable (%s); sending nothing", type(exc).__name__)
        if holding != self.holding:
            self.holding = holding
            if holding:
                log.info("beat lock taken: this beat sends the periodic tasks")
            else:
                log.info("beat lock held by another beat: this one waits")
        if not holding:
            return self.renew_s()  # beat's service loop still syncs the file after each tick
        return min(super().tick(*args, **kwargs), self.renew_s())

    def close(self) -> None:
        super().close()
        if self.holding:
            try:
                self.lock.release()
            except (redis.RedisError, OSError):
                pass  # it lapses after its TTL
