"""The at-most-once attempt protocol (nxjobs/attempts/), without Celery, Redis or a network:
in-memory fakes of the store, Redis, limiter, coalesce queue and provider clients; the real
RateGate, InflightMarker, policy and decisions."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from config.settings import Settings
from nxjobs import coalesce, keys
from nxjobs.attempts import decisions
from nxjobs.attempts.batch import BatchAttempt
from nxjobs.attempts.job import JobAttempt
from nxjobs.attempts.senders import Sender, Share
from nxjobs.client.agent import CDR_BY_ORDERID_PATH, MAKECALL_PATH
from nxjobs.client.errors import RETRY, ProviderError, TransportError
from nxjobs.client.operations import NUMBER_CHECK_PATH
from nxjobs.inflight import INFLIGHT_SLACK_S, InflightMarker
from nxjobs.jobs import PRIORITY_NEW, PRIORITY_RESERVED_SLOT, PRIORITY_RETRY
from nxjobs.ratelimit.gate import RateGate, SlotNotReady
from nxjobs.ratelimit.limiter import Grant, Limit
from nxjobs.records import JobState
from nxjobs.store import Transition, TransitionRefused

PHONE = "8613800138000"
LIMITS = {
    "agent": [Limit("makecall:u", 1.0)],
    "cdr": [Limit("cdr:k", 1.0)],
    "api2": [Limit("api2:a", 10.0)],
    "callbot": [Limit("callbot:c", 10.0)],
}
GO = Grant(go=True, reserved=True, wait_s=0.0, slot_at_us=1, member="m")
LATER = Grant(go=False, reserved=True, wait_s=0.4, slot_at_us=777, member="")


# ---- fakes ------------------------------------------------------------------------------------


class FakeRedis:
    def __init__(self):
        self.data: dict[str, Any] = {}
        self.zsets: dict[str, dict[str, float]] = {}

    def get(self, key):
        return self.data.get(key)

    def set(self, key, value, ex=None):
        self.data[key] = value

    def delete(self, *names):
        for name in names:
            self.data.pop(name, None)

    def hget(self, key, name):
        return (self.data.get(key) or {}).get(name)

    def zadd(self, key, mapping, xx=False):
        self.zsets.setdefault(key, {}).update(mapping)


class FakeLimiter:
    """Hands out the grants it is given (then `go`), and remembers what it was asked."""

    def __init__(self, *grants: Grant):
        self.grants = list(grants)
        self.acquired: list[tuple[list[str], int | None]] = []
        self.cooled: list[list[str]] = []

    def acquire(self, limits, *, prepaid_at_us=None, early_s=0.0):
        self.acquired.append(([lim.name for lim in limits], prepaid_at_us))
        return self.grants.pop(0) if self.grants else GO

    def answered(self, limits, member):
        pass

    def cool_down(self, limits, **_):
        self.cooled.append([lim.name for lim in limits])
        return 1.5


class RecordingPipeline:
    """Notes the commands queued on it."""

    def __init__(self):
        self.queued: list[tuple] = []

    def __getattr__(self, name):
        return lambda *args, **kwargs: self.queued.append((name, *args))


class FakeStore:
    """Records and their state machine, as far as an attempt uses them."""

    def __init__(self, state: str = "queued", attempts: int = 0, throttles: int = 0):
        self.records: dict[str, dict[str, Any]] = {}
        self.initial = (state, attempts, throttles)
        self.history: list[tuple[str, dict]] = []
        self.sent_with_submit = RecordingPipeline()

    def _rec(self, job_id):
        state, attempts, throttles = self.initial
        return self.records.setdefault(
            job_id, {"state": state, "attempts": attempts, "throttles": throttles, "waits": 0}
        )

    def transition(self, job_id, state: JobState, *, incr=(), **fields):
        rec = self._rec(job_id)
        if state is JobState.RUNNING and rec["state"] in ("submitted", "completed", "failed"):
            raise TransitionRefused(job_id, rec["state"], state)
        previous = rec["state"]
        for name in incr:
            rec[name] += 1
        rec["state"] = state.value
        rec.update(fields)
        self.history.append((state.value, dict(fields, incr=list(incr))))
        return Transition(previous, rec["attempts"], rec["throttles"], state.value)

    def submit(self, job_id, kind, *, clear=(), also=None, **fields):
        moved = self.transition(job_id, JobState.SUBMITTED, **fields)
        self.redis.delete(*clear)
        if also is not None:
            also(self.sent_with_submit)
        return moved

    def incr(self, job_id, counter):
        self._rec(job_id)[counter] += 1

    def get(self, job_id):
        return None

    def create(self, job_id, kind, payload):
        self._rec(job_id)

    def state(self, job_id):
        return self._rec(job_id)["state"]


class FakeDeadLetters:
    def __init__(self):
        self.added: dict[str, dict] = {}

    def add(self, job_id, kind, payload, error, record):
        self.added[job_id] = error


class Provider:
    """The provider side: what each request answers (a result or an exception), and what was sent.
    Requests pass the gate hook first, as the real clients do."""

    def __init__(self, gate: RateGate, *answers):
        self.gate = gate
        self.answers = list(answers)
        self.sent: list[str] = []
        self.cdr_rows: list[dict] = []
        self.query_rows: list[dict] = []

    def request(self, family: str, endpoint: str, body=None):
        answered = self.gate(family, endpoint, body)
        try:
            self.sent.append(endpoint)
            answer = self.answers.pop(0) if self.answers else {}
            if isinstance(answer, BaseException):
                raise answer
            return answer
        finally:
            if answered:
                answered()

    # agent client, as reconcile.find_call uses it
    def cdr_by_orderid(self, orderids):
        self.gate("cdr", CDR_BY_ORDERID_PATH, orderids)
        self.sent.append("lookup:cdr")
        return self.cdr_rows

    # api2 client, as reconcile.find_number_check uses it
    def post(self, path, *, biz_type, action, body):
        self.gate("api2", path, body)
        self.sent.append("lookup:" + path)
        return SimpleNamespace(body={"data": {"result": self.query_rows}})


def services(*grants: Grant, store: FakeStore | None = None, answers=()) -> SimpleNamespace:
    limiter = FakeLimiter(*grants)
    gate = RateGate(limiter, lambda family, endpoint, body: LIMITS.get(family, []))
    provider = Provider(gate, *answers)
    store = store or FakeStore()
    store.redis = FakeRedis()
    return SimpleNamespace(
        settings=Settings(_env_file=None),
        redis=store.redis,
        store=store,
        gate=gate,
        limiter=limiter,
        dead_letters=FakeDeadLetters(),
        rng=random.Random(1),
        provider=provider,
        agent=provider,
        api2=provider,
        calling_hours=None,
        suppression=SimpleNamespace(contains=lambda phone: False),
    )


def operation_for(kind: str, svc, steps: int = 1):
    """An operation that sends `steps` requests of its kind's family, noting whether the
    in-flight marker was set when each left."""
    family, endpoint = {
        "call": ("agent", MAKECALL_PATH),
        "number-check": ("api2", NUMBER_CHECK_PATH),
        "ota-init": ("api2", "/api/ota/init"),
        "callbot-list": ("callbot", "createAndCall"),
    }[kind]
    seen = []

    def operation(_svc, job_id, model, outcome):
        for _ in range(steps):
            seen.append(svc.redis.get(keys.inflight(job_id)) is not None)
            outcome.request.append({"endpoint": endpoint})
            outcome.result = svc.provider.request(family, endpoint)
        return outcome

    operation.marker_set_when_sent = seen
    return operation


PAYLOADS = {
    "call": {"phone": PHONE},
    "number-check": {"phones": [PHONE]},
    "ota-init": {"phone": PHONE, "user_ip": "203.0.113.9"},
    "callbot-list": {"scene_id": "1", "task_name": "t", "contacts": [{"user_phone": PHONE}]},
}


def run(svc, kind: str, operation=None, **kw) -> decisions.Decision:
    operation = operation or operation_for(kind, svc)
    return JobAttempt(svc, "job1", kind, PAYLOADS[kind], operation, **kw).run()


def stale_marker(svc, owner="job1"):
    http = svc.settings.http
    svc.redis.set(
        keys.inflight(owner),
        f"{time.time() - http.connect_timeout_s - http.read_timeout_s - 10:.3f}",
    )


def lost_answer():
    return TransportError(
        "read timeout", code="timeout", classification=RETRY, may_have_reached=True
    )


# ---- one job -----------------------------------------------------------------------------------


def test_no_marker_sets_it_before_the_request_and_clears_it_once_recorded():
    svc = services()
    op = operation_for("number-check", svc)
    decision = run(svc, "number-check", op)
    assert decision == decisions.Submitted()
    assert op.marker_set_when_sent == [True]
    assert svc.provider.sent == [NUMBER_CHECK_PATH]
    assert svc.store.state("job1") == "submitted"
    assert svc.redis.get(keys.inflight("job1")) is None


def test_the_first_request_spends_the_slot_taken_before_the_claim_and_later_ones_take_their_own():
    svc = services()
    run(svc, "callbot-list", operation_for("callbot-list", svc, steps=3), slot_at_us=555)
    # one acquire before the claim (spending the prepaid slot), then one per later request
    assert svc.limiter.acquired == [
        (["callbot:c"], 555),
        (["callbot:c"], None),
        (["callbot:c"], None),
    ]


def test_a_young_marker_means_wait_for_the_earlier_attempt_not_resend():
    svc = services()
    svc.redis.set(keys.inflight("job1"), f"{time.time():.3f}")
    op = operation_for("call", svc)
    decision = run(svc, "call", op)
    assert isinstance(decision, decisions.RetryLater) and decision.error is None
    assert decision.resumed and decision.priority == PRIORITY_RETRY
    http = svc.settings.http
    assert (
        0
        < decision.countdown
        <= http.connect_timeout_s + http.read_timeout_s + INFLIGHT_SLACK_S + 0.01
    )
    assert decision.reason == "call job job1: an earlier attempt may be in flight"
    assert svc.provider.sent == [] and op.marker_set_when_sent == []


def test_a_stale_marker_is_looked_up_and_a_found_batch_recorded_without_resend():
    svc = services()
    stale_marker(svc)
    svc.provider.query_rows = [{"requestId": "r-1-000001"}]
    op = operation_for("number-check", svc)
    assert run(svc, "number-check", op) == decisions.Submitted()
    assert op.marker_set_when_sent == [] and svc.provider.sent == ["lookup:/api/number/query"]
    assert svc.store.records["job1"]["result"]["requestId"] == "r-1"
    assert svc.redis.get(keys.inflight("job1")) is None


def test_a_stale_marker_of_a_call_found_by_cdr_is_recorded_and_the_lookup_spends_its_own_slot():
    svc = services()
    stale_marker(svc)
    svc.provider.cdr_rows = [{"orderid": "job1", "sessionid": "s1"}]
    op = operation_for("call", svc)
    assert run(svc, "call", op) == decisions.Submitted()
    assert op.marker_set_when_sent == []
    assert svc.store.records["job1"]["result"]["sessionid"] == "s1"
    # the makecall slot taken before the claim is not what the CDR quota spends
    assert svc.limiter.acquired == [(["makecall:u"], None), (["cdr:k"], None)]


def test_a_stale_marker_of_a_call_without_cdr_fails_ambiguous_and_is_never_resent():
    svc = services()
    stale_marker(svc)
    op = operation_for("call", svc)
    decision = run(svc, "call", op)
    assert isinstance(decision, decisions.Failed) and decision.error.code == "ambiguous"
    assert decision.reason.startswith("call job job1 failed: ambiguous ")
    assert op.marker_set_when_sent == [] and MAKECALL_PATH not in svc.provider.sent
    assert "job1" in svc.redis.zsets[keys.RECONCILE] and "job1" in svc.dead_letters.added
    assert svc.redis.get(keys.inflight("job1")) is not None  # a replay looks it up again


def test_a_stale_marker_of_a_batch_without_trace_is_sent_again():
    svc = services()
    stale_marker(svc)
    op = operation_for("number-check", svc)
    assert run(svc, "number-check", op) == decisions.Submitted()
    assert svc.provider.sent == ["lookup:/api/number/query", NUMBER_CHECK_PATH]
    assert op.marker_set_when_sent == [True]


def test_a_lost_answer_keeps_the_marker_and_retries():
    svc = services(answers=[lost_answer()])
    decision = run(svc, "number-check")
    assert isinstance(decision, decisions.RetryLater) and decision.error.code == "timeout"
    assert decision.reason == "number-check job job1: timeout read timeout"
    assert svc.redis.get(keys.inflight("job1")) is not None
    assert svc.store.state("job1") == "retrying"


def test_an_answered_error_clears_the_marker():
    svc = services(answers=[ProviderError("api2", "500", "busy")])
    svc.provider.answers = [
        TransportError("HTTP 503", code="http_503", classification=RETRY, may_have_reached=False)
    ]
    decision = run(svc, "number-check")
    assert isinstance(decision, decisions.RetryLater) and decision.priority == PRIORITY_RETRY
    assert svc.redis.get(keys.inflight("job1")) is None


def test_a_lost_makecall_answer_fails_ambiguous_and_keeps_the_marker():
    from nxjobs.client.operations import AmbiguousSubmission

    svc = services(answers=[AmbiguousSubmission(lost_answer(), "orderid", "job1")])
    decision = run(svc, "call")
    assert isinstance(decision, decisions.Failed) and decision.error.code == "ambiguous"
    assert svc.redis.get(keys.inflight("job1")) is not None
    assert "job1" in svc.redis.zsets[keys.RECONCILE]


def test_a_throttle_cools_the_permits_credential_down():
    svc = services(answers=[ProviderError("api2", "2206", "too frequent")])
    decision = run(svc, "ota-init")
    assert isinstance(decision, decisions.CoolDown)
    assert (
        1.5 <= decision.countdown <= 1.6
        and decision.priority == PRIORITY_RETRY
        and not decision.resumed
    )
    assert decision.reason == "ota-init job job1: provider said too frequent (2206)"
    assert svc.limiter.cooled == [["api2:a"]]
    assert svc.store.records["job1"]["throttles"] == 1 and svc.store.state("job1") == "retrying"


def test_throttled_past_max_throttles_fails():
    store = FakeStore(
        state="retrying", attempts=3, throttles=Settings(_env_file=None).ratelimit.max_throttles
    )
    svc = services(store=store, answers=[ProviderError("api2", "2206", "too frequent")])
    decision = run(svc, "ota-init")
    assert isinstance(decision, decisions.Failed) and decision.error.code == "2206"
    assert decision.error.message.endswith(f"({svc.settings.ratelimit.max_throttles} times)")
    assert "job1" in svc.dead_letters.added and svc.store.state("job1") == "failed"


def test_a_slot_not_yet_due_waits_for_it_before_claiming():
    svc = services(LATER)
    op = operation_for("call", svc)
    decision = run(svc, "call", op)
    assert decision == decisions.WaitForSlot(
        countdown=0.4,
        priority=PRIORITY_RESERVED_SLOT,
        resumed=False,
        reason="waiting 0.400s for a rate-limit slot",
        slot_at_us=777,
    )
    assert svc.store.records["job1"]["waits"] == 1
    assert svc.store.history == []  # not claimed: waiting is not running
    assert svc.provider.sent == []


def test_a_later_steps_slot_wait_saves_progress_as_retrying_and_resumes():
    svc = services(GO, LATER)  # the first request spends the slot taken before the claim
    decision = run(svc, "callbot-list", operation_for("callbot-list", svc, steps=2))
    assert (
        isinstance(decision, decisions.WaitForSlot)
        and decision.resumed
        and decision.slot_at_us == 777
    )
    state, fields = svc.store.history[-1]
    assert state == "retrying" and fields["incr"] == ["waits"] and len(fields["request"]) == 2


def test_a_slot_wait_of_a_lookup_kinds_request_clears_its_marker():
    svc = services(GO, LATER)
    svc.store.initial = ("queued", 0, 0)
    stale_marker(svc)  # the lookup spends the first slot, the resend has to wait for its own
    decision = run(svc, "number-check")
    assert isinstance(decision, decisions.WaitForSlot) and decision.resumed
    assert svc.redis.get(keys.inflight("job1")) is None


def test_a_permanent_error_fails_and_dead_letters():
    svc = services(answers=[ProviderError("api2", "1001", "bad appkey")])
    decision = run(svc, "number-check")
    assert isinstance(decision, decisions.Failed) and not decision.error.retryable
    assert decision.reason == "number-check job job1 failed: 1001 bad appkey"
    assert "job1" in svc.dead_letters.added and svc.store.state("job1") == "failed"
    assert svc.redis.get(keys.inflight("job1")) is None


def test_retries_stop_once_the_error_class_is_used_up():
    store = FakeStore(state="retrying", attempts=Settings(_env_file=None).retry.max_attempts - 1)
    svc = services(store=store, answers=[ProviderError("api2", "500", "busy")])
    svc.provider.answers = [
        TransportError("HTTP 503", code="http_503", classification=RETRY, may_have_reached=False)
    ]
    assert isinstance(run(svc, "number-check"), decisions.Failed)


def test_a_redelivery_of_a_submitted_job_is_skipped_and_sends_nothing():
    svc = services(store=FakeStore(state="submitted"))
    assert run(svc, "call") == decisions.Skipped()
    assert svc.provider.sent == []


def test_an_invalid_payload_fails_without_a_slot():
    svc = services()
    decision = JobAttempt(svc, "job1", "call", {"phone": ""}, operation_for("call", svc)).run()
    assert isinstance(decision, decisions.Failed) and decision.error.code == "invalid_payload"
    assert svc.limiter.acquired == []


def test_a_time_limit_fails_the_attempt_and_parks_a_call_for_reconciliation():
    class TimeUp(Exception):
        pass

    svc = services(answers=[TimeUp()])
    decision = run(svc, "call", time_limit_errors=(TimeUp,))
    assert isinstance(decision, decisions.Failed) and decision.error.code == "time_limit"
    assert "job1" in svc.redis.zsets[keys.RECONCILE]


def test_a_bug_is_recorded_failed_and_raised():
    svc = services(answers=[KeyError("x")])
    with pytest.raises(KeyError):
        run(svc, "ota-init")
    assert (
        svc.store.state("job1") == "failed"
        and svc.dead_letters.added["job1"]["code"] == "internal_error"
    )


def test_the_attempt_reports_the_credentials_of_its_permit(caplog, monkeypatch):
    from nxjobs.attempts import report

    seen = []
    prepare = report.prepare_attempt
    monkeypatch.setattr(
        report, "prepare_attempt", lambda svc, *a: seen.append(a) or prepare(svc, *a)
    )
    svc = services()
    run(svc, "ota-init")
    assert seen[-1][3] == "submitted" and seen[-1][-1] == ["api2:a"]
    # Its metrics went out with the submit.
    queued = svc.store.sent_with_submit.queued
    assert ("sadd", keys.METRICS_CREDENTIALS, "api2:a") in queued
    assert ("hincrby", keys.METRICS_COUNTERS, "attempt|ota-init|submitted", 1) in queued


# ---- the marker ---------------------------------------------------------------------------------


def test_the_marker_is_kept_only_for_a_lost_answer():
    db = FakeRedis()
    marker = InflightMarker(db, "b1")
    marker.set(ttl_s=60)
    marker.on_error(lost_answer())
    assert db.get(keys.inflight("b1")) is not None
    marker.on_error(ProviderError("api2", "1001", "bad appkey"))
    assert db.get(keys.inflight("b1")) is None
    assert InflightMarker(db, "b1").busy_until(Settings(_env_file=None).http) is None


# ---- a flush of coalesced jobs ------------------------------------------------------------------


@dataclass
class FakeQueue:
    status: int = 2
    pending_n: int = 2
    state: str | None = "built"
    counters: dict[str, int] = field(default_factory=dict)
    touched: int = 0
    fanned: list = field(default_factory=list)
    armed: bool = True

    def batch_state(self, batch_id):
        return self.state

    def pending(self, group):
        return self.pending_n

    def max_items(self, group):
        return 2000

    def arm(self, group):
        return self.armed

    def take(self, group, batch_id, now, now_iso):
        return coalesce.Taken(self.status, [("j1", "p1"), ("j2", "p2")], 0)

    def batch_counter(self, batch_id, name):
        self.counters[name] = self.counters.get(name, 0) + 1
        return self.counters[name]

    def touch(self, batch_id, now):
        self.touched += 1

    def fan_out(self, batch_id, request, outcomes, **_):
        self.fanned = outcomes
        return []


class FakeSender(Sender):
    spec = coalesce.NUMBER_CHECKS

    def __init__(self, found=None):
        self.found = found
        self.looked_up = 0

    def limits(self, svc, group):
        return LIMITS["api2"]

    def look_up(self, svc, batch, outcome):
        self.looked_up += 1
        return self.found

    def send(self, svc, batch, outcome):
        return svc.provider.request("api2", NUMBER_CHECK_PATH)

    def shares(self, batch, answer):
        return [Share(job_id, result={"ok": 1}) for job_id, _ in batch.members]

    def replay_payload(self, batch, job_id, key):
        return {"phones": [key]}


def flush(svc, queue: FakeQueue, sender: FakeSender | None = None, trigger="full", slot_at_us=None):
    svc.coalesce = queue
    svc.redis.data[keys.coalesce_batch("b1")] = {
        "throttles": str(queue.counters.get("throttles", 0))
    }
    published = []
    decision = BatchAttempt(
        svc,
        sender or FakeSender(),
        group="nc1",
        batch_id="b1",
        trigger=trigger,
        slot_at_us=slot_at_us,
        send_flush=lambda *a: published.append(a),
    ).run()
    return decision, published


def test_a_flush_sends_its_batch_behind_the_marker_and_records_every_member():
    svc = services()
    decision, _ = flush(svc, FakeQueue())
    assert decision == decisions.BatchSubmitted(members=2, rejected=0)
    assert svc.provider.sent == [NUMBER_CHECK_PATH] and [o.job_id for o in svc.coalesce.fanned] == [
        "j1",
        "j2",
    ]
    assert svc.redis.get(keys.inflight("b1")) is None


def test_a_rebuilt_batch_with_a_young_marker_waits_and_is_not_resent():
    svc = services()
    svc.redis.set(keys.inflight("b1"), f"{time.time():.3f}")
    decision, _ = flush(svc, FakeQueue(status=1), trigger="linger")
    assert isinstance(decision, decisions.RetryLater) and decision.trigger == "linger"
    assert decision.reason == "batch: an earlier attempt may still be in flight"
    assert svc.provider.sent == [] and svc.coalesce.touched == 1


def test_a_rebuilt_batch_found_at_the_provider_is_recorded_without_resend():
    svc = services()
    stale_marker(svc, "b1")
    sender = FakeSender(found={"requestId": "r"})
    decision, _ = flush(svc, FakeQueue(status=1), sender)
    assert decision == decisions.BatchSubmitted(members=2, rejected=0)
    assert sender.looked_up == 1 and svc.provider.sent == []


def test_a_rebuilt_batch_not_found_is_sent_again():
    svc = services()
    stale_marker(svc, "b1")
    decision, _ = flush(svc, FakeQueue(status=1))
    assert isinstance(decision, decisions.BatchSubmitted) and svc.provider.sent == [
        NUMBER_CHECK_PATH
    ]


def test_a_batch_only_built_now_is_never_looked_up():
    svc = services()
    stale_marker(svc, "b1")  # a stale marker of a batch built just now cannot be this batch's send
    sender = FakeSender(found={"requestId": "r"})
    flush(svc, FakeQueue(status=2), sender)
    assert sender.looked_up == 0 and svc.provider.sent == [NUMBER_CHECK_PATH]


def test_a_batchs_lost_answer_keeps_its_marker_and_an_answered_error_clears_it():
    svc = services(answers=[lost_answer()])
    decision, _ = flush(svc, FakeQueue())
    assert isinstance(decision, decisions.RetryLater) and decision.trigger == "full"
    assert decision.reason == "batch: timeout read timeout"
    assert svc.redis.get(keys.inflight("b1")) is not None
    svc = services(
        answers=[
            TransportError(
                "HTTP 503", code="http_503", classification=RETRY, may_have_reached=False
            )
        ]
    )
    flush(svc, FakeQueue())
    assert svc.redis.get(keys.inflight("b1")) is None


def test_a_throttled_batch_cools_down_then_fails_every_member_past_max_throttles():
    svc = services(answers=[ProviderError("api2", "2206", "too frequent")])
    decision, _ = flush(svc, FakeQueue(), trigger="linger")
    assert isinstance(decision, decisions.CoolDown) and decision.trigger == "full"
    assert decision.reason == "batch: provider said too frequent (2206)" and svc.limiter.cooled == [
        ["api2:a"]
    ]
    svc = services(answers=[ProviderError("api2", "2206", "too frequent")])
    queue = FakeQueue(counters={"throttles": svc.settings.ratelimit.max_throttles})
    decision, _ = flush(svc, queue)
    assert decision == decisions.BatchFailed(members=2, code="2206")
    assert set(svc.dead_letters.added) == {"j1", "j2"} and all(o.failed for o in queue.fanned)


def test_a_batchs_permanent_error_fails_every_member():
    svc = services(answers=[ProviderError("api2", "1001", "bad appkey")])
    decision, _ = flush(svc, FakeQueue())
    assert decision == decisions.BatchFailed(members=2, code="1001")
    assert set(svc.dead_letters.added) == {"j1", "j2"}


def test_a_flush_whose_slot_is_not_due_waits_before_taking_its_batch():
    svc = services(LATER)
    queue = FakeQueue()
    decision, _ = flush(svc, queue, trigger="linger", slot_at_us=12)
    assert decision == decisions.WaitForSlot(
        countdown=0.4,
        priority=PRIORITY_RESERVED_SLOT,
        trigger="linger",
        reason="batch: waiting 0.400s for a rate-limit slot",
        slot_at_us=777,
    )
    assert svc.limiter.acquired == [(["api2:a"], 12)] and "attempts" not in queue.counters


def test_a_flush_with_nothing_to_do_says_so():
    assert flush(services(), FakeQueue(state="done"))[0] == decisions.AlreadySent()
    assert flush(services(), FakeQueue(state=None, pending_n=0))[0] == decisions.Empty()
    assert (
        flush(services(), FakeQueue(state=None, pending_n=1, armed=False))[0]
        == decisions.Deferred()
    )
    lingering = flush(services(), FakeQueue(state=None, pending_n=1))[0]
    assert isinstance(lingering, decisions.RetryLater) and lingering.trigger == "linger"
    assert (
        lingering.priority == PRIORITY_NEW and lingering.reason == "batch: waiting out the linger"
    )
    assert flush(services(), FakeQueue(status=3))[0] == decisions.AlreadySent()


def test_numbers_left_behind_get_their_own_flush():
    svc = services()
    queue = FakeQueue()
    queue.take = lambda *a: coalesce.Taken(2, [("j1", "p1")], 5)
    _, published = flush(svc, queue)
    assert published == [("nc1", "linger", svc.settings.coalesce.linger_s)]


# ---- the gate's permit ---------------------------------------------------------------------


def test_outside_an_attempt_every_request_takes_its_own_slot():
    limiter = FakeLimiter()
    gate = RateGate(limiter, lambda *a: LIMITS["cdr"])
    gate("cdr", CDR_BY_ORDERID_PATH, None)
    gate("cdr", CDR_BY_ORDERID_PATH, None)
    assert len(limiter.acquired) == 2


def test_a_bound_prepaid_slot_is_spent_by_the_next_request_only():
    limiter = FakeLimiter()
    gate = RateGate(limiter, lambda *a: LIMITS["cdr"])
    with gate.bind() as slots:
        slots.prepay(42)
        gate("cdr", CDR_BY_ORDERID_PATH, None)
        gate("cdr", CDR_BY_ORDERID_PATH, None)
    assert limiter.acquired == [(["cdr:k"], 42), (["cdr:k"], None)]


def test_a_slot_not_ready_names_the_limits_it_waits_on():
    gate = RateGate(FakeLimiter(LATER), lambda *a: LIMITS["api2"])
    with pytest.raises(SlotNotReady) as wait:
        gate.take(LIMITS["api2"])
    assert wait.value.limits == tuple(LIMITS["api2"]) and wait.value.grant.slot_at_us == 777
