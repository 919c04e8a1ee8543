"""The classification table against every code documented in docs/provider.md §9."""

import pytest

from nxjobs.client.errors import Action, ProviderError, classify, classify_http_status

S, R, F, P = Action.SUCCESS, Action.RETRY, Action.REFRESH, Action.PERMANENT

# (family, code, action, bounded) straight from docs/provider.md's tables.
DOCUMENTED = [
    # §9.1
    ("api2", 1001, P, False),
    ("api2", 1002, P, False),
    ("api2", 1003, P, False),
    ("api2", 1004, R, True),
    ("api2", 1005, P, False),
    # §9.2
    ("api2", 0, S, False),
    ("api2", 201, P, False),
    ("api2", 202, P, False),
    ("api2", 203, P, False),
    ("api2", 204, R, True),
    ("api2", 205, P, False),
    ("api2", 206, R, True),
    ("api2", 207, P, False),
    ("api2", 210, P, False),
    ("api2", 211, P, False),
    ("api2", 212, P, False),
    ("api2", 288, R, True),
    ("api2", 88, R, True),
    ("api2", 299, R, False),
    ("api2", 2206, R, False),
    ("api2", 103, R, True),
    ("api2", 112, R, True),
    ("api2", 121, R, True),
    ("api2", 108, P, False),
    ("api2", 114, P, False),
    ("api2", 120, P, False),
    ("api2", 122, S, False),
    ("api2", 266, P, False),
    # §9.5
    ("api2", 99, R, False),
    ("api2", 9001, R, True),
    ("api2", -1, R, True),
    ("api2", 9901, P, False),
    ("api2", 9000, P, False),
    ("api2", 9906, P, False),
    ("api2", 9003, P, False),
    ("api2", 9907, P, False),
    ("api2", 9908, P, False),
    ("api2", 1102, P, False),
    ("api2", 1100, P, False),
    ("api2", 2205, P, False),
    # §9.3
    ("callbot", 0, S, False),
    ("callbot", 1, R, True),
    ("callbot", 2, P, False),
    ("callbot", 3, P, False),
    ("callbot", 4, P, False),
    ("callbot", 4001, P, False),
    ("callbot", 5, R, False),
    ("callbot", 5001, R, True),
    ("callbot", 6, P, False),
    ("callbot", 6001, P, False),
    ("callbot", 6002, P, False),
    ("callbot", 6003, P, False),
    ("callbot", 7, R, False),
    ("callbot", 1001, R, False),
    # §9.4
    ("agent", 0, S, False),
    ("agent", 1000, F, False),
    ("agent", 1101, P, False),
    ("agent", 1201, F, False),
    ("agent", 1001, P, False),
    ("agent", 1006, P, False),
    ("agent", 1002, P, False),
    ("agent", 1003, R, True),
    ("agent", 1004, R, True),
    ("agent", 1005, R, True),
    ("agent", 1007, P, False),
    ("agent", 1008, P, False),
    ("agent", 1100, R, True),
    ("agent", 1200, P, False),
    ("agent", 10000, R, True),
]


@pytest.mark.parametrize("family, code, action, bounded", DOCUMENTED, ids=lambda v: str(v))
def test_documented_code(family, code, action, bounded):
    cls = classify(family, code)
    assert (cls.action, cls.bounded) == (action, bounded)


@pytest.mark.parametrize("family, code", [("api2", 2206), ("callbot", 7)])
def test_too_frequent_is_flagged_throttled(family, code):
    assert classify(family, code).throttled


def test_callbot_maintenance_backs_off_long():
    assert classify("callbot", 5).min_backoff_s >= 30


@pytest.mark.parametrize("family", ["api2", "callbot", "agent", "cdr"])
def test_unknown_code_is_permanent(family):
    assert classify(family, 987654).action is P


def test_codes_given_as_strings_classify_like_ints():
    assert classify("api2", "2206") == classify("api2", 2206)


def test_cdr_rate_limit_text_is_throttled_but_other_failures_permanent():
    assert classify("cdr", "1", "appkey access rate limit").throttled
    assert classify("cdr", "1", "params invalid").action is P


@pytest.mark.parametrize(
    "status, action", [(500, R), (502, R), (503, R), (504, R), (429, R), (400, P), (404, P)]
)
def test_http_status(status, action):
    assert classify_http_status(status).action is action


def test_provider_error_carries_code_message_and_retryable():
    err = ProviderError("api2", 211, "Insufficient customer balance", endpoint="/api/number/check")
    assert (err.code, err.message, err.retryable) == ("211", "Insufficient customer balance", False)
    assert "211" in str(err) and "/api/number/check" in str(err)
