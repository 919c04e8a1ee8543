"""Pure callback logic: signature and token checks, payload -> event, URLs, correlation rules."""

from __future__ import annotations

import pytest

from nxjobs import callback_urls, correlate, keys
from nxjobs.callbacks import events
from nxjobs.callbacks.verify import Rejected, check_callbot, check_token
from nxjobs.client.signing import callbot_headers
from nxjobs.jobs import validate_payload

SECRET = "u7Mf3zUNOkg4lMV9a0E6cHSgIkK22GSr"
UUID = "Vh71ym3yQwWSYZFpqkFwTskGXUbSxDtR"
NOW = 1_700_000_000
BODY = '{"userTaskID":"job1","taskID":"9","taskStatus":3}'


def signed(
    body: str = BODY, *, ts: int = NOW, secret: str = SECRET, algorithm: str = "md5"
) -> dict[str, str]:
    h = callbot_headers(
        secret_key=secret,
        uuid=UUID,
        request_id="0123456789abcdef0123456789abcdef",
        create_ts_s=ts,
        body_text=body,
        algorithm=algorithm,
    )  # type: ignore[arg-type]
    return {k.lower(): v for k, v in h.items()}


def check(raw: bytes, headers: dict[str, str], now: float = NOW, account: str = "md5") -> str:
    return check_callbot(
        raw, headers, uuid=UUID, secret_key=SECRET, algorithm=account, now_s=now, tolerance_s=300
    )


def test_reference_vector_c1_verifies():
    # Given vector C1 (docs/provider.md §3.3): body, createTs, requestID and its MD5 sign
    body = '{"customerId": "1234", "appKey": "xxxxxx", "status": 1}'
    headers = {
        "uuid": UUID,
        "createts": "1700000000",
        "requestid": "0123456789abcdef0123456789abcdef",
        "sign": "5D9DF0A715F076BD80045812AB251F08",
    }
    # Then the receiver's check accepts it, and returns the exact text
    assert check(body.encode(), headers) == body


@pytest.mark.parametrize("algorithm", ["md5", "sha256"])
def test_valid_signature_passes_within_tolerance(algorithm):
    assert (
        check(BODY.encode(), signed(algorithm=algorithm), now=NOW + 299, account=algorithm) == BODY
    )
    assert (
        check(BODY.encode(), signed(algorithm=algorithm), now=NOW - 299, account=algorithm) == BODY
    )


@pytest.mark.parametrize("spelling", ["SHA256", "sha-256", "sha256"])
def test_the_account_algorithm_is_accepted_in_any_spelling(spelling):
    headers = {**signed(algorithm="sha256"), "algorithm": spelling}
    assert check(BODY.encode(), headers, account="sha256") == BODY


def test_a_sender_cannot_downgrade_a_sha256_account_to_md5():
    # Given an account set to SHA-256, and a callback correctly signed with MD5 that says so
    headers = {**signed(algorithm="md5"), "algorithm": "MD5"}
    # Then it is refused, as is the same MD5 sign with no algorithm header (the account's applies)
    with pytest.raises(Rejected) as caught:
        check(BODY.encode(), headers, account="sha256")
    assert caught.value.status == 401
    with pytest.raises(Rejected):
        check(BODY.encode(), signed(algorithm="md5"), account="sha256")


@pytest.mark.parametrize(
    "case, raw, headers, now, status",
    [
        ("tampered body", BODY.replace("3", "4").encode(), signed(), NOW, 401),
        ("other secret", BODY.encode(), signed(secret="x" * 32), NOW, 401),
        ("stale", BODY.encode(), signed(), NOW + 301, 401),
        ("future", BODY.encode(), signed(), NOW - 301, 401),
        ("re-stamped", BODY.encode(), {**signed(), "createts": str(NOW + 1000)}, NOW + 1000, 401),
        ("no sign", BODY.encode(), {k: v for k, v in signed().items() if k != "sign"}, NOW, 401),
        ("other uuid", BODY.encode(), {**signed(), "uuid": "someone-else"}, NOW, 401),
        ("bad algorithm", BODY.encode(), {**signed(), "algorithm": "crc32"}, NOW, 401),
        ("not utf-8", b"\xff\xfe", signed(), NOW, 400),
    ],
)
def test_bad_callbot_callbacks_are_rejected(case, raw, headers, now, status):
    with pytest.raises(Rejected) as caught:
        check(raw, headers, now)
    assert caught.value.status == status


def test_token_is_compared_exactly():
    check_token("a" * 32, "a" * 32)
    for given in ("a" * 31, "a" * 33, "b" * 32, ""):
        with pytest.raises(Rejected):
            check_token(given, "a" * 32)
    with pytest.raises(Rejected):
        check_token("", "")  # no token configured: nothing is accepted


def test_unsigned_urls_carry_the_token_and_records_never_do():
    url = callback_urls.build("https://cb.example.com/", callback_urls.NUMBER_CHECK, "tok" * 8)
    assert url == "https://cb.example.com/callbacks/number-check/" + "tok" * 8
    assert (
        callback_urls.redact_url(url) == "https://cb.example.com/callbacks/number-check/[redacted]"
    )
    assert (
        callback_urls.build("https://cb.example.com", callback_urls.CALLBOT_TASK)
        == "https://cb.example.com/callbacks/callbot/task"
    )
    assert callback_urls.build(None, callback_urls.NUMBER_CHECK, "t") is None
    with pytest.raises(ValueError):
        callback_urls.build("https://cb.example.com", callback_urls.AGENT_CDR, None)


def test_number_check_dr_event_correlates_by_member_then_request_id_then_batch_no():
    # Given a current-shape DR and a legacy-shape one
    current = events.parse(
        events.NUMBER_CHECK,
        b'{"requestId":"abc-000002","batchNo":"B1","code":0,'
        b'"phone":"8613800138000","data":{"country":"CN"}}',
    )
    legacy = events.parse(
        events.NUMBER_CHECK, b'{"messageId":"abc","batchNo":"B1","code":0,"msg":"ok"}'
    )
    # Then both find the job by (batchNo, phone) of a coalesced one, then the submit's requestId,
    # then batchNo, and count one unit each
    # (and last, the key of its own a member of a batch built by an earlier version has)
    assert current.index_keys == (
        keys.member_index("B1"),
        keys.callback_index("nc-req", "abc"),
        keys.callback_index("nc-batch", "B1"),
        keys.member_index_before_shards("B1", "8613800138000"),
    )
    assert (current.member, legacy.member) == ("8613800138000", "")
    assert (current.dedupe, current.unit, current.job_kind) == (
        "nc:abc-000002",
        "nc:abc-000002",
        "number-check",
    )
    assert legacy.index_keys[0] == keys.callback_index("nc-req", "abc")
    # and the stored data is masked
    assert current.data["phone"] == "861******8000"


def test_callbot_events_dedupe_keys_and_completion_unit():
    call = events.parse(
        events.CALLBOT_CALL, b'{"userTaskID":"J","orderID":"J-0","callInfoDetail":{"callID":"C1"}}'
    )
    order = events.parse(
        events.CALLBOT_ORDER, b'{"userTaskID":"J","orderID":"J-0","finish":"true"}'
    )
    running = events.parse(
        events.CALLBOT_TASK, b'{"userTaskID":"J","taskStatus":2,"taskStat":{"totalCall":1}}'
    )
    done = events.parse(
        events.CALLBOT_TASK, b'{"userTaskID":"J","taskStatus":"3","taskStat":{"totalCall":2}}'
    )
    assert (call.direct_id, call.dedupe, call.unit) == ("J", "call:C1", "")
    assert order.dedupe == "order:J-0:1"
    assert (running.unit, done.unit) == ("", "task-finished")
    assert done.dedupe == "task:3:2"


def test_cdr_event_from_callback_and_from_query_row():
    cb = events.parse(events.CDR, b'{"orderid":"O1","sessionid":"S1","phone":"8613800138000"}')
    row = events.from_dict(
        events.CDR, {"orderid": "O1", "id": "R9", "effective_called_number": "8613800138000"}
    )
    assert cb.index_keys == (keys.callback_index("call", "O1"),) and cb.unit == row.unit == "cdr"
    assert (cb.dedupe, row.dedupe) == ("cdr:S1", "cdr:row-R9")
    assert row.data["effective_called_number"] == "861******8000"
    assert cb.resolves == {
        "orderid": "O1",
        "sessionid": "S1",
        "info": "makecall answer was lost; the call was found by its CDR",
    }


@pytest.mark.parametrize(
    "kind, raw",
    [
        (events.NUMBER_CHECK, b"{not json"),
        (events.NUMBER_CHECK, b'{"batchNo":"B1"}'),
        (events.NUMBER_CHECK, b"[1,2]"),
        (events.CALLBOT_CALL, b'{"userTaskID":"J","orderID":"O"}'),
        (events.CALLBOT_TASK, b'{"userTaskID":"J","taskStatus":"three"}'),
        (events.CDR, b'{"orderid":"O1"}'),
        (events.CDR, b'{"orderid":"","sessionid":"S"}'),
    ],
)
def test_malformed_bodies_raise_malformed(kind, raw):
    with pytest.raises(events.Malformed):
        events.parse(kind, raw)


def test_correlation_rules_per_kind():
    # The ids we choose are registered before the job runs...
    call = validate_payload("call", {"phone": "8613800138000", "order_id": "ORDER1"})
    nc = validate_payload("number-check", {"phones": ["8613800138000", "6591234567"]})
    assert correlate.on_enqueue("call", "J", call) == correlate.Expectation(
        1, (keys.callback_index("call", "ORDER1"),), callbacks_max=correlate.CALL_CALLBACKS_MAX
    )
    # (a call's default orderid is its job id, which the receiver looks up directly: no index)
    default = validate_payload("call", {"phone": "8613800138000"})
    assert correlate.on_enqueue("call", "J", default).index_keys == ()
    assert correlate.on_submit("call", {"orderid": "J", "sessionid": "S"}, "J").index_keys == ()
    assert correlate.on_submit("call", {"orderid": "O1"}, "J").index_keys == (
        keys.callback_index("call", "O1"),
    )
    # ...with what a callback must prove: the batchNo, and each number (masked, as the provider may
    # send it)
    assert correlate.on_enqueue("number-check", "J", nc) == correlate.Expectation(
        2,
        (keys.callback_index("nc-batch", "J"),),
        {
            keys.PROOF_BATCH: "J",
            keys.proof_phone("861******8000"): "1",
            keys.proof_phone("659***4567"): "1",
        },
        callbacks_max=2,
    )
    assert correlate.on_enqueue("ota-init", "J", None).needed == 0
    # ...and the submit answer adds the provider's id and drops numbers rejected up front
    after = correlate.on_submit(
        "number-check",
        {"requestId": "R", "batchNo": "J", "numbers": 3, "failNumber": [{"number": "999***567"}]},
    )
    assert after.needed == 2 and keys.callback_index("nc-req", "R") in after.index_keys
    assert after.proof == {keys.PROOF_ID: "R"}
    assert correlate.on_submit("call", {"orderid": "O", "sessionid": "S"}).proof == {
        keys.PROOF_ID: "S"
    }
    assert correlate.on_submit("wa-calling", {}).needed == 0


@pytest.mark.parametrize(
    "given, job, same",
    [
        ("8613800138000", "8613800138000", True),
        ("+86 138 0013 8000", "8613800138000", True),
        # The provider may mask a number: head, tail and length must still agree
        ("861******8000", "8613800138000", True),
        ("861*****8000", "8613800138000", False),
        ("862******8000", "8613800138000", False),
        ("861******8001", "8613800138000", False),
    ],
)
def test_a_callback_number_is_compared_masked(given, job, same):
    assert (correlate.phone_key(given) == correlate.phone_key(job)) is same


def test_different_numbers_have_different_keys():
    assert correlate.phone_key("8613800138000") != correlate.phone_key("8613800139999")
    assert correlate.phone_key("8613800138000") != correlate.phone_key("861380013800")


def test_public_url_needs_a_long_enough_token(monkeypatch):
    from pydantic import ValidationError

    from config.settings import Settings

    monkeypatch.setenv("NXJOBS_CALLBACKS__PUBLIC_URL", "https://cb.example.com")
    with pytest.raises(ValidationError, match="TOKEN is required"):
        Settings(_env_file=None)
    monkeypatch.setenv("NXJOBS_CALLBACKS__TOKEN", "short")
    with pytest.raises(ValidationError, match="at least 16"):
        Settings(_env_file=None)
    monkeypatch.setenv("NXJOBS_CALLBACKS__TOKEN", "x" * 24)
    settings = Settings(_env_file=None)
    assert "x" * 24 not in repr(settings)


# ---- where a job's callbacks are kept, and how they are summarised ------------------------------


def test_only_jobs_that_can_have_many_callbacks_page_them():
    def paged(kind: str, payload: dict) -> bool:
        return correlate.on_enqueue(kind, "J", validate_payload(kind, payload)).paged

    phones = [str(6591000000 + i) for i in range(correlate.INLINE_CALLBACKS + 1)]
    assert not paged("number-check", {"phones": phones[:-1]})
    assert paged("number-check", {"phones": phones})
    assert paged(
        "callbot-list",
        {"scene_id": "s", "task_name": "t", "contacts": [{"user_phone": "8613900139000"}]},
    )
    assert not paged("call", {"phone": "8613800138000"})
    assert not paged(
        "callbot-contact", {"user_task_id": "T", "contact": {"user_phone": "8613900139000"}}
    )


@pytest.mark.parametrize(
    "kind, body, outcome",
    [
        (events.NUMBER_CHECK, {"requestId": "R-000001", "code": 0}, "number-check:0"),
        (events.NUMBER_CHECK, {"requestId": "R-000001", "code": 1001}, "number-check:1001"),
        (events.NUMBER_CHECK, {"requestId": "R-000001"}, "number-check:?"),
        (
            events.CALLBOT_CALL,
            {"userTaskID": "T", "orderID": "O", "callInfoDetail": {"callID": "c", "callStatus": 2}},
            "callbot-call:2",
        ),
        (events.CALLBOT_ORDER, {"userTaskID": "T", "orderID": "O", "finish": "true"}, None),
        (events.CALLBOT_ORDER, {"userTaskID": "T", "orderID": "O", "finish": 0}, None),
        (events.CALLBOT_TASK, {"userTaskID": "T", "taskStatus": 3}, "callbot-task:3"),
        (events.CDR, {"orderid": "O", "sessionid": "s", "hangup_cause": "NO_ANSWER"}, None),
    ],
)
def test_a_callback_is_summarised_by_the_field_its_type_reports_its_outcome_in(kind, body, outcome):
    event = events.from_dict(kind, body)
    expected = (
        outcome
        or {
            events.CALLBOT_ORDER: "callbot-order:" + ("finished" if body.get("finish") else "open"),
            events.CDR: "cdr:NO_ANSWER",
        }[kind]
    )
    assert correlate.callback_outcome(event.type, event.data) == expected


def test_a_summary_keeps_its_outcomes_few_and_short():
    entries = [{"type": "number-check", "data": {"code": f"{n:03d}" * 20}} for n in range(40)]
    summary = correlate.summarize(entries + entries[:1])
    assert len(summary) == correlate.SUMMARY_OUTCOMES_MAX + 1 and summary["other"] == 8
    assert sum(summary.values()) == 41 and max(len(k) for k in summary) <= 13 + 32
