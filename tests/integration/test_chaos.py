"""Short versions of the fault suite (bench/chaos.py) so CI guards them: a worker's
pool processes killed with -9 mid-run, and a provider answering 30 % "too frequent",
10 % HTTP 503 and 5 % slow past the client timeout (side effect applied). Each runs
its own Redis, sandbox, receiver, beat and 2 workers; no job may be lost and the
sandbox must count no orderid / batchNo / orderID accepted twice."""

from __future__ import annotations

import pytest

from bench.chaos import run_scenario


@pytest.fixture(autouse=True)
def _needs_redis(redis_server):
    """Skips (or fails in CI) like the other integration tests when redis-server is missing."""


def test_kill_9_of_worker_processes_mid_run_loses_nothing_and_rings_nobody_twice():
    r = run_scenario("kill", jobs=40, timeout_s=60, submit_s=4, kill_mode="children")
    assert r.submitted == 40
    assert r.lost == 0, r.lost_ids
    assert r.duplicates == 0, r.duplicate_kinds
    assert r.completed + sum(r.failed.values()) + r.awaiting_callbacks == 40


def test_misbehaving_provider_loses_nothing_and_duplicates_nothing():
    r = run_scenario("faults", jobs=40, timeout_s=60, submit_s=3)
    assert r.submitted == 40
    # The faults really happened, and really hit jobs.
    assert r.faults["throttle"] > 0 and r.faults["error"] > 0, r.faults
    assert r.retried > 0
    assert r.lost == 0, r.lost_ids
    assert r.duplicates == 0, r.duplicate_kinds
    # Every job ended: completed, or failed with a reason (shown if any, for diagnosis).
    assert r.completed + sum(r.failed.values()) + r.awaiting_callbacks == 40, r.failed_detail
