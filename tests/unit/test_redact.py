from nxjobs.redact import REDACTED, mask_phone, redact, summarize_list


def test_mask_phone_keeps_prefix_and_last_four():
    assert mask_phone("8613800138000") == "861******8000"
    assert "38001" not in mask_phone("8613800138000")


def test_short_numbers_are_fully_masked_or_mostly():
    assert mask_phone("123456") == "******"
    assert mask_phone("12345678") == "123***78"


def test_redact_drops_secrets_and_masks_phones_at_any_depth():
    body = {
        "token": "ABC",
        "username": "agent1",
        "phone": "8613800138000",
        "callInfoList": {"callList": [{"userPhone": "8613900139000", "orderID": "o1"}]},
        "accessSecret": "s",
        "Sign": "x",
        "secretkey": "k",
    }
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


def test_numbers_sent_as_json_numbers_are_masked():
    shown = redact({"phone": 8613800138000, "data": {"basic": {"nationalNumber": 13800138000}}})
    assert shown == {"phone": "861******8000", "data": {"basic": {"nationalNumber": "138****8000"}}}


def test_every_callback_shape_has_its_numbers_masked():
    # Number Check (current and legacy), Callbot call/order, Agent CDR and CDR query rows
    shapes = [
        {"requestId": "r-000001", "batchNo": "b", "phone": "8613800138000"},
        {
            "messageId": "m",
            "phone": "8613800138000",
            "data": {"basic": {"nationalNumber": "13800138000", "standNumber": "+8613800138000"}},
        },
        {
            "userTaskID": "t",
            "orderID": "o",
            "userPhone": "8613800138000",
            "callInfoDetail": {"callID": "c", "callingNumber": "8613800138000"},
        },
        {"sessionid": "s", "orderid": "o", "phone": "8613800138000", "show_phone": "8613800138000"},
        {
            "id": 1,
            "orderid": "o",
            "phone": "8613800138000",
            "effective_called_number": "8613800138000",
        },
        {"failNumber": [{"number": "8613800138000", "reason": "x"}]},
    ]
    for shape in shapes:
        assert "138001" not in repr(redact(shape)), shape


def test_a_flag_is_not_a_number():
    assert redact({"phone": True}) == {"phone": True}
