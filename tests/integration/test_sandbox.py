"""The sandbox over real HTTP: signatures, validation, quotas, faults, duplicates, CLI.

No Redis needed: every test talks to `start_in_thread()` on 127.0.0.1.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests

from nxjobs.client.signing import api2_headers, callbot_headers, serialize_body
from sandbox import accounts
from sandbox.control import SandboxControl
from sandbox.server import start_in_thread

NUMBER_CHECK = "/api/number/check"
CB = "/callcentre/api/v3/"
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sandbox():
    with start_in_thread() as handle:
        yield handle


@pytest.fixture
def sb(sandbox):
    sandbox.state.reset(config=True)
    return sandbox


@pytest.fixture
def control(sb):
    with SandboxControl(sb.url) as ctl:
        yield ctl


@pytest.fixture
def http():
    with requests.Session() as session:
        yield session


def post_api2(
    http,
    url,
    path,
    body,
    *,
    biz=1,
    action="numbercheck",
    ts_ms=None,
    access_key=accounts.API2_ACCESS_KEY,
    algorithm="md5",
    send_text=None,
):
    """Sign `body` as api2 would and POST it; `send_text` sends different bytes than were signed."""
    text = serialize_body(body)
    headers = api2_headers(
        access_key=access_key,
        access_secret=accounts.API2_ACCESS_SECRET,
        action=action,
        biz_type=biz,
        ts_ms=int(time.time() * 1000) if ts_ms is None else ts_ms,
        body_text=text,
        algorithm=algorithm,
    )
    headers["Content-Type"] = "application/json"
    data = (send_text if send_text is not None else text).encode("utf-8")
    return http.post(url + path, data=data, headers=headers, timeout=5)


def post_callbot(
    http, url, endpoint, body, *, secret=accounts.CALLBOT_SECRET_KEY, create_ts_s=None
):
    text = serialize_body(body)
    headers = callbot_headers(
        secret_key=secret,
        uuid=accounts.CALLBOT_UUID,
        request_id=uuid.uuid4().hex,
        create_ts_s=int(time.time()) if create_ts_s is None else create_ts_s,
        body_text=text,
    )
    headers["Content-Type"] = "application/json"
    return http.post(url + CB + endpoint, data=text.encode("utf-8"), headers=headers, timeout=5)


def get_token(http, url):
    form = {"appkey": accounts.AGENT_APPKEY, "secretkey": accounts.AGENT_SECRETKEY}
    return http.post(url + "/v1/call/token", data=form, timeout=5).json()


def makecall(http, url, token, orderid, phone="8613800138001"):
    form = {"token": token, "username": accounts.AGENT_USERNAME, "phone": phone, "orderid": orderid}
    return http.post(url + "/v1/call/makecall", data=form, timeout=5).json()


def nc_body(phone="8613800138000,99912345678", **extra):
    return {"phone": phone, "appkey": accounts.API2_APPKEY, "checkLevel": 1, **extra}


# -- api2 signing ----------------------------------------------------------------------


def test_good_number_check_is_accepted_and_999_numbers_fail(sb, http, control):
    # Given a correctly signed Number Check submit with one good and one 999 number
    # When it is posted
    body = post_api2(http, sb.url, NUMBER_CHECK, nc_body(batchNo="B-1")).json()
    # Then it is accepted, echoes the batch and lists only the 999 number as failed
    assert body["code"] == 0 and body["message"] == "Success"
    assert len(body["data"]["requestId"]) == 32 and int(body["data"]["requestId"], 16) >= 0
    assert body["data"]["batchNo"] == "B-1"
    assert body["data"]["failNumber"] == [{"number": "99912345678", "reason": "invalid number"}]
    # And the query endpoint returns the row of the accepted number
    query = {
        "page": 1,
        "pageSize": 100,
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "batchNo": "B-1",
    }
    rows = post_api2(http, sb.url, "/api/number/query", query).json()["data"]["result"]
    assert [r["phone"] for r in rows] == ["8613800138000"]
    assert control.stats()["accepted"]["number_check"] == 1


def test_tampered_body_is_rejected_with_1003(sb, http):
    # Given a body that differs from the signed text only by whitespace
    signed = nc_body()
    tampered = serialize_body(signed).replace(",", ", ", 1)
    # When it is posted
    body = post_api2(http, sb.url, NUMBER_CHECK, signed, send_text=tampered).json()
    # Then the signature check fails
    assert body["code"] == 1003


def test_stale_timestamp_is_rejected_with_1004(sb, http):
    # Given a request signed 61 s ago
    stale_ms = int(time.time() * 1000) - 61_000
    # When it is posted
    body = post_api2(http, sb.url, NUMBER_CHECK, nc_body(), ts_ms=stale_ms).json()
    # Then the timestamp window rejects it
    assert body["code"] == 1004


def test_unknown_access_key_is_rejected_with_1005(sb, http):
    # Given a request signed for an access key the sandbox does not know
    # When it is posted
    body = post_api2(http, sb.url, NUMBER_CHECK, nc_body(), access_key="someone-else").json()
    # Then it has no permission
    assert body["code"] == 1005


def test_sha256_signature_is_accepted(sb, http):
    # Given a request signed with SHA-256 and the algorithm header
    # When it is posted
    body = post_api2(http, sb.url, NUMBER_CHECK, nc_body(), algorithm="sha256").json()
    # Then it is accepted
    assert body["code"] == 0


def test_wrong_biz_type_for_path_is_1002_and_unknown_path_is_404(sb, http):
    # Given an OTA-signed request sent to the Number Check path, and a path that does not exist
    wrong = post_api2(http, sb.url, NUMBER_CHECK, nc_body(), biz=6, action="init").json()
    missing = http.post(sb.url + "/api/nope", data=b"{}", timeout=5)
    # Then the first is a parameter error and the second a JSON 404
    assert wrong["code"] == 1002
    assert missing.status_code == 404 and missing.json()["code"] == 404


# -- Callbot ---------------------------------------------------------------------------


def _task(user_task_id, orders=()):
    return {
        "productID": "callbot",
        "userTaskID": user_task_id,
        "sceneID": "scene-1",
        "taskCreateSetting": {"taskName": "demo"},
        "callInfoList": {
            "callList": [{"orderID": o, "userPhone": "8613800138000"} for o in orders]
        },
    }


def test_callbot_bad_sign_is_6_and_good_sign_creates_task(sb, http, control):
    # Given the same createAndCall body signed with a wrong and with the right secret
    bad = post_callbot(
        http, sb.url, "createAndCall", _task("t-1", ["o-1"]), secret="wrong-secret"
    ).json()
    good = post_callbot(http, sb.url, "createAndCall", _task("t-1", ["o-1", "o-2"])).json()
    # Then the wrong one is refused without creating anything, the right one creates the task
    assert bad["retCode"] == 6
    assert good["retCode"] == 0 and good["taskID"]
    assert (good["totalCount"], good["successCount"], good["errList"]) == (2, 2, [])
    query = {"productID": "callbot", "queryConditions": {"userTaskID": ["t-1"]}}
    listed = post_callbot(http, sb.url, "listTask", query)
    assert [t["taskStatus"] for t in listed.json()["taskData"]] == [1]
    assert control.stats()["objects"]["callbot_tasks"] == 1


def test_duplicate_user_task_id_is_retcode_4(sb, http, control):
    # Given a task that already exists
    assert post_callbot(http, sb.url, "createTask", _task("t-dup")).json()["retCode"] == 0
    # When the same userTaskID is created again
    again = post_callbot(http, sb.url, "createTask", _task("t-dup")).json()
    # Then it is refused and counted as a rejected duplicate, not a duplicate side effect
    assert again["retCode"] == 4 and again["retMsg"] == "userTaskID already exists"
    stats = control.stats()
    assert stats["duplicate_rejections"]["callbot_usertaskid"] == 1
    assert stats["duplicates"]["callbot_usertaskid"] == 0


def test_add_batch_call_over_1000_is_4001_and_repeated_order_goes_to_errlist(sb, http):
    # Given an existing task with one order
    post_callbot(http, sb.url, "createAndCall", _task("t-big", ["o-1"]))
    too_many = _task("t-big", [f"o-{i}" for i in range(1001)])
    # When 1 001 orders are added, then the existing order once more
    big = post_callbot(http, sb.url, "addBatchCall", too_many).json()
    repeat = post_callbot(http, sb.url, "addBatchCall", _task("t-big", ["o-1"])).json()
    # Then the batch is too large and the repeat is reported per order, not re-added
    assert big["retCode"] == 4001
    assert repeat["retCode"] == 0 and repeat["successCount"] == 0
    assert repeat["errList"] == [{"orderID": "o-1", "errMsg": "orderID already exists"}]


# -- Agent -----------------------------------------------------------------------------


def test_token_makecall_then_expired_token_is_1201(sb, http, control):
    # Given a fresh token
    token = get_token(http, sb.url)
    assert token["code"] == 0 and len(token["token"]) == 32 and token["token"].isupper()
    # When a call is placed, then all tokens are expired and a call is tried again
    first = makecall(http, sb.url, token["token"], "order0001")
    assert control.expire_tokens() == 1
    second = makecall(http, sb.url, token["token"], "order0002")
    # Then the first rang and the second needs a new token
    assert first["code"] == 0 and first["orderid"] == "order0001" and first["sessionid"]
    assert second == {"code": 1201, "info": "This token has expired"}
    # And the CDR lookup finds the one call that was placed
    cdr = {
        "appkey": accounts.AGENT_APPKEY,
        "secretkey": accounts.AGENT_SECRETKEY,
        "orderid": "order0001,order0002",
    }
    rows = http.post(sb.url + "/api/voiceSms/getSipCdrByOrderid", json=cdr, timeout=5).json()
    assert rows["code"] == "0" and [r["orderid"] for r in rows["row"]] == ["order0001"]
    assert rows["row"][0]["hangup_cause"] == "NORMAL_CLEARING" and rows["row"][0]["duration"] > 0


def test_same_makecall_orderid_twice_counts_one_duplicate(sb, http, control):
    # Given no makecall quota (two calls within a second would be throttled otherwise)
    control.configure(makecall_rate=0)
    token = get_token(http, sb.url)["token"]
    # When the same orderid is called twice
    codes = [makecall(http, sb.url, token, "dupe0001")["code"] for _ in range(2)]
    # Then both rang (no dedupe) and the duplicate side effect is counted once
    assert codes == [0, 0]
    assert control.stats()["duplicates"]["makecall_orderid"] == 1


# -- quotas and faults -----------------------------------------------------------------


def test_api2_quota_allows_10_per_second_and_the_window_slides(http):
    # Given a sandbox whose clock stands still, so 15 requests land in the same second
    now = [1_700_000_000.0]
    with start_in_thread(clock=lambda: now[0]) as frozen:
        ts_ms = int(now[0] * 1000)
        # When 15 signed requests are sent
        codes = [
            post_api2(http, frozen.url, NUMBER_CHECK, nc_body(), ts_ms=ts_ms).json()["code"]
            for _ in range(15)
        ]
        # Then exactly 10 are accepted and the rest are told to slow down
        assert codes.count(0) == 10 and codes.count(2206) == 5
        assert frozen.state.stats()["throttled"]["api2"] == 5
        # And once the oldest slot is a full second old, a request is accepted again
        now[0] += 1.001
        later = post_api2(
            http, frozen.url, NUMBER_CHECK, nc_body(), ts_ms=int(now[0] * 1000)
        ).json()
        assert later["code"] == 0


def test_scripted_code_is_returned_exactly_times_then_normal(sb, http, control):
    # Given a script answering the next two Number Check submits with 299
    control.script(NUMBER_CHECK, 299, times=2, message="system error")
    # When three requests are sent
    codes = [post_api2(http, sb.url, NUMBER_CHECK, nc_body()).json()["code"] for _ in range(3)]
    # Then the first two get the scripted code without side effect and the third is normal
    assert codes == [299, 299, 0]
    assert control.stats()["accepted"]["number_check"] == 1


def test_scripted_answers_wait_for_a_valid_signature(sb, http, control):
    # Given a script on the Number Check path
    control.script(NUMBER_CHECK, 299)
    # When a badly signed request arrives first, then a good one
    bad = post_api2(http, sb.url, NUMBER_CHECK, nc_body(), send_text="{}").json()
    good = post_api2(http, sb.url, NUMBER_CHECK, nc_body()).json()
    # Then the bad one fails verification and the script is spent on the good one
    assert (bad["code"], good["code"]) == (1003, 299)


def test_error_rate_1_answers_503_without_side_effect(sb, http, control):
    # Given every request is to fail at the transport level
    control.configure(error_rate=1)
    # When a Number Check is submitted
    resp = post_api2(http, sb.url, NUMBER_CHECK, nc_body())
    # Then it is a 503 with a JSON body and nothing was stored
    assert resp.status_code == 503 and resp.json()["code"] == 503
    stats = control.stats()
    assert stats["faults"]["error"] == 1 and stats["objects"]["number_check_submissions"] == 0


def test_slow_rate_applies_the_effect_then_answers_late(sb, http, control):
    # Given every answer is delayed past the client's timeout
    control.configure(slow_rate=1, slow_seconds=0.5)
    # When a call list is created with a 0.2 s client timeout
    with pytest.raises(requests.exceptions.ReadTimeout):
        text = serialize_body(_task("t-slow", ["o-slow"]))
        headers = callbot_headers(
            secret_key=accounts.CALLBOT_SECRET_KEY,
            uuid=accounts.CALLBOT_UUID,
            request_id="r1",
            create_ts_s=int(time.time()),
            body_text=text,
        )
        http.post(sb.url + CB + "createAndCall", data=text.encode(), headers=headers, timeout=0.2)
    # Then the task exists anyway, so a blind retry is refused as a duplicate
    control.configure(slow_rate=0)
    retry = post_callbot(http, sb.url, "createAndCall", _task("t-slow", ["o-slow"])).json()
    assert retry["retCode"] == 4


# -- CLI -------------------------------------------------------------------------------


def test_run_prints_listening_line_and_exits_0_on_sigterm():
    # Given the CLI entry point started in its own process on a free port
    code = "import sys; from sandbox.server import run; sys.exit(run(sys.argv[1:]))"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    with subprocess.Popen(
        [sys.executable, "-c", code, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO_ROOT,
    ) as proc:
        try:
            line = []
            reader = threading.Thread(
                target=lambda: line.append(proc.stdout.readline()), daemon=True
            )
            reader.start()
            reader.join(timeout=10)
            # When it reports where it listens
            assert line and line[0].startswith("sandbox listening on http://127.0.0.1:"), line
            url = line[0].split(" on ", 1)[1].strip()
            # Then it serves the control API there
            with SandboxControl(url) as ctl:
                assert ctl.health() is True
            # And it exits cleanly on SIGTERM without complaining
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=10)
            assert proc.returncode == 0, err
            assert err == ""
        finally:
            if proc.poll() is None:
                proc.kill()
