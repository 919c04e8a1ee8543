"""A record store and broker over TLS (`rediss://`, a redis-server started with a throwaway CA's
certificate), and as a restricted ACL user: a job runs through a real worker, the producer reads
it back, and the receiver's asyncio client reaches the same Redis."""

from __future__ import annotations

import asyncio
import os
import shutil
import time

import pytest
import redis

from nxjobs.redis_conn import RedisTarget, TlsOptions
from tests.conftest import WORKER_ENV
from workers.devstack import RedisServer, make_tls_files, start_worker

pytestmark = pytest.mark.integration

# The ACL an operator creates for nxjobs (docs/operations.md § Redis users): our keys, kombu's
# (queues named after the families, their priority lists, the unacked bookkeeping, bindings),
# and the pub/sub channels of Celery's events and remote control.
ACL = [
    "on", ">s3cret-pw", "resetkeys", "~nxjobs:*", "~_kombu.*", "~unacked*",
    "~agent*", "~callbot*", "~api2*", "~*.celery.pidbox*",
    "resetchannels", "&*", "+@all", "-@dangerous",
    "+info", "+client|setname", "+ping", "+script|load", "+script|exists",
]  # fmt: skip


def _env(url: str, sandbox_url: str, **extra: str) -> dict[str, str]:
    from sandbox.accounts import sandbox_env

    clean = {k: v for k, v in os.environ.items() if not k.startswith("NXJOBS_")}
    return {
        **clean,
        **sandbox_env(sandbox_url),
        **WORKER_ENV,
        "NXJOBS_REDIS_URL": url,
        "NXJOBS_HELD__INTERVAL_S": "0.5",
        **extra,
    }


def _run_one_job(producer, env, tmp_path) -> None:
    worker = start_worker(env, queues="api2", concurrency=1, log_dir=str(tmp_path))
    try:
        job_id = producer.ota_init(phone="8615800001795", user_ip="203.0.113.7")
        record = producer.wait([job_id], until="completed", timeout_s=30)[job_id]
        assert record is not None and record.state.value == "completed", worker.log_tail()
        time.sleep(1.5)  # a held-messages tick or two (NXJOBS_HELD__INTERVAL_S below)
        assert "NOPERM" not in worker.log_text() and "no permissions" not in worker.log_text()
    finally:
        worker.stop()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls_job_producer_and_receiver_client(tmp_path, sandbox, sandbox_handle):
    from nxjobs.producers import Producer

    files = make_tls_files(tmp_path / "tls")
    with RedisServer(tls=files) as server:
        assert server.url.startswith("rediss://")
        tls = TlsOptions(ca_file=files.ca_file)
        target = RedisTarget(server.url, tls=tls)
        # Without our CA the server's certificate is refused.
        with pytest.raises(redis.ConnectionError):
            RedisTarget(server.url).connect(retry=None).ping()
        env = _env(server.url, sandbox_handle.url, NXJOBS_REDIS_TLS__CA_FILE=files.ca_file)
        with Producer(target) as producer:
            _run_one_job(producer, env, tmp_path / "worker")

        async def receiver_ping() -> bool:
            client = target.connect_async()
            try:
                return bool(await client.ping())
            finally:
                await client.aclose()

        assert asyncio.run(receiver_ping())


def test_acl_user_runs_a_job(redis_url, tmp_path, sandbox, sandbox_handle):
    from nxjobs.producers import Producer

    base = redis_url.rsplit("/", 1)[0]
    admin = redis.Redis.from_url(base + "/7")
    admin.execute_command("ACL", "SETUSER", "nxjobs", *ACL)
    try:
        url = base.replace("redis://", "redis://nxjobs:s3cret-pw@") + "/7"
        limited = redis.Redis.from_url(url)
        with pytest.raises(redis.exceptions.NoPermissionError):
            limited.set("other-app:key", "1")  # outside its key patterns
        with Producer(url) as producer:
            _run_one_job(producer, _env(url, sandbox_handle.url), tmp_path / "worker")
            assert "s3cret-pw" not in repr(producer.target)
    finally:
        admin.execute_command("ACL", "DELUSER", "nxjobs")
        admin.flushdb()
