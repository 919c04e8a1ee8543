"""Many callbacks per Redis call (nxjobs/callbacks/applier.py), against a real redis-server."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
import redis
import redis.asyncio as aioredis

from nxjobs import correlate, keys
from nxjobs.callbacks import events
from nxjobs.callbacks.applier import BatchApplier, CallbackApplyError
from nxjobs.callbacks.ledger import Ledger
from nxjobs.jobs import validate_payload
from nxjobs.records import JobState
from nxjobs.store import RecordStore

pytestmark = pytest.mark.timeout(60)


@pytest.fixture()
def db_url(redis_url):
    """A database of its own: these tests write records, callbacks and a broken key."""
    url = redis_url.rsplit("/", 1)[0] + "/7"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()


def submitted_check(store: RecordStore, phones: list[str]) -> tuple[str, str]:
    job_id, request_id = uuid.uuid4().hex, uuid.uuid4().hex
    payload = validate_payload("number-check", {"phones": phones})
    store.create(
        job_id, "number-check", {}, expect=correlate.on_enqueue("number-check", job_id, payload)
    )
    store.transition(job_id, JobState.RUNNING)
    store.transition(
        job_id,
        JobState.SUBMITTED,
        result={
            "requestId": request_id,
            "batchNo": job_id,
            "numbers": len(phones),
            "failNumber": [],
        },
    )
    return job_id, request_id


def dr(request_id: str, n: int, phone: str, batch_no: str) -> events.Event:
    return events.parse(
        events.NUMBER_CHECK,
        json.dumps(
            {
                "requestId": f"{request_id}-{n:06d}",
                "code": 0,
                "message": "Success",
                "phone": phone,
                "batchNo": batch_no,
                "data": {"numberType": "mobile", "operator": "X", "country": "SG"},
            }
        ),
    )


async def apply_all(url: str, evs: list[events.Event], *, flush_scripts: bool = False) -> list:
    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        applier = BatchApplier(Ledger(client))
        if flush_scripts:
            await applier.apply(evs[0])
            await client.script_flush()  # as after a Redis restart
            evs = evs[1:]
        return await asyncio.gather(*(applier.apply(e) for e in evs), return_exceptions=True)
    finally:
        await client.aclose()


def test_concurrent_callbacks_share_a_call_and_each_is_recorded(db_url):
    sync = redis.Redis.from_url(db_url, decode_responses=True)
    store = RecordStore(sync)
    phones = [str(6591000000 + i) for i in range(30)]
    job_id, request_id = submitted_check(store, phones)
    # When 30 callbacks (one a repeat) arrive together
    evs = [dr(request_id, i + 1, p, job_id) for i, p in enumerate(phones)] + [
        dr(request_id, 1, phones[0], job_id)
    ]
    out = asyncio.run(apply_all(db_url, evs))
    # Then each has its own outcome, and the job completed once every number had its result
    assert [a.outcome for a in out] == ["recorded"] * 30 + ["duplicate"]
    page = store.callbacks(job_id, "0", 100)
    assert page is not None and page.total == 30 and page.next_cursor is None
    assert len({c["data"]["requestId"] for c in page.callbacks}) == 30
    record = store.get(job_id)
    assert record.callbacks_summary == {"number-check:0": 30}
    assert record.state == JobState.COMPLETED


def test_a_callback_whose_script_fails_fails_alone(db_url):
    sync = redis.Redis.from_url(db_url, decode_responses=True)
    store = RecordStore(sync)
    job_id, request_id = submitted_check(store, ["6591000001", "6591000002"])
    # Given a callback whose correlation key holds the wrong type (the script raises WRONGTYPE on
    # it)
    broken = uuid.uuid4().hex
    sync.hset(keys.callback_index("nc-req", broken), "x", "y")
    evs = [
        dr(request_id, 1, "6591000001", job_id),
        dr(broken, 1, "6591000009", job_id),
        dr(request_id, 2, "6591000002", job_id),
    ]
    # When all three leave in the same call
    out = asyncio.run(apply_all(db_url, evs))
    # Then only the broken one fails (its request would get a 503 and be delivered again)
    assert isinstance(out[1], CallbackApplyError) and "WRONGTYPE" in str(out[1])
    assert [out[0].outcome, out[2].outcome] == ["recorded", "recorded"]
    assert store.get(job_id).state == JobState.COMPLETED


def test_script_forgotten_by_redis_is_loaded_again(db_url):
    sync = redis.Redis.from_url(db_url, decode_responses=True)
    store = RecordStore(sync)
    phones = ["6591000001", "6591000002", "6591000003"]
    job_id, request_id = submitted_check(store, phones)
    out = asyncio.run(
        apply_all(
            db_url,
            [dr(request_id, i + 1, p, job_id) for i, p in enumerate(phones)],
            flush_scripts=True,
        )
    )
    assert [a.outcome for a in out] == ["recorded", "recorded"]
    assert store.get(job_id).state == JobState.COMPLETED
