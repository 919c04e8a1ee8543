"""Pure callback logic: signature and token checks, payload -> event, URLs, correlation rules."""

from __future__ import annotations

import pytest

from nxjobs import callback_urls, keys
from nxjobs.callbacks import correlate, events
from nxjobs.callbacks.verify import Rejected, check_callbot, check_token
from nxjobs.client.signing import callbot_headers
from nxjobs.jobs import validate_payload

SECRET = "u7Mf3zUNOkg4lMV9a0E6cHSgIkK22GSr"
UUID = "Vh71ym3yQwWSYZFpqkFwTskGXUbSxDtR"
NOW = 1_700_000_000
BODY = '{"userTaskID":"job1","taskID":"9","taskStatus":3}'


def signed(body: str = BODY, *, ts: int = NOW, secret: str = SECRET, algorithm: str = "md5") -> dict[str, str]:
    h = callbot_headers(secret_key=secret, uuid=UUID, request_id="0123456789abcdef0123456789abcdef",
                        create_ts_s=ts, body_text=body, algorithm=algorithm)  # type: ignore[arg-type]
    return {k.lower(): v for k, v in h.items()}


def check(raw: bytes, headers: dict[str, str], now: float = NOW) -> str:
    return check_callbot(raw, headers, uuid=UUID, secret_key=SECRET, default_algorithm="md5", now_s=now,
                         tolerance_s=300)


def test_reference_vector_c1_verifies():
    # Given the reference's vector C1 (§3.3): body, createTs, requestID and its MD5 sign
    body = '{"customerId": "1234", "appKey": "xxxxxx", "status": 1}'
    headers = {"uuid": UUID, "createts": "1700000000", "requestid": "0123456789abcdef0123456789abcdef",
               "sign": "5D9DF0A715F076BD80045812AB251F08"}
    # Then the receiver's check accepts it, and returns the exact text
    assert check(body.encode(), headers) == body


@pytest.mark.parametrize("algorithm", ["md5", "sha256"])
def test_valid_signature_passes_within_tolerance(algorithm):
    assert check(BODY.encode(), signed(algorithm=algorithm), now=NOW + 299) == BODY
    assert check(BODY.encode(), signed(algorithm=algorithm), now=NOW - 299) == BODY


@pytest.mark.parametrize("case, raw, headers, now, status", [
    ("tampered body", BODY.replace("3", "4").encode(), signed(), NOW, 401),
    ("other secret", BODY.encode(), signed(secret="x" * 32), NOW, 401),
    ("stale", BODY.encode(), signed(), NOW + 301, 401),
    ("future", BODY.encode(), signed(), NOW - 301, 401),
    ("re-stamped", BODY.encode(), {**signed(), "createts": str(NOW + 1000)}, NOW + 1000, 401),
    ("no sign", BODY.encode(), {k: v for k, v in signed().items() if k != "sign"}, NOW, 401),
    ("other uuid", BODY.encode(), {**signed(), "uuid": "someone-else"}, NOW, 401),
    ("bad algorithm", BODY.encode(), {**signed(), "algorithm": "crc32"}, NOW, 401),
    ("not utf-8", b"\xff\xfe", signed(), NOW, 400),
])
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
    assert callback_urls.redact_url(url) == "https://cb.example.com/callbacks/number-check/[redacted]"
    assert callback_urls.build("https://cb.example.com", callback_urls.CALLBOT_TASK) == \
        "https://cb.example.com/callbacks/callbot/task"
    assert callback_urls.build(None, callback_urls.NUMBER_CHECK, "t") is None
    with pytest.raises(ValueError):
        callback_urls.build("https://cb.example.com", callback_urls.AGENT_CDR, None)


def test_number_check_dr_event_correlates_by_member_then_request_id_then_batch_no():
    # Given a current-shape DR and a legacy-shape one
    current = events.parse(events.NUMBER_CHECK, b'{"requestId":"abc-000002","batchNo":"B1","code":0,'
                                                b'"phone":"8613800138000","data":{"country":"CN"}}')
    legacy = events.parse(events.NUMBER_CHECK, b'{"messageId":"abc","batchNo":"B1","code":0,"msg":"ok"}')
    # Then both find the job by (batchNo, phone) of a coalesced one, then the submit's requestId,
    # then batchNo, and count one unit each
    assert current.index_keys == (keys.callback_index("nc-num", "B1:8613800138000"),
                                  keys.callback_index("nc-req", "abc"), keys.callback_index("nc-batch", "B1"))
    assert (current.dedupe, current.unit, current.job_kind) == ("nc:abc-000002", "nc:abc-000002", "number-check")
    assert legacy.index_keys[0] == keys.callback_index("nc-req", "abc")
    # and the stored data is masked
    assert current.data["phone"] == "861******8000"


def test_callbot_events_dedupe_keys_and_completion_unit():
    call = events.parse(events.CALLBOT_CALL, b'{"userTaskID":"J","orderID":"J-0","callInfoDetail":{"callID":"C1"}}')
    order = events.parse(events.CALLBOT_ORDER, b'{"userTaskID":"J","orderID":"J-0","finish":"true"}')
    running = events.parse(events.CALLBOT_TASK, b'{"userTaskID":"J","taskStatus":2,"taskStat":{"totalCall":1}}')
    done = events.parse(events.CALLBOT_TASK, b'{"userTaskID":"J","taskStatus":"3","taskStat":{"totalCall":2}}')
    assert (call.direct_id, call.dedupe, call.unit) == ("J", "call:C1", "")
    assert order.dedupe == "order:J-0:1"
    assert (running.unit, done.unit) == ("", "task-finished")
    assert done.dedupe == "task:3:2"


def test_cdr_event_from_callback_and_from_query_row():
    cb = events.parse(events.CDR, b'{"orderid":"O1","sessionid":"S1","phone":"8613800138000"}')
    row = events.from_dict(events.CDR, {"orderid": "O1", "id": "R9", "effective_called_number": "8613800138000"})
    assert cb.index_keys == (keys.callback_index("call", "O1"),) and cb.unit == row.unit == "cdr"
    assert (cb.dedupe, row.dedupe) == ("cdr:S1", "cdr:row-R9")
    assert row.data["effective_called_number"] == "861******8000"
    assert cb.resolves == {"orderid": "O1", "sessionid": "S1",
                           "info": "makecall answer was lost; the call was found by its CDR"}


@pytest.mark.parametrize("kind, raw", [
    (events.NUMBER_CHECK, b"{not json"),
    (events.NUMBER_CHECK, b'{"batchNo":"B1"}'),
    (events.NUMBER_CHECK, b"[1,2]"),
    (events.CALLBOT_CALL, b'{"userTaskID":"J","orderID":"O"}'),
    (events.CALLBOT_TASK, b'{"userTaskID":"J","taskStatus":"three"}'),
    (events.CDR, b'{"orderid":"O1"}'),
    (events.CDR, b'{"orderid":"","sessionid":"S"}'),
])
def test_malformed_bodies_raise_malformed(kind, raw):
    with pytest.raises(events.Malformed):
        events.parse(kind, raw)


def test_correlation_rules_per_kind():
    # The ids we choose are registered before the job runs...
    call = validate_payload("call", {"phone": "8613800138000", "order_id": "ORDER1"})
    nc = validate_payload("number-check", {"phones": ["8613800138000", "6591234567"]})
    assert correlate.on_enqueue("call", "J", call) == correlate.Expectation(1, (keys.callback_index("call", "ORDER1"),))
    assert correlate.on_enqueue("number-check", "J", nc) == correlate.Expectation(
        2, (keys.callback_index("nc-batch", "J"),))
    assert correlate.on_enqueue("ota-init", "J", None).needed == 0
    # ...and the submit answer adds the provider's id and drops numbers rejected up front
    after = correlate.on_submit("number-check", {"requestId": "R", "batchNo": "J", "numbers": 3,
                                                 "failNumber": [{"number": "999***567"}]})
    assert after.needed == 2 and keys.callback_index("nc-req", "R") in after.index_keys
    assert correlate.on_submit("wa-calling", {}).needed == 0


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
