from nxjobs.redact import REDACTED, mask_phone, redact, summarize_list


def test_mask_phone_keeps_prefix_and_last_four():
    assert mask_phone("8613800138000") == "861******8000"
    assert "38001" not in mask_phone("8613800138000")


def test_short_numbers_are_fully_masked_or_mostly():
    assert mask_phone("123456") == "******"
    assert mask_phone("12345678") == "123***78"


def test_redact_drops_secrets_and_masks_phones_at_any_depth():
    body = {"token": "ABC", "username": "agent1", "phone": "8613800138000",
            "callInfoList": {"callList": [{"userPhone": "8613900139000", "orderID": "o1"}]},
            "accessSecret": "s", "Sign": "x", "secretkey": "k"}
    out = redact(body)
    assert out["token"] == out["accessSecret"] == out["Sign"] == out["secretkey"] == REDACTED
    assert out["phone"] == "861******8000"
    assert out["callInfoList"]["callList"][0] == {"userPhone": "861******9000", "orderID": "o1"}
    assert out["username"] == "agent1"
    assert body["token"] == "ABC"  # the input is not modified


def test_comma_separated_numbers_are_masked_one_by_one():
    assert redact({"phone": "8613800138000,6591234567"})["phone"] == "861******8000,659***4567"


def test_summarize_list():
    assert summarize_list([1, 2], keep=5) == [1, 2]
    assert summarize_list(list(range(10)), keep=3) == {"count": 10, "first": [0, 1, 2]}
