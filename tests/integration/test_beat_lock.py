"""Two Celery beats against one Redis (a mistake, or a standby): only the holder of the beat lock
sends, so each periodic task goes out once per interval; when the holder is killed the other takes
over within the lock's TTL."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter

import pytest
import redis

from workers.devstack import start_beat

pytestmark = pytest.mark.integration

SWEEP_S = 1.0
LOCK_TTL_S = 3.0


def _sent(client: redis.Redis) -> Counter:
    """Periodic task messages waiting in the api2 queue (no worker consumes this db), by task."""
    return Counter(json.loads(raw)["headers"]["task"] for raw in client.lrange("api2", 0, -1))


def test_two_beats_send_each_tick_once_and_the_standby_takes_over(redis_server, tmp_path):
    url = redis_server.url.rsplit("/", 1)[0] + "/6"
    client = redis.Redis.from_url(url, decode_responses=True)
    client.flushdb()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NXJOBS_")}
    env.update(
        NXJOBS_REDIS_URL=url,
        NXJOBS_COALESCE__SWEEP_INTERVAL_S=str(SWEEP_S),
        NXJOBS_BEAT__LOCK_TTL_S=str(LOCK_TTL_S),
    )
    beats = [start_beat(env, log_dir=str(tmp_path / f"beat{i}")) for i in range(2)]
    try:
        time.sleep(1.5)  # both started; the lock is settled
        before = _sent(client)["nxjobs.coalesce_sweep"]
        time.sleep(8 * SWEEP_S)
        during = _sent(client)["nxjobs.coalesce_sweep"] - before
        # One beat sends, once a second: two would have sent about 16.
        assert 6 <= during <= 10, during
        holders = [b for b in beats if "beat lock taken" in b.log_text()]
        assert len(holders) == 1, [b.log_tail() for b in beats]
        (holder,) = holders
        (standby,) = [b for b in beats if b is not holder]
        assert "held by another beat" in standby.log_text()

        holder.signal(signal.SIGKILL)
        killed_at = time.monotonic()
        standby.wait_for_log("beat lock taken", timeout_s=LOCK_TTL_S + 5)
        took_over_s = time.monotonic() - killed_at
        assert took_over_s <= LOCK_TTL_S + 2, took_over_s
        start = _sent(client)["nxjobs.coalesce_sweep"]
        time.sleep(4 * SWEEP_S)
        assert 3 <= _sent(client)["nxjobs.coalesce_sweep"] - start <= 6
    finally:
        for b in beats:
            b.stop()
        client.flushdb()
