"""The pure half of scheduling and cancelling: durations, `at` / `delay_s`, refusal reasons."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from nxjobs import cancel, schedule
from nxjobs.jobs import InvalidJob

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "text,seconds",
    [("90s", 90), ("90", 90), ("30m", 1800), ("2h", 7200), ("1d", 86400), ("1.5h", 5400)],
)
def test_durations(text, seconds):
    assert schedule.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "-5s", "10x", "2h30m", "1e3"])
def test_a_duration_that_is_not_one_is_refused_naming_the_option(text):
    with pytest.raises(InvalidJob) as err:
        schedule.parse_duration(text, "--in")
    assert err.value.field == "--in"


def test_a_naive_datetime_is_refused_it_needs_a_time_zone():
    with pytest.raises(InvalidJob) as err:
        schedule.when(datetime(2026, 12, 24, 9, 0), None, NOW)
    assert err.value.field == "at" and "needs a time zone" in str(err.value)


def test_at_and_delay_together_are_refused():
    with pytest.raises(InvalidJob) as err:
        schedule.when(NOW + timedelta(hours=1), 60, NOW)
    assert err.value.field == "at"


@pytest.mark.parametrize("delay", [-1, float("nan"), float("inf"), "60", True])
def test_a_bad_delay_is_refused_naming_delay_s(delay):
    with pytest.raises(InvalidJob) as err:
        schedule.when(None, delay, NOW)
    assert err.value.field == "delay_s"


def test_a_future_time_is_due_then_in_any_zone():
    at = datetime(2026, 12, 24, 9, 0, tzinfo=timezone(timedelta(hours=8)))
    got = schedule.when(at, None, NOW)
    assert got.due == at and got.note is None
    assert schedule.iso(at) == "2026-12-24T01:00:00.000Z"
    assert schedule.when(None, 90, NOW).due == NOW + timedelta(seconds=90)


def test_a_past_time_runs_now_and_says_so():
    got = schedule.when(NOW - timedelta(minutes=5), None, NOW)
    assert got.due is None and got.asked == NOW - timedelta(minutes=5)
    assert "already past" in (got.note or "")
    assert schedule.when(None, 0, NOW).due is None
    assert schedule.when(None, None, NOW).due is None


@pytest.mark.parametrize(
    "state,why,reason",
    [
        ("running", "", cancel.BEING_SENT),
        ("submitted", "", cancel.ALREADY_SENT),
        ("cancelled", "", cancel.ALREADY_CANCELLED),
        ("completed", "", "already finished (completed)"),
        ("failed", "", "already finished (failed)"),
        ("retrying", "inflight", cancel.MAY_HAVE_REACHED),
        ("retrying", "batch", cancel.BATCH_BUILT),
    ],
)
def test_each_refusal_has_its_reason(state, why, reason):
    assert cancel.refusal(state, why) == reason
