"""Deferring a call outside its calling hours, with fixed clocks: the rule's answer
(Policy.defer) and the attempt's decision (nxjobs/attempts/job.py) on the in-memory fakes of
tests/unit/test_attempts.py, with a fake schedule that notes what is deferred."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta

import pytest

from nxjobs import keys
from nxjobs.attempts import decisions
from nxjobs.attempts.job import JobAttempt
from nxjobs.calling_hours import Policy
from nxjobs.client.agent import MAKECALL_PATH
from nxjobs.client.errors import ProviderError
from nxjobs.schedule import Deferred, iso
from tests.unit.test_attempts import PAYLOADS, operation_for, services

SG = "6591234567"  # Asia/Singapore, UTC+8, no DST
RU_MOBILE = "79123456789"  # zones from UTC+3 to UTC+12


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# 2026-06-04 is a Thursday. SG 09:00-20:00 is 01:00-12:00 UTC.
THU_OPEN = utc(2026, 6, 4, 3, 0)  # 11:00 in Singapore
THU_NIGHT = utc(2026, 6, 3, 22, 0)  # Thursday 06:00 in Singapore
FRI_OPENING = utc(2026, 6, 5, 1, 0)
THU_OPENING = utc(2026, 6, 4, 1, 0)


# ---- the rule -------------------------------------------------------------------------------


def test_defer_is_none_inside_the_window_and_the_next_opening_outside_it():
    policy = Policy.build()
    assert policy.defer(SG, None, THU_OPEN) is None
    deferral = policy.defer(SG, None, THU_NIGHT)
    assert deferral is not None and deferral.until == THU_OPENING
    assert deferral.note == "deferred: calling hours SG 09:00-20:00 (Asia/Singapore)"


def test_a_due_time_after_closing_defers_to_the_next_days_opening():
    policy = Policy.build()
    # 19:59 local is open; 20:00 (the end, excluded) is closed until Friday 09:00
    assert policy.defer(SG, None, utc(2026, 6, 4, 11, 59)) is None
    assert policy.defer(SG, None, utc(2026, 6, 4, 12, 0)).until == FRI_OPENING


def test_closing_on_saturday_defers_to_monday_when_sunday_is_not_a_day():
    policy = Policy.build()  # mon..sat
    saturday_night = utc(2026, 6, 6, 12, 30)  # 20:30 in Singapore
    assert policy.defer(SG, None, saturday_night).until == utc(2026, 6, 8, 1, 0)


def test_the_jobs_own_window_is_the_one_deferred_by():
    deferral = Policy.build().defer(SG, "14:00-16:00", THU_OPEN)
    assert deferral.until == utc(2026, 6, 4, 6, 0)
    assert deferral.reason == "calling hours SG 14:00-16:00 (Asia/Singapore)"


def test_no_opening_at_all_defers_to_nothing():
    # A Russian mobile spans UTC+3..UTC+12: 09:00-10:00 is never open in all its zones at once
    deferral = Policy.build(window="09:00-10:00").defer(RU_MOBILE, None, THU_OPEN)
    assert deferral is not None and deferral.until is None


# ---- the attempt ----------------------------------------------------------------------------


class FakeSchedule:
    """Notes each deferral; refuses one whose in-flight marker is set, as job_defer.lua does."""

    def __init__(self, redis):
        self.redis = redis
        self.deferred: list[tuple[str, datetime, dict, dict]] = []

    def defer(self, job_id, due, msg, fields, now_iso):
        if self.redis.get(keys.inflight(job_id)) is not None:
            return Deferred(False, "running", "inflight")
        self.deferred.append((job_id, due, json.loads(msg), fields))
        return Deferred(True, "running", "")


def with_hours(*answers, policy: Policy | None = None):
    svc = services(answers=answers)
    svc.calling_hours = policy or Policy.build()
    svc.schedule = FakeSchedule(svc.redis)
    return svc


def attempt(svc, kind: str, now: datetime) -> decisions.Decision:
    payload = {**PAYLOADS[kind], "phone": SG} if kind == "call" else PAYLOADS[kind]
    operation = operation_for(kind, svc)
    return JobAttempt(svc, "job1", kind, payload, operation, clock=lambda: now).run()


def test_a_call_outside_its_window_goes_to_the_schedule_without_an_attempt():
    svc = with_hours()
    decision = attempt(svc, "call", THU_NIGHT)
    assert decision == decisions.Rescheduled(
        run_at=iso(THU_OPENING),
        reason="call job job1: deferred: calling hours SG 09:00-20:00 (Asia/Singapore); "
        f"runs at {iso(THU_OPENING)}",
    )
    assert svc.provider.sent == [] and svc.limiter.acquired == []  # no request, no slot
    [(job_id, due, msg, fields)] = svc.schedule.deferred
    assert (job_id, due) == ("job1", THU_OPENING)
    assert msg["kind"] == "call" and msg["kwargs"]["job_id"] == "job1"
    assert msg["kwargs"]["payload"]["phone"] == SG
    assert fields["run_at"] == iso(THU_OPENING)
    assert fields["schedule_note"] == "deferred: calling hours SG 09:00-20:00 (Asia/Singapore)"
    # Claimed without counting an attempt (the schedule moves it on from running)
    assert svc.store.history == [("running", {"incr": []})]


def test_a_call_inside_its_window_is_sent():
    svc = with_hours()
    assert isinstance(attempt(svc, "call", THU_OPEN), decisions.Submitted)
    assert svc.provider.sent == [MAKECALL_PATH] and svc.schedule.deferred == []


@pytest.mark.parametrize("kind", ["number-check", "ota-init"])
def test_what_calls_nobody_is_never_deferred(kind):
    svc = with_hours()
    assert isinstance(attempt(svc, kind, THU_NIGHT), decisions.Submitted)
    assert svc.schedule.deferred == []


def test_a_retry_that_would_end_after_closing_waits_for_the_next_opening():
    svc = with_hours(ProviderError("agent", "1003", "busy"))
    svc.settings.retry.base_s = svc.settings.retry.cap_s = 3600.0
    svc.rng = _Longest()
    late = utc(2026, 6, 4, 11, 30)  # 19:30 in Singapore: the retry would come at 20:30
    decision = attempt(svc, "call", late)
    assert isinstance(decision, decisions.Rescheduled) and decision.run_at == iso(FRI_OPENING)
    assert svc.provider.sent == [MAKECALL_PATH]  # the failed one only
    [(_, due, _, fields)] = svc.schedule.deferred
    assert due == FRI_OPENING
    assert fields["schedule_note"] == (
        "deferred: calling hours SG 09:00-20:00 (Asia/Singapore); its retry would end at "
        + iso(late + timedelta(hours=1))
    )
    assert json.loads(fields["error"])["code"] == "1003"
    assert json.loads(fields["request"])[-1]["endpoint"] == MAKECALL_PATH
    assert svc.store.state("job1") == "running"  # the fake leaves it there: the script moves it


def test_a_retry_that_ends_inside_the_window_is_an_ordinary_retry():
    svc = with_hours(ProviderError("agent", "1003", "busy"))
    svc.settings.retry.base_s = svc.settings.retry.cap_s = 60.0
    svc.rng = _Longest()
    decision = attempt(svc, "call", utc(2026, 6, 4, 11, 30))
    assert isinstance(decision, decisions.RetryLater) and decision.countdown == 60.0
    assert svc.schedule.deferred == [] and svc.store.state("job1") == "retrying"


def test_a_slot_wait_that_would_end_after_closing_defers_before_the_claim_counts():
    from nxjobs.ratelimit.limiter import Grant

    svc = with_hours()
    svc.limiter.grants = [Grant(go=False, reserved=True, wait_s=120.0, slot_at_us=9, member="")]
    svc.settings.ratelimit.max_wait_s = 600.0
    closing = utc(2026, 6, 4, 11, 59)  # 19:59 in Singapore: the slot would come at 20:01
    decision = attempt(svc, "call", closing)
    assert isinstance(decision, decisions.Rescheduled) and decision.run_at == iso(FRI_OPENING)
    assert svc.provider.sent == []
    [(_, _, _, fields)] = svc.schedule.deferred
    assert "its rate-limit slot wait would end at " in fields["schedule_note"]
    assert svc.store.records["job1"]["attempts"] == 0


def test_with_the_marker_set_the_call_is_not_deferred_and_only_looked_up():
    svc = with_hours()
    svc.redis.set(keys.inflight("job1"), "1")  # stale: an earlier attempt may have rung it
    svc.provider.cdr_rows = [{"orderid": "job1", "status": 0}]
    decision = attempt(svc, "call", THU_NIGHT)
    assert svc.schedule.deferred == []
    assert MAKECALL_PATH not in svc.provider.sent  # never resent, at night or not
    assert "lookup:cdr" in svc.provider.sent
    assert isinstance(decision, decisions.Submitted | decisions.Failed)


class _Longest(random.Random):
    """Full jitter at its ceiling, so the backoff is known."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_a_cooldown_that_would_end_after_closing_counts_the_throttle_and_defers():
    svc = with_hours(ProviderError("agent", "2206", "too frequent"))
    just_before = utc(2026, 6, 4, 11, 59, 59)  # 19:59:59 in Singapore; the cooldown is 1.5 s
    decision = attempt(svc, "call", just_before)
    assert isinstance(decision, decisions.Rescheduled) and decision.run_at == iso(FRI_OPENING)
    assert svc.limiter.cooled  # every worker still backs off the credential
    [(_, _, _, fields)] = svc.schedule.deferred
    assert "its cooldown would end at " in fields["schedule_note"]
    assert json.loads(fields["error"])["code"] == "2206"
    assert svc.store.records["job1"]["throttles"] == 1
