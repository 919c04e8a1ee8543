"""Calling hours at send time on a real Redis and the sandbox: a call outside its window is not
sent and comes back later with the reason in its record; inside it, it is sent. Bad settings stop
a worker at startup, naming the variable."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from nxjobs.client.agent import MAKECALL_PATH
from nxjobs.records import JobState

pytestmark = pytest.mark.integration

SG = "6591239001"


def _job_id() -> str:
    # Not enqueued: a live session worker would take the message. The attempt starts the record.
    return uuid.uuid4().hex


def _window(start_h: float, end_h: float) -> str:
    """A window from `start_h` to `end_h` hours from now, in Singapore's local time."""
    now = datetime.now(UTC).astimezone(ZoneInfo("Asia/Singapore"))
    a, b = now + timedelta(hours=start_h), now + timedelta(hours=end_h)
    return f"{a:%H:%M}-{b:%H:%M}"


@pytest.fixture()
def services_with(redis_url, sandbox_handle, sandbox, monkeypatch):
    from config.settings import Settings
    from sandbox.accounts import sandbox_env
    from tasks.services import Services

    for name, value in sandbox_env(sandbox_handle.url).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("NXJOBS_REDIS_URL", redis_url)
    monkeypatch.setenv("NXJOBS_AGENT__RATE_PER_S", "0")
    monkeypatch.setenv("NXJOBS_CALLING_HOURS__ENABLED", "true")
    monkeypatch.setenv("NXJOBS_CALLING_HOURS__DAYS", "mon,tue,wed,thu,fri,sat,sun")

    def build(window: str) -> Services:
        monkeypatch.setenv("NXJOBS_CALLING_HOURS__WINDOW", window)
        return Services(Settings(_env_file=None))

    return build


def _run(svc, job_id: str, **payload: str):
    from nxjobs.attempts.job import JobAttempt
    from tasks.calls import _place_call

    return JobAttempt(svc, job_id, "call", {"phone": SG, **payload}, _place_call).run()


def _makecalls(sandbox) -> int:
    """Orders placed for SG (a makecall refused for a stale token is resent with a fresh one)."""
    sent = sandbox.requests(MAKECALL_PATH, limit=1000)
    return len({r["body"].get("orderid") for r in sent if r["body"].get("phone") == SG})


def test_outside_the_window_the_call_waits_with_the_reason(services_with, producer, sandbox):
    from nxjobs.attempts.decisions import RetryLater, Submitted

    # Given a window that opens in two hours (Singapore time)
    svc = services_with(_window(2, 3))
    job_id = _job_id()
    producer.store.create(job_id, "call", {"phone": "659***9001"})  # the record, no message
    sent_before = _makecalls(sandbox)
    # When the attempt runs now
    decision = _run(svc, job_id)
    # Then nothing is sent; the job comes back within the longest countdown we allow
    assert isinstance(decision, RetryLater)
    assert decision.countdown == svc.settings.ratelimit.max_wait_s
    assert "deferred: calling hours SG" in decision.reason
    assert _makecalls(sandbox) == sent_before
    record = producer.get(job_id)
    assert record is not None and record.state == JobState.RETRYING and record.attempts == 0
    assert record.error is not None and record.error.code == "calling_hours"
    assert record.error.message.startswith("deferred: calling hours SG ")
    # When the window is open at its next run, it is sent, and the deferral reason cleared
    decision = _run(services_with(_window(-1, 1)), job_id)
    assert isinstance(decision, Submitted)
    assert _makecalls(sandbox) == sent_before + 1
    record = producer.get(job_id)
    assert record is not None and record.state == JobState.SUBMITTED and record.error is None


def test_the_jobs_own_window_narrows_the_rule(services_with, redis_url, sandbox, monkeypatch):
    from nxjobs.attempts.decisions import RetryLater
    from nxjobs.producers import Producer

    svc = services_with(_window(-1, 6))  # open now ...
    own = _window(1, 2)  # ... but not for this job
    with Producer(redis_url) as producer:  # the worker's rule, so the window is inside it
        assert producer.calling_hours is not None
        assert producer.calling_hours.narrow(SG, own) == own  # what enqueue checks
        job_id = _job_id()
        sent_before = _makecalls(sandbox)
        decision = _run(svc, job_id, calling_hours=own)
        assert isinstance(decision, RetryLater)
        assert f"calling hours SG {own} (Asia/Singapore)" in decision.reason
        assert producer.get(job_id).error.code == "calling_hours"
        assert _makecalls(sandbox) == sent_before


def test_a_bad_calling_hours_setting_stops_the_worker_at_startup(monkeypatch, capsys):
    from workers.__main__ import main

    monkeypatch.setenv("NXJOBS_CALLING_HOURS__BY_COUNTRY", '{"SG": {"window": "10:00-10:00"}}')
    monkeypatch.setenv("NXJOBS_API2__ACCESS_KEY", "k")
    monkeypatch.setenv("NXJOBS_API2__ACCESS_SECRET", "s")
    monkeypatch.setenv("NXJOBS_API2__APPKEY", "a")
    assert main(["worker", "-Q", "api2"]) == 2
    err = capsys.readouterr().err
    assert "NXJOBS_CALLING_HOURS__BY_COUNTRY.SG.window" in err and "equal" in err


def test_enqueue_refuses_a_wider_window_and_a_number_without_a_zone(producer, redis_url):
    from nxjobs.jobs import InvalidJob
    from tests.conftest import cli_runner

    before = producer.redis.llen("agent"), producer.redis.dbsize()
    with pytest.raises(InvalidJob) as err:
        producer.call(phone=SG, calling_hours="08:00-18:00")  # the rule opens at 09:00
    assert err.value.field == "calling_hours" and "not inside" in err.value.message
    with pytest.raises(InvalidJob) as err:
        producer.call(phone=SG, calling_hours="8-18")
    assert err.value.field == "calling_hours"
    with pytest.raises(InvalidJob) as err:
        producer.call(phone="88234567890")  # +882: no time zone, fail closed
    assert err.value.field == "phone" and "time zone" in err.value.message
    assert (producer.redis.llen("agent"), producer.redis.dbsize()) == before
    proc = cli_runner(redis_url, os.getcwd())(  # this tree's nxjobs, not the installed one
        "submit", "call", "--phone", SG, "--calling-hours", "07:00-10:00"
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error: calling_hours: ")
    assert producer.redis.llen("agent") == before[0]
