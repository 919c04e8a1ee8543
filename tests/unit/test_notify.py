"""nxjobs.notify: the webhook signature, checked with explicit timestamps (no clock), and the
event body; the notify settings fail closed."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from pydantic import ValidationError

from nxjobs import notify
from nxjobs.notify import SignatureError, sign, verify
from nxjobs.webhooks import Policy, safe_url

SECRET = "whsec-test-0123456789"
BODY = b'{"id":"evt_1-0","type":"job.completed","created":1700000000,"job":{"id":"j1"}}'
T = 1_700_000_000


def test_sign_is_hmac_sha256_of_timestamp_dot_body():
    # Given a body and a time, when it is signed
    header = sign(BODY, SECRET, T)
    # Then the header is t=<t>,v1=<hex HMAC-SHA256 of "<t>.<body>">
    expected = hmac.new(SECRET.encode(), f"{T}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert header == f"t={T},v1={expected}"


def test_verify_accepts_a_fresh_signature_and_returns_the_event():
    event = verify(BODY, sign(BODY, SECRET, T), SECRET, now=T + 299)
    assert event["id"] == "evt_1-0" and event["job"] == {"id": "j1"}
    # str bodies are the same bytes
    assert verify(BODY.decode(), sign(BODY, SECRET, T), SECRET, now=T)["type"] == "job.completed"


def test_verify_accepts_any_matching_v1_among_several():
    # A receiver rotating secrets may see two v1 values: one match is enough.
    good = sign(BODY, SECRET, T).split(",")[1]
    header = f"t={T},v1={'0' * 64},{good}"
    assert verify(BODY, header, SECRET, now=T)["id"] == "evt_1-0"


@pytest.mark.parametrize(
    "header, why",
    [
        (None, "missing"),
        ("", "missing"),
        ("garbage", "no timestamp"),
        (f"t=abc,v1={'0' * 64}", "bad timestamp"),
        (f"t={T}", "no v1"),
        (f"v1={'0' * 64}", "no timestamp"),
    ],
)
def test_verify_refuses_a_missing_or_garbled_header(header, why):
    with pytest.raises(SignatureError, match=why):
        verify(BODY, header, SECRET, now=T)


def test_verify_refuses_an_old_or_future_timestamp():
    header = sign(BODY, SECRET, T)
    with pytest.raises(SignatureError, match="tolerance"):
        verify(BODY, header, SECRET, now=T + 301)
    with pytest.raises(SignatureError, match="tolerance"):
        verify(BODY, header, SECRET, now=T - 301)
    # a tolerance of its own
    assert verify(BODY, header, SECRET, tolerance_s=1000, now=T + 900)


def test_verify_refuses_a_wrong_secret_or_a_changed_body():
    header = sign(BODY, SECRET, T)
    with pytest.raises(SignatureError, match="no signature matches"):
        verify(BODY, header, "another-secret", now=T)
    with pytest.raises(SignatureError, match="no signature matches"):
        verify(BODY.replace(b"j1", b"j2"), header, SECRET, now=T)
    # the timestamp is signed too: moving it breaks the signature
    moved = header.replace(f"t={T}", f"t={T + 1}")
    with pytest.raises(SignatureError, match="no signature matches"):
        verify(BODY, moved, SECRET, now=T)


def test_signature_error_is_one_type():
    assert issubclass(SignatureError, ValueError)


def test_event_body_has_a_stable_id_and_the_record_fields_only():
    job = {"id": "j1", "kind": "ota-init", "state": "completed", "result": {"a": 1}, "error": None}
    job_with_more = {**job, "input": {"phone": "86158****795"}, "attempts": 1}
    a = notify.event_body("1700000000123-0", "completed", 1700000000123, job_with_more)
    b = notify.event_body("1700000000123-0", "completed", 1700000000123, job)
    assert (
        a
        == b
        == {
            "id": "evt_1700000000123-0",
            "type": "job.completed",
            "created": 1700000000,
            "job": job,
        }
    )
    assert notify.event_body("1-0", "failed", 0, job)["type"] == "job.failed"
    assert notify.event_body("1-0", "cancelled", 0, job)["type"] == "job.cancelled"


def test_retry_backoff_doubles_up_to_its_cap():
    policy = Policy(base_s=10, cap_s=3600)
    assert [policy.delay_s(n) for n in (1, 2, 3, 4)] == [10, 20, 40, 80]
    assert policy.delay_s(20) == 3600


def test_logged_urls_lose_their_query_string():
    assert safe_url("https://app.example/hook?token=s3cret#x") == "https://app.example/hook?..."
    assert safe_url("https://app.example/hook") == "https://app.example/hook"


@pytest.mark.parametrize(
    "url, ok",
    [
        ("https://app.example/hook", True),
        ("http://127.0.0.1:8000/x?y=1", True),
        ("ftp://app.example/", False),
        ("app.example/hook", False),
        ("https://", False),
        ("", False),
    ],
)
def test_notify_urls_are_http_or_https(url, ok):
    assert notify.valid_url(url) is ok


def test_a_notify_url_without_a_secret_fails_at_startup(monkeypatch):
    from config.settings import Settings

    monkeypatch.setenv("NXJOBS_NOTIFY__URL", "https://app.example/hook")
    monkeypatch.delenv("NXJOBS_NOTIFY__SECRET", raising=False)
    with pytest.raises(ValidationError, match="NXJOBS_NOTIFY__SECRET"):
        Settings(_env_file=None)
    monkeypatch.setenv("NXJOBS_NOTIFY__SECRET", SECRET)
    settings = Settings(_env_file=None)
    assert settings.notify.url == "https://app.example/hook"
    # the secret never shows in the settings' repr
    assert SECRET not in repr(settings)


def test_the_notify_queue_requires_the_secret(monkeypatch):
    from config.settings import MissingSetting, Settings

    monkeypatch.delenv("NXJOBS_NOTIFY__URL", raising=False)
    monkeypatch.delenv("NXJOBS_NOTIFY__SECRET", raising=False)
    with pytest.raises(MissingSetting, match="NXJOBS_NOTIFY__SECRET"):
        Settings(_env_file=None).require("notify")
