"""A callback changes only the job its ids prove (nxjobs/callbacks/ledger.py), whoever holds the URL
token; what matches nothing is kept bounded and once; replays of signed callbacks are dropped.

Real receiver (`python -m workers.web`) over HTTP, records on a real Redis (db 1) written with the
record store as a worker would, so each test controls exactly which ids a job recorded.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
import redis
import requests

from nxjobs import correlate, keys
from nxjobs.callbacks import events
from nxjobs.callbacks.ledger import Ledger
from nxjobs.client.signing import callbot_headers, serialize_body
from nxjobs.jobs import validate_payload
from nxjobs.records import JobError, JobState
from nxjobs.store import RecordStore
from sandbox import accounts
from tests.conftest import CALLBACK_TOKEN, cli_runner

pytestmark = pytest.mark.integration

NC_PATH = "/callbacks/number-check"
CDR_PATH = "/callbacks/agent/cdr"


@pytest.fixture()
def client(callbacks_redis_url):
    return redis.Redis.from_url(callbacks_redis_url, decode_responses=True)


@pytest.fixture()
def store(client):
    return RecordStore(client)


def post(url: str, path: str, body: dict | str) -> requests.Response:
    data = body if isinstance(body, str) else serialize_body(body)
    return requests.post(
        f"{url}{path}/{CALLBACK_TOKEN}",
        data=data.encode(),
        timeout=5,
        headers={"Content-Type": "application/json"},
    )


def check_job(store: RecordStore, phones: list[str], *, submit: bool = True) -> tuple[str, str]:
    """A number check as a worker leaves it: queued with its ids, running, then submitted."""
    job_id, request_id = uuid.uuid4().hex, uuid.uuid4().hex
    payload = validate_payload("number-check", {"phones": phones})
    store.create(
        job_id, "number-check", {}, expect=correlate.on_enqueue("number-check", job_id, payload)
    )
    store.transition(job_id, JobState.RUNNING)
    if submit:
        submit_check(store, job_id, request_id, len(phones))
    return job_id, request_id


def submit_check(store: RecordStore, job_id: str, request_id: str, numbers: int):
    return store.transition(
        job_id,
        JobState.SUBMITTED,
        result={"requestId": request_id, "batchNo": job_id, "numbers": numbers, "failNumber": []},
    )


def dr(request_id: str, n: int, phone: str | int, batch_no: str, **extra) -> dict:
    return {
        "requestId": f"{request_id}-{n:06d}",
        "code": 0,
        "message": "success",
        "batchNo": batch_no,
        "phone": phone,
        "data": {"numberType": "mobile", "country": "SG"},
        **extra,
    }


def unmatched_for(client, **ids) -> list[dict]:
    return [
        r
        for r in Ledger(client).unmatched(10_000)
        if all(r["ids"].get(k) == v for k, v in ids.items())
    ]


PHONES = ["6591000001", "6591000002", "6591000003"]


# ---- Number Check: requestId, batchNo and number must all be the job's ---------------------------


def test_made_up_request_ids_with_a_jobs_batch_no_do_not_complete_it(receiver, store, client):
    # Given a submitted 3-number check A
    job_a, request_a = check_job(store, PHONES)
    # When three DRs carry A's batchNo and numbers but request ids A never got
    forged = uuid.uuid4().hex
    for n, phone in enumerate(PHONES, 1):
        assert post(receiver.url, NC_PATH, dr(forged, n, phone, job_a)).status_code == 200
    # Then A is untouched and the DRs are in the unmatched store, with the reason
    record = store.get(job_a)
    assert (
        record.state == JobState.SUBMITTED and record.callbacks_done == 0 and record.callbacks == []
    )
    rows = unmatched_for(client, batchNo=job_a)
    assert len(rows) == 3 and {r["reason"] for r in rows} == {"requestId disagrees"}
    # (control: A's own DRs complete it)
    for n, phone in enumerate(PHONES, 1):
        assert post(receiver.url, NC_PATH, dr(request_a, n, phone, job_a)).status_code == 200
    assert store.get(job_a).state == JobState.COMPLETED


def test_a_dr_mixing_two_jobs_ids_changes_neither(receiver, store, client):
    # Given two submitted checks A and B of the same numbers
    job_a, _ = check_job(store, PHONES)
    job_b, request_b = check_job(store, PHONES)
    # When a DR carries B's requestId but A's batchNo
    assert post(receiver.url, NC_PATH, dr(request_b, 1, PHONES[0], job_a)).status_code == 200
    # Then neither job took it
    assert store.get(job_a).callbacks_done == 0 and store.get(job_b).callbacks_done == 0
    assert [r["reason"] for r in unmatched_for(client, batchNo=job_a)] == ["batchNo disagrees"]


def test_a_dr_for_a_number_the_job_does_not_have_is_unmatched(receiver, store, client):
    job_id, request_id = check_job(store, PHONES)
    assert post(receiver.url, NC_PATH, dr(request_id, 9, "6599999999", job_id)).status_code == 200
    assert store.get(job_id).callbacks_done == 0
    assert [r["reason"] for r in unmatched_for(client, batchNo=job_id)] == ["phone not in the job"]


def test_a_completed_job_takes_no_more_results_than_it_has_numbers(receiver, store, client):
    # Given a completed 3-number check
    job_id, request_id = check_job(store, PHONES)
    for n, phone in enumerate(PHONES, 1):
        post(receiver.url, NC_PATH, dr(request_id, n, phone, job_id))
    size_done = client.memory_usage(keys.job(job_id))
    # When 200 more DRs with its ids, but new per-number ids, arrive
    for n in range(10, 210):
        assert (
            post(receiver.url, NC_PATH, dr(request_id, n, PHONES[n % 3], job_id)).status_code == 200
        )
    # Then they are counted and dropped: the record keeps 3 results and grows by its counter alone
    record = store.get(job_id)
    assert record.state == JobState.COMPLETED
    assert len(record.callbacks) == 3 and record.callbacks_dropped == 200
    assert client.memory_usage(keys.job(job_id)) <= size_done + 256


def test_early_drs_with_another_request_id_are_dropped_when_the_submit_answer_comes(
    receiver, store
):
    # Given a check whose submit answer is not recorded yet, and two DRs that beat it with a made-up
    # id
    job_id, request_id = check_job(store, PHONES[:2], submit=False)
    forged = uuid.uuid4().hex
    for n, phone in enumerate(PHONES[:2], 1):
        assert post(receiver.url, NC_PATH, dr(forged, n, phone, job_id)).status_code == 200
    assert store.get(job_id).callbacks_done == 2
    # When the answer names the real requestId
    after = submit_check(store, job_id, request_id, 2)
    # Then the early DRs are dropped instead of completing the job, and the real ones still can
    record = store.get(job_id)
    assert after.state == "submitted" and record.callbacks == [] and record.callbacks_dropped == 2
    for n, phone in enumerate(PHONES[:2], 1):
        post(receiver.url, NC_PATH, dr(request_id, n, phone, job_id))
    assert store.get(job_id).state == JobState.COMPLETED


def test_early_drs_with_the_real_request_id_complete_the_job_at_submit(receiver, store):
    job_id, request_id = check_job(store, PHONES[:2], submit=False)
    for n, phone in enumerate(PHONES[:2], 1):
        post(receiver.url, NC_PATH, dr(request_id, n, phone, job_id))
    assert submit_check(store, job_id, request_id, 2).state == "completed"


def test_a_masked_number_in_a_dr_still_proves_the_job(receiver, store):
    job_id, request_id = check_job(store, ["6591234567"])
    assert (
        post(receiver.url, NC_PATH, {**dr(request_id, 1, "659***4567", job_id)}).status_code == 200
    )
    assert store.get(job_id).state == JobState.COMPLETED


# ---- Agent CDR: the makecall's sessionid; an ambiguous call is looked up, never resolved by a
#      callback ------------------------------------------------------------------------------------


def call_job(store: RecordStore, *, sessionid: str | None = None, ambiguous: bool = False) -> str:
    job_id = uuid.uuid4().hex
    payload = validate_payload("call", {"phone": "8613800138000"})
    store.create(job_id, "call", {}, expect=correlate.on_enqueue("call", job_id, payload))
    store.transition(job_id, JobState.RUNNING)
    if ambiguous:
        store.transition(
            job_id,
            JobState.FAILED,
            error=JobError(
                code="ambiguous", message="makecall answer lost", retryable=False
            ).model_dump(),
        )
        store.redis.zadd(keys.RECONCILE, {job_id: time.time()})
    else:
        store.transition(
            job_id, JobState.SUBMITTED, result={"orderid": job_id, "sessionid": sessionid}
        )
    return job_id


def cdr(orderid: str, sessionid: str, **extra) -> dict:
    return {
        "sessionid": sessionid,
        "orderid": orderid,
        "phone": "8613800138000",
        "duration": 5,
        "hangup_cause": "NORMAL_CLEARING",
        **extra,
    }


def test_a_cdr_with_another_sessionid_does_not_complete_the_call(receiver, store, client):
    sessionid = str(uuid.uuid4())
    job_id = call_job(store, sessionid=sessionid)
    assert post(receiver.url, CDR_PATH, cdr(job_id, str(uuid.uuid4()))).status_code == 200
    assert store.get(job_id).state == JobState.SUBMITTED
    assert [r["reason"] for r in unmatched_for(client, orderid=job_id)] == ["sessionid disagrees"]
    assert post(receiver.url, CDR_PATH, cdr(job_id, sessionid)).status_code == 200
    assert store.get(job_id).state == JobState.COMPLETED


def test_a_cdr_for_an_ambiguous_call_asks_for_a_lookup_instead_of_resolving_it(
    receiver, store, client
):
    # Given a call that failed "ambiguous" (its makecall answer was lost), its lookup due later
    job_id = call_job(store, ambiguous=True)
    # When a CDR with its orderid arrives by callback
    assert post(receiver.url, CDR_PATH, cdr(job_id, str(uuid.uuid4()))).status_code == 200
    # Then the job is still failed, stores nothing, and its provider lookup is due now
    record = store.get(job_id)
    assert (
        record.state == JobState.FAILED
        and record.error.code == "ambiguous"
        and record.callbacks == []
    )
    assert client.zscore(keys.RECONCILE, job_id) == 0


# ---- Callbot: the contact's task, the list's orders ----------------------------------------------


def signed_post(
    url: str, path: str, body: dict, *, headers: dict | None = None
) -> tuple[requests.Response, dict]:
    text = serialize_body(body)
    headers = headers or {
        **callbot_headers(
            secret_key=accounts.CALLBOT_SECRET_KEY,
            uuid=accounts.CALLBOT_UUID,
            request_id=uuid.uuid4().hex,
            create_ts_s=int(time.time()),
            body_text=text,
        ),
        "Content-Type": "application/json",
    }
    return requests.post(url + path, data=text.encode(), headers=headers, timeout=5), headers


def list_job(store: RecordStore, contacts: list[dict]) -> str:
    job_id = uuid.uuid4().hex
    payload = validate_payload(
        "callbot-list", {"scene_id": "s", "task_name": "t", "contacts": contacts}
    )
    store.create(
        job_id, "callbot-list", {}, expect=correlate.on_enqueue("callbot-list", job_id, payload)
    )
    store.transition(job_id, JobState.RUNNING)
    store.transition(job_id, JobState.SUBMITTED, result={"userTaskID": job_id, "taskID": "9"})
    return job_id


def order(user_task_id: str, order_id: str) -> dict:
    return {
        "callbackType": 2,
        "userTaskID": user_task_id,
        "orderID": order_id,
        "userPhone": "8613900139000",
        "finish": True,
        "callInfoDetail": {"callID": uuid.uuid4().hex, "callingNumber": "6588880000"},
    }


def test_a_list_takes_only_orders_of_its_own_contacts(receiver, store, client):
    job_id = list_job(
        store,
        [{"user_phone": "8613900139000"}, {"user_phone": "8613900139001", "order_id": "mine01"}],
    )
    for order_id, kept in (
        (f"{job_id}-0", True),
        ("mine01", True),
        (f"{job_id}-2", False),
        ("theirs", False),
    ):
        resp, _ = signed_post(receiver.url, "/callbacks/callbot/order", order(job_id, order_id))
        assert resp.status_code == 200
        assert bool(unmatched_for(client, orderID=order_id)) is not kept, order_id
    assert len(store.get(job_id).callbacks) == 2


def test_a_contacts_order_callback_must_name_its_task(receiver, store, client):
    job_id = uuid.uuid4().hex
    payload = validate_payload(
        "callbot-contact", {"user_task_id": "task-a", "contact": {"user_phone": "8613900139000"}}
    )
    store.create(
        job_id,
        "callbot-contact",
        {},
        expect=correlate.on_enqueue("callbot-contact", job_id, payload),
    )
    store.transition(job_id, JobState.RUNNING)
    store.transition(job_id, JobState.SUBMITTED, result={"userTaskID": "task-a", "orderID": job_id})
    resp, _ = signed_post(receiver.url, "/callbacks/callbot/order", order("task-b", job_id))
    assert resp.status_code == 200 and store.get(job_id).state == JobState.SUBMITTED
    assert [r["reason"] for r in unmatched_for(client, orderID=job_id)] == ["userTaskID disagrees"]
    signed_post(receiver.url, "/callbacks/callbot/order", order("task-a", job_id))
    assert store.get(job_id).state == JobState.COMPLETED


# ---- replays, the unmatched store, masking -------------------------------------------------------


def test_a_replayed_signed_callback_is_answered_and_stored_nowhere(receiver, client):
    # Given a signed task callback for a task we do not know, delivered once
    task = "unknown-" + uuid.uuid4().hex[:8]
    body = {
        "callbackType": 1,
        "userTaskID": task,
        "taskID": "1",
        "taskStatus": 3,
        "taskStat": {"totalCall": 1},
    }
    first, headers = signed_post(receiver.url, "/callbacks/callbot/task", body)
    assert first.status_code == 200
    before = Ledger(client).unmatched_bytes()
    # When the very same request is replayed 20 times
    for _ in range(20):
        resp, _ = signed_post(receiver.url, "/callbacks/callbot/task", body, headers=headers)
        assert resp.status_code == 200
    # Then it is stored once, never counted again
    rows = unmatched_for(client, userTaskID=task)
    assert len(rows) == 1 and rows[0]["repeats"] == 1
    assert Ledger(client).unmatched_bytes() == before


def test_the_same_unknown_callback_is_stored_once_and_counted(receiver, client):
    orderid = "stranger" + uuid.uuid4().hex[:12]
    body = cdr(orderid, str(uuid.uuid4()))
    for _ in range(50):
        assert post(receiver.url, CDR_PATH, body).status_code == 200
    rows = unmatched_for(client, orderid=orderid)
    assert len(rows) == 1 and rows[0]["repeats"] == 50 and rows[0]["reason"] == "no job"


def test_the_unmatched_store_is_bounded_in_bytes_and_keeps_the_newest(client):
    # Given a ledger whose unmatched store may hold 20 KB, each body cut at 512 bytes
    client.delete(keys.CALLBACKS_UNMATCHED, keys.CALLBACKS_UNMATCHED_ENTRIES)
    ledger = Ledger(client, unmatched_max_bytes=20_000, unmatched_body_bytes=512)
    # When 200 unknown callbacks of about 5 KB each arrive
    for i in range(200):
        ledger.apply(events.from_dict(events.CDR, cdr(f"nobody{i:04d}", f"s{i}", pad="é" * 2500)))
    # Then the store holds at most 20 KB, the newest entries survive, each cut to valid text
    assert ledger.unmatched_bytes() <= 20_000
    rows = ledger.unmatched(1000)
    assert 10 <= len(rows) < 200 and rows[0]["ids"]["orderid"] == "nobody0199"
    assert all(r["truncated"] and len(r["callback"].encode()) <= 512 for r in rows)
    entries = client.hgetall(keys.CALLBACKS_UNMATCHED_ENTRIES)
    total = sum(len(v.encode()) for k, v in entries.items() if k.startswith("e:"))
    assert total == ledger.unmatched_bytes()
    client.delete(keys.CALLBACKS_UNMATCHED, keys.CALLBACKS_UNMATCHED_ENTRIES)


def test_numbers_are_masked_whatever_their_json_type_or_field(receiver, client, store):
    # Given unknown DRs with the number as a JSON number, and in the legacy shape's basic fields
    batch = "b" + uuid.uuid4().hex[:10]
    legacy = {
        "messageId": uuid.uuid4().hex,
        "code": 0,
        "msg": "success",
        "batchNo": batch,
        "phone": 6591234567,
        "data": {
            "basic": {"nationalNumber": 91234567, "standNumber": "+6591234567", "countryCode": 65}
        },
    }
    assert post(receiver.url, NC_PATH, json.dumps(legacy)).status_code == 200
    text = json.dumps(unmatched_for(client, batchNo=batch))
    assert "91234567" not in text and "4567" in text
    # And on a job's own record
    job_id, request_id = check_job(store, ["6591234567"])
    assert (
        post(receiver.url, NC_PATH, json.dumps(dr(request_id, 1, 6591234567, job_id))).status_code
        == 200
    )
    record = store.get(job_id)
    assert record.state == JobState.COMPLETED and "91234567" not in json.dumps(record.callbacks)


# ---- authentication failures: one answer, quiet logs ---------------------------------------------


def test_every_authentication_failure_gets_the_same_answer(receiver):
    body = {"callbackType": 1, "userTaskID": "t", "taskID": "1", "taskStatus": 3}
    text = serialize_body(body)
    good = callbot_headers(
        secret_key=accounts.CALLBOT_SECRET_KEY,
        uuid=accounts.CALLBOT_UUID,
        request_id=uuid.uuid4().hex,
        create_ts_s=int(time.time()),
        body_text=text,
    )
    sha = callbot_headers(
        secret_key=accounts.CALLBOT_SECRET_KEY,
        uuid=accounts.CALLBOT_UUID,
        request_id=uuid.uuid4().hex,
        create_ts_s=int(time.time()),
        body_text=text,
        algorithm="sha256",
    )
    answers = [
        requests.post(f"{receiver.url}{CDR_PATH}/{'x' * 36}", data=b"{}", timeout=5),  # wrong token
        requests.post(
            receiver.url + "/callbacks/callbot/task",
            data=text.encode(),
            timeout=5,
            headers={**good, "sign": "0" * 32},
        ),  # bad signature
        requests.post(
            receiver.url + "/callbacks/callbot/task",
            data=text.encode(),
            timeout=5,
            headers={**good, "createTs": str(int(time.time()) - 3600)},
        ),  # stale
        requests.post(
            receiver.url + "/callbacks/callbot/task", data=text.encode(), timeout=5, headers=sha
        ),  # a valid SHA-256 sign on an MD5 account: not the account's algorithm
    ]
    assert {(a.status_code, a.content) for a in answers} == {(401, b'{"error":"unauthorized"}')}


def test_a_flood_of_refusals_writes_a_few_log_lines(receiver):
    before = receiver.proc.log_text().count("callback rejected")
    with requests.Session() as s:
        for _ in range(300):
            s.post(f"{receiver.url}{CDR_PATH}/{'y' * 36}", data=b"{}", timeout=5)
    health = requests.get(receiver.url + "/healthz", timeout=5).json()
    assert health["counts"]["rejected_401:bad token"] >= 300
    assert receiver.proc.log_text().count("callback rejected") - before <= 2


def test_a_completed_coalesced_member_keeps_its_own_and_still_knows_a_repeat(
    receiver, client, callbacks_redis_url
):
    from config.settings import CoalesceSettings
    from nxjobs import coalesce

    # Given a coalesced member whose batch was sent and whose DR completed it
    queue = coalesce.CoalesceQueue(client, CoalesceSettings(max_numbers=4), ttl_s=600)
    job_id, batch_id, request_id = uuid.uuid4().hex, str(uuid.uuid4()), uuid.uuid4().hex
    phone, now_iso = "6592000001", "2026-12-02T00:00:00.000Z"
    queue.enqueue("nc1", [(job_id, phone, json.dumps({"phones": ["659***0001"]}))], now_iso)
    assert queue.take("nc1", batch_id, time.time(), now_iso).members == [(job_id, phone)]
    outcome = coalesce.MemberOutcome(job_id, False, {"requestId": request_id, "numbers": 1})
    queue.fan_out(
        batch_id,
        [{"endpoint": "/api/number/check"}],
        [outcome],
        now_s=time.time(),
        now_iso=now_iso,
        due_at_s=time.time() + 600,
    )
    batch_no = coalesce.batch_no_of(batch_id)
    first = dr(request_id, 1, phone, batch_no)
    assert post(receiver.url, NC_PATH, first).status_code == 200
    store = RecordStore(client)
    record = store.get(job_id)
    assert record.state == JobState.COMPLETED and (
        record.callbacks_needed,
        record.callbacks_done,
    ) == (1, 1)
    assert record.result["requestId"] == request_id
    assert record.request == [{"endpoint": "/api/number/check"}]
    # and the record shows the DR as it came (its number masked)
    [shown] = record.callbacks
    assert shown["data"] == {**first, "phone": "659***0001"}, shown
    assert (shown["type"], shown["source"]) == ("number-check", "callback")
    assert shown["received_at"] == record.updated_at
    assert store.callbacks(job_id).callbacks == [shown]
    # Then its hash holds no proof fields any more, and only its own part of the DR
    assert not {keys.PROOF_BATCH, keys.PROOF_ID, "callbacks_needed"} & set(
        client.hkeys(keys.job(job_id))
    )
    [kept] = [v for f, v in client.hgetall(keys.job(job_id)).items() if f.startswith("cb:")]
    assert batch_no not in kept and request_id not in kept
    assert client.memory_usage(keys.job(job_id)) <= 512
    # and it has no index key of its own: its batch's member index finds it
    assert client.hget(keys.member_index(batch_no), phone) == job_id
    assert not client.exists(keys.callback_index("nc-num", f"{batch_no}:{phone}"))
    # and `nxjobs wait` shows its own progress, 1 of 1
    nxjobs = cli_runner(callbacks_redis_url, Path(__file__).resolve().parents[2])
    proc = nxjobs("wait", "--progress", "--until", "completed", "--timeout", "5", job_id)
    assert proc.returncode == 0, proc.stderr
    assert "callbacks 1/1" in proc.stderr, proc.stderr
    # and the same DR again is a repeat, stored nowhere
    before = client.hgetall(keys.job(job_id))
    assert post(receiver.url, NC_PATH, first).status_code == 200
    assert client.hgetall(keys.job(job_id)) == before
    assert not unmatched_for(client, requestId=first["requestId"])
    # while another DR naming its batch and number proves nothing
    other = dr(uuid.uuid4().hex, 1, phone, batch_no)
    assert post(receiver.url, NC_PATH, other).status_code == 200
    assert client.hgetall(keys.job(job_id)) == before
    assert unmatched_for(client, requestId=other["requestId"])
    # nor does its own DR sent as another batch's, or for a number its batch does not have
    for forged in (
        dr(request_id, 2, phone, uuid.uuid4().hex),
        dr(request_id, 3, "6592000009", batch_no),
    ):
        assert post(receiver.url, NC_PATH, forged).status_code == 200
        assert client.hgetall(keys.job(job_id)) == before
        assert unmatched_for(client, requestId=forged["requestId"])


def test_a_sharded_member_index_finds_each_member_and_refuses_other_numbers(receiver, client):
    from config.settings import CoalesceSettings
    from nxjobs import coalesce

    # Given a batch of more members than one index shard holds, sent and fanned out
    n = keys.MEMBER_INDEX_SHARD_SIZE + 6
    queue = coalesce.CoalesceQueue(client, CoalesceSettings(max_numbers=n), ttl_s=600)
    batch_id, request_id, now_iso = str(uuid.uuid4()), uuid.uuid4().hex, "2026-12-03T00:00:00.000Z"
    members = [(uuid.uuid4().hex, f"659300{i:04d}") for i in range(n)]
    queue.enqueue(
        "nc1", [(j, p, json.dumps({"phones": ["659***0000"]})) for j, p in members], now_iso
    )
    assert queue.take("nc1", batch_id, time.time(), now_iso).members == members
    document = {"requestId": request_id, "numbers": 1}
    queue.fan_out(
        batch_id,
        [{"endpoint": "/api/number/check"}],
        [coalesce.MemberOutcome(j, False, document) for j, _ in members],
        now_s=time.time(),
        now_iso=now_iso,
        due_at_s=time.time() + 600,
    )
    batch_no = coalesce.batch_no_of(batch_id)
    index = keys.member_index(batch_no)
    assert client.hget(index, keys.MEMBER_INDEX_SHARDS) == "2"
    # When each member's DR comes, it completes that member and no other
    store = RecordStore(client)
    for i, (_job_id, phone) in enumerate(members):
        assert post(receiver.url, NC_PATH, dr(request_id, i + 1, phone, batch_no)).ok
    records = store.get_many([j for j, _ in members])
    for i, (job_id, _phone) in enumerate(members):
        record = records[job_id]
        assert record.state == JobState.COMPLETED, (i, record.state)
        assert [c["data"]["requestId"] for c in record.callbacks] == [f"{request_id}-{i + 1:06d}"]
    # and a number the batch does not have, in either shard, proves nothing
    for phone in ("6593009999", "6593009998"):
        forged = dr(request_id, 900, phone, batch_no)
        assert post(receiver.url, NC_PATH, forged).ok
        assert unmatched_for(client, requestId=forged["requestId"])


def test_a_member_of_a_batch_built_before_member_indexes_is_still_found(receiver, client):
    from config.settings import CoalesceSettings
    from nxjobs import coalesce

    # Given a sent batch whose member is indexed the way earlier versions did it: a key of its
    # own, no member index for the batch
    queue = coalesce.CoalesceQueue(client, CoalesceSettings(max_numbers=4), ttl_s=600)
    job_id, batch_id, request_id = uuid.uuid4().hex, str(uuid.uuid4()), uuid.uuid4().hex
    phone, now_iso = "6592000002", "2026-12-02T00:00:00.000Z"
    queue.enqueue("nc2", [(job_id, phone, json.dumps({"phones": ["659***0002"]}))], now_iso)
    assert queue.take("nc2", batch_id, time.time(), now_iso).members == [(job_id, phone)]
    outcome = coalesce.MemberOutcome(job_id, False, {"requestId": request_id, "numbers": 1})
    queue.fan_out(
        batch_id,
        [{"endpoint": "/api/number/check"}],
        [outcome],
        now_s=time.time(),
        now_iso=now_iso,
        due_at_s=time.time() + 600,
    )
    batch_no = coalesce.batch_no_of(batch_id)
    client.delete(keys.member_index(batch_no))
    client.set(keys.member_index_before_shards(batch_no, phone), job_id, ex=600)
    # When its DR comes
    assert post(receiver.url, NC_PATH, dr(request_id, 1, phone, batch_no)).status_code == 200
    # Then it completes the member, and nothing goes to the unmatched store
    record = RecordStore(client).get(job_id)
    assert record.state == JobState.COMPLETED, record
    assert not unmatched_for(client, batchNo=batch_no)
