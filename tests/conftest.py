"""Shared fixtures: a real redis-server, the sandbox over real HTTP, a real Celery worker.

A missing redis-server skips the integration tests on a developer machine but
fails them in CI (CI=true), so CI can never go green by skipping.
"""

from __future__ import annotations

import os

import pytest

from workers.devstack import RedisServer, find_redis_server, start_worker

# Sandbox quotas off by default so tests are deterministic; tests about
# throttling turn them on explicitly.
RELAXED = dict(api2_rate=0, number_check_big_rate=0, callbot_rate=0, makecall_rate=0, cdr_rate=0,
               throttle_rate=0.0, error_rate=0.0, slow_rate=0.0, token_ttl_s=1200)

# Short backoff so retry tests take milliseconds; a short read timeout so the
# lost-answer test does not wait long.
WORKER_ENV = {
    "NXJOBS_RETRY__BASE_S": "0.05",
    "NXJOBS_RETRY__CAP_S": "0.5",
    "NXJOBS_HTTP__READ_TIMEOUT_S": "1.5",
    "NXJOBS_RATELIMIT__COOLDOWN_BASE_S": "0.1",
    "NXJOBS_RATELIMIT__COOLDOWN_CAP_S": "1",
}


@pytest.fixture(scope="session")
def redis_server():
    try:
        find_redis_server()
    except RuntimeError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def redis_url(redis_server) -> str:
    return redis_server.url


@pytest.fixture(scope="session")
def sandbox_handle():
    from nxjobs.sandbox.server import start_in_thread

    with start_in_thread() as handle:
        yield handle


@pytest.fixture()
def sandbox(sandbox_handle):
    """Control client for the session's sandbox, reset to relaxed quotas and no faults."""
    from nxjobs.sandbox.control import SandboxControl

    with SandboxControl(sandbox_handle.url) as control:
        control.reset()
        control.configure(**RELAXED)
        yield control


@pytest.fixture(scope="session")
def worker_env(redis_url, sandbox_handle, tmp_path_factory) -> dict[str, str]:
    from nxjobs.sandbox.accounts import sandbox_env

    clean = {k: v for k, v in os.environ.items() if not k.startswith("NXJOBS_")}
    return {**clean, **sandbox_env(sandbox_handle.url), **WORKER_ENV, "NXJOBS_REDIS_URL": redis_url}


@pytest.fixture(scope="session")
def worker(worker_env, tmp_path_factory):
    """One real Celery worker (prefork, 2 processes) consuming every queue."""
    proc = start_worker(worker_env, concurrency=2, log_dir=str(tmp_path_factory.mktemp("worker")))
    yield proc
    proc.stop()


@pytest.fixture()
def producer(redis_url):
    from nxjobs.producers import Producer

    with Producer(redis_url) as p:
        yield p
