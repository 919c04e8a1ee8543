"""The one state machine on a real Redis: the table the Lua library holds is the store's, and
each script moves a job exactly as far as the table and its own `-- moves:` header allow."""

from __future__ import annotations

import json

import pytest

from nxjobs import keys, scripts
from nxjobs.deadletters import DeadLetters
from nxjobs.records import JobState
from nxjobs.redis_conn import connect
from nxjobs.store import ALLOWED_FROM, RecordStore, TransitionRefused, load_script

pytestmark = pytest.mark.integration

STATES = [s.value for s in JobState]


@pytest.fixture()
def client(redis_url):
    client = connect(redis_url.rsplit("/", 1)[0] + "/11")
    client.flushdb()
    yield client
    client.flushdb()


def test_the_table_in_lua_is_the_python_table(client):
    for name in scripts.names():
        source = load_script(name).source
        if "set_state" not in source:
            continue
        line = next(ln for ln in source.splitlines() if ln.startswith("local ALLOWED_FROM = "))
        in_lua = json.loads(client.eval(line + "\nreturn cjson.encode(ALLOWED_FROM)", 0))
        python = {
            to.value: {None if f is None else f.value for f in froms}
            for to, froms in ALLOWED_FROM.items()
        }
        assert {to: {frm or None for frm in froms} for to, froms in in_lua.items()} == python


@pytest.mark.parametrize("before", [None, *STATES])
def test_a_worker_transition_moves_exactly_where_the_table_lets_it(client, before):
    store = RecordStore(client, ttl_s=60)
    moves = load_script("store_transition").moves
    for target in JobState:
        if target is JobState.SUBMITTED:
            continue  # its own script (store_submit.lua), below
        client.delete(keys.job("j"))
        if before is not None:
            client.hset(keys.job("j"), mapping={"state": before, "kind": "ota-init"})
        allowed = (before or "", target.value) in moves
        assert allowed <= (before in {None if f is None else f.value for f in ALLOWED_FROM[target]})
        try:
            store.transition("j", target)
            moved = True
        except TransitionRefused as refused:
            moved = False
            assert refused.current == before
        assert moved is allowed, f"{before} -> {target.value}"
        assert client.hget(keys.job("j"), "state") == (target.value if moved else before)


@pytest.mark.parametrize("before", [None, *STATES])
def test_submit_moves_only_a_running_job(client, before):
    store = RecordStore(client, ttl_s=60)
    if before is not None:
        client.hset(keys.job("j"), mapping={"state": before, "kind": "ota-init"})
    try:
        after = store.transition("j", JobState.SUBMITTED, result={}).state
    except TransitionRefused:
        after = before
    # Nothing to wait for (ota-init): submitted, then completed in the same step.
    assert after == ("completed" if before == "running" else before)
    assert client.hget(keys.job("j"), "state") == after


@pytest.mark.parametrize("before", [None, *STATES])
def test_submit_deletes_the_keys_it_is_given_only_when_it_moves(client, before):
    store = RecordStore(client, ttl_s=60)
    if before is not None:
        client.hset(keys.job("j"), mapping={"state": before, "kind": "ota-init"})
    client.set(keys.inflight("j"), "1")
    client.set(keys.job_payload("j"), "{}")
    try:
        store.submit("j", "ota-init", clear=[keys.inflight("j"), keys.job_payload("j")], result={})
        moved = True
    except TransitionRefused:
        moved = False
    assert moved is (before == "running")
    assert client.exists(keys.inflight("j"), keys.job_payload("j")) == (0 if moved else 2)
    assert client.hget(keys.job("j"), "state") == ("completed" if moved else before)


@pytest.mark.parametrize("before", [None, *STATES])
def test_a_replay_takes_only_a_failed_job_and_never_creates_one(client, before):
    dead = DeadLetters(client)
    dead.add("j", "ota-init", {"phone": "1"}, {"code": "x"})
    if before is not None:
        client.hset(keys.job("j"), mapping={"state": before, "kind": "ota-init"})
    status, _ = dead.take("j", 60)
    assert status == {None: 2, "failed": 1}.get(before, 0)
    assert client.hget(keys.job("j"), "state") == ("queued" if before == "failed" else before)


def test_restoring_a_failed_replay_goes_through_the_store(client):
    store = RecordStore(client, ttl_s=60)
    store.create("j", "ota-init", {})
    assert store.restore_failed("j", {"code": "x", "message": "m", "retryable": False})
    record = store.get("j")
    assert (record.state, record.error.code) == (JobState.FAILED, "x")
    client.hset(keys.job("k"), mapping={"state": "completed", "kind": "ota-init"})
    assert not store.restore_failed("k", {"code": "x", "message": "m", "retryable": False})
    assert client.hget(keys.job("k"), "state") == "completed"
