"""Coalescing single Callbot contacts into shared addBatchCall requests (nxjobs.coalesce, group =
one task), end to end: real Redis, real Celery worker, real HTTP to the sandbox, every call and
order callback through the real receiver."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from nxjobs import coalesce, keys
from nxjobs.jobs import InvalidJob
from nxjobs.records import JobState
from tests.integration.test_coalesce import _pool_children

pytestmark = pytest.mark.integration

WAIT_S = 30
ADD_PATH = "/callcentre/api/v3/addBatchCall"


def _task(producer) -> str:
    """An existing Callbot task (created, started and finished by a callbot-list job): its
    userTaskID."""
    job_id = producer.callbot_list(
        scene_id="scene-1", task_name="base", contacts=[{"user_phone": "8613900139000"}]
    )
    record = producer.wait([job_id], until="completed", timeout_s=WAIT_S)[job_id]
    assert record.state == JobState.COMPLETED, (record.state, record.error)
    return job_id


def _adds(sandbox, user_task_id: str) -> list[list[str]]:
    """The orderIDs of each addBatchCall the sandbox received for `user_task_id`, oldest first."""
    return [
        [item["orderID"] for item in r["body"]["callInfoList"]["callList"]]
        for r in sandbox.requests(path=ADD_PATH, limit=2000)
        if r["body"].get("userTaskID") == user_task_id
    ]


def _order_callbacks(record) -> list[dict]:
    return [c for c in record.callbacks if c["type"] == "callbot-order"]


def test_single_contacts_share_one_request_and_each_job_completes_by_its_own_order(
    cb_producer, cb_sandbox, callbacks_worker
):
    # Given an existing task, and 20 contacts enqueued for it one by one, one with its own orderID
    task_id = _task(cb_producer)
    delays_before = _contact_delays_counted(cb_producer)
    phones = [f"86139{i:08d}" for i in range(1, 21)]
    job_ids = [
        cb_producer.callbot_contact(
            user_task_id=task_id, contact={"user_phone": p, "user_name": f"n{i}"}
        )
        for i, p in enumerate(phones[:-1])
    ]
    job_ids.append(
        cb_producer.callbot_contact(
            user_task_id=task_id, contact={"user_phone": phones[-1], "order_id": "crm-row-77"}
        )
    )
    # When they complete
    records = cb_producer.wait(job_ids, until="completed", timeout_s=WAIT_S)
    # Then one addBatchCall carried all 20 contacts, under orderIDs derived from the job ids
    assert _adds(cb_sandbox, task_id) == [job_ids[:-1] + ["crm-row-77"]]
    # and each job completed by its own order callback, correlated by its orderID
    for job_id, phone in zip(job_ids, phones, strict=True):
        record = records[job_id]
        assert record.state == JobState.COMPLETED, (record.state, record.error)
        order_id = "crm-row-77" if job_id == job_ids[-1] else job_id
        assert record.result["orderID"] == order_id and record.result["userTaskID"] == task_id
        assert record.result["coalesced"]["contacts"] == 20
        assert (record.callbacks_needed, record.callbacks_done) == (1, 1)
        orders = _order_callbacks(record)
        assert [c["data"]["orderID"] for c in orders] == [order_id]
        assert {c["data"]["orderID"] for c in record.callbacks} == {
            order_id
        }  # its call callback too
        # phones masked wherever an operator looks: input, request, callbacks
        assert phone not in record.model_dump_json()
    # and the list job that owns the task kept only its own order
    owner = cb_producer.get(task_id)
    assert {c["data"]["orderID"] for c in _order_callbacks(owner)} == {f"{task_id}-0"}
    # and each completion time is counted under the contact kind (the receiver writes them every 0.5
    # s)
    deadline = time.monotonic() + 5
    while _contact_delays_counted(cb_producer) < delays_before + 20 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _contact_delays_counted(cb_producer) == delays_before + 20


def _contact_delays_counted(producer) -> int:
    from nxjobs import metrics

    cell = f"{metrics.HIST_CALLBACK_DELAY}|callbot-contact|count"
    return int(producer.redis.hget(keys.METRICS_HISTOGRAMS, cell) or 0)


def test_a_full_batch_is_sent_at_once_and_the_rest_after_the_linger(
    cb_producer, cb_sandbox, callbacks_worker
):
    # Given 600 contacts for one task enqueued in one call (max_contacts 500 by default)
    task_id = _task(cb_producer)
    payloads = [
        {"user_task_id": task_id, "contact": {"user_phone": f"86138{i:08d}"}} for i in range(600)
    ]
    job_ids = cb_producer.enqueue_many("callbot-contact", payloads)
    # Then every job completes, from two requests: a full one of 500 and the other 100
    _completed(cb_producer, job_ids)
    adds = _adds(cb_sandbox, task_id)
    assert sorted(len(a) for a in adds) == [100, 500]
    assert sorted(o for a in adds for o in a) == sorted(job_ids)
    # each counted once by the provider: 1 (the list's) + 600 orders, none refused as a repeat
    stats = cb_sandbox.stats()
    assert stats["accepted"]["callbot_orders"] == 601
    assert stats["duplicate_rejections"]["callbot_orderid"] == 0


def test_a_lone_contact_is_sent_after_the_linger(cb_producer, cb_sandbox, callbacks_worker):
    task_id = _task(cb_producer)
    started = time.monotonic()
    job_id = cb_producer.callbot_contact(
        user_task_id=task_id, contact={"user_phone": "8613700137000"}
    )
    record = cb_producer.wait([job_id], until="submitted", timeout_s=WAIT_S)[job_id]
    elapsed = time.monotonic() - started
    assert record.reached(JobState.SUBMITTED), record
    assert _adds(cb_sandbox, task_id) == [[job_id]]
    assert elapsed >= cb_producer.coalesce.settings.linger_s


def test_a_refused_contact_fails_only_its_own_job(cb_producer, cb_sandbox, callbacks_worker):
    # Given 5 contacts for one task, one of them a number the provider refuses in errList
    task_id = _task(cb_producer)
    phones = ["8613600136001", "8613600136002", "9971234567", "8613600136004", "8613600136005"]
    job_ids = cb_producer.enqueue_many(
        "callbot-contact", [{"user_task_id": task_id, "contact": {"user_phone": p}} for p in phones]
    )
    records = cb_producer.wait(job_ids, until="completed", timeout_s=WAIT_S)
    # Then they shared one request; the refused one failed with the provider's reason, the rest
    # completed
    assert len(_adds(cb_sandbox, task_id)) == 1
    refused = records[job_ids[2]]
    assert refused.state == JobState.FAILED
    assert refused.error.code == "contact_rejected" and "do-not-call" in refused.error.message
    assert "9971234567" not in refused.model_dump_json()
    for job_id in job_ids[:2] + job_ids[3:]:
        assert records[job_id].state == JobState.COMPLETED, (
            records[job_id].state,
            records[job_id].error,
        )
    # and it waits in the dead letters to be replayed on its own, with its own contact and orderID
    entry = next(
        e
        for e in cb_producer.dead_letters.list(kind="callbot-contact")
        if e["job_id"] == job_ids[2]
    )
    assert entry["payload"] == {
        "user_task_id": task_id,
        "contact": {"user_phone": "9971234567", "order_id": job_ids[2]},
    }


def test_batch_false_sends_a_request_of_its_own(cb_producer, cb_sandbox, callbacks_worker):
    task_id = _task(cb_producer)
    job_id = cb_producer.callbot_contact(
        user_task_id=task_id, contact={"user_phone": "8613500135000"}, batch=False
    )
    record = cb_producer.wait([job_id], until="completed", timeout_s=WAIT_S)[job_id]
    assert record.state == JobState.COMPLETED, (record.state, record.error)
    assert _adds(cb_sandbox, task_id) == [[job_id]]
    assert record.result == {"userTaskID": task_id, "orderID": job_id, "contacts": 1}
    assert [c["data"]["orderID"] for c in _order_callbacks(record)] == [job_id]


def test_contacts_for_a_task_that_does_not_exist_fail_with_the_providers_code(
    cb_producer, cb_sandbox, callbacks_worker
):
    job_ids = cb_producer.enqueue_many(
        "callbot-contact",
        [
            {"user_task_id": "no-such-task", "contact": {"user_phone": f"8613400134{i:03d}"}}
            for i in range(3)
        ],
    )
    records = cb_producer.wait(job_ids, timeout_s=WAIT_S)
    assert len(_adds(cb_sandbox, "no-such-task")) == 1  # permanent: not retried
    for record in records.values():
        assert record.state == JobState.FAILED and record.error.code == "4", (
            record.state,
            record.error,
        )


def _completed(producer, job_ids: list[str], timeout_s: float = WAIT_S) -> dict:
    """The records once every job completed (or failed); fails naming the states and errors seen
    otherwise."""
    records = producer.wait(job_ids, until="completed", timeout_s=timeout_s)
    outcomes = {
        (r.state, r.error.code if r.error else None) if r else None for r in records.values()
    }
    assert outcomes == {(JobState.COMPLETED, None)}, outcomes
    return records


def _until(condition, message: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.05)


def test_worker_killed_holding_a_sent_batch_loses_nothing_and_adds_no_contact_twice(
    cb_producer, cb_sandbox, callbacks_worker
):
    # Given a batch of contacts the provider adds (and dials) but answers slowly
    task_id = _task(cb_producer)
    cb_sandbox.configure(slow_rate=1.0, slow_seconds=3.0)
    job_ids = cb_producer.enqueue_many(
        "callbot-contact",
        [{"user_task_id": task_id, "contact": {"user_phone": f"86133{i:08d}"}} for i in range(30)],
    )
    _until(lambda: _adds(cb_sandbox, task_id), "the batch was never sent")
    # When every pool process of the worker is killed while it waits for that answer
    killed = _pool_children(callbacks_worker.proc.pid)
    cb_sandbox.configure(slow_rate=0.0)
    for child in killed:
        os.kill(child, signal.SIGKILL)
    # Then the redelivered flush sends its batch again, which the provider refuses as already
    # present: every job completes by its own order callback
    records = _completed(cb_producer, job_ids, WAIT_S + 15)
    for job_id, record in records.items():
        assert [c["data"]["orderID"] for c in _order_callbacks(record)] == [job_id]
    # and no contact was added (or dialled) twice: the same 30 orderIDs every time, 1 + 30 orders
    # accepted
    adds = _adds(cb_sandbox, task_id)
    assert all(sorted(a) == sorted(job_ids) for a in adds)
    stats = cb_sandbox.stats()
    assert stats["accepted"]["callbot_orders"] == 31
    assert stats["duplicates"]["callbot_orderid"] == 0
    assert stats["duplicate_rejections"]["callbot_orderid"] == 30 * (len(adds) - 1)
    orders = [
        json.loads(c["body"])
        for c in cb_sandbox.callbacks(kind="callbot-order", limit=2000)
        if c["attempt"] == 1
    ]
    dialled = [o["orderID"] for o in orders if o["userTaskID"] == task_id]
    assert sorted(dialled) == sorted([f"{task_id}-0"] + job_ids)


@pytest.mark.parametrize(
    "payload, field",
    [
        (
            {"user_task_id": "not a task id!", "contact": {"user_phone": "8613800138000"}},
            "user_task_id",
        ),
        ({"user_task_id": "t" * 65, "contact": {"user_phone": "8613800138000"}}, "user_task_id"),
        ({"user_task_id": "task-1", "contact": {"user_phone": "86-138"}}, "contact.user_phone"),
        (
            {
                "user_task_id": "task-1",
                "contact": {"user_phone": "8613800138000", "order_id": "a b"},
            },
            "contact.order_id",
        ),
        ({"contact": {"user_phone": "8613800138000"}}, "user_task_id"),
        ({"user_task_id": "task-1"}, "contact"),
    ],
)
def test_bad_input_names_the_field_and_enqueues_nothing(producer, payload, field):
    before = {q: producer.redis.llen(q) for q in ("callbot", "api2")}
    pending = list(producer.redis.scan_iter(match=keys.coalesce_pending("*")))
    for batch in (True, False):
        with pytest.raises(InvalidJob) as caught:
            producer.enqueue("callbot-contact", payload, batch=batch)
        assert caught.value.field == field
    assert {q: producer.redis.llen(q) for q in ("callbot", "api2")} == before
    assert list(producer.redis.scan_iter(match=keys.coalesce_pending("*"))) == pending


def test_an_order_id_already_used_is_refused_before_anything_is_written(producer):
    contact = {"user_phone": "8613800138000", "order_id": f"dup-{time.time_ns()}"}
    first = producer.callbot_contact(user_task_id="task-dup", contact=contact)
    with pytest.raises(InvalidJob) as caught:
        producer.callbot_contact(user_task_id="task-dup", contact=contact)
    assert caught.value.field == "contact.order_id" and first in caught.value.message
    with pytest.raises(InvalidJob) as caught:
        producer.enqueue_many(
            "callbot-contact",
            [
                {"user_task_id": "t2", "contact": {**contact, "order_id": "x1"}},
                {"user_task_id": "t2", "contact": {**contact, "order_id": "x1"}},
            ],
        )
    assert caught.value.field == "1.contact.order_id"
    assert producer.redis.llen(keys.coalesce_pending(coalesce.contact_group("t2"))) == 0
    producer.redis.delete(
        keys.coalesce_pending(coalesce.contact_group("task-dup"))
    )  # no worker of db 0 here


def test_cli_submits_a_contact_and_names_a_bad_field(redis_url, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("NXJOBS_")}
    env["NXJOBS_REDIS_URL"] = redis_url

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "nxjobs.cli", "submit", "callbot-contact", *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )

    bad = run("--user-task-id", "bad id", "--contact", "8613800138000")
    assert bad.returncode == 2 and "user_task_id" in bad.stderr
    bad = run("--user-task-id", "t1", "--contact", "8613800138000", "--contact", "8613800138001")
    assert bad.returncode == 2 and "contact" in bad.stderr
    ok = run("--user-task-id", "cli-task", "--contact", "8613800138000,,Li", "--no-batch", "--json")
    assert ok.returncode == 0, ok.stderr
    assert "8613800138000" not in ok.stdout and '"user_task_id": "cli-task"' in ok.stdout
    assert '"kind": "callbot-contact"' in ok.stdout


@pytest.fixture(scope="module")
def beat(callbacks_env, callbacks_worker, tmp_path_factory):
    from workers.devstack import start_beat

    proc = start_beat(callbacks_env, log_dir=str(tmp_path_factory.mktemp("beat")))
    yield proc
    proc.stop()


def test_a_contact_whose_callbacks_were_lost_is_completed_by_list_order_detail(
    cb_producer, cb_sandbox, beat
):
    # Given an existing task, then a provider whose every callback is lost
    task_id = _task(cb_producer)
    cb_sandbox.configure(callback_drop_rate=1.0)
    job_ids = cb_producer.enqueue_many(
        "callbot-contact",
        [{"user_task_id": task_id, "contact": {"user_phone": f"86132{i:08d}"}} for i in range(3)],
    )
    # When their deadline (1 s) passes and beat reconciles the callbot family
    records = cb_producer.wait(job_ids, until="completed", timeout_s=WAIT_S)
    # Then each is completed by its own order, found by orderID in one listOrderDetail per run
    for job_id, record in records.items():
        assert record.state == JobState.COMPLETED, (record.state, record.error)
        assert [(c["type"], c["source"], c["data"]["orderID"]) for c in record.callbacks] == [
            ("callbot-order", "reconcile", job_id)
        ]
    asked = {
        o
        for r in cb_sandbox.requests(path="/callcentre/api/v3/listOrderDetail")
        if r["body"].get("userTaskID") == task_id
        for o in r["body"]["orderList"]
    }
    assert asked == set(job_ids)
    assert all(
        cb_producer.redis.zscore(keys.callbacks_waiting("callbot"), j) is None for j in job_ids
    )
