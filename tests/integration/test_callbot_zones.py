"""A callbot list split into one provider task per time zone (nxjobs.callbot_zones), with calling
hours on: real Redis (db 1), the sandbox over real HTTP, its callbacks through the real receiver.
The attempt runs in this process with calling hours on (a session worker has them off, so the
list is not enqueued); campaign operations run here too (nxjobs.campaign.ControlRun)."""

from __future__ import annotations

import os
import time
import uuid

import pytest

from nxjobs import callbot_zones, campaign, correlate
from nxjobs.jobs import CallbotListPayload, InvalidJob
from nxjobs.records import JobState
from nxjobs.redact import redact
from tests.conftest import cli_runner
from tests.integration.test_callbacks import post_signed

pytestmark = pytest.mark.integration

SG, SG2, NY, SP = "6591234567", "6591234568", "12015550123", "5511987654321"
WAIT_S = 20
ALL_DAYS = "mon,tue,wed,thu,fri,sat,sun"


@pytest.fixture()
def zoned(callbacks_env, receiver, monkeypatch):
    """Services (and a producer) of db 1 with calling hours on, callbacks to `receiver`."""
    from config.settings import Settings
    from tasks.services import Services

    for name, value in callbacks_env.items():
        if name.startswith("NXJOBS_"):
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("NXJOBS_CALLBACKS__PUBLIC_URL", receiver.url)
    # Not due for reconciliation while the test runs (a session beat may be reconciling db 1).
    monkeypatch.setenv("NXJOBS_CALLBACKS__CALLBOT_DEADLINE_S", "3600")
    monkeypatch.setenv("NXJOBS_CALLBOT__RATE_PER_S", "0")  # every request of the attempt at once
    monkeypatch.setenv("NXJOBS_CALLING_HOURS__ENABLED", "true")
    monkeypatch.setenv("NXJOBS_CALLING_HOURS__WINDOW", "08:00-21:00")
    monkeypatch.setenv("NXJOBS_CALLING_HOURS__DAYS", ALL_DAYS)
    monkeypatch.setenv(
        "NXJOBS_CALLING_HOURS__BY_COUNTRY", '{"BR": {"window": "09:00-18:00", "days": "mon,tue"}}'
    )
    return Services(Settings(_env_file=None))


@pytest.fixture()
def paced(cb_sandbox):
    # Each task dials its first number when it starts, the next an hour later: a task of two
    # contacts stays unfinished for the whole test, a task of one finishes at once.
    cb_sandbox.configure(callbot_dial_interval_s=3600)
    yield cb_sandbox
    cb_sandbox.configure(callbot_dial_interval_s=0)


def _submit(svc, phones):
    """Create the record as a producer would (no message), then run the attempt here."""
    from nxjobs.attempts.decisions import Submitted
    from nxjobs.attempts.job import JobAttempt
    from tasks.callbot import _submit_call_list

    job_id = uuid.uuid4().hex
    body = {
        "scene_id": "scene-1",
        "task_name": "zones",
        "contacts": [{"user_phone": p, "user_name": f"c{i}"} for i, p in enumerate(phones)],
    }
    model = CallbotListPayload.model_validate(body)
    svc.store.create(
        job_id,
        "callbot-list",
        redact(body),
        expect=correlate.on_enqueue("callbot-list", job_id, model),
        payload=body,
    )
    decision = JobAttempt(svc, job_id, "callbot-list", body, _submit_call_list).run()
    assert isinstance(decision, Submitted), decision
    return job_id


def _tasks(handle, job_id):
    """The sandbox's tasks of this job: userTaskID -> (task, its orders' phones)."""
    with handle.state.lock:
        stores = handle.state.stores
        return {
            uid: (dict(t), [stores.cb_orders[o]["userPhone"] for o in t["orderIDs"]])
            for uid, t in stores.cb_tasks.items()
            if uid == job_id or uid.startswith(job_id + "-")
        }


def _wait(svc, job_id, until, timeout_s=WAIT_S):
    deadline = time.monotonic() + timeout_s
    while True:
        record = svc.store.get(job_id)
        if until(record) or time.monotonic() > deadline:
            return record
        time.sleep(0.05)


def _control(svc, job_id, op, **op_args):
    run = campaign.ControlRun(
        svc.redis,
        svc.callbot,
        svc.gate,
        svc.limiter,
        retry=svc.settings.retry,
        ratelimit=svc.settings.ratelimit,
        ttl_s=svc.settings.record_ttl_s,
    )
    record, plan = svc.store.get(job_id), svc.store.zone_plan(job_id)
    args = campaign.check(record, job_id, op, op_args, plan)
    result = run.run(job_id, uuid.uuid4().hex, op, args)
    assert isinstance(result, campaign.Recorded) and result.outcome == "done", result
    return result


def test_a_mixed_zone_list_is_split_into_per_zone_tasks_with_the_right_fields(
    zoned, paced, sandbox_handle, receiver
):
    # Given a list with contacts in New York, São Paulo and Singapore (two)
    job_id = _submit(zoned, [SG, NY, SG2, SP])
    # Then the sandbox has one task per zone, named after the job, westernmost first
    tasks = _tasks(sandbox_handle, job_id)
    assert sorted(tasks) == [f"{job_id}-z0", f"{job_id}-z1", f"{job_id}-z2"]
    ny, sp, sg = (tasks[f"{job_id}-z{n}"] for n in range(3))
    assert (ny[1], sp[1], sg[1]) == ([NY], [SP], [SG, SG2])
    dialling = ("zoneSecond", "dialAtWeekDay", "dialAtUpHour", "dialAtDownHour")
    assert [ny[0]["_createSetting"][k] for k in dialling][1:] == ["1,2,3,4,5,6,7", "08:00", "21:00"]
    assert ny[0]["_createSetting"]["zoneSecond"] in (-18000, -14400)  # EST or EDT, as of now
    assert [sp[0]["_createSetting"][k] for k in dialling] == [-10800, "1,2", "09:00", "18:00"]
    assert [sg[0]["_createSetting"][k] for k in dialling] == [
        28800,
        "1,2,3,4,5,6,7",
        "08:00",
        "21:00",
    ]
    # and the orders keep the list's own indices, whatever task they are in
    with sandbox_handle.state.lock:
        assert sg[0]["orderIDs"] == [f"{job_id}-0", f"{job_id}-2"]
    record = zoned.store.get(job_id)
    assert record.state == JobState.SUBMITTED and record.callbacks_needed == 3
    assert [t["userTaskID"] for t in record.result["tasks"]] == sorted(tasks)
    # The plan is kept apart from the progress (saved after every step): per task, its contacts
    assert zoned.store.zone_plan(job_id) == [[1], [3], [0, 2]]
    assert all("contacts" not in t for t in record.progress["tasks"])

    # When the one-contact tasks finish, the job is still waiting for the third
    record = _wait(zoned, job_id, lambda r: r.callbacks_done >= 2)
    assert record.callbacks_done == 2 and record.state == JobState.SUBMITTED
    # and a forged task callback (a task the job does not have, or the job id itself) counts for
    # nothing
    for uid in (f"{job_id}-z7", job_id):
        body = {"callbackType": 1, "userTaskID": uid, "taskID": "x", "taskStatus": 3}
        assert post_signed(receiver.url, "/callbacks/callbot/task", body).status_code == 200
    time.sleep(0.3)
    record = zoned.store.get(job_id)
    assert record.callbacks_done == 2 and record.state == JobState.SUBMITTED

    # When the list is paused, its unfinished task is paused (the finished ones stay finished)
    mgr = "/callcentre/api/v3/mgrTaskStatus"
    sent_before = len(sandbox_handle.state.recent_requests(mgr, 10**6))
    _control(zoned, job_id, "pause")
    tasks = _tasks(sandbox_handle, job_id)
    assert [tasks[f"{job_id}-z{n}"][0]["taskStatus"] for n in range(3)] == [3, 3, 5]
    assert zoned.store.get(job_id).campaign["status"] == "paused"
    sent = sandbox_handle.state.recent_requests(mgr, 10**6)[sent_before:]
    assert [(r["body"]["userTaskID"], r["body"]["taskOperate"]) for r in sent] == [
        (f"{job_id}-z2", 2)
    ]

    # When the second Singapore contact is stopped, the request goes to its own task
    stop = "/callcentre/api/v3/stopOrder"
    stops_before = len(sandbox_handle.state.recent_requests(stop, 10**6))
    result = _control(zoned, job_id, "stop-contacts", order_ids=[f"{job_id}-2"])
    assert result.detail["successCount"] == 1
    sent = sandbox_handle.state.recent_requests(stop, 10**6)[stops_before:]
    assert [(r["body"]["userTaskID"], r["body"]["orderIDs"]) for r in sent] == [
        (f"{job_id}-z2", [f"{job_id}-2"])
    ]

    # When it is resumed, its last task has nothing left to dial and finishes, and the job
    # completes: every task's callback came
    _control(zoned, job_id, "resume")
    record = _wait(zoned, job_id, lambda r: r.state == JobState.COMPLETED)
    assert record.state == JobState.COMPLETED and record.callbacks_done == 3
    task_callbacks = {
        c["data"]["userTaskID"]
        for c in zoned.store.callbacks(job_id).callbacks
        if c["type"] == "callbot-task"
    }
    assert task_callbacks == set(tasks)


def test_a_single_zone_list_stays_one_task_named_by_the_job(zoned, cb_sandbox, sandbox_handle):
    job_id = _submit(zoned, [SG, SG2])
    tasks = _tasks(sandbox_handle, job_id)
    assert list(tasks) == [job_id]
    task, phones = tasks[job_id]
    assert phones == [SG, SG2] and task["_createSetting"]["zoneSecond"] == 28800
    record = _wait(zoned, job_id, lambda r: r.state == JobState.COMPLETED)
    assert record.state == JobState.COMPLETED and record.result["userTaskID"] == job_id
    assert zoned.store.zone_plan(job_id) is None and "tasks" not in record.progress
    assert callbot_zones.job_tasks(job_id, record.progress, None) == [(job_id, None)]


def test_enqueue_refuses_a_list_with_a_contact_of_no_zone(zoned, callbacks_redis_url):
    from nxjobs.producers import Producer

    with Producer(callbacks_redis_url) as producer:
        before = producer.redis.dbsize()
        with pytest.raises(InvalidJob) as err:
            producer.callbot_list(
                scene_id="s",
                task_name="t",
                contacts=[{"user_phone": SG}, {"user_phone": "88234567890"}],
            )
        assert err.value.field == "contacts.1.user_phone" and "time zone" in err.value.message
        with pytest.raises(InvalidJob) as err:
            producer.callbot_list(
                scene_id="s",
                task_name="t",
                contacts=[{"user_phone": SG}],
                calling_hours="07:00-10:00",
            )
        assert err.value.field == "calling_hours"
        assert producer.redis.dbsize() == before
    # and the CLI says so too (the rule opens at 08:00 here, 09:00 by default)
    run = cli_runner(callbacks_redis_url, os.getcwd())  # this tree's nxjobs
    proc = run(
        "submit", "callbot-list", "--scene-id", "s", "--task-name", "t",
        "--contact", SG, "--calling-hours", "07:00-10:00",
    )  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.startswith("error: calling_hours: "), proc.stderr


@pytest.fixture(scope="module")
def beat(callbacks_env, callbacks_worker, tmp_path_factory):
    from workers.devstack import start_beat

    proc = start_beat(callbacks_env, log_dir=str(tmp_path_factory.mktemp("beat")))
    yield proc
    proc.stop()


def test_a_split_list_whose_callbacks_were_lost_is_completed_by_asking_every_task(
    zoned, cb_sandbox, beat, monkeypatch
):
    from config.settings import Settings
    from tasks.services import Services

    # Given every callback the provider sends is lost, and the list's deadline is 1 s
    cb_sandbox.configure(callback_drop_rate=1.0)
    monkeypatch.setenv("NXJOBS_CALLBACKS__CALLBOT_DEADLINE_S", "1")
    svc = Services(Settings(_env_file=None))
    job_id = _submit(svc, [SG, NY])
    # When the reconciliation (beat, a worker) finds it due
    record = _wait(svc, job_id, lambda r: r.state != JobState.SUBMITTED)
    # Then it asked each task, and their answers completed the job
    assert record.state == JobState.COMPLETED, (record.state, record.error)
    callbacks = svc.store.callbacks(job_id).callbacks
    assert {c["source"] for c in callbacks} == {"reconcile"}
    assert sorted(c["data"]["userTaskID"] for c in callbacks if c["type"] == "callbot-task") == [
        f"{job_id}-z0",
        f"{job_id}-z1",
    ]
    asked = [r["body"] for r in cb_sandbox.requests(path="/callcentre/api/v3/listTask", limit=1000)]
    assert {f"{job_id}-z0", f"{job_id}-z1"} <= {
        uid for b in asked for uid in (b.get("queryConditions") or {}).get("userTaskID") or []
    }


def test_a_list_no_producer_checked_fails_calling_hours_before_anything_is_sent(
    zoned, cb_sandbox, sandbox_handle
):
    from nxjobs.attempts.decisions import Failed
    from nxjobs.attempts.job import JobAttempt
    from tasks.callbot import _submit_call_list

    # Given a list with a contact of no time zone that reached a worker (no producer checked it)
    job_id = uuid.uuid4().hex
    body = {
        "scene_id": "s",
        "task_name": "t",
        "contacts": [{"user_phone": SG}, {"user_phone": "88234567890"}],
    }
    zoned.store.create(job_id, "callbot-list", redact(body), payload=body)
    created_before = len(sandbox_handle.state.recent_requests(None, 10**6))
    # When the attempt runs
    decision = JobAttempt(zoned, job_id, "callbot-list", body, _submit_call_list).run()
    # Then the job fails calling_hours, naming the contact, and no task was created
    assert isinstance(decision, Failed), decision
    record = zoned.store.get(job_id)
    assert record.state == JobState.FAILED and record.error.code == "calling_hours"
    assert "contacts.1.user_phone" in record.error.message
    sent = sandbox_handle.state.recent_requests(None, 10**6)[created_before:]
    assert not [r for r in sent if str(r["body"].get("userTaskID", "")).startswith(job_id)]
    assert _tasks(sandbox_handle, job_id) == {}
