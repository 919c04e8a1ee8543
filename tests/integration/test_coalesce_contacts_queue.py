"""The Redis side of contact coalescing on a real Redis: the pending entries carry each contact's
callList item, the orderID index is set at enqueue, and an order callback completes the contact job
it names while an order of a plain callbot-list job still reaches that list job."""

from __future__ import annotations

import json
import uuid

import pytest

from config.settings import CoalesceSettings
from nxjobs import coalesce, keys
from nxjobs.callbacks import events
from nxjobs.callbacks.ledger import Ledger
from nxjobs.redis_conn import connect
from nxjobs.store import RecordStore

pytestmark = pytest.mark.integration

NOW = "2026-11-23T00:00:00.000Z"
GROUP = coalesce.contact_group("task-1")


@pytest.fixture()
def client(redis_url):
    c = connect(redis_url.rsplit("/", 1)[0] + "/3")
    c.flushdb()
    yield c
    c.flushdb()


@pytest.fixture()
def queue(client):
    return coalesce.CoalesceQueue(
        client, CoalesceSettings(max_contacts=3, max_numbers=2), ttl_s=600
    )


def _contacts(n: int) -> list[tuple[str, str, str, str]]:
    out = []
    for i in range(n):
        job_id = uuid.uuid4().hex
        item = {"orderID": job_id, "userPhone": f"861390013900{i}", "userName": "a|b"}
        out.append(
            (
                job_id,
                job_id,
                json.dumps({"contact": {"user_phone": "861***9000"}}),
                json.dumps(item),
            )
        )
    return out


def _order(order_id: str, finish: bool = True, user_task_id: str = "task-1") -> events.Event:
    return events.from_dict(
        events.CALLBOT_ORDER, {"userTaskID": user_task_id, "orderID": order_id, "finish": finish}
    )


def test_contacts_are_batched_by_max_contacts_with_their_items(queue):
    jobs = _contacts(4)
    # The third push fills a batch of 3 (max_contacts), not of 2 (max_numbers)
    assert queue.enqueue(GROUP, jobs, NOW) == coalesce.Flushes(1, True)
    record = queue.redis.hgetall(keys.job(jobs[0][0]))
    assert (record["kind"], record["state"], record["callbacks_needed"]) == (
        "callbot-contact",
        "queued",
        "1",
    )
    # Found by its orderID from the moment it is enqueued
    assert queue.redis.get(keys.callback_index("cb-order", jobs[0][1])) == jobs[0][0]
    taken = queue.take(GROUP, "batch-1", 1.0, NOW)
    assert [m[0] for m in taken.members] == [j[0] for j in jobs[:3]] and taken.pending_left == 1
    assert taken.items[jobs[1][0]] == json.loads(jobs[1][3])  # a '|' inside the item survives
    # A redelivered flush finds the same batch, items included
    again = queue.take(GROUP, "batch-1", 2.0, NOW)
    assert (again.status, again.members, again.items) == (1, taken.members, taken.items)


def test_an_order_callback_completes_its_contact_job_and_a_list_job_keeps_its_own(client, queue):
    ledger, store = Ledger(client), RecordStore(client, ttl_s=600)
    jobs = _contacts(2)
    queue.enqueue(GROUP, jobs, NOW)
    taken = queue.take(GROUP, "batch-1", 1.0, NOW)
    # An order callback that beats the fan-out is kept and counted on the running contact job
    early = ledger.apply(_order(jobs[0][1]))
    assert (early.status, early.job_id, early.state) == (1, jobs[0][0], "running")
    outcomes = [
        coalesce.MemberOutcome(job_id, False, {"orderID": order_id})
        for job_id, order_id in taken.members
    ]
    completed = queue.fan_out(
        "batch-1", [], outcomes, now_s=3.0, now_iso=NOW, due_at_s=600.0, family="callbot"
    )
    assert completed == [jobs[0][0]]
    assert client.zscore(keys.callbacks_waiting("callbot"), jobs[1][0]) == 600.0
    # The other completes with its own finished order, not with an unfinished one or a repeat
    assert ledger.apply(_order(jobs[1][1], finish=False)).state == "submitted"
    assert ledger.apply(_order(jobs[1][1])).state == "completed"
    assert ledger.apply(_order(jobs[1][1])).outcome == "duplicate"
    # A list job (userTaskID = its id) still gets its orders, which complete nothing on it
    store.create("list-1", "callbot-list", {}, expect=None)
    # (a list of one contact, whose order is `list-1-0`)
    client.hset(
        keys.job("list-1"),
        mapping={"state": "submitted", "callbacks_needed": 1, keys.PROOF_ORDERS: 1},
    )
    applied = ledger.apply(_order("list-1-0", user_task_id="list-1"))
    assert (applied.job_id, applied.state) == ("list-1", "submitted")
    assert client.hget(keys.job("list-1"), "callbacks_done") == "0"
