"""The orphan rule of nxjobs/held.py (which unacked messages no live worker holds), and what a
worker lists as held (workers/held.py)."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest

from config.settings import HeldSettings
from nxjobs.held import Heartbeat, decode, describe, encode, forgettable, orphaned

NOW = 10_000.0
GRACE = 15.0


def beat(age_s: float, *tags: str) -> Heartbeat:
    return Heartbeat(NOW - age_s, frozenset(tags))


def test_a_message_of_a_dead_worker_is_orphaned_and_a_live_workers_is_not():
    unacked = [("live-1", NOW - 100), ("dead-1", NOW - 100), ("dead-2", NOW - 20)]
    beats = {"a@h": beat(3, "live-1"), "b@h": beat(40, "dead-1", "dead-2")}
    assert orphaned(unacked, beats, now=NOW, grace_s=GRACE) == ["dead-1", "dead-2"]


def test_a_message_delivered_within_the_grace_is_never_orphaned_even_if_unlisted():
    # Its worker may not have written its list since it took it.
    unacked = [("new", NOW - 14.9), ("old", NOW - 15.1)]
    assert orphaned(unacked, {}, now=NOW, grace_s=GRACE) == ["old"]


def test_a_list_exactly_grace_old_still_protects_and_one_just_older_does_not():
    unacked = [("t1", NOW - 60), ("t2", NOW - 60)]
    beats = {"a@h": beat(GRACE, "t1"), "b@h": beat(GRACE + 0.01, "t2")}
    assert orphaned(unacked, beats, now=NOW, grace_s=GRACE) == ["t2"]


def test_a_restarted_worker_under_the_same_name_protects_only_what_it_lists_now():
    # The node's entry was overwritten by its new life; what the old life held is orphaned.
    unacked = [("before-kill", NOW - 30), ("after-restart", NOW - 16)]
    beats = {"a@h": beat(1, "after-restart")}
    assert orphaned(unacked, beats, now=NOW, grace_s=GRACE) == ["before-kill"]


def test_a_tag_listed_by_two_workers_counts_as_held_if_either_list_is_fresh():
    unacked = [("t", NOW - 60)]
    beats = {"a@h": beat(100, "t"), "b@h": beat(2, "t")}
    assert orphaned(unacked, beats, now=NOW, grace_s=GRACE) == []


def test_a_stale_entry_is_forgotten_only_once_none_of_its_tags_is_unacked():
    beats = {
        "fresh@h": beat(2),
        "settled@h": beat(100, "x", "y"),
        "pending@h": beat(100, "z", "w"),
        "empty@h": beat(100),
    }
    assert sorted(forgettable(beats, now=NOW, grace_s=GRACE, still_unacked={"w"})) == [
        "empty@h",
        "settled@h",
    ]


def test_entries_round_trip_and_a_malformed_one_protects_nothing():
    raw = encode(NOW, ["b", "a", "a"])
    assert json.loads(raw) == {"at": NOW, "tags": ["a", "b"]}
    assert decode(raw) == Heartbeat(NOW, frozenset({"a", "b"}))
    for bad in ("", "{", '{"at": 1}', '["x"]', '{"at": "soon", "tags": []}'):
        assert decode(bad) == Heartbeat(0.0, frozenset()), bad
    assert orphaned([("t", NOW - 60)], {"x@h": decode("{")}, now=NOW, grace_s=GRACE) == ["t"]


def test_describe_names_the_job_and_queue_of_an_unacked_entry_and_nothing_more():
    message = {"body": "c2VjcmV0", "headers": {"id": "job-1", "task": "nxjobs.call"}}
    assert describe(json.dumps([message, "agent", "agent"])) == ("job-1", "agent")
    assert describe(b"not json") == ("?", "?")


def test_the_grace_defaults_to_three_intervals_and_must_cover_two():
    assert HeldSettings().grace() == 15.0
    assert HeldSettings(interval_s=2).grace() == 6.0
    assert HeldSettings(interval_s=2, grace_s=4).grace() == 4.0
    with pytest.raises(ValueError, match="GRACE_S"):
        HeldSettings(interval_s=5, grace_s=9)


def _request(tag: str):
    from celery.worker.request import Request

    req = Request.__new__(Request)  # only what the list reads: its delivery info
    req._delivery_info = {"delivery_tag": tag}
    return req


def test_a_workers_list_names_reserved_active_timer_held_and_channel_delivered_messages():
    from celery.worker import state
    from kombu.asynchronous.timer import Timer

    from workers.held import held_tags

    reserved, active, eta = _request("t-reserved"), _request("t-active"), _request("t-eta")
    timer = Timer()
    timer.call_at(time.time() + 60, lambda req: None, (eta,), priority=6)  # a countdown
    timer.call_at(time.time() + 60, lambda: None, ())  # not a request: skipped
    channel = SimpleNamespace(qos=SimpleNamespace(_delivered={"t-popped": object()}))
    consumer = SimpleNamespace(timer=timer, task_consumer=SimpleNamespace(channel=channel))
    state.reserved_requests.add(reserved)
    state.active_requests.add(active)
    try:
        assert held_tags(consumer) == {"t-reserved", "t-active", "t-eta", "t-popped"}
        # Reconnecting: no task consumer yet; the requests are still listed.
        assert held_tags(SimpleNamespace(timer=timer)) == {"t-reserved", "t-active", "t-eta"}
    finally:
        state.reserved_requests.discard(reserved)
        state.active_requests.discard(active)
        timer.clear()
