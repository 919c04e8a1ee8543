"""Shared fixtures: a real redis-server, the sandbox over real HTTP, a real Celery worker.

A missing redis-server skips the integration tests on a developer machine but
fails them in CI (CI=true), so CI can never go green by skipping.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from types import SimpleNamespace

import pytest

from workers.devstack import RedisServer, find_redis_server, start_worker

# Calling hours off for this process's producers, as sandbox_env turns them off for the workers:
# a call is sent whatever the time of day the suite runs. Tests about calling hours turn them on.
os.environ.setdefault("NXJOBS_CALLING_HOURS__ENABLED", "false")

# Sandbox quotas off by default so tests are deterministic; tests about
# throttling turn them on explicitly.
RELAXED = dict(
    api2_rate=0,
    number_check_big_rate=0,
    callbot_rate=0,
    makecall_rate=0,
    cdr_rate=0,
    throttle_rate=0.0,
    error_rate=0.0,
    slow_rate=0.0,
    token_ttl_s=1200,
)

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
    from sandbox.server import start_in_thread

    with start_in_thread() as handle:
        yield handle


@pytest.fixture()
def sandbox(sandbox_handle):
    """Control client for the session's sandbox, reset to relaxed quotas and no faults."""
    from sandbox.control import SandboxControl

    with SandboxControl(sandbox_handle.url) as control:
        control.reset()
        control.configure(**RELAXED)
        yield control


@pytest.fixture(scope="session")
def worker_env(redis_url, sandbox_handle, tmp_path_factory) -> dict[str, str]:
    from sandbox.accounts import sandbox_env

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


# ---- callbacks: a receiver and a worker that sends callback URLs, on Redis db 1 ----
# Separate from `worker` (db 0) so the other suites keep their `submitted` jobs
# and these tests see only their own callbacks.

CALLBACK_TOKEN = "test-callback-token-0123456789abcdef"
# Short deadlines so reconciliation tests take seconds; they only act while a beat runs.
CALLBACK_WORKER_ENV = {
    "NXJOBS_CALLBACKS__TOKEN": CALLBACK_TOKEN,
    "NXJOBS_CALLBACKS__NUMBER_CHECK_DEADLINE_S": "1",
    "NXJOBS_CALLBACKS__CALL_DEADLINE_S": "1",
    "NXJOBS_CALLBACKS__CALLBOT_DEADLINE_S": "1",
    "NXJOBS_CALLBACKS__RECHECK_S": "0.5",
    "NXJOBS_CALLBACKS__NUMBER_CHECK_GIVE_UP_S": "4",
    "NXJOBS_CALLBACKS__CALL_GIVE_UP_S": "4",
    "NXJOBS_CALLBACKS__CALLBOT_GIVE_UP_S": "4",
    "NXJOBS_CALLBACKS__AMBIGUOUS_LOOKUP_AFTER_S": "1",
    "NXJOBS_CALLBACKS__RECONCILE_INTERVAL_S": "0.5",
}
# Sandbox callback settings for these tests, and the defaults restored afterwards.
SANDBOX_CALLBACKS = dict(
    callback_delay_s=0.05,
    callback_jitter_s=0.3,
    callback_duplicate_rate=0.0,
    callback_drop_rate=0.0,
    callback_retry_s=0.2,
    callback_retry_window_s=5.0,
)
SANDBOX_CALLBACK_DEFAULTS = dict(
    cdr_callback_url="",
    callback_delay_s=1.0,
    callback_jitter_s=0.0,
    callback_duplicate_rate=0.0,
    callback_drop_rate=0.0,
    callback_retry_s=60.0,
    callback_retry_window_s=3600.0,
)


@pytest.fixture(scope="session")
def callbacks_redis_url(redis_server) -> str:
    return redis_server.url.rsplit("/", 1)[0] + "/1"


@pytest.fixture(scope="session")
def callbacks_env(worker_env, callbacks_redis_url) -> dict[str, str]:
    return {**worker_env, **CALLBACK_WORKER_ENV, "NXJOBS_REDIS_URL": callbacks_redis_url}


@pytest.fixture(scope="session")
def receiver(callbacks_env, tmp_path_factory):
    """The callback receiver (`python -m workers.web`) on a free port; yields its base URL."""
    from workers.devstack import start_callbacks

    proc, url = start_callbacks(callbacks_env, log_dir=str(tmp_path_factory.mktemp("callbacks")))
    yield SimpleNamespace(proc=proc, url=url)
    proc.stop()


@pytest.fixture(scope="session")
def callbacks_worker(callbacks_env, receiver, tmp_path_factory):
    """A real worker that sends callback URLs pointing at `receiver`."""
    env = {**callbacks_env, "NXJOBS_CALLBACKS__PUBLIC_URL": receiver.url}
    proc = start_worker(env, concurrency=2, log_dir=str(tmp_path_factory.mktemp("cbworker")))
    yield proc
    proc.stop()


@pytest.fixture()
def cb_sandbox(sandbox, receiver):
    """The sandbox (reset) sending callbacks quickly, out of order, the CDR to our receiver."""
    sandbox.configure(
        cdr_callback_url=f"{receiver.url}/callbacks/agent/cdr/{CALLBACK_TOKEN}", **SANDBOX_CALLBACKS
    )
    yield sandbox
    sandbox.configure(**SANDBOX_CALLBACK_DEFAULTS)


@pytest.fixture()
def cb_producer(callbacks_redis_url):
    from nxjobs.producers import Producer

    with Producer(callbacks_redis_url) as p:
        yield p


def cli_runner(redis_url: str, cwd: object) -> Callable[..., subprocess.CompletedProcess]:
    """`nxjobs ARGS` as a user runs it (`python -m nxjobs.cli`, a real process) against
    `redis_url`, with no other NXJOBS_ setting of this environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NXJOBS_")}
    env["NXJOBS_REDIS_URL"] = redis_url

    def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "nxjobs.cli", *args],
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run
