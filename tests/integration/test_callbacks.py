"""Callbacks end to end: the sandbox sends them (late, out of order, repeated), the
receiver (`python -m workers.web`, real HTTP) verifies and applies them, a real worker submits
the jobs; all on a real Redis (db 1)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import pytest
import requests

from nxjobs import keys
from nxjobs.client.signing import callbot_headers, serialize_body
from nxjobs.records import JobState
from sandbox import accounts
from tests.conftest import CALLBACK_TOKEN

pytestmark = pytest.mark.integration

WAIT_S = 20


def post_signed(
    url: str,
    path: str,
    body: dict,
    *,
    secret: str = accounts.CALLBOT_SECRET_KEY,
    create_ts_s: int | None = None,
    text: str | None = None,
    extra: dict | None = None,
):
    """POST a Callbot-signed callback (`text` sends other bytes than were signed)."""
    signed = serialize_body(body)
    headers = callbot_headers(
        secret_key=secret,
        uuid=accounts.CALLBOT_UUID,
        request_id=uuid.uuid4().hex,
        create_ts_s=int(time.time()) if create_ts_s is None else create_ts_s,
        body_text=signed,
    )
    headers.update({"Content-Type": "application/json", **(extra or {})})
    return requests.post(
        url + path,
        data=(text if text is not None else signed).encode("utf-8"),
        headers=headers,
        timeout=5,
    )


def post_token(url: str, path: str, body: dict | bytes, *, token: str = CALLBACK_TOKEN):
    data = body if isinstance(body, bytes) else serialize_body(body).encode("utf-8")
    return requests.post(
        f"{url}{path}/{token}", data=data, headers={"Content-Type": "application/json"}, timeout=5
    )


def types_of(record) -> list[str]:
    return sorted(c["type"] for c in record.callbacks)


def wait_callbacks(producer, job_id: str, count: int, timeout_s: float = 5.0):
    """The record once it holds `count` callbacks (callbacks may still land after completion)."""
    deadline = time.monotonic() + timeout_s
    while True:
        record = producer.get(job_id)
        if len(record.callbacks) >= count or time.monotonic() > deadline:
            return record
        time.sleep(0.05)


# ---- each callback type, end to end -----------------------------------------------------------


def test_number_check_completes_when_every_number_has_its_result(
    cb_producer, cb_sandbox, callbacks_worker
):
    # Given the sandbox sends one DR per number, out of order; one number is rejected at submit
    phones = ["8613800138000", "6591234567", "9991234567"]
    # When the number check runs
    job_id = cb_producer.number_check(phones=phones)
    record = cb_producer.wait([job_id], until="completed", timeout_s=WAIT_S)[job_id]
    # Then it completes once both accepted numbers have their result, each recorded once, phones
    # masked
    assert record.state == JobState.COMPLETED, (record.state, record.error)
    assert (record.callbacks_needed, record.callbacks_done) == (2, 2)
    assert types_of(record) == ["number-check", "number-check"]
    ids = {c["data"]["requestId"] for c in record.callbacks}
    assert {i.rsplit("-", 1)[0] for i in ids} == {record.result["requestId"]}
    assert all(
        c["source"] == "callback" and c["data"]["batchNo"] == job_id for c in record.callbacks
    )
    assert "8613800138000" not in record.model_dump_json()
    # and the drUrl we sent carried the token, which the stored request does not
    sent = [
        r
        for r in cb_sandbox.requests(path="/api/number/check")
        if r["body"].get("batchNo") == job_id
    ]
    assert sent[0]["body"]["drUrl"].endswith("/callbacks/number-check/" + CALLBACK_TOKEN)
    assert CALLBACK_TOKEN not in record.model_dump_json()
    assert record.request[0]["body"]["drUrl"].endswith("/callbacks/number-check/[redacted]")


def test_call_completes_with_its_cdr(cb_producer, cb_sandbox, callbacks_worker):
    # Given the sandbox posts a CDR to the URL registered for the account
    # When a call is placed
    job_id = cb_producer.call(phone="8613800138000")
    record = cb_producer.wait([job_id], until="completed", timeout_s=WAIT_S)[job_id]
    # Then the call completes with exactly its CDR, matched by orderid and sessionid
    assert record.state == JobState.COMPLETED, (record.state, record.error)
    assert types_of(record) == ["cdr"]
    cdr = record.callbacks[0]["data"]
    assert cdr["orderid"] == job_id and cdr["sessionid"] == record.result["sessionid"]
    assert cdr["hangup_cause"] == "NORMAL_CLEARING" and cdr["phone"] == "861******8000"


def test_callbot_list_completes_when_the_task_finishes(cb_producer, cb_sandbox, callbacks_worker):
    # Given two contacts (one answers, one does not)
    contacts = [
        {"user_phone": "8613900139000", "user_name": "A"},
        {"user_phone": "9981234567", "order_id": "ord-b"},
    ]
    # When the list is submitted and dialled
    job_id = cb_producer.callbot_list(scene_id="scene-1", task_name="t", contacts=contacts)
    record = cb_producer.wait([job_id], until="completed", timeout_s=WAIT_S)[job_id]
    # Then it completes on the task-status callback, with every call and order callback recorded
    # (out of order: some may land after the task callback completed the job)
    assert record.state == JobState.COMPLETED, (record.state, record.error)
    record = wait_callbacks(cb_producer, job_id, 5)
    assert types_of(record) == ["callbot-call"] * 2 + ["callbot-order"] * 2 + ["callbot-task"]
    orders = {c["data"]["orderID"] for c in record.callbacks if c["type"] == "callbot-order"}
    assert orders == {f"{job_id}-0", "ord-b"}
    task = next(c["data"] for c in record.callbacks if c["type"] == "callbot-task")
    assert task["taskStatus"] == 3 and task["taskStat"]["totalOrderCount"] == 2


# ---- duplicates, early callbacks, unmatched ------------------------------------------------------


def test_duplicates_are_recorded_once(cb_producer, cb_sandbox, callbacks_worker, receiver):
    # Given the sandbox delivers every callback twice
    cb_sandbox.configure(callback_duplicate_rate=1.0)
    # When a number check of three numbers and a callbot list run
    nc = cb_producer.number_check(phones=["8613800138000", "6591234567", "6591234568"])
    cb = cb_producer.callbot_list(
        scene_id="s", task_name="t", contacts=[{"user_phone": "8613900139000"}]
    )
    records = cb_producer.wait([nc, cb], until="completed", timeout_s=WAIT_S)
    deadline = time.monotonic() + 5  # let the second copies land too
    while time.monotonic() < deadline and cb_sandbox.stats()["callbacks"]["delivered"] < 12:
        time.sleep(0.05)
    # Then each callback was delivered twice but recorded once
    assert cb_sandbox.stats()["callbacks"]["delivered"] == 12  # (3 DRs + call + order + task) x 2
    records = cb_producer.store.get_many([nc, cb])
    assert types_of(records[nc]) == ["number-check"] * 3 and records[nc].callbacks_done == 3
    assert types_of(records[cb]) == ["callbot-call", "callbot-order", "callbot-task"]
    # and a replay an hour-long retry would send is answered 200 and not stored again
    task_body = next(c for c in records[cb].callbacks if c["type"] == "callbot-task")["data"]
    assert post_signed(receiver.url, "/callbacks/callbot/task", task_body).status_code == 200
    assert len(cb_producer.get(cb).callbacks) == 3


def test_callback_that_beats_the_submit_result_is_applied(
    cb_producer, cb_sandbox, callbacks_worker
):
    # Given the provider answers the submit 1 s late, but sends the DRs right away
    cb_sandbox.configure(
        slow_rate=1.0, slow_seconds=1.0, callback_delay_s=0.0, callback_jitter_s=0.0
    )
    # When a number check runs
    job_id = cb_producer.number_check(phones=["8613800138000", "6591234567"])
    early = cb_producer.wait([job_id], until="completed", timeout_s=0.8)[job_id]
    record = cb_producer.wait([job_id], until="completed", timeout_s=WAIT_S)[job_id]
    # Then the DRs were stored while the job was still running, and the submit completed it
    assert early.state == JobState.RUNNING and early.callbacks_done == 2
    assert record.state == JobState.COMPLETED
    submitted_at = float(cb_producer.redis.hget(keys.job(job_id), "submitted_at"))
    assert all(_epoch(c["received_at"]) < submitted_at for c in record.callbacks)


def test_unmatched_callback_is_kept_and_listed_for_operators(
    cb_producer, receiver, callbacks_redis_url
):
    # Given a CDR for an orderid no job of ours has
    orderid = "stranger" + uuid.uuid4().hex[:12]
    body = {
        "sessionid": str(uuid.uuid4()),
        "orderid": orderid,
        "phone": "8613800138000",
        "duration": 3,
    }
    # When it is posted with the right token
    resp = post_token(receiver.url, "/callbacks/agent/cdr", body)
    # Then it is acknowledged (no retries), kept in the unmatched list and shown by the CLI, phone
    # masked
    assert resp.status_code == 200
    out = subprocess.run(
        [sys.executable, "-m", "nxjobs.cli", "callbacks", "unmatched", "--json", "--limit", "5"],
        env={"NXJOBS_REDIS_URL": callbacks_redis_url, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    mine = [r for r in rows if r["ids"].get("orderid") == orderid]
    assert len(mine) == 1 and mine[0]["type"] == "cdr"
    assert mine[0]["data"]["phone"] == "861******8000"


# ---- authenticity: 4xx and nothing stored --------------------------------------------------------


def _snapshot(redis_client, job_id: str) -> dict:
    names = [keys.job(job_id), keys.CALLBACKS_UNMATCHED]
    # Every key of ours but the metrics, which a receiver or worker may be writing for earlier jobs,
    # and the workers' held-messages list and lock, which each worker writes every few seconds.
    own_schedule = tuple(name.encode() for name in (f"{keys.PREFIX}:metrics:", keys.WORKERS_HELD))
    ours = sorted(
        k
        for k in redis_client.scan_iter(match=f"{keys.PREFIX}:*", count=1000)
        if not k.startswith(own_schedule)
    )
    return {"keys": ours, **{n: redis_client.dump(n) for n in names}}


@pytest.fixture()
def silent_job(cb_producer, cb_sandbox, callbacks_worker):
    """A submitted callbot list whose own callbacks are dropped, so only ours reach it."""
    cb_sandbox.configure(callback_drop_rate=1.0)
    job_id = cb_producer.callbot_list(
        scene_id="s", task_name="t", contacts=[{"user_phone": "8613900139000"}]
    )
    record = cb_producer.wait([job_id], until="submitted", timeout_s=WAIT_S)[job_id]
    assert record.state == JobState.SUBMITTED
    return record


def _task_body(record) -> dict:
    return {
        "callbackType": 1,
        "userTaskID": record.id,
        "taskID": record.result["taskID"],
        "sceneID": "s",
        "taskStatus": 3,
        "createTs": int(time.time()),
        "taskStat": {"totalOrderCount": 1, "totalCall": 1},
    }


FORGERIES = {
    "tampered signature": lambda url, body: post_signed(
        url, "/callbacks/callbot/task", body, secret="not-the-secret"
    ),
    "tampered body": lambda url, body: post_signed(
        url, "/callbacks/callbot/task", body, text=serialize_body({**body, "taskStatus": 4})
    ),
    "stale timestamp": lambda url, body: post_signed(
        url, "/callbacks/callbot/task", body, create_ts_s=int(time.time()) - 301
    ),
    "future timestamp": lambda url, body: post_signed(
        url, "/callbacks/callbot/task", body, create_ts_s=int(time.time()) + 301
    ),
    "unsigned": lambda url, body: requests.post(
        url + "/callbacks/callbot/task", json=body, timeout=5
    ),
    "other uuid": lambda url, body: post_signed(
        url, "/callbacks/callbot/task", body, extra={"uuid": "someone"}
    ),
    "garbage body": lambda url, body: post_signed(
        url, "/callbacks/callbot/task", body, text="{not json"
    ),
    "wrong shape": lambda url, body: post_signed(
        url, "/callbacks/callbot/task", {"taskStatus": "three"}
    ),
    "oversized": lambda url, body: post_signed(
        url, "/callbacks/callbot/task", {**body, "pad": "x" * 70_000}
    ),
    "wrong token": lambda url, body: post_token(
        url,
        "/callbacks/agent/cdr",
        {"orderid": body["userTaskID"], "sessionid": "s1"},
        token=CALLBACK_TOKEN[:-1] + "X",
    ),
    "no token": lambda url, body: requests.post(
        url + "/callbacks/number-check", json=body, timeout=5
    ),
    "garbage with token": lambda url, body: post_token(
        url, "/callbacks/number-check", b"\xff\xfe garbage"
    ),
}


@pytest.mark.parametrize("forgery", list(FORGERIES))
def test_unauthenticated_or_malformed_callbacks_get_4xx_and_store_nothing(
    forgery, silent_job, cb_producer, receiver
):
    # Given a submitted job waiting for its task callback
    body = _task_body(silent_job)
    before = _snapshot(_raw(cb_producer), silent_job.id)
    # When a forged, stale, garbled or oversized callback for it arrives
    resp = FORGERIES[forgery](receiver.url, body)
    # Then it is refused with a 4xx and Redis is unchanged
    assert 400 <= resp.status_code < 500, (resp.status_code, resp.text)
    assert _snapshot(_raw(cb_producer), silent_job.id) == before
    # (control: the same callback, properly signed, is accepted and completes the job)
    assert post_signed(receiver.url, "/callbacks/callbot/task", body).status_code == 200
    assert cb_producer.get(silent_job.id).state == JobState.COMPLETED


def _raw(producer):
    import redis

    return redis.Redis(connection_pool=redis.ConnectionPool.from_url(producer.redis_url))


def _epoch(iso: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
