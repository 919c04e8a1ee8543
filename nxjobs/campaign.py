"""Campaign control of a submitted callbot list (docs/campaigns.md): pause, resume, complete,
stop contacts, update its settings, cancel. Without Celery: the producer checks an operation here
(`check`) before it enqueues it; a callbot worker runs it (`ControlRun`, from tasks/callbot.py) and
records what the provider answered in the job's `campaign` field (lua/campaign_record.lua).

Each operation is one provider request (nxjobs.client.operations): it takes its rate-limit slot
through the clients' gate and is retried per the error table, like a job's attempt. Every one is
safe to send again: a task already paused, running or completed answers as such, and an order
already stopped is refused in the answer's errList, never stopped twice.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

from nxjobs import callbot_zones, compact_json, correlate, keys, store
from nxjobs.attempts import policy
from nxjobs.client import operations
from nxjobs.client.callbot import CallbotClient
from nxjobs.client.errors import NXCloudError, ProviderError
from nxjobs.jobs import QUEUE_CALLBOT
from nxjobs.ratelimit.gate import RateGate, SlotNotReady
from nxjobs.ratelimit.limiter import RateLimiter
from nxjobs.records import JobRecord, JobState, utc_now_iso
from nxjobs.redact import redact
from nxjobs.wire import contact_order_id

KIND = "callbot-list"
# The Celery task that runs an operation (tasks/callbot.py), on the callbot queue.
CONTROL_TASK = "nxjobs.callbot_control"
CONTROL_QUEUE = QUEUE_CALLBOT
OPERATIONS = ("pause", "resume", "complete", "stop-contacts", "update", "cancel")
# The provider endpoint each operation calls (nxjobs.client.operations).
_ENDPOINT = {
    "pause": "mgrTaskStatus",
    "resume": "mgrTaskStatus",
    "complete": "mgrTaskStatus",
    "cancel": "mgrTaskStatus",
    "stop-contacts": "stopOrder",
    "update": "updateTask",
}
# stopOrder's orderIDs per request (our choice, as addBatchCall's callList).
MAX_STOP_ORDERS = 1000
# Operations a record keeps, newest last.
OPERATIONS_KEPT = 20
# What updateTask may change (docs/provider.md §6.3): taskCreateSetting's fields, but not where
# the task callback goes, which is ours (it completes the job).
UPDATABLE_SETTINGS = frozenset(
    {
        "taskName",
        "strategyName",
        "startupType",
        "startupAt",
        "zoneSecond",
        "dialAtWeekDay",
        "dialAtUpHour",
        "dialAtDownHour",
        "maxRingTime",
        "maxCall",
        "routeID",
        "manualCallSetting",
    }
)
# The provider's taskStatus (docs/provider.md §6.4) as a campaign status.
_STATUS = {1: "not started", 2: "running", 3: "completed", 4: "completed", 5: "paused"}
# The status an accepted operation leaves when the answer names none.
_ASSUMED = {"pause": "paused", "resume": "running", "complete": "completed", "cancel": "completed"}


class CampaignRefused(ValueError):
    """An operation refused before anything is enqueued: `field` names what is wrong."""

    def __init__(self, field_name: str, message: str):
        self.field = field_name
        super().__init__(f"{field_name}: {message}")


def check(
    record: JobRecord | None,
    job_id: str,
    op: str,
    args: dict[str, Any],
    plan: list[list[int]] | None = None,
) -> dict[str, Any]:
    """The arguments the control task needs for `op` on `job_id`, or CampaignRefused naming why
    not: the job exists, is a callbot list, has a provider task (is submitted); `update` only
    while the campaign is paused; stop-contacts only the list's own orderIDs. `plan`: a list split
    by time zone, its tasks' contacts (RecordStore.zone_plan)."""
    if op not in OPERATIONS:
        raise CampaignRefused("operation", f"unknown operation {op!r}; known: {list(OPERATIONS)}")
    if record is None:
        raise CampaignRefused("job_id", f"no job {job_id}")
    if record.kind != KIND:
        raise CampaignRefused("job_id", f"job {job_id} is a {record.kind} job, not a {KIND}")
    if record.state != JobState.SUBMITTED:
        raise CampaignRefused(
            "job_id",
            f"job {job_id} is {record.state.value}: only a submitted list has a provider task "
            "to control",
        )
    tasks = callbot_zones.job_tasks(job_id, record.progress, plan)
    split = tasks != [(job_id, None)]
    out: dict[str, Any] = {}
    if split:
        # A list split by time zone: every operation applies to each of its (started) tasks.
        out["tasks"] = [uid for uid, _ in tasks]
    if op == "complete":
        out["delete_undialled"] = bool(args.get("delete_undialled", False))
    elif op == "stop-contacts":
        out["order_ids"] = _check_orders(record, job_id, args.get("order_ids"))
        if split:
            out["orders_by_task"] = _orders_by_task(record, job_id, out["order_ids"], tasks)
    elif op == "update":
        status = (record.campaign or {}).get("status")
        if status != "paused":
            raise CampaignRefused(
                "job_id",
                f"job {job_id} is {status or 'running'}: the provider updates only a paused task; "
                "pause it first",
            )
        out["settings"] = _check_settings(args.get("settings"))
        out["scene_id"] = str(record.input.get("scene_id") or "")
    return out


def _check_orders(record: JobRecord, job_id: str, order_ids: Any) -> list[str]:
    if not isinstance(order_ids, list | tuple) or not order_ids:
        raise CampaignRefused("order_ids", "give one orderID or more")
    if len(order_ids) > MAX_STOP_ORDERS:
        raise CampaignRefused("order_ids", f"at most {MAX_STOP_ORDERS} per operation")
    contacts = record.input.get("contacts") or []
    known = {
        contact_order_id(job_id, i, c.get("order_id") if isinstance(c, dict) else None)
        for i, c in enumerate(contacts)
    }
    out: list[str] = []
    for i, order_id in enumerate(order_ids):
        if not isinstance(order_id, str) or order_id not in known:
            raise CampaignRefused(
                f"order_ids.{i}", f"{order_id!r} is not an orderID of job {job_id}"
            )
        if order_id not in out:
            out.append(order_id)
    return out


def _orders_by_task(
    record: JobRecord,
    job_id: str,
    order_ids: list[str],
    tasks: list[tuple[str, list[int] | None]],
) -> dict[str, list[str]]:
    """Each order to its own task (a list split by time zone): userTaskID -> its orderIDs."""
    contacts = record.input.get("contacts") or []
    index = {
        contact_order_id(job_id, i, c.get("order_id") if isinstance(c, dict) else None): i
        for i, c in enumerate(contacts)
    }
    task_of = {i: uid for uid, indices in tasks for i in indices or ()}
    out: dict[str, list[str]] = {}
    for order_id in order_ids:
        uid = task_of.get(index[order_id])
        if uid is None:
            # Its task was never started (the provider accepted none of its contacts).
            raise CampaignRefused("order_ids", f"{order_id!r} is in no started task of {job_id}")
        out.setdefault(uid, []).append(order_id)
    return out


def _check_settings(settings: Any) -> dict[str, Any]:
    if not isinstance(settings, dict) or not settings:
        raise CampaignRefused("settings", "give a JSON object of taskCreateSetting fields")
    unknown = sorted(set(settings) - UPDATABLE_SETTINGS)
    if unknown:
        raise CampaignRefused(
            f"settings.{unknown[0]}",
            f"not a field updateTask may change; allowed: {sorted(UPDATABLE_SETTINGS)}",
        )
    return dict(settings)


@dataclass(frozen=True)
class Recorded:
    """The operation is in the record: `outcome` done, refused (the provider said no) or failed
    (retries used up); `state`: the job's state after it."""

    outcome: str
    state: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Later:
    """Send again after `countdown` s; `slot_at_us`: the slot reserved for it; `errors`: error
    attempts so far (throttles not counted)."""

    countdown: float
    reason: str
    slot_at_us: int | None = None
    errors: int = 0
    throttles: int = 0


class ControlRun:
    """One run of a control operation on a worker: the request (through the gate), then the record.
    `retry` and `ratelimit` are settings (config.settings' RetrySettings, RateLimitSettings or
    anything shaped alike)."""

    def __init__(
        self,
        redis_client: Any,
        callbot: CallbotClient,
        gate: RateGate,
        limiter: RateLimiter,
        *,
        retry: Any,
        ratelimit: Any,
        ttl_s: int,
        rng: random.Random | None = None,
    ):
        self.callbot = callbot
        self.gate = gate
        self.limiter = limiter
        self.retry = retry
        self.ratelimit = ratelimit
        self.ttl_s = ttl_s
        self.rng = rng or random.Random()
        self.redis = redis_client
        self._record = store.register_script(redis_client, "campaign_record")

    def run(
        self,
        job_id: str,
        op_id: str,
        op: str,
        args: dict[str, Any],
        *,
        slot_at_us: int | None = None,
        errors: int = 0,
        throttles: int = 0,
    ) -> Recorded | Later:
        """Send `op` once; record its answer, or say when to send it again (`errors`, `throttles`:
        the error attempts and "too frequent" answers of earlier runs)."""
        endpoint = _ENDPOINT[op]
        try:
            with self.gate.bind() as slots:
                if slot_at_us is not None:
                    slots.prepay(slot_at_us)
                answer = self._send(job_id, op, args)
        except SlotNotReady as wait:
            countdown, _ = policy.slot_wait(wait.grant, self.ratelimit, self.rng)
            reserved = wait.grant.slot_at_us if wait.grant.reserved else None
            return Later(
                countdown, f"{op} {job_id}: waits for its slot", reserved, errors, throttles
            )
        except NXCloudError as err:
            cls = err.classification
            detail = {"code": err.code, "message": err.message}
            if cls.throttled and throttles + 1 <= self.ratelimit.max_throttles:
                limits = self.gate.limits_for("callbot", endpoint, {})
                rl = self.ratelimit
                cooldown = self.limiter.cool_down(
                    limits,
                    base_s=rl.cooldown_base_s,
                    cap_s=rl.cooldown_cap_s,
                    repeat_within_s=rl.cooldown_repeat_s,
                    rng=self.rng,
                )
                reason = f"{op} {job_id}: too frequent ({err.code})"
                return Later(cooldown, reason, None, errors, throttles + 1)
            delay = (
                None if cls.throttled else policy.retry_delay(cls, errors + 1, self.retry, self.rng)
            )
            if delay is not None:
                reason = f"{op} {job_id}: {err.code} {err.message}"
                return Later(delay, reason, None, errors + 1, throttles)
            # The provider's definite no; or every retry used up (no answer, or "try later").
            refused = isinstance(err, ProviderError) and not cls.retryable
            outcome = "refused" if refused else "failed"
            return self.record(job_id, op_id, op, outcome, detail)
        return self.record(job_id, op_id, op, "done", answer)

    def _send(self, job_id: str, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """The operation on every task of the list (`args["tasks"]`; the job id when absent: one
        task), one request each; their answers merged. Sent again after an error, a task that
        already did it answers as such."""
        tasks = [str(t) for t in args.get("tasks") or [job_id]]
        if args.get("tasks"):
            # A list split by time zone: a task that finished already has nothing to pause (the
            # provider refuses to), resume or complete.
            tasks = self._unfinished(job_id, tasks)
        if op == "stop-contacts":
            by_task = args.get("orders_by_task") or {tasks[0]: list(args["order_ids"])}
            answers = {
                uid: operations.stop_orders(self.callbot, user_task_id=uid, order_ids=list(orders))
                for uid, orders in by_task.items()
            }
        else:
            answers = {uid: self._send_one(uid, op, args) for uid in tasks}
        if len(answers) == 1:
            return next(iter(answers.values()))
        return _merged(op, answers)

    def _unfinished(self, job_id: str, tasks: list[str]) -> list[str]:
        """The tasks whose finished task-status callback the job has not counted."""
        paged = self.redis.hget(keys.job(job_id), keys.CALLBACKS_PAGED) == "1"
        home = keys.job_items(job_id) if paged else keys.job(job_id)
        done = self.redis.hmget(
            home, [keys.UNIT_FIELD + correlate.list_task_unit(uid) for uid in tasks]
        )
        return [uid for uid, mark in zip(tasks, done, strict=True) if not mark]

    def _send_one(self, user_task_id: str, op: str, args: dict[str, Any]) -> dict[str, Any]:
        if op in ("pause", "resume", "complete", "cancel"):
            operate = {"pause": operations.TASK_PAUSE, "resume": operations.TASK_START}.get(
                op, operations.TASK_COMPLETE
            )
            delete = op == "cancel" or bool(args.get("delete_undialled"))
            return operations.manage_task(
                self.callbot, user_task_id=user_task_id, operate=operate, delete_undialled=delete
            )
        if op == "update":
            return operations.update_task(
                self.callbot,
                user_task_id=user_task_id,
                scene_id=str(args.get("scene_id") or ""),
                settings=dict(args["settings"]),
            )
        raise ValueError(f"unknown operation {op!r}")

    def record(
        self, job_id: str, op_id: str, op: str, outcome: str, detail: dict[str, Any]
    ) -> Recorded:
        status, stopped = "", 0
        if outcome == "done":
            task_status = detail.get("taskStatus")
            status = _STATUS.get(task_status, "") if isinstance(task_status, int) else ""
            status = status or _ASSUMED.get(op, "")
            stopped = int(detail.get("successCount") or 0) if op == "stop-contacts" else 0
        cancel = "1" if op == "cancel" and outcome == "done" else "0"
        reply = self._record(
            keys=[keys.job(job_id)],
            args=[
                op_id,
                op,
                utc_now_iso(),
                outcome,
                status,
                str(stopped),
                compact_json.dumps(redact(detail) or {}),
                cancel,
                str(OPERATIONS_KEPT),
                str(self.ttl_s),
            ],
        )
        return Recorded(outcome, str(reply[1]), detail)


def _merged(op: str, answers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One answer for the record from each task's: per task, and what they say together (a
    taskStatus only when every task gives the same; stopOrder's counts summed)."""
    out: dict[str, Any] = {"tasks": answers}
    if op == "stop-contacts":
        out["totalCount"] = sum(int(a.get("totalCount") or 0) for a in answers.values())
        out["successCount"] = sum(int(a.get("successCount") or 0) for a in answers.values())
        out["errList"] = [e for a in answers.values() for e in a.get("errList") or []]
        return out
    statuses = {a.get("taskStatus") for a in answers.values()}
    if len(statuses) == 1:
        out["taskStatus"] = statuses.pop()
    return out


def find_operation(record: JobRecord | None, op_id: str) -> dict[str, Any] | None:
    """The recorded operation `op_id` of `record`, or None while it has not run."""
    for entry in (record.campaign or {}).get("operations", []) if record else []:
        if entry.get("id") == op_id:
            return dict(entry)
    return None


def describe(entry: dict[str, Any]) -> str:
    """One line for an operator."""
    detail = entry.get("detail")
    return f"{entry.get('op')} {entry.get('outcome')}" + (
        f": {json.dumps(detail, sort_keys=True)}" if detail else ""
    )
