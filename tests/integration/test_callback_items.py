"""A job's size is bounded: a job that can have many callbacks keeps them in its items hash, paged,
its record holding a summary and the first few (nxjobs/lua/lib/items.lua, RecordStore.callbacks);
a small job keeps its callbacks inline, with no second key.

End to end with the sandbox, a real worker and the receiver (`python -m workers.web`) on a real
Redis (db 1); the store-level tests write records as a worker would and apply callbacks through
the ledger, so each controls exactly what a job recorded.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
import redis

from nxjobs import correlate, keys
from nxjobs.callbacks import events
from nxjobs.callbacks.ledger import Ledger
from nxjobs.jobs import validate_payload
from nxjobs.records import JobState
from nxjobs.store import MAX_PAGE, RECORD_CALLBACKS, InvalidCursor, RecordStore
from tests.conftest import cli_runner

pytestmark = pytest.mark.integration

NUMBERS = 1000
WAIT_S = 90


@pytest.fixture()
def client(callbacks_redis_url):
    return redis.Redis.from_url(callbacks_redis_url, decode_responses=True)


def page_all(producer, job_id: str, limit: int) -> tuple[list[dict], int]:
    """Every callback of a job, page by page; and how many pages it took."""
    out, cursor, pages = [], "0", 0
    while cursor is not None:
        page = producer.callbacks(job_id, cursor, limit)
        out += page.callbacks
        cursor, pages = page.next_cursor, pages + 1
        assert pages <= NUMBERS, "paging does not end"
    return out, pages


def test_a_thousand_number_check_keeps_its_record_small_and_pages_its_results(
    cb_producer, cb_sandbox, callbacks_worker, client, callbacks_redis_url, tmp_path
):
    # Given a 1 000-number check sent on its own (one request, one DR per number)
    phones = [str(6591000000 + i) for i in range(NUMBERS)]
    job_id = cb_producer.number_check(phones=phones)
    # When it runs and every DR arrives
    record = cb_producer.wait([job_id], until="completed", timeout_s=WAIT_S)[job_id]
    assert record.state == JobState.COMPLETED, (record.state, record.error)
    # Then its job hash holds fixed fields and the summary only; the DRs and marks are in its
    # items hash, which lives exactly as long as the record
    assert client.hlen(keys.job(job_id)) < 40
    assert not any(":" in f for f in client.hkeys(keys.job(job_id)))
    assert client.hlen(keys.job_items(job_id)) == 2 * NUMBERS + NUMBERS  # dedupe, entry, mark
    assert abs(client.ttl(keys.job_items(job_id)) - client.ttl(keys.job(job_id))) <= 1
    # and its record shows the summary, the progress and the first callbacks, not all of them
    assert (record.callbacks_needed, record.callbacks_done) == (NUMBERS, NUMBERS)
    assert record.callbacks_paged and record.callbacks_stored == NUMBERS
    assert sum(record.callbacks_summary.values()) == NUMBERS
    assert record.callbacks_summary == {"number-check:0": NUMBERS}
    assert len(record.callbacks) == RECORD_CALLBACKS
    # (its input and request name the 1 000 masked numbers, as any job's payload; the rest is
    # bounded whatever the callbacks)
    assert len(record.model_dump_json(exclude={"input", "request"})) < 10_000
    assert len(record.model_dump_json()) < 3 * len(json.dumps(record.input)) + 10_000
    # and paging through it returns each DR exactly once, in pages of the size asked
    items, pages = page_all(cb_producer, job_id, 128)
    ids = [c["data"]["requestId"] for c in items]
    assert len(ids) == NUMBERS and len(set(ids)) == NUMBERS and pages == 8
    assert {c["data"]["phone"] for c in items} == {correlate.phone_key(p) for p in phones}
    assert items[:RECORD_CALLBACKS] == record.callbacks
    assert cb_producer.callbacks(job_id, str(NUMBERS), 10).callbacks == []
    # and the CLI pages the same items and shows the summary with the status
    cli = cli_runner(callbacks_redis_url, tmp_path)
    shown = cli("callbacks", job_id, "--cursor", "990", "--limit", "20", "--json")
    assert shown.returncode == 0, shown.stderr
    page = json.loads(shown.stdout)
    assert page["total"] == NUMBERS and page["next_cursor"] is None
    assert [c["data"]["requestId"] for c in page["callbacks"]] == ids[990:]
    text = cli("callbacks", job_id, "--limit", "3")
    assert text.returncode == 0 and text.stdout.splitlines()[-1].endswith("next: --cursor 3")
    status = cli("status", job_id).stdout
    assert f"callbacks {NUMBERS}/{NUMBERS} done" in status and "number-check:0=1000" in status
    bad = cli("callbacks", job_id, "--cursor", "abc")
    assert bad.returncode == 2 and bad.stderr.startswith("error: invalid cursor 'abc'")
    assert cli("callbacks", "0" * 32).returncode == 1


def test_a_call_keeps_its_cdr_inline_with_no_second_key(
    cb_producer, cb_sandbox, callbacks_worker, client
):
    # When a call is placed and its CDR arrives
    job_id = cb_producer.call(phone="8613800138000")
    record = cb_producer.wait([job_id], until="completed", timeout_s=WAIT_S)[job_id]
    assert record.state == JobState.COMPLETED, (record.state, record.error)
    # Then the CDR is a field of the job's own hash, and no items hash exists
    assert client.exists(keys.job_items(job_id)) == 0
    assert client.hget(keys.job(job_id), keys.CALLBACKS_PAGED) is None
    assert client.hget(keys.job(job_id), keys.CALLBACKS_SUMMARY) is None
    assert [f for f in client.hkeys(keys.job(job_id)) if f.startswith(keys.CALLBACK_FIELD)]
    # and its record shows it as before, its summary read from it
    assert [c["type"] for c in record.callbacks] == ["cdr"] and not record.callbacks_paged
    assert record.callbacks_summary == {"cdr:NORMAL_CLEARING": 1}
    page = cb_producer.callbacks(job_id)
    assert page.callbacks == record.callbacks and page.total == 1 and page.next_cursor is None


def test_a_callbot_list_pages_its_calls_and_orders(cb_producer, cb_sandbox, callbacks_worker):
    contacts = [{"user_phone": f"86139001390{i:02d}"} for i in range(12)]
    job_id = cb_producer.callbot_list(scene_id="s", task_name="t", contacts=contacts)
    record = cb_producer.wait([job_id], until="completed", timeout_s=WAIT_S)[job_id]
    assert record.state == JobState.COMPLETED, (record.state, record.error)
    # Every call and order callback lands (some after the task callback completed it)
    deadline = time.monotonic() + 10
    while cb_producer.get(job_id).callbacks_stored < 25 and time.monotonic() < deadline:
        time.sleep(0.1)
    record = cb_producer.get(job_id)
    items, _ = page_all(cb_producer, job_id, 7)
    assert record.callbacks_paged and len(record.callbacks) == RECORD_CALLBACKS
    types = [c["type"] for c in items]
    assert types.count("callbot-call") == 12 and types.count("callbot-order") == 12
    assert "callbot-task" in types and len(items) == record.callbacks_stored
    summary = record.callbacks_summary
    assert sum(summary.values()) == len(items) and summary["callbot-order:finished"] == 12


# ---- the store and the ledger, without workers ------------------------------------------------


def check_job(store: RecordStore, phones: list[str]) -> str:
    job_id = uuid.uuid4().hex
    payload = validate_payload("number-check", {"phones": phones})
    store.create(
        job_id, "number-check", {}, expect=correlate.on_enqueue("number-check", job_id, payload)
    )
    store.transition(job_id, JobState.RUNNING)
    return job_id


def submit(store: RecordStore, job_id: str, request_id: str, numbers: int):
    return store.transition(
        job_id,
        JobState.SUBMITTED,
        result={"requestId": request_id, "batchNo": job_id, "numbers": numbers, "failNumber": []},
    )


def dr(request_id: str, n: int, phone: str, batch_no: str, code: int = 0) -> events.Event:
    return events.from_dict(
        events.NUMBER_CHECK,
        {
            "requestId": f"{request_id}-{n:06d}",
            "code": code,
            "message": "x",
            "batchNo": batch_no,
            "phone": phone,
        },
    )


PHONES = [str(6592000000 + i) for i in range(12)]


def test_small_and_big_checks_split_at_the_inline_limit(client):
    store = RecordStore(client)
    small = check_job(store, PHONES[: correlate.INLINE_CALLBACKS])
    big = check_job(store, PHONES[: correlate.INLINE_CALLBACKS + 1])
    # A check of up to 8 numbers keeps its marks inline; one more and they go to its items hash
    assert client.exists(keys.job_items(small)) == 0
    assert client.hexists(keys.job(small), keys.proof_phone(correlate.phone_key(PHONES[0])))
    assert not client.hexists(keys.job(big), keys.proof_phone(correlate.phone_key(PHONES[0])))
    assert client.hexists(keys.job_items(big), keys.proof_phone(correlate.phone_key(PHONES[0])))
    assert abs(client.ttl(keys.job_items(big)) - client.ttl(keys.job(big))) <= 1
    # and deleting the record deletes its items with it
    store.delete(big)
    assert client.exists(keys.job(big), keys.job_items(big)) == 0


def test_a_paged_job_keeps_its_cap_proof_and_summary(client):
    store, ledger = RecordStore(client), Ledger(client)
    job_id, request_id = check_job(store, PHONES), uuid.uuid4().hex
    submit(store, job_id, request_id, len(PHONES))
    outcomes = [
        ledger.apply(dr(request_id, n, p, job_id, 0 if n % 3 else 1001)).outcome
        for n, p in enumerate(PHONES, 1)
    ]
    assert outcomes == ["recorded"] * len(PHONES)
    record = store.get(job_id)
    assert record.state == JobState.COMPLETED
    assert record.callbacks_summary == {"number-check:0": 8, "number-check:1001": 4}
    size = client.memory_usage(keys.job_items(job_id))
    # A repeat is a duplicate; a DR for a number not in the job proves nothing; past the cap
    # results are counted, not kept
    assert ledger.apply(dr(request_id, 1, PHONES[0], job_id)).outcome == "duplicate"
    assert ledger.apply(dr(request_id, 99, "6599999999", job_id)).outcome == "unmatched"
    late = [ledger.apply(dr(request_id, 50 + n, PHONES[n % 12], job_id)).outcome for n in range(30)]
    assert late == ["dropped"] * 30
    record = store.get(job_id)
    assert record.callbacks_stored == len(PHONES) and record.callbacks_dropped == 30
    assert sum(record.callbacks_summary.values()) == len(PHONES)
    assert client.memory_usage(keys.job_items(job_id)) <= size + 64


def test_early_results_with_another_id_are_dropped_from_the_items_hash(client):
    store, ledger = RecordStore(client), Ledger(client)
    job_id, forged, real = check_job(store, PHONES), uuid.uuid4().hex, uuid.uuid4().hex
    # Given results that beat the submit answer with a made-up requestId
    for n, phone in enumerate(PHONES[:5], 1):
        assert ledger.apply(dr(forged, n, phone, job_id)).outcome == "recorded"
    assert store.get(job_id).callbacks_stored == 5
    # When the answer names the real one
    submit(store, job_id, real, len(PHONES))
    # Then the early ones, their numbering and summary are gone; the number marks stay
    record = store.get(job_id)
    assert (record.callbacks_stored, record.callbacks_dropped) == (0, 5)
    assert record.callbacks == [] and record.callbacks_summary == {}
    fields = client.hkeys(keys.job_items(job_id))
    assert len(fields) == len(PHONES) and all(f.startswith(keys.PHONE_FIELD) for f in fields)
    # and the real results are numbered from the first again
    for n, phone in enumerate(PHONES, 1):
        assert ledger.apply(dr(real, n, phone, job_id)).outcome == "recorded"
    items = store.callbacks(job_id, "0", MAX_PAGE).callbacks
    assert [c["data"]["requestId"] for c in items] == [f"{real}-{n:06d}" for n in range(1, 13)]
    assert store.get(job_id).state == JobState.COMPLETED


def test_the_items_hash_takes_the_retention_of_the_state_its_job_enters(client):
    # (the workers of this session write the retention hash too: theirs is put back after)
    before = client.hget(keys.RETENTION, "completed")
    store = RecordStore(client, retention_s={"completed": 120})
    ledger = Ledger(client)
    try:
        job_id, request_id = check_job(store, PHONES), uuid.uuid4().hex
        submit(store, job_id, request_id, len(PHONES))
        for n, phone in enumerate(PHONES, 1):
            ledger.apply(dr(request_id, n, phone, job_id))
        assert store.get(job_id).state == JobState.COMPLETED
        assert 110 < client.ttl(keys.job_items(job_id)) <= 120
        assert abs(client.ttl(keys.job_items(job_id)) - client.ttl(keys.job(job_id))) <= 1
    finally:
        if before is None:
            client.hdel(keys.RETENTION, "completed")
        else:
            client.hset(keys.RETENTION, "completed", before)


@pytest.mark.parametrize("cursor", ["abc", "-1", "1.5", "", "9" * 13, "١٢"])
def test_a_cursor_no_page_gave_is_refused_clearly(client, cursor):
    store = RecordStore(client)
    job_id = check_job(store, PHONES)
    with pytest.raises(InvalidCursor, match="invalid cursor"):
        store.callbacks(job_id, cursor, 10)


def test_paging_refuses_a_bad_count_and_a_missing_job_has_no_page(client):
    store = RecordStore(client)
    job_id = check_job(store, PHONES)
    for count in (0, MAX_PAGE + 1):
        with pytest.raises(ValueError, match="count"):
            store.callbacks(job_id, "0", count)
    assert store.callbacks("0" * 32) is None
    empty = store.callbacks(job_id)
    assert (empty.callbacks, empty.next_cursor, empty.total) == ([], None, 0)


def test_a_paged_summary_counts_as_a_small_jobs_does_past_its_outcome_cap(client):
    store, ledger = RecordStore(client), Ledger(client)
    phones = [str(6593000000 + i) for i in range(40)]
    job_id, request_id = check_job(store, phones), uuid.uuid4().hex
    submit(store, job_id, request_id, len(phones))
    for n, phone in enumerate(phones, 1):
        assert ledger.apply(dr(request_id, n, phone, job_id, 2000 + n)).outcome == "recorded"
    # The script's count (a paged job) and the store's reading of the entries (a small job) agree
    summary = store.get(job_id).callbacks_summary
    assert len(summary) == correlate.SUMMARY_OUTCOMES_MAX + 1 and summary["other"] == 8
    assert summary == correlate.summarize(store.callbacks(job_id, "0", MAX_PAGE).callbacks)
