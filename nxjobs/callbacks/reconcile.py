"""Reconciliation: for jobs whose callbacks are late, ask the provider's query APIs.

Run per API family on a schedule (Celery beat, `tasks/reconcile.py`):

- api2 (number-check): `/api/number/query` by requestId; each row is applied
  exactly like its DR would have been (same dedupe key, so a late DR is not
  counted twice).
- callbot (callbot-list): `listTask` by userTaskID; once finished (taskStatus
  3/4), `listOrderDetail` for its orders (≤500 per request), then the task status.
  (callbot-contact): `listOrderDetail` by orderID, the late contacts of one task
  together (≤500 per request); each finished order is applied as its order callback.
- agent (call): `getSipCdrByOrderid` (≤20 orderids per request). Also the
  ambiguous makecalls (`nxjobs:reconcile`): found = the call happened, the job
  is completed with its CDR; not found after `ambiguous_after_s` = it never
  happened, the job fails `call_not_found` (retryable: safe to submit again).

A job the provider says is not finished is looked at again `recheck_s` later;
past its give-up age it fails with `callbacks_timeout` and a reason naming
what is missing. Rate limits are the clients' gate: when it says "not now",
the run stops and the rest waits for the next one.

Capacity follows provider requests, not jobs: a run takes up to `Policy.batch`
due jobs (thousands), asks once for what they share (a requestId, 20 orderids,
a task's 500 orders) and applies a page of answers in one script call. It starts
no new question past `Policy.max_requests` requests or `Policy.max_run_s`
seconds; a question once started is finished (a requestId's pages), so the
jobs it covers are settled together and the rest stay due for the next run.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from nxjobs import callbot_zones, keys, metrics, scripts, wire
from nxjobs.callbacks import events
from nxjobs.callbacks.ledger import Ledger
from nxjobs.client.errors import NXCloudError
from nxjobs.deadletters import DeadLetters
from nxjobs.inflight import InflightMarker
from nxjobs.records import JobError, JobRecord, JobState, utc_now_iso
from nxjobs.store import RecordStore, TransitionRefused

log = logging.getLogger("nxjobs.reconcile")

NUMBER_QUERY_PATH = "/api/number/query"
NUMBER_QUERY_PAGE = 100
CALLBOT_DETAIL_CHUNK = 500
CDR_ORDERIDS_PER_REQUEST = 20


class StopRun(Exception):
    """The rate limiter said "not now": end this run, the rest waits for the next one."""


class BudgetSpent(StopRun):
    """The run made its `max_requests` requests or ran `max_run_s`: the rest waits."""


@dataclass
class Policy:
    """Seconds: deadline and give-up age per job kind, re-check interval, ambiguous-call
    lookup delay; a run's bounds: due jobs taken, provider requests, seconds."""

    deadlines_s: dict[str, float]
    give_up_s: dict[str, float]
    recheck_s: float = 300.0
    ambiguous_after_s: float = 300.0
    batch: int = 5000
    max_requests: int = 200
    max_run_s: float = 20.0


@dataclass
class Clients:
    """The API clients a family needs (None when that family is not configured)."""

    api2: Any = None
    api2_appkey: str | None = None
    callbot: Any = None
    agent: Any = None
    # Raised by a client's rate-limit gate meaning "not now"...
    not_now: tuple[type[BaseException], ...] = ()
    # ... and what to do then: wait for the slot it reserved and return True (the request is
    # tried again and may go), or return False to end the run.
    wait_slot: Callable[[BaseException], bool] = lambda exc: False


@dataclass
class Report:
    family: str
    counts: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {"family": self.family, **self.counts}


class Reconciler:
    def __init__(
        self,
        store: RecordStore,
        ledger: Ledger,
        policy: Policy,
        clients: Clients,
        clock: Callable[[], float] = time.time,
    ):
        self.store = store
        self.ledger = ledger
        self.policy = policy
        self.clients = clients
        self.clock = clock
        self._not_found = scripts.register(store.redis, "callbacks_not_found")
        self._requests = 0
        self._started = time.monotonic()

    def run(self, family: str) -> Report:
        report = Report(family)
        self._requests = 0
        self._started = time.monotonic()
        try:
            if family == "api2":
                self._number_checks(report)
            elif family == "callbot":
                self._callbot_lists(report)
            elif family == "agent":
                self._ambiguous_calls(report)
                self._calls(report)
            else:
                raise ValueError(f"unknown family {family!r}")
        except BudgetSpent:
            report.counts["stopped_by_budget"] += 1
        except StopRun:
            report.counts["stopped_by_rate_limit"] += 1
        if self._requests:
            report.counts["provider_requests"] = self._requests
        return report

    # ---- shared -----------------------------------------------------------

    def _due_records(
        self, family: str, kind: str | tuple[str, ...], report: Report
    ) -> list[JobRecord]:
        kinds = (kind,) if isinstance(kind, str) else kind
        out, gone = [], []
        job_ids = self.ledger.due(family, now=self.clock(), limit=self.policy.batch)
        for job_id, record in self.store.get_many(job_ids).items():
            if record is None or record.state != JobState.SUBMITTED or record.kind not in kinds:
                gone.append(job_id)
                continue
            out.append(record)
        self._forget_gone(family, gone, report)
        return out

    def _due_fields(self, family: str, kind: str, report: Report) -> dict[str, dict[str, Any]]:
        """As _due_records, reading only `_DUE_FIELDS` of each job (one pipeline, no callbacks
        or shared batch fields): job id -> its fields, in due order."""
        job_ids = self.ledger.due(family, now=self.clock(), limit=self.policy.batch)
        pipe = self.store.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hmget(keys.job(job_id), _DUE_FIELDS)
        out, gone = {}, []
        for job_id, values in zip(job_ids, pipe.execute() if job_ids else [], strict=True):
            fields = dict(zip(_DUE_FIELDS, values, strict=True))
            if fields["state"] != JobState.SUBMITTED.value or fields["kind"] != kind:
                gone.append(job_id)
                continue
            out[job_id] = fields
        self._forget_gone(family, gone, report)
        return out

    def _forget_gone(self, family: str, job_ids: list[str], report: Report) -> None:
        """Due jobs that completed, failed or expired meanwhile leave the waiting set."""
        self.ledger.forget_many(family, job_ids)
        report.counts["gone"] += len(job_ids)

    def _budget(self) -> None:
        """Called before each new question to the provider: past the run's bounds, stop."""
        if (
            self._requests >= self.policy.max_requests
            or time.monotonic() - self._started >= self.policy.max_run_s
        ):
            raise BudgetSpent()

    def _each(
        self,
        family: str,
        records: list[JobRecord],
        one: Callable[[JobRecord], None],
        report: Report,
    ) -> None:
        """Reconcile each record; a provider error on one job defers that job, not the run."""
        for record in records:
            try:
                one(record)
            except NXCloudError as exc:
                report.counts["query_errors"] += 1
                log.warning(
                    "job=%s reconcile query failed: %s %s", record.id, exc.code, exc.message
                )
                self.ledger.recheck_at(family, record.id, self.clock() + self.policy.recheck_s)

    def _ask(self, fn: Callable[[], Any]) -> Any:
        for _ in range(3):
            try:
                answer = fn()
                self._requests += 1
                return answer
            except self.clients.not_now as exc:
                if not self.clients.wait_slot(exc):
                    raise StopRun() from exc
        raise StopRun()

    def _apply_rows(
        self, kind: str, rows: list[dict[str, Any]], report: Report, job_kind: str | None = None
    ) -> None:
        """Apply the provider's rows (one page) as callbacks of `kind`, in one script call.
        `job_kind`: the job kind to time a completion under, when the event may belong to two."""
        parsed = []
        for row in rows:
            try:
                parsed.append(events.from_dict(kind, row))
            except events.Malformed:
                report.counts["rows_malformed"] += 1
        delays = []
        for event, applied in zip(
            parsed, self.ledger.apply_many(parsed, source="reconcile"), strict=True
        ):
            if isinstance(applied, str):
                report.counts["callbacks_failed"] += 1
                log.warning("reconcile %s row not applied: %s", kind, applied)
                continue
            report.counts[f"callbacks_{applied.outcome}"] += 1
            if applied.submitted_at:
                # Completed here, so the receiver never sees it: time it as it would have.
                delay = metrics.callback_delay_s(applied.submitted_at, self.clock())
                if delay is not None:
                    delays.append((job_kind or event.job_kind, delay))
        if delays:
            metrics.record_callback_delays(self.store.redis, delays)

    def _settle(self, family: str, job_id: str, report: Report, missing: str) -> None:
        self._settle_many(family, [job_id], report, lambda _job_id, _fields: missing)

    def _settle_many(
        self,
        family: str,
        job_ids: list[str],
        report: Report,
        missing: Callable[[str, dict[str, Any]], str],
    ) -> None:
        """After applying what the provider had: completed, or look again later, or give up.
        `missing(job_id, fields)` says what is missing (fields: `_SETTLE_FIELDS`)."""
        pipe = self.store.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hmget(keys.job(job_id), _SETTLE_FIELDS)
        now = self.clock()
        forget, recheck = [], []
        for job_id, values in zip(job_ids, pipe.execute() if job_ids else [], strict=True):
            fields = dict(zip(_SETTLE_FIELDS, values, strict=True))
            state, kind = fields["state"], fields["kind"]
            if state != JobState.SUBMITTED.value:
                forget.append(job_id)
                report.counts["completed" if state == JobState.COMPLETED.value else "gone"] += 1
                continue
            age = now - float(fields["submitted_at"] or 0)
            if age < self.policy.give_up_s.get(kind, float("inf")):
                recheck.append(job_id)
                continue
            message = (
                f"{missing(job_id, fields)} {age:.0f}s after submission; "
                "gave up (callbacks and query API both silent)"
            )
            try:
                self.store.transition(
                    job_id,
                    JobState.FAILED,
                    error=JobError(
                        code="callbacks_timeout", message=message, retryable=False
                    ).model_dump(),
                )
                report.counts["failed"] += 1
                log.warning("job=%s kind=%s failed callbacks_timeout: %s", job_id, kind, message)
            except TransitionRefused:
                pass  # completed by a callback a moment ago
            forget.append(job_id)
        self.ledger.forget_many(family, forget)
        self.ledger.recheck_many(family, recheck, now + self.policy.recheck_s)
        report.counts["rechecked"] += len(recheck)

    # ---- api2: number checks ------------------------------------------------

    def _number_checks(self, report: Report) -> None:
        # Coalesced jobs (nxjobs.coalesce) share their batch's requestId: its rows are asked for
        # once a run, and each row finds its own job, so one query settles every late member.
        due = self._due_fields("api2", "number-check", report)
        groups: dict[str, list[str]] = {}
        unknown = [job_id for job_id, f in due.items() if not f[keys.PROOF_ID]]
        # A record without the proof field (written before it existed): its submit result.
        found = self.store.get_many(unknown).items() if unknown else []
        ids = {j: str((r.result or {}).get("requestId") or "") if r else "" for j, r in found}
        for job_id, fields in due.items():
            groups.setdefault(fields[keys.PROOF_ID] or ids.get(job_id, ""), []).append(job_id)
        if "" in groups:  # nothing to ask by: settled on what the record has
            self._settle_many("api2", groups.pop(""), report, _numbers_missing)
        for request_id, members in groups.items():
            self._budget()
            days = sorted(
                {d for m in members for d in _query_days(due[m]["created_at"], self.clock())}
            )
            try:
                for day in days:
                    for rows in self._number_pages(request_id, day):
                        self._apply_rows(events.NUMBER_CHECK, rows, report)
            except NXCloudError as exc:
                report.counts["query_errors"] += 1
                log.warning(
                    "requestId=%s reconcile query failed (%d jobs): %s %s",
                    request_id,
                    len(members),
                    exc.code,
                    exc.message,
                )
                self.ledger.recheck_many("api2", members, self.clock() + self.policy.recheck_s)
                continue
            report.counts["request_ids"] += 1
            self._settle_many("api2", members, report, _numbers_missing)

    def _number_pages(self, request_id: str, day: str) -> Iterator[list[dict[str, Any]]]:
        """The rows of `request_id` filed on `day`, a page (≤ NUMBER_QUERY_PAGE) at a time."""
        api2 = self.clients.api2
        page = 1
        while True:
            body = {
                "page": page,
                "pageSize": NUMBER_QUERY_PAGE,
                "date": day,
                "requestId": request_id,
                "appkey": self.clients.api2_appkey,
            }
            resp = self._ask(
                partial(api2.post, NUMBER_QUERY_PATH, biz_type=1, action="numbercheck", body=body)
            )
            data = resp.body.get("data") or {}
            yield list(data.get("result") or [])
            if page >= int(data.get("totalPage") or 0):
                return
            page += 1

    # ---- callbot lists ------------------------------------------------------

    def _callbot_lists(self, report: Report) -> None:
        records = self._due_records("callbot", ("callbot-list", "callbot-contact"), report)
        self._each(
            "callbot",
            [r for r in records if r.kind == "callbot-list"],
            lambda record: self._callbot_list(record, report),
            report,
        )
        self._callbot_contacts([r for r in records if r.kind == "callbot-contact"], report)

    def _callbot_contacts(self, records: list[JobRecord], report: Report) -> None:
        """Late contacts, a task's together: their orders by orderID (≤500 a request); each
        finished one is applied as its order callback and completes its job."""
        by_task: dict[str, dict[str, JobRecord]] = {}
        for record in records:
            result = record.result or {}
            user_task_id = str(result.get("userTaskID") or record.input.get("user_task_id") or "")
            order_id = str(
                result.get("orderID")
                or (record.input.get("contact") or {}).get("order_id")
                or record.id
            )
            by_task.setdefault(user_task_id, {})[order_id] = record
        for user_task_id, wanted in by_task.items():
            order_ids = sorted(wanted)
            for start in range(0, len(order_ids), CALLBOT_DETAIL_CHUNK):
                chunk = order_ids[start : start + CALLBOT_DETAIL_CHUNK]
                self._budget()
                try:
                    detail = self._ask(
                        partial(
                            self.clients.callbot.post,
                            "listOrderDetail",
                            {"userTaskID": user_task_id, "orderList": chunk},
                        )
                    )
                except NXCloudError as exc:
                    report.counts["query_errors"] += 1
                    log.warning(
                        "task=%s contacts reconcile query failed: %s %s",
                        user_task_id,
                        exc.code,
                        exc.message,
                    )
                    self.ledger.recheck_many(
                        "callbot",
                        [wanted[o].id for o in order_ids[start:]],
                        self.clock() + self.policy.recheck_s,
                    )
                    break
                rows = [
                    _order_row(order)
                    for order in detail.body.get("orderDetailList") or []
                    if order.get("orderID") in wanted and _finished(order.get("finish"))
                ]
                self._apply_rows(
                    events.CALLBOT_ORDER, [_present(r) for r in rows], report, "callbot-contact"
                )
                by_job = {wanted[o].id: o for o in chunk}
                self._settle_many(
                    "callbot",
                    list(by_job),
                    report,
                    partial(_order_missing, by_job, user_task_id),
                )

    def _callbot_list(self, record: JobRecord, report: Report) -> None:
        """Each of the list's tasks (one, or one per time zone, nxjobs.callbot_zones): once
        finished, its orders and its task status are applied as their callbacks."""
        callbot = self.clients.callbot
        contacts = record.input.get("contacts") or []
        missing: list[str] = []
        plan = self.store.zone_plan(record.id)
        for user_task_id, indices in callbot_zones.job_tasks(record.id, record.progress, plan):
            self._budget()
            resp = self._ask(
                partial(
                    callbot.post,
                    "listTask",
                    {"page": 1, "size": 1, "queryConditions": {"userTaskID": [user_task_id]}},
                )
            )
            task = next(
                (t for t in resp.body.get("taskData") or [] if t.get("userTaskID") == user_task_id),
                None,
            )
            status = task.get("taskStatus") if task else None
            if not (task and status in events.TASK_FINISHED):
                missing.append(f"task {user_task_id} not finished (taskStatus {status})")
                continue
            chosen = range(len(contacts)) if indices is None else indices
            order_ids = [
                wire.contact_order_id(record.id, i, contacts[i].get("order_id"))
                for i in chosen
                if i < len(contacts)
            ]
            for start in range(0, len(order_ids), CALLBOT_DETAIL_CHUNK):
                chunk = order_ids[start : start + CALLBOT_DETAIL_CHUNK]
                detail = self._ask(
                    partial(
                        callbot.post,
                        "listOrderDetail",
                        {"userTaskID": user_task_id, "orderList": chunk},
                    )
                )
                self._apply_rows(
                    events.CALLBOT_ORDER,
                    [_present(_order_row(o)) for o in detail.body.get("orderDetailList") or []],
                    report,
                )
            self._apply_rows(events.CALLBOT_TASK, [_present(task)], report)
        self._settle("callbot", record.id, report, "; ".join(missing) or "tasks not finished")

    # ---- agent: calls -------------------------------------------------------

    def _cdr_chunks(
        self, orderids: list[str]
    ) -> Iterator[tuple[list[str], dict[str, list[dict[str, Any]]]]]:
        """Per request (≤ CDR_ORDERIDS_PER_REQUEST orderids, within the run's budget): the
        orderids asked and the CDRs found for each."""
        for start in range(0, len(orderids), CDR_ORDERIDS_PER_REQUEST):
            chunk = orderids[start : start + CDR_ORDERIDS_PER_REQUEST]
            self._budget()
            found: dict[str, list[dict[str, Any]]] = {o: [] for o in chunk}
            for row in self._ask(partial(self.clients.agent.cdr_by_orderid, chunk)):
                if row.get("orderid") in found:
                    found[row["orderid"]].append(row)
            yield chunk, found

    def _calls(self, report: Report) -> None:
        records = self._due_records("agent", "call", report)
        orderids = {r.id: _orderid(r) for r in records}
        by_orderid: dict[str, list[JobRecord]] = {}
        for record in records:
            by_orderid.setdefault(orderids[record.id], []).append(record)
        asked: set[str] = set()
        try:
            for chunk, rows in self._cdr_chunks(sorted(by_orderid)):
                asked.update(chunk)
                self._apply_rows(events.CDR, [_present(r) for o in chunk for r in rows[o]], report)
                self._settle_many(
                    "agent",
                    [r.id for o in chunk for r in by_orderid[o]],
                    report,
                    lambda job_id, _f: f"no CDR for orderid {orderids[job_id]}",
                )
        except NXCloudError as exc:
            report.counts["query_errors"] += 1
            log.warning("CDR lookup failed: %s %s", exc.code, exc.message)
            self.ledger.recheck_many(
                "agent",
                [r.id for o, rs in by_orderid.items() if o not in asked for r in rs],
                self.clock() + self.policy.recheck_s,
            )

    def _ambiguous_calls(self, report: Report) -> None:
        """Makecalls whose answer was lost: look each orderid up once, after `ambiguous_after_s`."""
        cutoff = self.clock() - self.policy.ambiguous_after_s
        job_ids = self.store.redis.zrangebyscore(
            keys.RECONCILE, "-inf", cutoff, start=0, num=self.policy.batch
        )
        records = [r for r in self.store.get_many(job_ids).values() if r is not None]
        for job_id in set(job_ids) - {r.id for r in records}:
            self.store.redis.zrem(keys.RECONCILE, job_id)  # expired
        by_orderid: dict[str, list[JobRecord]] = {}
        for record in records:
            by_orderid.setdefault(_orderid(record), []).append(record)
        try:
            for chunk, rows in self._cdr_chunks(sorted(by_orderid)):
                for orderid in chunk:
                    for record in by_orderid[orderid]:
                        self._ambiguous_call(record, orderid, rows[orderid], report)
        except NXCloudError as exc:
            report.counts["query_errors"] += 1
            log.warning("CDR lookup of ambiguous calls failed: %s %s", exc.code, exc.message)

    def _ambiguous_call(
        self, record: JobRecord, orderid: str, found: list[dict[str, Any]], report: Report
    ) -> None:
        # The CDR event resolves the ambiguous failure (see nxjobs/lua/callbacks_apply.lua).
        self._apply_rows(events.CDR, [_present(r) for r in found], report)
        if found:
            self.store.redis.zrem(keys.RECONCILE, record.id)
            # It happened: not a dead letter, and no in-flight doubt left.
            DeadLetters(self.store.redis).remove(record.id)
            InflightMarker(self.store.redis, record.id).clear()
            report.counts["ambiguous_found"] += 1
            return
        error = JobError(
            code="call_not_found",
            retryable=True,
            message=(
                f"makecall answer was lost, and orderid {orderid} has no CDR "
                f"{self.clock() - _epoch(record.updated_at):.0f}s later: "
                "the call was not placed; safe to submit again"
            ),
        )
        changed = self._not_found(
            keys=[keys.job(record.id), keys.RECONCILE],
            args=[record.id, error.model_dump_json(), utc_now_iso()],
        )
        if changed:
            # Proven not placed: a replay may send it (the marker would make it look up again).
            InflightMarker(self.store.redis, record.id).clear()
            DeadLetters(self.store.redis).update_reason(record.id, error.model_dump())
        report.counts["ambiguous_not_found" if changed else "gone"] += 1


# Read from each due number check, without its callbacks or its batch's shared fields.
_DUE_FIELDS = ("state", "kind", keys.PROOF_ID, "created_at")
# What settling a job reads of it.
_SETTLE_FIELDS = ("state", "kind", "submitted_at", "callbacks_needed", "callbacks_done")


def _numbers_missing(_job_id: str, fields: dict[str, Any]) -> str:
    needed = fields["callbacks_needed"]
    done = int(fields["callbacks_done"] or 0)
    return f"{max(int(needed or 0) - done, 0)} of {needed or '?'} number results missing"


def _order_missing(
    order_ids: dict[str, str], user_task_id: str, job_id: str, _fields: dict[str, Any]
) -> str:
    return f"order {order_ids[job_id]} of task {user_task_id} not finished"


def _present(row: dict[str, Any]) -> dict[str, Any]:
    """A query row without its null fields (they read as absent, as in a callback)."""
    return {k: v for k, v in row.items() if v is not None}


def _order_row(order: dict[str, Any]) -> dict[str, Any]:
    """A listOrderDetail row in the shape of an order callback (its last call as callInfoDetail)."""
    calls = order.get("callInfoDetailList") or []
    return {
        **{k: v for k, v in order.items() if k != "callInfoDetailList"},
        "callInfoDetail": calls[-1] if calls else None,
    }


def _finished(flag: Any) -> bool:
    return flag is True or str(flag).strip().lower() in ("1", "true")


def _orderid(record: JobRecord) -> str:
    return str((record.result or {}).get("orderid") or record.input.get("order_id") or record.id)


def _query_days(created_at: str, now: float) -> list[str]:
    """The UTC dates a submission may be filed under (its day, and the next if it ran
    past midnight)."""
    start = dt.datetime.fromisoformat(created_at.replace("Z", "+00:00")).date()
    end = dt.datetime.fromtimestamp(now, dt.UTC).date()
    days = [start]
    if end > start:
        days.append(start + dt.timedelta(days=1))
    return [d.isoformat() for d in days]


def _epoch(iso: str) -> float:
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


# ---- lookups for a redelivered job whose previous attempt may have sent -------
# Used by nxjobs/attempts/job.py when a job starts and finds its in-flight marker: the
# previous delivery died (or lost its answer) between sending and recording, so
# the provider is asked whether the side effect happened before anything is
# resent. Each returns the submit result the lost answer would have given, or
# None if the provider has no trace of it.


def find_call(agent: Any, orderid: str) -> dict[str, Any] | None:
    """Agent: a CDR with our orderid means the phone rang. No CDR is NOT proof the call
    was not placed (CDRs appear when the call ends), so the caller must not resend on None."""
    for row in agent.cdr_by_orderid([orderid]):
        if row.get("orderid") == orderid:
            return {
                "orderid": orderid,
                "sessionid": row.get("sessionid"),
                "info": "found by CDR lookup after an interrupted attempt",
            }
    return None


def find_number_check(
    api2: Any, appkey: str | None, batch_no: str, created_at: str, now: float, numbers: int
) -> dict[str, Any] | None:
    """Number Check: the query API by batchNo (the provider files a submission at once).
    A batch whose every number was rejected leaves no rows, so it reads as not found."""
    for day in _query_days(created_at, now):
        body = {"page": 1, "pageSize": 1, "date": day, "batchNo": batch_no, "appkey": appkey}
        resp = api2.post(NUMBER_QUERY_PATH, biz_type=1, action="numbercheck", body=body)
        rows = (resp.body.get("data") or {}).get("result") or []
        if rows:
            row_id = str(rows[0].get("requestId") or rows[0].get("messageId") or "")
            # Per-number ids are <requestId>-NNNNNN; a one-number batch keeps the submit id.
            head, _, tail = row_id.rpartition("-")
            request_id = head if head and len(tail) == 6 and tail.isdigit() else row_id
            return {
                "requestId": request_id or None,
                "batchNo": batch_no,
                "numbers": numbers,
                "failNumber": [],
                "info": "found by batchNo query after an interrupted attempt",
            }
    return None
