"""A callbot list whose start was sent but whose answer was lost must not send the
start again blind: a short list may already be finished, and a second start is then
refused ("task is completed"), failing a job that went through (bench/chaos.py found
it). Pure logic: the Callbot client is a scripted stand-in."""

from __future__ import annotations

from types import SimpleNamespace

from nxjobs.client.operations import Outcome, submit_call_list
from nxjobs.jobs import CallbotListPayload

PAYLOAD = CallbotListPayload.model_validate(
    {"scene_id": "1", "task_name": "t", "contacts": [{"user_phone": "8613900139000"}]}
)


class ScriptedCallbot:
    def __init__(self, task_status):
        self.task_status = task_status
        self.sent: list[str] = []

    def post(self, endpoint, body):
        self.sent.append(endpoint)
        if endpoint == "listTask":
            return SimpleNamespace(
                body={
                    "taskData": [
                        {"userTaskID": "job1", "taskID": "T1", "taskStatus": self.task_status}
                    ]
                }
            )
        return SimpleNamespace(body={"taskID": "T1", "taskStatus": 2})


def _resume(progress, callbot):
    saved = []
    out = submit_call_list(
        callbot,
        job_id="job1",
        payload=PAYLOAD,
        public_url=None,
        strategy_name="s",
        progress=progress,
        save_progress=lambda p: saved.append(dict(p)),
        outcome=Outcome(),
    )
    return out, saved


def test_a_start_already_applied_is_found_not_sent_again():
    # Given an earlier attempt created the task and sent the start, but lost the start's answer
    progress = {
        "userTaskID": "job1",
        "added": 1,
        "accepted": 1,
        "rejected": [],
        "taskID": "T1",
        "create_sent": True,
        "create_mode": "createAndCall",
        "start_sent": True,
    }
    callbot = ScriptedCallbot(task_status=3)  # the one-contact list already finished
    # When the job is retried
    out, saved = _resume(progress, callbot)
    # Then it asks, sees the task past "not started", and does not start it again
    assert callbot.sent == ["listTask"]
    assert out.result["taskStatus"] == 3 and saved[-1]["started"] is True


def test_a_start_that_never_applied_is_sent():
    progress = {
        "userTaskID": "job1",
        "added": 1,
        "accepted": 1,
        "rejected": [],
        "taskID": "T1",
        "create_sent": True,
        "create_mode": "createAndCall",
        "start_sent": True,
    }
    callbot = ScriptedCallbot(task_status=1)  # still not started: the start never arrived
    out, saved = _resume(progress, callbot)
    assert callbot.sent == ["listTask", "mgrTaskStatus"]
    assert out.result["taskStatus"] == 2


def test_a_start_held_back_by_the_rate_limiter_is_not_looked_up_next_time():
    # Given the start's rate-limit slot is not due yet (nothing is sent)
    class Later(Exception):
        pass

    class Gated(ScriptedCallbot):
        def post(self, endpoint, body):
            if endpoint == "mgrTaskStatus":
                raise Later()
            return super().post(endpoint, body)

    progress = {
        "userTaskID": "job1",
        "added": 1,
        "accepted": 1,
        "rejected": [],
        "taskID": "T1",
        "create_sent": True,
        "create_mode": "createAndCall",
    }
    saved = []
    try:
        submit_call_list(
            Gated(task_status=1),
            job_id="job1",
            payload=PAYLOAD,
            public_url=None,
            strategy_name="s",
            progress=progress,
            save_progress=lambda p: saved.append(dict(p)),
            outcome=Outcome(),
        )
    except Later:
        pass
    # Then the saved progress does not claim a start was sent: the resumed attempt will not
    # spend its reserved slot on a lookup and wait again for the start (a loop)
    assert saved[-1]["start_sent"] is False


def _create(payload, progress=None):
    callbot = RecordingCallbot()
    saved = []
    out = submit_call_list(
        callbot,
        job_id="job1",
        payload=payload,
        public_url=None,
        strategy_name="s",
        progress=progress or {},
        save_progress=lambda p: saved.append(dict(p)),
        outcome=Outcome(),
    )
    return out, callbot, saved


class RecordingCallbot:
    def __init__(self):
        self.sent: list[tuple[str, dict]] = []

    def post(self, endpoint, body):
        self.sent.append((endpoint, body))
        return SimpleNamespace(
            body={"taskID": "T1", "taskStatus": 1 if endpoint != "mgrTaskStatus" else 2}
        )


def test_a_start_far_enough_ahead_is_the_providers_and_no_start_is_sent():
    import time

    start = int(time.time()) + 3600
    out, callbot, saved = _create(PAYLOAD.model_copy(update={"start_at": start}))
    assert [e for e, _ in callbot.sent] == ["createAndCall"]
    setting = callbot.sent[0][1]["taskCreateSetting"]
    assert (setting["startupType"], setting["startupAt"]) == (2, start)
    assert out.result["startupAt"] == start and out.result["taskStatus"] == 1
    # Saved before the create is sent: a resumed attempt knows the provider will start it
    assert saved[0]["startup_at"] == start


def test_a_start_too_near_or_past_is_ours_to_send():
    import time

    out, callbot, _ = _create(PAYLOAD.model_copy(update={"start_at": int(time.time()) + 1}))
    assert [e for e, _ in callbot.sent] == ["createAndCall", "mgrTaskStatus"]
    assert "startupType" not in callbot.sent[0][1]["taskCreateSetting"]
    assert "startupAt" not in out.result


def test_a_resumed_list_created_with_its_scheduled_start_sends_no_start():
    progress = {
        "userTaskID": "job1",
        "added": 1,
        "accepted": 1,
        "rejected": [],
        "taskID": "T1",
        "create_sent": True,
        "create_mode": "createAndCall",
        "startup_at": 1_900_000_000,
    }
    out, callbot, _ = _create(PAYLOAD, progress)
    assert callbot.sent == []
    assert out.result["startupAt"] == 1_900_000_000
