"""The Celery tasks carry out an attempt's decision: the same retry kwargs, countdowns,
priorities, exception texts and return strings as before the protocol left tasks/."""

from types import SimpleNamespace

import pytest

from nxjobs.attempts import decisions
from nxjobs.records import JobError
from tasks import flush
from tasks.base import JobFailed, JobTask, RateWait


class Retried(Exception):
    pass


def capture(task):
    seen = {}

    def retry(**kw):
        seen.update(kw)
        return Retried()

    task.retry = retry
    return seen


def test_a_job_retry_after_an_error_shows_as_a_failure_and_a_wait_as_a_wait():
    task = JobTask()
    seen = capture(task)
    error = JobError(code="http_503", message="HTTP 503", retryable=True)
    with pytest.raises(Retried):
        task.carry_out(
            "j", {"p": 1}, decisions.RetryLater(countdown=2.0, priority=3, reason="r", error=error)
        )
    assert isinstance(seen["exc"], JobFailed) and str(seen["exc"]) == "r"
    assert seen["kwargs"] == {
        "job_id": "j",
        "payload": {"p": 1},
        "slot_at_us": None,
        "resumed": False,
    }
    assert (seen["countdown"], seen["priority"]) == (2.0, 3)
    with pytest.raises(Retried):
        task.carry_out(
            "j",
            {},
            decisions.WaitForSlot(
                countdown=0.4, priority=9, reason="w", resumed=True, slot_at_us=77
            ),
        )
    assert isinstance(seen["exc"], RateWait)
    assert seen["kwargs"] == {"job_id": "j", "payload": {}, "slot_at_us": 77, "resumed": True}


def test_a_job_failure_raises_its_reason_and_the_rest_return_strings():
    task = JobTask()
    with pytest.raises(JobFailed, match="^call job j failed: x y$"):
        task.carry_out(
            "j",
            {},
            decisions.Failed(
                JobError(code="x", message="y", retryable=False), "call job j failed: x y"
            ),
        )
    assert task.carry_out("j", {}, decisions.Submitted()) == "submitted"
    assert task.carry_out("j", {}, decisions.Skipped()) == "skipped"


def test_a_flush_is_re_queued_with_its_trigger_and_returns_what_it_did():
    task = SimpleNamespace()
    seen = capture(task)
    with pytest.raises(Retried):
        flush.carry_out(
            task,
            "nc1",
            decisions.CoolDown(countdown=1.0, priority=3, reason="batch: c", trigger="full"),
        )
    assert seen["kwargs"] == {"group": "nc1", "trigger": "full", "slot_at_us": None}
    assert isinstance(seen["exc"], RateWait) and str(seen["exc"]) == "batch: c"
    assert (
        flush.carry_out(task, "g", decisions.BatchSubmitted(members=5, rejected=2))
        == "submitted 3 of 5"
    )
    assert (
        flush.carry_out(task, "g", decisions.BatchFailed(members=5, code="1001"))
        == "failed 5: 1001"
    )
    assert [
        flush.carry_out(task, "g", d())
        for d in (decisions.Empty, decisions.Deferred, decisions.AlreadySent)
    ] == ["empty", "deferred", "already sent"]
