"""Calling hours at send time on a real Redis and the sandbox: a call outside its window is not
sent; it goes back to the schedule for the next opening with the reason in its record, and so
does one whose retry would end after closing time; inside the window it is sent. Bad settings stop
a worker at startup, naming the variable."""

from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from nxjobs import keys
from nxjobs.client.agent import MAKECALL_PATH
from nxjobs.records import JobState, utc_now_iso

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


def _opening(svc, at: datetime, window: str | None = None) -> datetime:
    deferral = svc.calling_hours.defer(SG, window, at)
    assert deferral is not None and deferral.until is not None
    return deferral.until


def test_outside_the_window_the_call_is_deferred_to_the_schedule(services_with, producer, sandbox):
    from nxjobs.attempts.decisions import Rescheduled, Submitted
    from nxjobs.schedule import Schedule, iso

    # Given a window that opens in two hours (Singapore time)
    svc = services_with(_window(2, 3))
    job_id = _job_id()
    producer.store.create(job_id, "call", {"phone": "659***9001"})  # the record, no message
    sent_before = _makecalls(sandbox)
    # When the attempt runs now
    before = datetime.now(UTC)
    decision = _run(svc, job_id)
    # Then nothing is sent; the job waits in the schedule for the opening, no message on a worker
    assert isinstance(decision, Rescheduled)
    opening = _opening(svc, before)
    assert decision.run_at == iso(opening)
    assert _makecalls(sandbox) == sent_before
    record = producer.get(job_id)
    assert record is not None and record.state == JobState.SCHEDULED and record.attempts == 0
    assert record.run_at == iso(opening) and record.error is None
    assert record.schedule_note == "deferred: " + svc.calling_hours.rule_for(SG).describe()
    assert record.schedule_note.startswith("deferred: calling hours SG ")
    assert producer.redis.zscore(keys.SCHEDULE, job_id) == int(opening.timestamp() * 1000)
    stored = json.loads(producer.redis.get(keys.scheduled_message(job_id)))
    assert stored["kind"] == "call" and stored["kwargs"]["job_id"] == job_id
    assert 0 < producer.redis.ttl(keys.job(job_id)) - (opening - before).total_seconds()
    # When it is due (the promoter confirms its publish) and the window is open at its run,
    # it is sent
    Schedule(producer.redis, producer.store.ttl_s).confirm([job_id], utc_now_iso())
    decision = _run(services_with(_window(-1, 1)), job_id)
    assert isinstance(decision, Submitted)
    assert _makecalls(sandbox) == sent_before + 1
    record = producer.get(job_id)
    assert record is not None and record.state == JobState.SUBMITTED and record.attempts == 1
    assert producer.redis.zscore(keys.SCHEDULE, job_id) is None


def test_the_jobs_own_window_narrows_the_rule(services_with, redis_url, sandbox, monkeypatch):
    from nxjobs.attempts.decisions import Rescheduled
    from nxjobs.producers import Producer

    svc = services_with(_window(-1, 6))  # open now ...
    own = _window(1, 2)  # ... but not for this job
    with Producer(redis_url) as producer:  # the worker's rule, so the window is inside it
        assert producer.calling_hours is not None
        assert producer.calling_hours.narrow(SG, own) == own  # what enqueue checks
        job_id = _job_id()
        sent_before = _makecalls(sandbox)
        decision = _run(svc, job_id, calling_hours=own)
        assert isinstance(decision, Rescheduled)
        record = producer.get(job_id)
        assert record.state == JobState.SCHEDULED
        assert record.schedule_note == f"deferred: calling hours SG {own} (Asia/Singapore)"
        assert _makecalls(sandbox) == sent_before
        assert producer.cancel(job_id).cancelled  # not left in the schedule


def test_a_retry_crossing_the_closing_time_waits_for_the_next_opening(
    services_with, producer, sandbox, monkeypatch
):
    from nxjobs.attempts.decisions import Rescheduled
    from nxjobs.schedule import iso

    # Given a window open now that closes within the hour, and a retry backoff of two hours
    monkeypatch.setenv("NXJOBS_RETRY__BASE_S", "7200")
    monkeypatch.setenv("NXJOBS_RETRY__CAP_S", "7200")
    window = _window(-1, 1)
    svc = services_with(window)
    svc.rng = _Longest()  # full jitter at its ceiling: the retry would come in exactly 2 h
    job_id = _job_id()
    producer.store.create(job_id, "call", {"phone": "659***9001"})
    sent_before = _makecalls(sandbox)
    # When its makecall fails with a retryable code
    sandbox.script(MAKECALL_PATH, 1003, times=1)
    before = datetime.now(UTC)
    decision = _run(svc, job_id)
    after = datetime.now(UTC)
    # Then it is not retried at night: it waits in the schedule for the next opening (tomorrow)
    assert isinstance(decision, Rescheduled)
    assert _makecalls(sandbox) == sent_before + 1  # the one that failed
    record = producer.get(job_id)
    assert record is not None and record.state == JobState.SCHEDULED and record.attempts == 1
    assert record.error is not None and record.error.code == "1003" and record.error.retryable
    assert record.request and record.request[-1]["endpoint"] == MAKECALL_PATH
    opening = datetime.fromisoformat(record.run_at)
    assert _opening(svc, before + timedelta(hours=2)) <= opening
    assert opening <= _opening(svc, after + timedelta(hours=2))
    assert opening - after > timedelta(hours=20)  # the window's start, the next day
    assert record.schedule_note.startswith(f"deferred: calling hours SG {window} (Asia/Singapore)")
    assert "its retry would end at " in record.schedule_note
    assert decision.run_at == iso(opening)
    assert producer.redis.zscore(keys.SCHEDULE, job_id) == int(opening.timestamp() * 1000)
    assert not producer.redis.exists(keys.inflight(job_id))  # the provider answered: nothing rang
    # And a retry that ends inside the window is an ordinary retry
    monkeypatch.setenv("NXJOBS_RETRY__BASE_S", "60")
    monkeypatch.setenv("NXJOBS_RETRY__CAP_S", "60")
    other = _job_id()
    producer.store.create(other, "call", {"phone": "659***9001"})
    svc = services_with(window)
    sandbox.script(MAKECALL_PATH, 1003, times=1)
    from nxjobs.attempts.decisions import RetryLater

    assert isinstance(_run(svc, other), RetryLater)
    assert producer.get(other).state == JobState.RETRYING
    assert producer.cancel(job_id).cancelled and producer.cancel(other).cancelled


class _Longest:
    """Full jitter at its ceiling, so the backoff is known (only the jitter is replaced)."""

    def uniform(self, a: float, b: float) -> float:
        return b

    def random(self) -> float:
        return 0.999


def test_a_bad_calling_hours_setting_stops_the_worker_at_startup(monkeypatch, capsys):
    from workers.__main__ import main

    monkeypatch.setenv("NXJOBS_CALLING_HOURS__ENABLED", "true")  # the default, off in this suite
    monkeypatch.setenv("NXJOBS_CALLING_HOURS__BY_COUNTRY", '{"SG": {"window": "10:00-10:00"}}')
    monkeypatch.setenv("NXJOBS_API2__ACCESS_KEY", "k")
    monkeypatch.setenv("NXJOBS_API2__ACCESS_SECRET", "s")
    monkeypatch.setenv("NXJOBS_API2__APPKEY", "a")
    assert main(["worker", "-Q", "api2"]) == 2
    err = capsys.readouterr().err
    assert "NXJOBS_CALLING_HOURS__BY_COUNTRY.SG.window" in err and "equal" in err


def test_enqueue_refuses_a_wider_window_and_a_number_without_a_zone(redis_url, monkeypatch):
    from nxjobs.jobs import InvalidJob
    from nxjobs.producers import Producer
    from tests.conftest import cli_runner

    monkeypatch.setenv("NXJOBS_CALLING_HOURS__ENABLED", "true")  # the default, off in this suite
    producer = Producer(redis_url)

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


def test_submit_call_outside_the_window_prints_the_id_and_says_it_is_deferred(redis_url):
    import subprocess
    import sys

    from nxjobs.redis_conn import connect

    window = _window(2, 3)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NXJOBS_")}
    env.update(
        NXJOBS_REDIS_URL=redis_url,
        NXJOBS_CALLING_HOURS__ENABLED="true",
        NXJOBS_CALLING_HOURS__DAYS="mon,tue,wed,thu,fri,sat,sun",
        NXJOBS_CALLING_HOURS__WINDOW=window,
    )

    def nxjobs(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "nxjobs.cli", *args],
            env=env,
            cwd=os.getcwd(),  # this tree's nxjobs
            capture_output=True,
            text=True,
            timeout=60,
        )

    client = connect(redis_url)
    agent_before = client.llen("agent")
    proc = nxjobs("submit", "call", "--phone", SG)
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip()
    assert len(job_id) == 32
    note = f"deferred: calling hours SG {window} (Asia/Singapore); run_at="
    assert proc.stderr.startswith(note)
    status = nxjobs("status", job_id)
    assert " scheduled " in status.stdout and "run_at=" in status.stdout
    assert f"deferred: calling hours SG {window} (Asia/Singapore)" in status.stdout
    assert client.llen("agent") == agent_before  # no message sent
    assert nxjobs("cancel", job_id).returncode == 0


def test_an_at_already_past_while_the_window_is_closed_waits_for_the_opening(
    services_with, redis_url
):
    from nxjobs.producers import Producer
    from nxjobs.schedule import iso

    svc = services_with(_window(2, 3))  # sets the variables this producer reads too
    with Producer(redis_url) as producer:
        asked = datetime.now(UTC) - timedelta(minutes=5)
        before = datetime.now(UTC)
        job_id = producer.call(phone=SG, at=asked)
        record = producer.get(job_id)
        assert record.state == JobState.SCHEDULED and record.run_at == iso(_opening(svc, before))
        assert record.schedule_note.startswith("deferred: calling hours SG ")
        assert record.schedule_note.endswith(
            f"the run_at asked for, {iso(asked)}, was already past"
        )
        assert producer.cancel(job_id).cancelled
