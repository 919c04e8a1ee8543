"""Deadline reconciliation with Celery beat: jobs whose callbacks never came are
looked up with the query APIs and completed or failed with a reason; ambiguous
makecalls are resolved by orderid before anything is sent again.

Real beat, real worker, real Redis (db 1), the sandbox over HTTP. Deadlines are
1 s, the give-up age 4 s and the beat interval 0.5 s (tests/conftest.py).
"""

from __future__ import annotations

import time

import pytest

from nxjobs import keys
from nxjobs.records import JobState

pytestmark = pytest.mark.integration

WAIT_S = 20


@pytest.fixture(scope="module")
def beat(callbacks_env, callbacks_worker, tmp_path_factory):
    from workers.devstack import start_beat

    proc = start_beat(callbacks_env, log_dir=str(tmp_path_factory.mktemp("beat")))
    yield proc
    proc.stop()


def poll(producer, job_id: str, until, timeout_s: float = WAIT_S):
    """The record once `until(record)` holds, or the last one read after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        record = producer.get(job_id)
        if until(record) or time.monotonic() > deadline:
            return record
        time.sleep(0.1)


def _submit(producer, kind: str) -> str:
    if kind == "number-check":
        return producer.number_check(phones=["8613800138000", "6591234567"])
    if kind == "call":
        return producer.call(phone="8613800138000")
    return producer.callbot_list(
        scene_id="s",
        task_name="t",
        contacts=[{"user_phone": "8613900139000"}, {"user_phone": "8613900139001"}],
    )


EXPECTED = {
    "number-check": ["number-check", "number-check"],
    "call": ["cdr"],
    "callbot-list": ["callbot-order", "callbot-order", "callbot-task"],
}


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_job_whose_callbacks_were_dropped_is_completed_by_the_query_apis(
    kind, cb_producer, cb_sandbox, beat
):
    # Given the provider accepts the job but every callback it sends is lost
    cb_sandbox.configure(callback_drop_rate=1.0)
    job_id = _submit(cb_producer, kind)
    submitted = cb_producer.wait([job_id], until="submitted", timeout_s=WAIT_S)[job_id]
    assert submitted.state == JobState.SUBMITTED and submitted.callbacks == []
    # When its deadline passes and beat runs the reconciliation
    record = cb_producer.wait([job_id], until="completed", timeout_s=WAIT_S)[job_id]
    # Then the query API's answers complete it, recorded like callbacks but marked as reconciled
    assert record.state == JobState.COMPLETED, (record.state, record.error)
    assert sorted(c["type"] for c in record.callbacks) == EXPECTED[kind]
    assert {c["source"] for c in record.callbacks} == {"reconcile"}
    assert cb_sandbox.stats()["callbacks"]["dropped"] >= len(EXPECTED[kind])
    assert (
        cb_producer.redis.zscore(
            keys.callbacks_waiting(
                {"call": "agent", "number-check": "api2", "callbot-list": "callbot"}[kind]
            ),
            job_id,
        )
        is None
    )


def test_job_the_provider_knows_nothing_about_fails_with_a_reason(cb_producer, cb_sandbox, beat):
    # Given callbacks are lost and the number query finds nothing either
    cb_sandbox.configure(callback_drop_rate=1.0)
    cb_sandbox.script("/api/number/query", 0, times=1000)
    # When a number check passes its give-up age (4 s)
    job_id = cb_producer.number_check(phones=["8613800138000", "6591234567"])
    record = cb_producer.wait([job_id], until="completed", timeout_s=WAIT_S)[job_id]
    # Then it fails, saying what is missing, after the query API was asked more than once
    assert record.state == JobState.FAILED
    assert record.error.code == "callbacks_timeout"
    assert "2 of 2 number results missing" in record.error.message
    assert len(cb_sandbox.requests(path="/api/number/query")) >= 2


def test_ambiguous_makecall_found_by_orderid_is_completed_not_resent(cb_producer, cb_sandbox, beat):
    # Given a warm token, then a provider that places the call but answers after the read timeout
    warm = cb_producer.call(phone="8613800138000")
    assert (
        cb_producer.wait([warm], until="completed", timeout_s=WAIT_S)[warm].state
        == JobState.COMPLETED
    )
    cb_sandbox.configure(slow_rate=1.0, slow_seconds=2.5, callback_drop_rate=1.0)
    # When a call is made, fails as ambiguous, and reconciliation looks its orderid up
    job_id = cb_producer.call(phone="8613800138002")
    failed = cb_producer.wait([job_id], until="submitted", timeout_s=WAIT_S)[job_id]
    assert failed.state == JobState.FAILED and failed.error.code == "ambiguous"
    cb_sandbox.configure(slow_rate=0.0)
    record = poll(cb_producer, job_id, lambda r: r.state != JobState.FAILED)
    # Then the CDR proves the call happened: completed with it, and the makecall was sent once
    assert record.state == JobState.COMPLETED, (record.state, record.error)
    assert record.error is None and record.result["orderid"] == job_id
    assert [c["type"] for c in record.callbacks] == ["cdr"]
    sent = [
        r
        for r in cb_sandbox.requests(path="/v1/call/makecall")
        if r["body"].get("orderid") == job_id
    ]
    assert len(sent) == 1
    assert cb_producer.redis.zscore(keys.RECONCILE, job_id) is None


def test_ambiguous_makecall_not_found_is_marked_safe_to_resend(cb_producer, cb_sandbox, beat):
    # Given a call that fails as ambiguous, and a CDR lookup that finds nothing
    warm = cb_producer.call(phone="8613800138000")
    assert (
        cb_producer.wait([warm], until="completed", timeout_s=WAIT_S)[warm].state
        == JobState.COMPLETED
    )
    cb_sandbox.configure(slow_rate=1.0, slow_seconds=2.5, callback_drop_rate=1.0)
    job_id = cb_producer.call(phone="8613800138003")
    assert (
        cb_producer.wait([job_id], until="submitted", timeout_s=WAIT_S)[job_id].error.code
        == "ambiguous"
    )
    cb_sandbox.configure(slow_rate=0.0)
    cb_sandbox.script("/api/voiceSms/getSipCdrByOrderid", "0", times=1000)
    # When reconciliation looks it up
    record = poll(cb_producer, job_id, lambda r: r.error is None or r.error.code != "ambiguous")
    # Then the job stays failed, now saying the call was not placed and may be sent again
    assert record.state == JobState.FAILED
    assert record.error.code == "call_not_found" and record.error.retryable is True
    assert "safe to submit again" in record.error.message
    assert cb_producer.redis.zscore(keys.RECONCILE, job_id) is None


def test_a_forged_cdr_for_an_ambiguous_call_is_looked_up_not_believed(
    cb_producer, cb_sandbox, beat, receiver
):
    import uuid

    from tests.integration.test_callbacks import post_token

    # Given a call that failed as ambiguous, and a provider with no CDR for it (it was never placed)
    warm = cb_producer.call(phone="8613800138000")
    assert (
        cb_producer.wait([warm], until="completed", timeout_s=WAIT_S)[warm].state
        == JobState.COMPLETED
    )
    cb_sandbox.configure(slow_rate=1.0, slow_seconds=2.5, callback_drop_rate=1.0)
    job_id = cb_producer.call(phone="8613800138004")
    assert (
        cb_producer.wait([job_id], until="submitted", timeout_s=WAIT_S)[job_id].error.code
        == "ambiguous"
    )
    cb_sandbox.configure(slow_rate=0.0)
    cb_sandbox.script("/api/voiceSms/getSipCdrByOrderid", "0", times=1000)
    # When a CDR callback with its orderid arrives from whoever holds the URL token
    forged = {
        "sessionid": str(uuid.uuid4()),
        "orderid": job_id,
        "phone": "8613800138004",
        "duration": 30,
    }
    assert post_token(receiver.url, "/callbacks/agent/cdr", forged).status_code == 200
    # Then only the provider's answer decides: no CDR there, so the call stays failed, safe to
    # resend
    record = poll(cb_producer, job_id, lambda r: r.error is None or r.error.code != "ambiguous")
    assert record.state == JobState.FAILED and record.error.code == "call_not_found"
    assert record.callbacks == []
