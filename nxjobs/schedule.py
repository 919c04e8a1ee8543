"""Scheduled jobs: a job that waits in Redis until its due time, then goes the usual way.

A scheduled job has a record in state `scheduled` (with `run_at`), an entry in the sorted set
`keys.SCHEDULE` (score = due time, unix ms) and its message, what publishing it needs (task name,
queue, priority, kwargs), in `keys.scheduled_message(id)`: all written in one transaction by the
producer. Nothing waits in a worker's memory or in a broker countdown, so a horizon of weeks
survives restarts of workers, and of Redis with its AOF.

Every worker's main process promotes due jobs (the thread is workers/schedule.py): about every
`interval_s` one call of `lua/schedule_take.lua` takes up to `batch` due entries under a lease
(re-scored to now + lease, not removed), each is published through the Celery app with its stored
options, then one call of `lua/schedule_confirm.lua` confirms the batch (ZREM, `scheduled` ->
`queued`, the message deleted). A worker that dies between take and confirm leaves its entries
leased: they are offered again when the lease ends, and published a second time. That is
harmless: a second message of a job is a redelivery, which the claim (state machine) and the
in-flight marker already make safe (nxjobs/attempts/job.py). A message that arrives before its
confirm finds the job still `scheduled`: the claim takes it from there (`scheduled -> running`).

No Celery here: `promote` gets the publishing function.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from nxjobs import compact_json, keys, scripts, store
from nxjobs.jobs import InvalidJob

log = logging.getLogger("nxjobs.schedule")

# Entries one promotion takes at most (the rest wait for the next tick, a fraction of a second).
TAKE_LIMIT = 100
# How long a taken entry stays hidden from other workers before it is offered again.
LEASE_S = 30.0
# A scheduled callbot list is created this long before its time, with the provider's own
# scheduled start (startupType 2, startupAt = its time): the provider starts it on time even if
# no worker is up then.
PROVIDER_START_LEAD_S = 300.0
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str, field: str = "--in") -> float:
    """Seconds in `90`, `90s`, `30m`, `2h`, `1d`, `2w`; InvalidJob naming `field` otherwise."""
    match = _DURATION_RE.match(str(text))
    if not match:
        raise InvalidJob(field, f"{text!r} is not a duration: give e.g. 90s, 30m, 2h or 1d")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


@dataclass(frozen=True)
class When:
    """When a job should run: `due` None = now. `note` says why a time given runs now."""

    due: datetime | None
    note: str | None = None
    asked: datetime | None = None  # the time asked for, also when it is past


def when(at: datetime | None, delay_s: float | None, now: datetime | None = None) -> When:
    """Validate a producer's `at` (an aware datetime) or `delay_s` (seconds >= 0, not both):
    InvalidJob naming the field. A time already past runs now, and says so."""
    if at is not None and delay_s is not None:
        raise InvalidJob("at", "give at or delay_s, not both")
    now = now or datetime.now(UTC)
    if delay_s is not None:
        if isinstance(delay_s, bool) or not isinstance(delay_s, int | float):
            raise InvalidJob("delay_s", f"must be a number of seconds, not {delay_s!r}")
        if not math.isfinite(delay_s) or delay_s < 0:
            raise InvalidJob("delay_s", f"must be a finite number of seconds >= 0, not {delay_s}")
        return When(now + timedelta(seconds=delay_s) if delay_s > 0 else None)
    if at is None:
        return When(None)
    if not isinstance(at, datetime):
        raise InvalidJob("at", f"must be a datetime, not {type(at).__name__}")
    if at.tzinfo is None or at.utcoffset() is None:
        raise InvalidJob("at", "needs a time zone (e.g. 2026-12-24T09:00:00+08:00)")
    if at <= now:
        return When(None, f"run_at {iso(at)} was already past when enqueued; ran at once", at)
    return When(at, None, at)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def message(kind: str, task: str, queue: str, priority: int, kwargs: dict[str, Any]) -> str:
    """What publishing a scheduled job needs, as stored in keys.scheduled_message."""
    return compact_json.dumps(
        {"kind": kind, "task": task, "queue": queue, "priority": priority, "kwargs": kwargs}
    )


def lease_end_ms(now_ms: int, lease_s: float) -> int:
    return now_ms + int(lease_s * 1000)


@dataclass(frozen=True)
class Deferred:
    """The answer of Schedule.defer: `deferred`, else the state it was in and why not
    ('inflight': a request may have reached the provider; '': not running; 'missing': no record)."""

    deferred: bool
    state: str
    why: str


@dataclass(frozen=True)
class Due:
    job_id: str
    kind: str
    task: str
    queue: str
    priority: int
    kwargs: dict[str, Any]


class Schedule:
    """The schedule in Redis: add (with the record, by the producer), take and confirm (the
    workers' promotion)."""

    def __init__(self, client: Any, ttl_s: int):
        self.redis = client
        self.ttl_s = ttl_s
        self._take = scripts.register(client, "schedule_take")
        self._confirm = store.register_script(client, "schedule_confirm")
        self._defer = store.register_script(client, "job_defer")

    def keep_s(self, due: datetime, now: float | None = None) -> int:
        """TTL of a scheduled job's keys: its wait plus the record TTL (a backstop; the owner
        deletes the message when the job is promoted or cancelled)."""
        now = time.time() if now is None else now
        return int(max(0.0, due.timestamp() - now)) + self.ttl_s

    def add(self, pipe: Any, job_id: str, due: datetime, msg: str) -> None:
        """Queue on `pipe` (the transaction that creates the record) the entry and its message."""
        pipe.set(keys.scheduled_message(job_id), msg, ex=self.keep_s(due))
        pipe.zadd(keys.SCHEDULE, {job_id: int(due.timestamp() * 1000)})

    def defer(
        self, job_id: str, due: datetime, msg: str, fields: dict[str, str], now_iso: str
    ) -> Deferred:
        """Put a claimed (`running`) job back in the schedule until `due`, with `fields` (run_at,
        schedule_note...) in its record: state, entry and message in one step (lua/job_defer.lua),
        refused when its in-flight marker says a request may have gone out."""
        pairs = [part for item in fields.items() for part in item]
        status, *rest = self._defer(
            keys=[
                keys.job(job_id),
                keys.SCHEDULE,
                keys.scheduled_message(job_id),
                keys.job_payload(job_id),
                keys.inflight(job_id),
            ],
            args=[job_id, now_iso, str(int(due.timestamp() * 1000)), msg, str(self.keep_s(due))]
            + pairs,
        )
        status = int(status)
        state = str(rest[0]) if rest else ""
        why = str(rest[1]) if len(rest) > 1 else ""
        return Deferred(status == 1, state, why if status == 0 else ("" if status else "missing"))

    def take(
        self, now_ms: int | None = None, limit: int = TAKE_LIMIT, lease_s: float = LEASE_S
    ) -> list[Due]:
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        flat = self._take(
            keys=[keys.SCHEDULE],
            args=[
                str(now_ms),
                str(lease_end_ms(now_ms, lease_s)),
                str(limit),
                keys.JOB_KEY_PREFIX,
                keys.SCHEDULED_MESSAGE_SUFFIX,
            ],
        )
        out = []
        for job_id, raw in zip(flat[::2], flat[1::2], strict=True):
            try:
                value = json.loads(raw)
                out.append(
                    Due(
                        job_id,
                        str(value["kind"]),
                        str(value["task"]),
                        str(value["queue"]),
                        int(value["priority"]),
                        dict(value["kwargs"]),
                    )
                )
            except (ValueError, KeyError, TypeError):
                log.error("job=%s: its scheduled message is unreadable; left leased", job_id)
        return out

    def confirm(self, job_ids: list[str], now_iso: str, lease_until_ms: int | None = None) -> int:
        """Confirm published jobs. With `lease_until_ms` (the lease their take gave them), a job
        whose entry no longer has that score was put in the schedule again meanwhile (its message
        came first and deferred it, lua/job_defer.lua) and is left alone."""
        if not job_ids:
            return 0
        return int(
            self._confirm(
                keys=[keys.SCHEDULE],
                args=[
                    now_iso,
                    str(self.ttl_s),
                    keys.JOB_KEY_PREFIX,
                    keys.SCHEDULED_MESSAGE_SUFFIX,
                    "" if lease_until_ms is None else str(lease_until_ms),
                    *job_ids,
                ],
            )
        )

    def promote(
        self,
        publish: Callable[[Due], None],
        now_iso: Callable[[], str],
        limit: int = TAKE_LIMIT,
        lease_s: float = LEASE_S,
    ) -> tuple[int, int]:
        """One promotion: take what is due, publish each, confirm the published ones (one call
        for the batch). A job whose publish failed stays leased and is offered again when its
        lease ends. Returns (published, failed to publish)."""
        now_ms = int(time.time() * 1000)
        taken = self.take(now_ms, limit=limit, lease_s=lease_s)
        sent, failed = [], 0
        for due in taken:
            try:
                publish(due)
                sent.append(due.job_id)
            except Exception as exc:  # noqa: BLE001 - offered again after the lease
                failed += 1
                log.warning(
                    "job=%s: could not publish its scheduled message (%s: %s); offered again "
                    "in %.0fs",
                    due.job_id,
                    type(exc).__name__,
                    exc,
                    lease_s,
                )
        self.confirm(sent, now_iso(), lease_end_ms(now_ms, lease_s))
        return len(sent), failed
