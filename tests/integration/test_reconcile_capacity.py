"""Reconciliation capacity: one run settles thousands of late coalesced members, asking the
number query once per requestId and page, not once per job; a run stops at its request budget
only between requestIds.

Real Redis (db 1), a real worker submitting through the sandbox, DRs through the real receiver
(some dropped), and the reconciliation run of `tasks/reconcile.py` (`run_once`) with the
workers' settings and clients, in this process so its report is read. Deadlines are 1 s, the
give-up age 4 s (tests/conftest.py).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from types import SimpleNamespace

import pytest

from nxjobs import keys
from nxjobs.callbacks.reconcile import NUMBER_QUERY_PAGE, NUMBER_QUERY_PATH
from nxjobs.records import JobState

pytestmark = pytest.mark.integration

WAIT_S = 60
RUN_BOUND_S = 30


@pytest.fixture()
def services(callbacks_env, monkeypatch):
    """Build the workers' services from their environment (`run_once` reads its settings)."""

    def build(**overrides: str):
        from config.settings import load_settings
        from tasks.services import Services

        for name, value in {**callbacks_env, **overrides}.items():
            if name.startswith("NXJOBS_"):
                monkeypatch.setenv(name, value)
        svc = Services(load_settings())
        built.append(svc)
        return svc

    built: list = []
    yield build
    for svc in built:
        svc.transport.close()


@pytest.fixture()
def no_late_jobs(cb_producer, cb_sandbox, services):
    """Earlier tests' late api2 jobs settled first, so a run sees only ours: each is made due
    now (some wait for a re-check minutes away) and, past its give-up age (4 s), a run gives up
    on it."""
    from tasks.reconcile import run_once

    svc = services()
    waiting = keys.callbacks_waiting("api2")
    deadline = time.monotonic() + 30
    while cb_producer.redis.zcard(waiting):
        left = cb_producer.redis.zrange(waiting, 0, -1)
        cb_producer.redis.zadd(waiting, dict.fromkeys(left, 0), xx=True)
        assert time.monotonic() < deadline, (
            "earlier tests' api2 jobs still waiting",
            [(j, cb_producer.redis.hmget(keys.job(j), "state", "kind")) for j in left[:5]],
        )
        run_once(svc, "api2")
        time.sleep(0.5)


def _submit(cb_producer, phones: list[str]) -> list[str]:
    job_ids = cb_producer.enqueue_many("number-check", [{"phones": [p]} for p in phones])
    records = cb_producer.wait(job_ids, until="submitted", timeout_s=WAIT_S)
    assert all(r.reached(JobState.SUBMITTED) for r in records.values()), Counter(
        r.state for r in records.values()
    )
    return job_ids


def _callbacks_settled(sandbox, expected: int) -> None:
    """Wait until the sandbox has delivered or dropped a DR for each of `expected` numbers."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        cb = sandbox.stats()["callbacks"]
        if cb.get("queued", 0) >= expected and cb.get("delivered", 0) + cb.get(
            "dropped", 0
        ) >= cb.get("queued", 0):
            return
        time.sleep(0.2)
    raise AssertionError(f"callbacks still in flight: {sandbox.stats()['callbacks']}")


def _states(redis, job_ids: list[str]) -> dict[str, str]:
    pipe = redis.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hget(keys.job(job_id), "state")
    return dict(zip(job_ids, pipe.execute(), strict=True))


def _wait_due(redis, job_ids: list[str]) -> None:
    """Until every one of `job_ids` is past its deadline in the api2 waiting set."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        scores = redis.zmscore(keys.callbacks_waiting("api2"), job_ids)
        if all(s is not None and s <= time.time() for s in scores):
            return
        time.sleep(0.1)
    raise AssertionError("late jobs never became due")


def _queries(sandbox, request_ids: set[str]) -> list[tuple[str, int]]:
    """(requestId, page) of each number query the sandbox received for `request_ids`."""
    return [
        (r["body"]["requestId"], int(r["body"]["page"]))
        for r in sandbox.requests(path=NUMBER_QUERY_PATH, limit=2000)
        if r["body"].get("requestId") in request_ids
    ]


def _batch_sizes(sandbox, phones: set[str]) -> list[int]:
    return [
        len(numbers)
        for r in sandbox.requests(path="/api/number/check", limit=1000)
        if phones & set(numbers := str(r["body"].get("phone", "")).split(","))
    ]


def test_one_run_settles_every_late_member_with_one_query_per_request_id_page(
    cb_producer, cb_sandbox, callbacks_worker, services, no_late_jobs
):
    from tasks.reconcile import run_once

    # Given 3 000 coalesced one-number checks, 5 % of their DRs lost
    cb_sandbox.configure(callback_drop_rate=0.05, seed=20261202)
    phones = [f"6595{i:06d}" for i in range(3000)]
    job_ids = _submit(cb_producer, phones)
    _callbacks_settled(cb_sandbox, len(phones))
    late = [j for j, s in _states(cb_producer.redis, job_ids).items() if s == "submitted"]
    assert 50 <= len(late) <= 300, len(late)
    _wait_due(cb_producer.redis, late)
    records = cb_producer.store.get_many(late)
    request_ids = {r.result["requestId"] for r in records.values()}
    sizes = _batch_sizes(cb_sandbox, set(phones))
    assert sum(sizes) == 3000 and len(request_ids) == len(sizes) >= 2
    assert _queries(cb_sandbox, request_ids) == []
    # When one reconciliation run of the api2 family runs
    started = time.monotonic()
    report = run_once(services(), "api2")
    elapsed = time.monotonic() - started
    # Then every late member is completed by the query's rows, in that one run
    after = cb_producer.store.get_many(late)
    assert {r.state for r in after.values()} == {JobState.COMPLETED}, report
    assert all([c["source"] for c in r.callbacks] == ["reconcile"] for r in after.values())
    assert report["completed"] >= len(late) and "stopped_by_budget" not in report, report
    # with each requestId's pages asked once: requests = requestIds x pages, not one per job
    queries = _queries(cb_sandbox, request_ids)
    assert max(Counter(queries).values()) == 1
    assert len(queries) == sum(math.ceil(n / NUMBER_QUERY_PAGE) for n in sizes)
    assert len(queries) < len(late)
    # and the rows of members whose DR came were recognised as repeats, nothing else
    assert report.get("callbacks_duplicate") == 3000 - len(late), report
    assert elapsed < RUN_BOUND_S


def test_a_run_past_its_request_budget_finishes_its_request_id_and_leaves_the_rest_due(
    cb_producer, cb_sandbox, callbacks_worker, services, no_late_jobs
):
    from tasks.reconcile import run_once

    # Given two coalesced batches of 150 numbers whose every DR was lost (two pages each)
    cb_sandbox.configure(callback_drop_rate=1.0)
    first = _submit(cb_producer, [f"6594{i:06d}" for i in range(150)])
    second = _submit(cb_producer, [f"6594{i:06d}" for i in range(150, 300)])
    request_ids = {
        r.result["requestId"] for r in cb_producer.store.get_many(first + second).values()
    }
    assert len(request_ids) == 2
    _wait_due(cb_producer.redis, first + second)
    # When a run may make 1 request
    report = run_once(services(NXJOBS_CALLBACKS__RECONCILE_MAX_REQUESTS="1"), "api2")
    # Then it finished the requestId it started (both its pages) and stopped before the next
    assert report["stopped_by_budget"] == 1 and report["provider_requests"] == 2, report
    states = _states(cb_producer.redis, first + second)
    done = [j for j in first + second if states[j] == "completed"]
    assert sorted(done) in (sorted(first), sorted(second)), Counter(states.values())
    rest = sorted(set(first + second) - set(done))
    assert all(
        s is not None for s in cb_producer.redis.zmscore(keys.callbacks_waiting("api2"), rest)
    )
    # and the next run settles the other batch, asking each requestId's pages once in all
    report = run_once(services(), "api2")
    assert set(_states(cb_producer.redis, rest).values()) == {"completed"}, report
    queries = _queries(cb_sandbox, request_ids)
    assert len(queries) == 4 and max(Counter(queries).values()) == 1


@pytest.fixture()
def db(redis_url):
    """A Redis db of this test's own, empty."""
    from nxjobs.redis_conn import connect

    client = connect(redis_url.rsplit("/", 1)[0] + "/14")
    client.flushdb()
    yield client
    client.close()


def test_late_calls_are_looked_up_20_orderids_a_request_within_the_run_budget(db):
    from nxjobs.callbacks.ledger import Ledger
    from nxjobs.callbacks.reconcile import Clients, Policy, Reconciler
    from nxjobs.store import RecordStore

    # Given 60 calls submitted and past their deadline, whose CDRs never came
    store, ledger = RecordStore(db), Ledger(db)
    job_ids = []
    for i in range(60):
        job_id = f"call-cap-{i:03d}"
        store.create(job_id, "call", {"phone": "861******8000"})
        store.transition(job_id, JobState.RUNNING, incr=["attempts"])
        store.transition(job_id, JobState.SUBMITTED, result={"orderid": job_id})
        job_ids.append(job_id)
    asked: list[list[str]] = []

    def cdr_by_orderid(orderids: list[str]) -> list[dict]:
        asked.append(list(orderids))
        return [{"orderid": o, "sessionid": f"s-{o}", "duration": 3} for o in orderids]

    def reconcile(max_requests: int):
        later = time.time() + 3600
        return Reconciler(
            store,
            ledger,
            Policy(deadlines_s={}, give_up_s={}, max_requests=max_requests),
            Clients(agent=SimpleNamespace(cdr_by_orderid=cdr_by_orderid)),
            clock=lambda: later,
        ).run("agent")

    # When a run may make 2 requests
    report = reconcile(max_requests=2)
    # Then it asked for 40 orderids in two requests, completed their jobs and left 20 due
    assert [len(a) for a in asked] == [20, 20] and report.counts["stopped_by_budget"] == 1
    states = _states(db, job_ids)
    assert sum(s == "completed" for s in states.values()) == 40 == report.counts["completed"]
    assert db.zcard(keys.callbacks_waiting("agent")) == 20
    # and the next run asks for the last 20, once each
    assert reconcile(max_requests=200).counts["completed"] == 20
    assert sorted(o for a in asked for o in a) == sorted(job_ids)
    assert set(_states(db, job_ids).values()) == {"completed"}
    assert db.zcard(keys.callbacks_waiting("agent")) == 0
