"""nxjobs.campaign.check: what a producer refuses before it enqueues a control operation."""

from __future__ import annotations

import pytest

from nxjobs.campaign import CampaignRefused, check
from nxjobs.records import JobRecord, JobState


def _record(state=JobState.SUBMITTED, kind="callbot-list", campaign=None):
    return JobRecord(
        id="j1",
        kind=kind,
        state=state,
        created_at="t",
        updated_at="t",
        input={
            "scene_id": "s1",
            "contacts": [
                {"user_phone": "86139****001"},
                {"user_phone": "86...", "order_id": "mine"},
            ],
        },
        campaign=campaign,
    )


@pytest.mark.parametrize(
    ("record", "op", "args", "field", "text"),
    [
        (None, "pause", {}, "job_id", "no job"),
        (_record(kind="call"), "pause", {}, "job_id", "not a callbot-list"),
        (_record(state=JobState.QUEUED), "resume", {}, "job_id", "is queued"),
        (_record(state=JobState.CANCELLED), "pause", {}, "job_id", "is cancelled"),
        (_record(), "rewind", {}, "operation", "unknown operation"),
        (_record(), "update", {"settings": {"maxCall": 1}}, "job_id", "pause it first"),
        (_record(campaign={"status": "paused"}), "update", {"settings": {}}, "settings", "JSON"),
        (
            _record(campaign={"status": "paused"}),
            "update",
            {"settings": {"taskCallbackUrl": "http://x"}},
            "settings.taskCallbackUrl",
            "not a field",
        ),
        (_record(), "stop-contacts", {"order_ids": []}, "order_ids", "one orderID"),
        (_record(), "stop-contacts", {"order_ids": ["j1-1"]}, "order_ids.0", "not an orderID"),
    ],
)
def test_refusals_name_the_field(record, op, args, field, text):
    with pytest.raises(CampaignRefused, match=text) as info:
        check(record, "j1", op, args)
    assert info.value.field == field


def test_accepted_arguments_are_what_the_worker_needs():
    # The list's orderIDs are `<job id>-<index>` or the one a contact gave; repeats sent once.
    assert check(_record(), "j1", "stop-contacts", {"order_ids": ["j1-0", "mine", "j1-0"]}) == {
        "order_ids": ["j1-0", "mine"]
    }
    assert check(_record(), "j1", "complete", {"delete_undialled": True}) == {
        "delete_undialled": True
    }
    paused = _record(campaign={"status": "paused"})
    assert check(paused, "j1", "update", {"settings": {"maxCall": 2}}) == {
        "settings": {"maxCall": 2},
        "scene_id": "s1",
    }


def test_a_list_split_by_time_zone_names_every_task_and_each_orders_task():
    # Given a list of three contacts in two tasks (the plan: task 0 has contact 1, task 1 the rest)
    record = _record()
    record.input["contacts"].append({"user_phone": "65...", "order_id": "third"})
    record.progress = {
        "tasks": [{"userTaskID": "j1-z0", "accepted": 1}, {"userTaskID": "j1-z1", "accepted": 2}]
    }
    plan = [[1], [0, 2]]
    # Then every operation names both tasks, and stop-contacts sends each order to its own
    assert check(record, "j1", "pause", {}, plan) == {"tasks": ["j1-z0", "j1-z1"]}
    stop = check(record, "j1", "stop-contacts", {"order_ids": ["third", "mine", "j1-0"]}, plan)
    assert stop["orders_by_task"] == {"j1-z1": ["third", "j1-0"], "j1-z0": ["mine"]}
    # A task the provider accepted no contact of was never started: not controlled
    record.progress["tasks"][0]["accepted"] = 0
    assert check(record, "j1", "resume", {}, plan) == {"tasks": ["j1-z1"]}
    with pytest.raises(CampaignRefused, match="no started task"):
        check(record, "j1", "stop-contacts", {"order_ids": ["mine"]}, plan)
