"""The sandbox's callback dispatcher over real HTTP: what it sends, signing,
retries of unacknowledged callbacks, drops, duplicates and reordering.

No Redis: a recording HTTP server in a thread stands in for our receiver.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from nxjobs.callbacks.verify import check_callbot
from nxjobs.sandbox import accounts
from nxjobs.sandbox.server import start_in_thread
from tests.integration.test_sandbox import NUMBER_CHECK, post_api2, post_callbot

FAST = dict(callback_delay_s=0.0, callback_jitter_s=0.0, callback_retry_s=0.1, callback_retry_window_s=5.0)


class Recorder:
    """An HTTP server recording every POST; answers `statuses` in turn, then 200."""

    def __init__(self):
        self.received: list[dict] = []
        self.statuses: list[int] = []
        self.lock = threading.Lock()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with recorder.lock:
                    recorder.received.append({"path": self.path, "headers": {k.lower(): v for k, v in
                                                                             self.headers.items()}, "raw": body})
                    status = recorder.statuses.pop(0) if recorder.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def wait_for(self, count: int, timeout_s: float = 5.0) -> list[dict]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.received) >= count:
                    return list(self.received)
            time.sleep(0.02)
        with self.lock:
            return list(self.received)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def sandbox():
    with start_in_thread() as handle:
        yield handle


@pytest.fixture
def sb(sandbox):
    sandbox.state.reset(config=True)
    sandbox.state.configure(**FAST)
    return sandbox


@pytest.fixture
def recorder():
    r = Recorder()
    yield r
    r.close()


def _number_check(sb, recorder, phones):
    with requests.Session() as http:
        body = {"phone": ",".join(phones), "batchNo": "B1", "appkey": accounts.API2_APPKEY,
                "drUrl": recorder.url + "/dr/secret-token"}
        resp = post_api2(http, sb.url, NUMBER_CHECK, body)
    assert resp.json()["code"] == 0
    return resp.json()["data"]


def test_one_dr_per_accepted_number_to_the_dr_url(sb, recorder):
    # Given a number check of three numbers, one of them not a real number
    data = _number_check(sb, recorder, ["8613800138000", "6591234567", "9991234567"])
    # When the callbacks arrive
    got = recorder.wait_for(2)
    time.sleep(0.2)
    # Then exactly the two accepted numbers got a DR each, at the drUrl, with per-number ids
    assert len(recorder.received) == 2
    bodies = [json.loads(r["raw"]) for r in got]
    assert {r["path"] for r in got} == {"/dr/secret-token"}
    assert sorted(b["phone"] for b in bodies) == ["6591234567", "8613800138000"]
    assert all(b["requestId"].startswith(data["requestId"] + "-") and b["batchNo"] == "B1" for b in bodies)


def test_callbot_callbacks_are_signed_the_way_our_receiver_checks(sb, recorder):
    # Given a started task with callback URLs for calls, orders and the task
    with requests.Session() as http:
        body = {"productID": "callbot", "userTaskID": "T1", "sceneID": "s",
                "taskCreateSetting": {"taskName": "t", "taskCallbackUrl": recorder.url + "/task"},
                "callInfoList": {"callCallbackUrl": recorder.url + "/call", "orderCallbackUrl": recorder.url + "/order",
                                 "callList": [{"orderID": "O1", "userPhone": "8613900139000"}]}}
        assert post_callbot(http, sb.url, "createAndCall", body).json()["retCode"] == 0
        assert post_callbot(http, sb.url, "mgrTaskStatus",
                            {"productID": "callbot", "userTaskID": "T1", "taskOperate": 1}).json()["retCode"] == 0
    # When the call, order and task callbacks arrive
    got = recorder.wait_for(3)
    # Then each verifies with the account's secret over the raw body, and says what happened
    assert sorted(r["path"] for r in got) == ["/call", "/order", "/task"]
    for r in got:
        text = check_callbot(r["raw"], r["headers"], uuid=accounts.CALLBOT_UUID, secret_key=accounts.CALLBOT_SECRET_KEY,
                             default_algorithm="md5", now_s=time.time(), tolerance_s=300)
        body = json.loads(text)
        assert body["userTaskID"] == "T1"
    task = next(json.loads(r["raw"]) for r in got if r["path"] == "/task")
    assert task["taskStatus"] == 3 and task["taskStat"]["totalOrderCount"] == 1


def test_unacknowledged_callback_is_retried_until_a_2xx(sb, recorder):
    # Given a receiver that fails twice (503, then 500) before accepting
    recorder.statuses = [503, 500]
    # When one DR is sent
    _number_check(sb, recorder, ["8613800138000"])
    got = recorder.wait_for(3)
    # Then it was attempted three times, re-sent every retry interval, and counted delivered once
    assert len(got) == 3 and len({r["raw"] for r in got}) == 1
    # (the dispatcher counts an attempt once its answer is back, just after the receiver saw it)
    deadline = time.monotonic() + 2.0
    while sb.state.stats()["callbacks"]["delivered"] < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    stats = sb.state.stats()["callbacks"]
    assert (stats["attempts"], stats["failed_attempts"], stats["delivered"]) == (3, 2, 1)


def test_callback_is_given_up_after_the_retry_window(sb, recorder):
    # Given a receiver that always fails, and a 0.35 s retry window
    sb.state.configure(callback_retry_window_s=0.35)
    recorder.statuses = [500] * 100
    # When one DR is sent
    _number_check(sb, recorder, ["8613800138000"])
    time.sleep(1.0)
    # Then it was tried every 0.1 s within the window, then dropped as expired
    stats = sb.state.stats()["callbacks"]
    assert stats["expired"] == 1 and stats["delivered"] == 0
    assert 3 <= stats["attempts"] <= 5


def test_drops_duplicates_and_reordering_are_configurable(sb, recorder):
    # Given every callback is sent twice, with up to 0.5 s of random delay
    sb.state.configure(callback_duplicate_rate=1.0, callback_jitter_s=0.5, seed=7)
    phones = [str(6591234500 + i) for i in range(20)]
    # When 20 numbers are checked
    _number_check(sb, recorder, phones)
    got = recorder.wait_for(40)
    # Then 40 DRs arrived, each number twice, not in submission order
    ids = [json.loads(r["raw"])["requestId"] for r in got]
    assert len(ids) == 40 and len(set(ids)) == 20
    firsts = list(dict.fromkeys(ids))
    assert firsts != sorted(firsts)
    # And with every callback dropped, none arrives
    sb.state.reset()
    sb.state.configure(callback_drop_rate=1.0, callback_duplicate_rate=0.0, callback_jitter_s=0.0)
    before = len(recorder.received)
    _number_check(sb, recorder, ["8613800138000"])
    time.sleep(0.3)
    assert len(recorder.received) == before
    assert sb.state.stats()["callbacks"]["dropped"] == 1


def test_cdr_goes_to_the_configured_url(sb, recorder):
    # Given a CDR callback URL registered for the account
    sb.state.configure(cdr_callback_url=recorder.url + "/cdr/tok")
    with requests.Session() as http:
        token = http.post(sb.url + "/v1/call/token", data={"appkey": accounts.AGENT_APPKEY,
                                                           "secretkey": accounts.AGENT_SECRETKEY}, timeout=5).json()
        # When a call is placed
        answer = http.post(sb.url + "/v1/call/makecall", data={"token": token["token"], "username": accounts.AGENT_USERNAME,
                                                               "phone": "8613800138000", "orderid": "ORDER0001"},
                           timeout=5).json()
    got = recorder.wait_for(1)
    # Then its CDR arrives there, matching the call
    cdr = json.loads(got[0]["raw"])
    assert got[0]["path"] == "/cdr/tok"
    assert (cdr["orderid"], cdr["sessionid"], cdr["hangup_cause"]) == ("ORDER0001", answer["sessionid"], "NORMAL_CLEARING")
    assert cdr["start_time"].isdigit()

