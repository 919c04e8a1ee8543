"""A callbot list's contacts grouped by time zone (nxjobs.callbot_zones), each group a provider
task with its dialling fields; and the per-task submit resuming without creating a task twice.
Pure logic: the clock is passed in, the Callbot client is a scripted stand-in."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from nxjobs import callbot_zones, correlate
from nxjobs.callbacks import events
from nxjobs.calling_hours import Policy
from nxjobs.client.errors import RETRY, TransportError
from nxjobs.client.operations import Outcome, submit_call_list
from nxjobs.jobs import CallbotListPayload
from nxjobs.wire import list_job_of_task, zone_task_id

SG, SG2, NY, SP = "6591234567", "6591234568", "12015550123", "5511987654321"
RU_MOBILE = "79161234567"  # candidate zones from UTC+2 to UTC+12
WINTER = datetime(2026, 1, 15, 12, tzinfo=UTC)  # New York on EST (-05:00)
SUMMER = datetime(2026, 7, 15, 12, tzinfo=UTC)  # ... and on EDT (-04:00)
POLICY = Policy.build(window="09:00-20:00", days="mon,tue,wed,thu,fri")


def _settings(groups):
    return [(g.setting(), g.indices) for g in groups]


def test_mixed_zones_make_one_group_per_offset_in_offset_order():
    # Given contacts in Singapore (+08), New York (-05 in January) and São Paulo (-03)
    groups = callbot_zones.plan([SG, NY, SP, SG2], POLICY, None, WINTER)
    # Then three groups, westernmost first, each with the rule's window and days (1 = Monday)
    days = "1,2,3,4,5"
    assert _settings(groups) == [
        ({"zoneSecond": -18000, "dialAtWeekDay": days, "dialAtUpHour": "09:00",
          "dialAtDownHour": "20:00"}, (1,)),
        ({"zoneSecond": -10800, "dialAtWeekDay": days, "dialAtUpHour": "09:00",
          "dialAtDownHour": "20:00"}, (2,)),
        ({"zoneSecond": 28800, "dialAtWeekDay": days, "dialAtUpHour": "09:00",
          "dialAtDownHour": "20:00"}, (0, 3)),
    ]  # fmt: skip


def test_one_zone_is_one_group_and_the_offset_is_taken_at_submit_time():
    assert [g.indices for g in callbot_zones.plan([SG, SG2], POLICY, None, WINTER)] == [(0, 1)]
    # DST: the offset of the day the plan is made
    (summer,) = callbot_zones.plan([NY], POLICY, None, SUMMER)
    assert summer.setting()["zoneSecond"] == -14400


def test_a_multi_zone_number_gets_the_hours_open_in_all_its_zones():
    # 09:00-20:00 in UTC+2 .. UTC+12 leaves 07:00-08:00 UTC: 19:00-20:00 in the easternmost zone
    (group,) = callbot_zones.plan([RU_MOBILE], POLICY, None, WINTER)
    assert group.setting()["zoneSecond"] == 12 * 3600
    assert (group.setting()["dialAtUpHour"], group.setting()["dialAtDownHour"]) == (
        "19:00",
        "20:00",
    )
    # and a narrower window leaves no common hour: refused, naming the contact
    with pytest.raises(callbot_zones.ZoneError) as err:
        callbot_zones.plan([SG, RU_MOBILE], POLICY, "10:00-18:00", WINTER)
    assert err.value.field == "contacts.1.user_phone" and "no hour" in err.value.message


def test_country_rules_and_the_jobs_window_shape_the_groups():
    policy = Policy.build(
        window="09:00-20:00",
        days="mon,tue,wed,thu,fri",
        by_country={"BR": {"window": "08:00-18:00", "days": "mon,tue,wed,thu,fri,sat"}},
    )
    ny, sp = callbot_zones.plan([NY, SP], policy, None, WINTER)
    assert sp.setting()["dialAtWeekDay"] == "1,2,3,4,5,6"
    assert (sp.setting()["dialAtUpHour"], sp.setting()["dialAtDownHour"]) == ("08:00", "18:00")
    # The job's own window narrows every contact's rule
    ny, sp = callbot_zones.plan([NY, SP], policy, "10:00-17:00", WINTER)
    assert {g.setting()["dialAtUpHour"] for g in (ny, sp)} == {"10:00"}
    # An end of 24:00 is written as such, not as 00:00
    (late,) = callbot_zones.plan([SG], Policy.build(window="12:00-24:00"), None, WINTER)
    assert late.setting()["dialAtDownHour"] == "24:00"


def test_a_number_without_a_zone_is_refused_naming_it():
    with pytest.raises(callbot_zones.ZoneError) as err:
        callbot_zones.plan([SG, "88234567890"], POLICY, None, WINTER)
    assert err.value.field == "contacts.1.user_phone" and "time zone" in err.value.message


def test_task_ids_trace_back_to_the_job():
    assert zone_task_id("abc", 2) == "abc-z2"
    assert list_job_of_task("abc-z2") == ("abc", 2)
    assert list_job_of_task("abc") == ("abc", None)
    # Each task's status callback is its own completion unit (and its own repeat key)
    one = events.from_dict("callbot-task", {"userTaskID": "abc-z0", "taskStatus": 3})
    two = events.from_dict("callbot-task", {"userTaskID": "abc-z1", "taskStatus": 3})
    assert one.direct_id == two.direct_id == "abc"
    assert one.unit != two.unit and one.dedupe != two.dedupe
    assert one.check == events.CHECK_TASK and one.proof == ("abc-z0",)
    same = events.from_dict("callbot-task", {"userTaskID": "abc", "taskStatus": 3})
    assert (same.direct_id, same.unit) == ("abc", "task-finished")
    # and the job waits for every task it started
    result = {"tasks": [{"started": True}, {"started": True}, {"started": False}]}
    assert correlate.on_submit("callbot-list", result).needed == 2
    assert correlate.on_submit("callbot-list", {"userTaskID": "abc"}).needed == 1


# ---- the per-task submit ------------------------------------------------------------------------

PAYLOAD = CallbotListPayload.model_validate(
    {
        "scene_id": "1",
        "task_name": "t",
        "contacts": [{"user_phone": p} for p in (SG, NY, SG2, SP)],
    }
)


class ScriptedCallbot:
    """Answers every request; `lose` makes the n-th request of an endpoint lose its answer."""

    def __init__(self, lose: tuple[str, int] | None = None):
        self.sent: list[tuple[str, dict]] = []
        self.tasks: dict[str, dict] = {}
        self.lose = lose

    def post(self, endpoint, body):
        self.sent.append((endpoint, body))
        if endpoint == "listTask":
            uid = body["queryConditions"]["userTaskID"][0]
            found = [self.tasks[uid]] if uid in self.tasks else []
            return SimpleNamespace(body={"taskData": found})
        if endpoint in ("createAndCall", "createTask"):
            self.tasks[body["userTaskID"]] = {
                "userTaskID": body["userTaskID"],
                "taskID": f"T-{body['userTaskID']}",
                "taskStatus": 1,
            }
        if endpoint == "mgrTaskStatus":
            self.tasks[body["userTaskID"]]["taskStatus"] = 2
        if self.lose and endpoint == self.lose[0]:
            n = sum(1 for e, _ in self.sent if e == endpoint)
            if n == self.lose[1]:
                raise TransportError(
                    "read timed out", code="timeout", classification=RETRY, may_have_reached=True
                )
        return SimpleNamespace(body={"taskID": f"T-{body.get('userTaskID')}", "taskStatus": 2})


def _submit(callbot, progress, saved):
    return submit_call_list(
        callbot,
        job_id="job1",
        payload=PAYLOAD,
        public_url=None,
        strategy_name="s",
        progress=progress,
        save_progress=lambda p: saved.append(_copy(p)),
        outcome=Outcome(),
        plan=lambda: callbot_zones.plan_zones(PAYLOAD, POLICY, WINTER),
    )


def _copy(value):
    import json

    return json.loads(json.dumps(value))


def test_each_group_is_created_with_its_contacts_and_fields_then_started():
    callbot, saved = ScriptedCallbot(), []
    out = _submit(callbot, {}, saved)
    # The plan was saved before any request
    assert [t["userTaskID"] for t in saved[0]["tasks"]] == ["job1-z0", "job1-z1", "job1-z2"]
    assert all("create_sent" not in t for t in saved[0]["tasks"])
    creates = [b for e, b in callbot.sent if e == "createAndCall"]
    assert [b["userTaskID"] for b in creates] == ["job1-z0", "job1-z1", "job1-z2"]
    phones = [[c["userPhone"] for c in b["callInfoList"]["callList"]] for b in creates]
    assert phones == [[NY], [SP], [SG, SG2]]
    orders = [[c["orderID"] for c in b["callInfoList"]["callList"]] for b in creates]
    assert orders == [["job1-1"], ["job1-3"], ["job1-0", "job1-2"]]  # the list's own indices
    assert [b["taskCreateSetting"]["zoneSecond"] for b in creates] == [-18000, -10800, 28800]
    assert all(b["taskCreateSetting"]["taskName"] == "t" for b in creates)
    # every task is filled before any is started
    names = [e for e, _ in callbot.sent]
    assert names.index("mgrTaskStatus") > max(
        i for i, e in enumerate(names) if e != "mgrTaskStatus"
    )
    assert sorted(b["userTaskID"] for e, b in callbot.sent if e == "mgrTaskStatus") == [
        "job1-z0",
        "job1-z1",
        "job1-z2",
    ]
    assert [t["userTaskID"] for t in out.result["tasks"]] == ["job1-z0", "job1-z1", "job1-z2"]
    assert out.result["accepted"] == 4 and all(t["started"] for t in out.result["tasks"])


def test_a_lost_answer_on_the_second_task_resumes_without_creating_any_task_twice():
    # Given the second create's answer is lost (the provider did create it)
    callbot, saved = ScriptedCallbot(lose=("createAndCall", 2)), []
    with pytest.raises(TransportError):
        _submit(callbot, {}, saved)
    # When the next attempt resumes from the saved progress
    _submit(callbot, saved[-1], saved)
    # Then each task was created exactly once, the second found by listTask
    creates = [b["userTaskID"] for e, b in callbot.sent if e == "createAndCall"]
    assert creates == ["job1-z0", "job1-z1", "job1-z2"]
    assert ("listTask", {"page": 1, "size": 1, "queryConditions": {"userTaskID": ["job1-z1"]}}) in (
        callbot.sent
    )
    assert sum(1 for e, _ in callbot.sent if e == "mgrTaskStatus") == 3


def test_one_group_is_todays_single_task_with_the_job_id():
    payload = CallbotListPayload.model_validate(
        {"scene_id": "1", "task_name": "t", "contacts": [{"user_phone": SG}, {"user_phone": SG2}]}
    )
    callbot, saved = ScriptedCallbot(), []
    out = submit_call_list(
        callbot,
        job_id="job1",
        payload=payload,
        public_url=None,
        strategy_name="s",
        progress={},
        save_progress=lambda p: saved.append(_copy(p)),
        outcome=Outcome(),
        plan=lambda: callbot_zones.plan_zones(payload, POLICY, WINTER),
    )
    (create,) = [b for e, b in callbot.sent if e == "createAndCall"]
    assert create["userTaskID"] == "job1" and create["taskCreateSetting"]["zoneSecond"] == 28800
    assert out.result["userTaskID"] == "job1" and "tasks" not in out.result
    assert "tasks" not in saved[-1]
