"""Every job kind through a real worker, real Redis and the sandbox over real HTTP."""

from __future__ import annotations

import re

import pytest

from nxjobs import keys
from nxjobs.records import JobState

pytestmark = pytest.mark.integration

WAIT_S = 30


def _submit(producer, kind):
    if kind == "call":
        return producer.call(phone="8613800138000")
    if kind == "callbot-list":
        return producer.callbot_list(
            scene_id="scene-1",
            task_name="t",
            contacts=[{"user_phone": "8613900139000", "user_name": "A"}],
        )
    if kind == "number-check":
        return producer.number_check(phones=["8613800138000", "6591234567"])
    if kind == "ota-init":
        return producer.ota_init(phone="8615800001795", user_ip="203.0.113.7")
    return producer.wa_calling(business_phone="6581234567")


EXPECTED_RESULT_KEYS = {
    "call": {"orderid", "sessionid"},
    "callbot-list": {"userTaskID", "taskID", "taskStatus"},
    "number-check": {"requestId", "batchNo"},
    "ota-init": {"requestId", "url"},
    "wa-calling": {"data"},
}


@pytest.mark.parametrize("kind", list(EXPECTED_RESULT_KEYS))
def test_each_kind_reaches_submitted(kind, producer, sandbox, worker):
    # Given a worker and the sandbox; When one job of `kind` is enqueued
    job_id = _submit(producer, kind)
    record = producer.wait([job_id], until="submitted", timeout_s=WAIT_S)[job_id]
    # Then it is submitted on the first attempt, with the provider's ids and a redacted request
    # (kinds with no callbacks to wait for, ota-init and wa-calling, are completed at once)
    assert record.reached(JobState.SUBMITTED), record.error
    assert record.attempts == 1
    assert EXPECTED_RESULT_KEYS[kind] <= set(record.result), record.result
    assert all(record.result[k] for k in EXPECTED_RESULT_KEYS[kind])
    assert record.request and record.error is None
    assert "8613800138000" not in record.model_dump_json()


def test_call_uses_the_job_id_as_orderid(producer, sandbox, worker):
    job_id = producer.call(phone="8613800138000")
    record = producer.wait([job_id], timeout_s=WAIT_S)[job_id]
    assert record.result["orderid"] == job_id
    # (a reset sandbox forgot our cached token, so a 1201 + refresh may precede the accepted call)
    assert sandbox.stats()["accepted"].get("makecall") == 1
    assert sandbox.stats()["duplicates"]["makecall_orderid"] == 0


def test_throttled_request_is_retried_to_success_with_the_same_batch_and_fresh_signature(
    producer, sandbox, worker
):
    # Given the provider answers "too frequent" twice
    sandbox.script("/api/number/check", 2206, times=2)
    # When a number check is enqueued
    job_id = producer.number_check(phones=["8613800138000"], batch=False)
    record = producer.wait([job_id], timeout_s=WAIT_S)[job_id]
    # Then it succeeds on the third attempt, every attempt re-signed with a new ts but the same
    # batchNo
    assert record.state == JobState.SUBMITTED
    assert record.attempts == 3
    sent = [
        r for r in sandbox.requests(path="/api/number/check") if r["body"].get("batchNo") == job_id
    ]
    assert len(sent) == 3
    assert len({r["headers"]["ts"] for r in sent}) == 3
    assert len({r["headers"]["sign"] for r in sent}) == 3


def test_permanent_error_fails_fast_with_the_providers_code(producer, sandbox, worker):
    # Given the provider says the balance is insufficient (211, permanent)
    sandbox.script("/api/number/check", 211, times=1, message="Insufficient customer balance")
    # When a number check is enqueued
    job_id = producer.number_check(phones=["8613800138000"], batch=False)
    record = producer.wait([job_id], timeout_s=WAIT_S)[job_id]
    # Then it fails after one attempt with the provider's code and message, not retried
    assert record.state == JobState.FAILED
    assert record.attempts == 1
    assert record.error.code == "211"
    assert "balance" in record.error.message.lower()
    assert record.error.retryable is False


def test_transient_error_exhausts_bounded_retries(producer, sandbox, worker):
    # Given the check service keeps failing (206: retry, bounded to 3 attempts)
    sandbox.script("/api/number/check", 206, times=10)
    job_id = producer.number_check(phones=["8613800138000"], batch=False)
    record = producer.wait([job_id], timeout_s=WAIT_S)[job_id]
    assert record.state == JobState.FAILED
    assert record.attempts == 3
    assert record.error.code == "206"


def test_http_5xx_is_retried(producer, sandbox, worker):
    sandbox.script("/api/ota/init", 0, times=2, http_status=503)
    job_id = producer.ota_init(phone="8615800001795", user_ip="203.0.113.7")
    record = producer.wait([job_id], timeout_s=WAIT_S)[job_id]
    assert record.state == JobState.COMPLETED  # nothing to wait for after the submit
    assert record.attempts == 3


def test_expired_token_is_refreshed_transparently(producer, sandbox, worker):
    # Given a call has cached a token, and then every issued token expires
    first = producer.call(phone="8613800138000")
    assert producer.wait([first], timeout_s=WAIT_S)[first].state == JobState.SUBMITTED
    sandbox.expire_tokens()
    tokens_before = len(sandbox.requests(path="/v1/call/token", limit=1000))
    # When another call is made
    second = producer.call(phone="8613800138001")
    record = producer.wait([second], timeout_s=WAIT_S)[second]
    # Then it succeeds in the same attempt after one token refresh
    assert record.state == JobState.SUBMITTED
    assert record.attempts == 1
    assert len(sandbox.requests(path="/v1/call/token", limit=1000)) == tokens_before + 1
    codes = sandbox.stats()["responses"]["/v1/call/makecall"]
    assert codes.get("1201", 0) >= 1


def test_makecall_with_a_lost_answer_is_not_resent(producer, sandbox, worker, redis_server):
    # Given a warm token, then a provider that applies the call but answers after our read timeout
    warm = producer.call(phone="8613800138000")
    assert producer.wait([warm], timeout_s=WAIT_S)[warm].state == JobState.SUBMITTED
    sandbox.configure(slow_rate=1.0, slow_seconds=3.0)
    # When a call is enqueued
    job_id = producer.call(phone="8613800138002")
    record = producer.wait([job_id], timeout_s=WAIT_S)[job_id]
    sandbox.configure(slow_rate=0.0)
    # Then it is parked for reconciliation, not retried: the provider saw exactly one makecall
    assert record.state == JobState.FAILED
    assert record.error.code == "ambiguous"
    assert "reconcile" in record.error.message
    sent = [
        r for r in sandbox.requests(path="/v1/call/makecall") if r["body"].get("orderid") == job_id
    ]
    assert len(sent) == 1
    assert producer.redis.zscore(keys.RECONCILE, job_id) is not None


def test_large_call_list_is_added_in_chunks_of_500_then_started(producer, sandbox, worker):
    contacts = [{"user_phone": str(8613900000000 + i)} for i in range(1200)]
    job_id = producer.callbot_list(scene_id="scene-1", task_name="big", contacts=contacts)
    record = producer.wait([job_id], timeout_s=WAIT_S)[job_id]
    assert record.state == JobState.SUBMITTED, record.error
    assert record.result["accepted"] == 1200
    adds = [
        r
        for r in sandbox.requests(path="/callcentre/api/v3/addBatchCall", limit=50)
        if r["body"].get("userTaskID") == job_id
    ]
    assert [len(r["body"]["callInfoList"]["callList"]) for r in adds] == [500, 500, 200]
    starts = [
        r
        for r in sandbox.requests(path="/callcentre/api/v3/mgrTaskStatus")
        if r["body"].get("userTaskID") == job_id
    ]
    assert len(starts) == 1 and starts[0]["body"]["taskOperate"] == 1


def test_call_list_resumes_after_a_busy_answer_without_duplicates(producer, sandbox, worker):
    # Given the provider is busy (retCode 7) for the first addBatchCall, after the task was created
    contacts = [{"user_phone": str(8613700000000 + i)} for i in range(700)]
    sandbox.script("/callcentre/api/v3/addBatchCall", 7, times=1)
    # When a 700-contact list is enqueued
    job_id = producer.callbot_list(scene_id="scene-1", task_name="resume", contacts=contacts)
    record = producer.wait([job_id], timeout_s=WAIT_S)[job_id]
    # Then the job retries from where it stopped: one task, every order added once
    assert record.state == JobState.SUBMITTED, record.error
    assert record.attempts == 2
    assert record.result["accepted"] == 700
    assert sum(sandbox.stats()["duplicates"].values()) == 0
    tasks = [
        r
        for r in sandbox.requests(path="/callcentre/api/v3/createTask")
        if r["body"].get("userTaskID") == job_id
    ]
    assert len(tasks) == 1


def test_bad_input_is_rejected_with_nothing_enqueued(producer, redis_server):
    from nxjobs.jobs import InvalidJob

    job_keys_before = set(producer.redis.scan_iter(match="nxjobs:job:*", count=1000))
    queued_before = {q: producer.redis.llen(q) for q in ("agent", "callbot", "api2")}
    bad = [
        ("call", {"phone": "not-a-phone"}),
        ("number-check", {"phones": ["8613800138000"], "check_level": 9}),
        ("callbot-list", {"scene_id": "s", "task_name": "t", "contacts": [{"user_phone": "1"}]}),
        ("no-such-kind", {}),
        ("call", {"phone": "8613800138000", "order_id": "x" * 40}),
    ]
    for kind, payload in bad:
        with pytest.raises(InvalidJob):
            producer.enqueue(kind, payload)
    assert set(producer.redis.scan_iter(match="nxjobs:job:*", count=1000)) == job_keys_before
    assert {q: producer.redis.llen(q) for q in ("agent", "callbot", "api2")} == queued_before


def test_no_secret_in_any_record_or_log_line(producer, sandbox, worker, worker_env):
    # Given one job of every kind has run (tokens issued, requests signed)
    ids = [_submit(producer, kind) for kind in EXPECTED_RESULT_KEYS]
    producer.wait(ids, timeout_s=WAIT_S)
    secrets = {
        worker_env[k]
        for k in (
            "NXJOBS_API2__ACCESS_SECRET",
            "NXJOBS_CALLBOT__SECRET_KEY",
            "NXJOBS_AGENT__SECRETKEY",
        )
    }
    for req in sandbox.requests(limit=2000):
        headers = {k.lower(): v for k, v in req["headers"].items()}
        if headers.get("sign"):
            secrets.add(headers["sign"])
        if req["body"].get("token"):
            secrets.add(req["body"]["token"])
    assert len(secrets) > 3
    # When every job record in Redis and the worker's log are read
    texts = [worker.log_text()]
    for key in producer.redis.scan_iter(match="nxjobs:job:*", count=1000):
        if producer.redis.type(key) == "hash":
            texts.append(str(producer.redis.hgetall(key)))
        else:
            texts.append(str(producer.redis.lrange(key, 0, -1)))
    blob = "\n".join(texts)
    # Then no secret key, access secret, token or sign appears anywhere, nor a full phone number
    leaked = [s for s in secrets if s in blob]
    assert leaked == []
    assert not re.search(r"\b8613800138000\b", blob)
