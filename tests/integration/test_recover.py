"""The lost-message sweeper (nxjobs/recover.py) on a real Redis: a job whose broker
message is nowhere (not queued, not unacked) is re-published once it has been
missing twice, confirm_s apart; a job whose message exists is left alone."""

from __future__ import annotations

import json
import time

import pytest

from nxjobs import keys
from nxjobs.broker import unacked_key
from nxjobs.records import JobState
from nxjobs.recover import LostMessageSweeper
from nxjobs.redis_conn import connect
from nxjobs.store import RecordStore


@pytest.fixture()
def client(redis_server):
    c = connect(redis_server.url.rsplit("/", 1)[0] + "/5")
    c.flushdb()
    yield c
    c.flushdb()


def _job(client, job_id: str, kind: str = "call") -> None:
    RecordStore(client).create(
        job_id, kind, {"phone": "861******8000"}, payload={"phone": "8613800138000"}
    )
    # Unchanged for long: its record, and when it entered its state (the index score).
    client.hset(keys.job(job_id), "updated_at", "2020-01-01T00:00:00.000Z")
    client.zadd(keys.job_index(kind, "queued"), {job_id: 1577836800}, xx=True)


def _message(job_id: str) -> str:
    # The shape kombu stores: the envelope as JSON, Celery's task id in headers.id.
    return json.dumps(
        {
            "body": "e30=",
            "headers": {"lang": "py", "task": "t", "id": job_id, "root_id": "x"},
            "properties": {"delivery_tag": "d"},
        }
    )


def test_a_job_whose_message_vanished_is_republished_after_confirmation(client):
    lost, queued, held = "a" * 32, "b" * 32, "c" * 32
    for j in (lost, queued, held):
        _job(client, j)
    client.lpush("agent\x06\x163", _message(queued))  # a priority step list
    client.hset(unacked_key(), "tag1", json.dumps([json.loads(_message(held)), "", "agent"]))
    sent = []
    now = [time.time()]
    sweeper = LostMessageSweeper(
        client,
        lambda kind, job_id, payload: sent.append((kind, job_id, payload)),
        confirm_s=10,
        clock=lambda: now[0],
    )
    # First look: only the lost one is suspected, nothing is sent yet.
    assert sweeper.run("agent")["suspects"] == 1 and sent == []
    now[0] += 11
    # Still missing, record unchanged, confirm_s later: re-published with its raw payload.
    assert sweeper.run("agent")["republished"] == 1
    assert sent == [("call", lost, {"phone": "8613800138000"})]
    # Other families are not touched.
    assert (
        LostMessageSweeper(client, lambda *a: sent.append(a), confirm_s=10).run("api2")[
            "candidates"
        ]
        == 0
    )


def test_a_suspect_that_moves_on_is_forgotten(client):
    job = "d" * 32
    _job(client, job)
    sent = []
    now = [time.time()]
    sweeper = LostMessageSweeper(
        client, lambda *a: sent.append(a), confirm_s=10, clock=lambda: now[0]
    )
    assert sweeper.run("agent")["suspects"] == 1
    client.hset(keys.job(job), "state", "submitted")  # a worker had it after all
    now[0] += 11
    assert sweeper.run("agent") == {"candidates": 0, "suspects": 0, "republished": 0}
    assert sent == [] and client.hlen(keys.recover_suspects("agent")) == 0


def test_a_scheduled_job_has_no_message_on_purpose_and_is_never_republished(client):
    # A scheduled job (nxjobs/schedule.py), long unchanged, whose index entry is old
    job = "e" * 32
    store = RecordStore(client)
    store.create(
        job,
        "call",
        {"phone": "861******8000"},
        payload={"phone": "8613800138000"},
        state=JobState.SCHEDULED,
        index_score=1577836800,
    )
    client.hset(keys.job(job), "updated_at", "2020-01-01T00:00:00.000Z")
    sent = []
    now = [time.time()]
    sweeper = LostMessageSweeper(
        client, lambda *a: sent.append(a), confirm_s=10, clock=lambda: now[0]
    )
    for _ in range(3):
        report = sweeper.run("agent")
        now[0] += 11
        assert report["candidates"] == 0 and report.get("republished", 0) == 0, report
    assert sent == []
