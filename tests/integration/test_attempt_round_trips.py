"""What one attempt costs in Redis round trips, on a real Redis and the sandbox: an attempt of
a kind with no side effect and no quota claims, sends, records and reports, and nothing else
(bench/README.md § Per-job overhead against plain Celery)."""

from __future__ import annotations

import pytest
import redis

from nxjobs import keys
from nxjobs.records import JobState

pytestmark = pytest.mark.integration

OTA = {"phone": "+8613800000001", "user_ip": "203.0.113.9"}


class CountingRedis(redis.Redis):
    """A client that notes every round trip: a command by its name, a pipeline as one."""

    trips: list[str]

    def execute_command(self, *args, **options):
        self.trips.append(str(args[0]).upper())
        return super().execute_command(*args, **options)

    def pipeline(self, transaction=True, shard_hint=None):
        pipe = super().pipeline(transaction, shard_hint)
        execute = pipe.execute

        def counted(raise_on_error=True):
            self.trips.append("PIPELINE")
            return execute(raise_on_error)

        pipe.execute = counted
        return pipe


@pytest.fixture()
def services(redis_url, sandbox_handle, sandbox, monkeypatch):
    from config.settings import Settings
    from sandbox.accounts import sandbox_env
    from tasks.services import Services

    for name, value in sandbox_env(sandbox_handle.url).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("NXJOBS_REDIS_URL", redis_url)
    monkeypatch.setenv("NXJOBS_API2__RATE_PER_S", "0")  # no quota: no slot to take
    svc = Services(Settings(_env_file=None))
    client = CountingRedis.from_url(redis_url, decode_responses=True)
    client.trips = []
    svc.__dict__["redis"] = client  # before anything built on it
    return svc


def _attempt(svc, job_id):
    from nxjobs.attempts.job import JobAttempt
    from tasks.api2 import _ota_init

    return JobAttempt(svc, job_id, "ota-init", OTA, _ota_init).run()


def _submitted_count(svc) -> int:
    return int(svc.redis.hget(keys.METRICS_COUNTERS, "attempt|ota-init|submitted") or 0)


def test_an_ota_init_attempt_claims_records_and_reports_in_two_round_trips(services, producer):
    from nxjobs.attempts.decisions import Skipped, Submitted

    warm, job_id = producer.ota_init(**OTA), producer.ota_init(**OTA)
    assert isinstance(_attempt(services, warm), Submitted)  # scripts loaded, pools open
    counted = _submitted_count(services)
    services.redis.trips.clear()

    assert isinstance(_attempt(services, job_id), Submitted)
    # The claim; the submit (its payload and marker dropped with it) with the metrics.
    assert services.redis.trips == ["EVALSHA", "PIPELINE"]
    record = producer.store.get(job_id)
    assert record.state is JobState.COMPLETED and record.result["url"]
    assert services.redis.exists(keys.job_payload(job_id), keys.inflight(job_id)) == 0
    assert _submitted_count(services) == counted + 1

    services.redis.trips.clear()
    assert isinstance(_attempt(services, job_id), Skipped)  # a redelivery: the claim refuses
    assert services.redis.trips == ["EVALSHA"]


def test_a_submit_whose_script_redis_lost_loads_it_and_records_once(services, producer):
    from nxjobs.attempts.decisions import Submitted

    warm, job_id = producer.ota_init(**OTA), producer.ota_init(**OTA)
    assert isinstance(_attempt(services, warm), Submitted)
    counted = _submitted_count(services)
    services.redis.script_flush()  # as after a Redis restart without its scripts

    assert isinstance(_attempt(services, job_id), Submitted)
    assert producer.store.get(job_id).state is JobState.COMPLETED
    assert _submitted_count(services) == counted + 1
    assert services.redis.exists(keys.job_payload(job_id)) == 0
