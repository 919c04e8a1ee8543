"""Every published and self-computed signing vector (docs/provider.md §2.3, §2.4, §3.3)."""

import pytest

from nxjobs.client.signing import (
    api2_headers,
    api2_sign,
    api2_string_to_sign,
    callbot_headers,
    callbot_sign,
    serialize_body,
)

VENDOR = dict(
    access_key="fme2na3kdi3ki",
    access_secret="abciiiko2k3",
    action="send",
    biz_type=1,
    ts_ms=1655710885431,
)


@pytest.mark.parametrize(
    "body_text, expected",
    [
        ('{"name":"牛小信","id":10001}', "87c3560d3331ae23f1021e2025722354"),
        ('{"id":10001,"name":"牛小信"}', "7750759da06333f20d0640be09355e34"),
        ('{"id": 10001, "name": "牛小信"}', "d0c24a9886c629330d7f3f2056c65bc2"),
    ],
)
def test_api2_vendor_vectors(body_text, expected):
    assert api2_sign(**VENDOR, body_text=body_text) == expected


def test_api2_string_hashed_for_vendor_row_1():
    text = api2_string_to_sign(
        access_key="fme2na3kdi3ki",
        action="send",
        biz_type=1,
        ts_ms=1655710885431,
        body_text='{"name":"牛小信","id":10001}',
    )
    assert text == (
        "accessKey=fme2na3kdi3ki&action=send&bizType=1&ts=1655710885431"
        '&body={"name":"牛小信","id":10001}'
    )


OURS = dict(access_key="AK_TEST_0001", access_secret="SK_TEST_SECRET", ts_ms=1700000000000)
A1_BODY = (
    '{"phone":"8613800138000,8613900139000","batchNo":"B20240101","checkLevel":1,"appkey":"app123"}'
)


@pytest.mark.parametrize(
    "action, biz_type, body_text, algorithm, expected",
    [
        ("numbercheck", 1, A1_BODY, "md5", "2359539147bcf8909b36a45d2e3263f0"),
        (
            "numbercheck",
            1,
            A1_BODY,
            "sha256",
            "6fda9fc2751c68a2a9984db223859cf3a0fc2b38c330f53678802a540b46e016",
        ),
        (
            "numbercheck",
            1,
            '{"page":1,"pageSize":100,"date":"2023-11-14","batchNo":"B20240101"}',
            "md5",
            "08bf36d96477578754873aab3a9d8a2d",
        ),
        ("mt", 2, "", "md5", "fefff0c82c4f7b2cba93bce3f2cecc92"),
        ("mt", 2, None, "md5", "fefff0c82c4f7b2cba93bce3f2cecc92"),
    ],
    ids=["A1", "A2", "A3", "A4-empty", "A4-none"],
)
def test_api2_own_vectors(action, biz_type, body_text, algorithm, expected):
    assert (
        api2_sign(
            **OURS, action=action, biz_type=biz_type, body_text=body_text, algorithm=algorithm
        )
        == expected
    )


def test_api2_headers_carry_sign_and_only_non_default_algorithm():
    # Given the A1 inputs, When headers are built with md5 and with sha256
    md5 = api2_headers(**OURS, action="numbercheck", biz_type=1, body_text=A1_BODY)
    sha = api2_headers(
        **OURS, action="numbercheck", biz_type=1, body_text=A1_BODY, algorithm="sha256"
    )
    # Then the sign matches the vectors and `algorithm` is sent only when not md5
    assert md5 == {
        "accessKey": "AK_TEST_0001",
        "ts": "1700000000000",
        "bizType": "1",
        "action": "numbercheck",
        "sign": "2359539147bcf8909b36a45d2e3263f0",
    }
    assert sha["algorithm"] == "sha256"
    assert sha["sign"] == "6fda9fc2751c68a2a9984db223859cf3a0fc2b38c330f53678802a540b46e016"


CALLBOT = dict(
    secret_key="u7Mf3zUNOkg4lMV9a0E6cHSgIkK22GSr",
    uuid="Vh71ym3yQwWSYZFpqkFwTskGXUbSxDtR",
    request_id="0123456789abcdef0123456789abcdef",
    create_ts_s=1700000000,
)


@pytest.mark.parametrize(
    "body_text, md5, sha256",
    [
        (
            '{"customerId": "1234", "appKey": "xxxxxx", "status": 1}',
            "5D9DF0A715F076BD80045812AB251F08",
            "07B49BD7AAA5DB7705A2B48D6024A00D9962FE643FC5379E1627D998A53A013A",
        ),
        (
            '{"customerId":"1234","appKey":"xxxxxx","status":1}',
            "803303CCA984889E9908BB7BE4B3B343",
            None,
        ),
        (
            '{"data": "ping-001"}',
            "4E35F830C00EE14365F98C3E517D2C85",
            "05347EFF8FAFDE24DA2D251482D30806274937D1C014EAE28E4B2A96B2F28FAC",
        ),
        (
            '{"productID": "callbot", "userTaskID": "task-0001", "taskOperate": 2, "delCall": 0}',
            "26118BB7C0CDE97325E7D7581B114F07",
            "3493136B576AF488CCF9A40A686AC276913CA17E2CF669B24568BECFE78D7346",
        ),
        ('{"userName": "\\u725b\\u5c0f\\u4fe1"}', "115112F81B97B3A62D9B62EFA5250123", None),
        ('{"userName": "牛小信"}', "0F6FCCD342BA39E6AB79E14B0FCEBA8E", None),
    ],
    ids=["C1", "C2", "C3", "C4", "C5", "C6"],
)
def test_callbot_vectors(body_text, md5, sha256):
    assert callbot_sign(**CALLBOT, body_text=body_text) == md5
    if sha256:
        assert callbot_sign(**CALLBOT, body_text=body_text, algorithm="sha256") == sha256


def test_callbot_headers_send_request_id_and_uppercase_algorithm():
    headers = callbot_headers(**CALLBOT, body_text='{"data": "ping-001"}', algorithm="sha256")
    assert headers["requestID"] == CALLBOT["request_id"]
    assert headers["createTs"] == "1700000000"
    assert headers["algorithm"] == "SHA256"
    assert headers["sign"] == "05347EFF8FAFDE24DA2D251482D30806274937D1C014EAE28E4B2A96B2F28FAC"


def test_serialize_body_is_compact_utf8_and_keeps_key_order():
    assert serialize_body({"b": 1, "a": "牛"}) == '{"b":1,"a":"牛"}'


def test_unknown_algorithm_is_rejected():
    with pytest.raises(ValueError, match="md5 or sha256"):
        api2_sign(**OURS, action="mt", biz_type=2, body_text="", algorithm="sha1")
