"""Campaign control of a callbot list (docs/campaigns.md) through a real worker, real Redis and
the sandbox over real HTTP: pause, resume, complete, stop-contacts, update, cancel."""

from __future__ import annotations

import json
import time

import pytest

from nxjobs.campaign import CampaignRefused
from nxjobs.records import JobState

pytestmark = pytest.mark.integration

WAIT_S = 30
PHONES = ["8613900139001", "8613900139002", "8613900139003", "8613900139004"]


def _list(producer, n=4):
    job_id = producer.callbot_list(
        scene_id="scene-1",
        task_name="campaign",
        contacts=[{"user_phone": p, "user_name": f"c{i}"} for i, p in enumerate(PHONES[:n])],
    )
    record = producer.wait([job_id], until="submitted", timeout_s=WAIT_S)[job_id]
    assert record.state == JobState.SUBMITTED, (record.state, record.error)
    return job_id


def _done(producer, job_id, op_id):
    entry = producer.wait_campaign(job_id, op_id, timeout_s=WAIT_S)
    assert entry is not None, f"operation {op_id} not recorded"
    return entry


def _task(handle, job_id):
    with handle.state.lock:
        task = handle.state.stores.cb_tasks[job_id]
        orders = [handle.state.stores.cb_orders[o] for o in task["orderIDs"]]
        return dict(task), [dict(o) for o in orders]


def _dialled(orders):
    return sum(1 for o in orders if o["callInfoDetailList"])


@pytest.fixture()
def paced(sandbox):
    # The first number is dialled when the task starts, the next an hour later: a list stays
    # part-dialled for the whole test.
    sandbox.configure(callbot_dial_interval_s=3600)
    yield sandbox
    sandbox.configure(callbot_dial_interval_s=0)


def test_pause_stops_dialling_and_resume_continues(producer, paced, sandbox_handle, worker):
    job_id = _list(producer)
    _, orders = _task(sandbox_handle, job_id)
    assert _dialled(orders) == 1

    entry = _done(producer, job_id, producer.callbot_pause(job_id))
    assert entry["outcome"] == "done" and entry["op"] == "pause"
    task, orders = _task(sandbox_handle, job_id)
    assert task["taskStatus"] == 5 and _dialled(orders) == 1
    campaign = producer.get(job_id).campaign
    assert campaign["status"] == "paused" and campaign["paused_at"]

    entry = _done(producer, job_id, producer.callbot_resume(job_id))
    assert entry["outcome"] == "done"
    task, orders = _task(sandbox_handle, job_id)
    # Restarted: the next number is dialled at once.
    assert task["taskStatus"] == 2 and _dialled(orders) == 2
    record = producer.get(job_id)
    assert record.campaign["status"] == "running" and record.campaign["resumed_at"]
    assert [op["op"] for op in record.campaign["operations"]] == ["pause", "resume"]
    # The requests went through the signed client, one each.
    sent = [
        r["body"]["taskOperate"]
        for r in sandbox_handle.state.recent_requests("/callcentre/api/v3/mgrTaskStatus", 10)
    ]
    assert sent == [1, 2, 1]


def test_update_only_while_paused(producer, paced, sandbox_handle, worker):
    job_id = _list(producer)
    with pytest.raises(CampaignRefused, match="paused"):
        producer.callbot_update(job_id, {"maxCall": 3})
    _done(producer, job_id, producer.callbot_pause(job_id))
    with pytest.raises(CampaignRefused, match="settings.taskCallbackUrl"):
        producer.callbot_update(job_id, {"taskCallbackUrl": "http://x.invalid/"})

    entry = _done(producer, job_id, producer.callbot_update(job_id, {"maxCall": 3}))
    assert entry["outcome"] == "done", entry
    task, _ = _task(sandbox_handle, job_id)
    assert task["_settings"] == {"maxCall": 3}


def test_update_the_provider_refuses_is_recorded_refused(producer, paced, sandbox_handle, worker):
    job_id = _list(producer)
    _done(producer, job_id, producer.callbot_pause(job_id))
    # Resumed behind the producer's back (another console): the provider refuses the update.
    with sandbox_handle.state.lock:
        sandbox_handle.state.stores.cb_tasks[job_id]["taskStatus"] = 2
    entry = _done(producer, job_id, producer.callbot_update(job_id, {"maxCall": 3}))
    assert entry["outcome"] == "refused"
    assert entry["detail"]["code"] == "4" and "paused" in entry["detail"]["message"]
    # The provider's answer decides: the record still says paused (what we last knew), not updated.
    assert "_settings" not in _task(sandbox_handle, job_id)[0]


def test_stop_contacts_stops_for_good(producer, paced, sandbox_handle, worker):
    job_id = _list(producer)
    # Order 0 was dialled at start; stop 1 and 2, and 0 (refused: already finished).
    op_id = producer.callbot_stop_contacts(job_id, [f"{job_id}-1", f"{job_id}-2", f"{job_id}-0"])
    entry = _done(producer, job_id, op_id)
    assert entry["outcome"] == "done"
    assert entry["detail"]["successCount"] == 2
    assert entry["detail"]["errList"] == [
        {"orderID": f"{job_id}-0", "errMsg": "order already finished"}
    ]
    assert producer.get(job_id).campaign["stopped_orders"] == 2
    # Irreversible: a pause and resume dials order 3 next, never the stopped ones.
    _done(producer, job_id, producer.callbot_pause(job_id))
    _done(producer, job_id, producer.callbot_resume(job_id))
    _, orders = _task(sandbox_handle, job_id)
    assert [bool(o["callInfoDetailList"]) for o in orders] == [True, False, False, True]


MGR = "/callcentre/api/v3/mgrTaskStatus"


def _pauses(sandbox_handle):
    return [
        r for r in sandbox_handle.state.recent_requests(MGR, 50) if r["body"]["taskOperate"] == 2
    ]


def test_a_transient_error_is_retried_with_the_same_request(
    producer, paced, sandbox_handle, worker
):
    job_id = _list(producer, n=2)
    paced.script(MGR, 5001, times=2)  # bounded retry: "busy, try again"
    entry = _done(producer, job_id, producer.callbot_pause(job_id))
    assert entry["outcome"] == "done"
    assert len(_pauses(sandbox_handle)) == 3
    assert _task(sandbox_handle, job_id)[0]["taskStatus"] == 5


def test_a_permanent_error_is_recorded_refused_and_changes_no_status(
    producer, paced, sandbox_handle, worker
):
    job_id = _list(producer, n=2)
    paced.script(MGR, 2, times=1, message="missing parameter")
    entry = _done(producer, job_id, producer.callbot_pause(job_id))
    assert entry["outcome"] == "refused"
    assert entry["detail"] == {"code": "2", "message": "missing parameter"}
    assert len(_pauses(sandbox_handle)) == 1  # not retried
    campaign = producer.get(job_id).campaign
    assert "status" not in campaign and [op["outcome"] for op in campaign["operations"]] == [
        "refused"
    ]


def test_too_frequent_cools_the_credential_down_and_is_sent_again(
    producer, paced, sandbox_handle, worker
):
    from nxjobs import keys
    from sandbox.accounts import CALLBOT_UUID

    job_id = _list(producer, n=2)
    producer.redis.delete(keys.rate_strikes(f"callbot:{CALLBOT_UUID}"))
    paced.script(MGR, 7, times=1)  # Callbot's "system busy"
    entry = _done(producer, job_id, producer.callbot_pause(job_id))
    assert entry["outcome"] == "done"
    assert len(_pauses(sandbox_handle)) == 2
    # Every worker's Callbot credential was slowed down, through the shared limiter.
    assert producer.redis.exists(keys.rate_strikes(f"callbot:{CALLBOT_UUID}"))


def test_refusals_name_why_and_enqueue_nothing(producer, paced, worker):
    job_id = _list(producer, n=2)
    other = producer.call(phone="8613800138000")
    cases = [
        (lambda: producer.callbot_pause("no-such-job"), "job_id", "no job"),
        (lambda: producer.callbot_pause(other), "job_id", "not a callbot-list"),
        (lambda: producer.callbot_stop_contacts(job_id, []), "order_ids", "one orderID"),
        (lambda: producer.callbot_stop_contacts(job_id, ["x-9"]), "order_ids.0", "not an orderID"),
        (lambda: producer.callbot_update(job_id, {}), "job_id", "pause it first"),
    ]
    before = producer.redis.llen("callbot")
    for call, field, text in cases:
        with pytest.raises(CampaignRefused, match=text) as info:
            call()
        assert info.value.field == field
    assert producer.redis.llen("callbot") == before
    assert producer.get(job_id).campaign is None


def test_cli_pause_prints_the_answer_and_refuses_a_non_callbot_job(
    producer, paced, worker, redis_url, tmp_path
):
    from tests.conftest import cli_runner

    run = cli_runner(redis_url, cwd=str(__import__("pathlib").Path(__file__).parents[2]))
    job_id = _list(producer, n=2)
    done = run("callbot", "pause", job_id, "--json", "--timeout", "20")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["outcome"] == "done"
    other = producer.call(phone="8613800138000")
    refused = run("callbot", "pause", other)
    assert refused.returncode == 2
    assert "not a callbot-list" in refused.stderr and "nothing was enqueued" in refused.stderr
    bad = run("callbot", "update", job_id, "--settings", "{not json")
    assert bad.returncode == 2 and "settings" in bad.stderr
    status = run("status", job_id)
    assert "campaign paused" in status.stdout and "last: pause done" in status.stdout


# ---- with callbacks: the job ends as its task callback says ---------------------------------


def _cb_list(cb_producer, n=4):
    return _list(cb_producer, n)


def test_complete_deletes_undialled_and_the_task_callback_completes_the_job(
    cb_producer, cb_sandbox, sandbox_handle, callbacks_worker
):
    cb_sandbox.configure(callbot_dial_interval_s=3600)
    try:
        job_id = _cb_list(cb_producer)
        op_id = cb_producer.callbot_complete(job_id, delete_undialled=True)
        entry = _done(cb_producer, job_id, op_id)
        assert entry["outcome"] == "done" and entry["detail"]["taskStatus"] == 3
        task, orders = _task(sandbox_handle, job_id)
        assert task["taskStatus"] == 3 and len(orders) == 1  # three undialled numbers dropped
        record = cb_producer.wait([job_id], until="completed", timeout_s=WAIT_S)[job_id]
        assert record.state == JobState.COMPLETED
        assert record.campaign["status"] == "completed" and record.campaign["completed_at"]
        tasks = [c for c in record.callbacks if c.get("type") == "callbot-task"] or [
            c for c in record.callbacks if "taskStat" in json.dumps(c)
        ]
        assert tasks, record.callbacks
    finally:
        cb_sandbox.configure(callbot_dial_interval_s=0)


def test_cancel_of_a_submitted_list_keeps_what_was_dialled(
    cb_producer, cb_sandbox, sandbox_handle, callbacks_worker, callbacks_redis_url
):
    cb_sandbox.configure(callbot_dial_interval_s=3600)
    try:
        job_id = _cb_list(cb_producer)
        # Through Producer.cancel, what `nxjobs cancel` calls: it waits for the provider's answer.
        answer = cb_producer.cancel(job_id, timeout_s=WAIT_S)
        assert (answer.cancelled, answer.previous) == (True, "submitted"), answer.reason
        record = cb_producer.get(job_id)
        assert [op["op"] for op in record.campaign["operations"]] == ["cancel"]
        assert record.campaign["operations"][0]["outcome"] == "done"
        assert record.state == JobState.CANCELLED
        task, orders = _task(sandbox_handle, job_id)
        assert task["taskStatus"] == 3 and len(orders) == 1
        # The callbacks of the one number dialled, and the task's own, still land on the job.
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline and cb_producer.get(job_id).callbacks_stored < 3:
            time.sleep(0.2)
        record = cb_producer.get(job_id)
        assert record.state == JobState.CANCELLED
        assert record.callbacks_stored >= 3, record.callbacks
        with pytest.raises(CampaignRefused, match="cancelled"):
            cb_producer.callbot_pause(job_id)
        again = cb_producer.cancel(job_id)
        assert not again.cancelled and "cancelled" in again.reason
        # Waiting for it to complete ends at once: it never will.
        from tests.conftest import cli_runner

        run = cli_runner(
            callbacks_redis_url, cwd=str(__import__("pathlib").Path(__file__).parents[2])
        )
        started = time.monotonic()
        waited = run("wait", job_id, "--until", "completed", "--timeout", "20")
        assert waited.returncode == 1 and "cancelled" in waited.stdout + waited.stderr
        assert time.monotonic() - started < 15
    finally:
        cb_sandbox.configure(callbot_dial_interval_s=0)
