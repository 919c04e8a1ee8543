"""Job records in Redis: one hash per job, a small job's callbacks included
(nxjobs.keys.CALLBACK_FIELD); a job that can have many keeps them in its items hash, paged
(nxjobs.keys.CALLBACKS_PAGED, RecordStore.callbacks), its record holding their summary.

State changes go through a Lua script (nxjobs/lua/store_transition.lua) so the check "may
this state follow the current one?" and the write happen atomically in a single round trip;
the move to `submitted` has its own script (store_submit.lua) that also does the callback
bookkeeping (nxjobs.callbacks: correlation ids, units needed, completion, deadline).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import redis

from nxjobs import compact_json, correlate, keys, scripts
from nxjobs.jobs import KINDS
from nxjobs.records import JobRecord, JobState, utc_now_iso

log = logging.getLogger("nxjobs.store")

_JSON_FIELDS = (
    "input",
    "request",
    "result",
    "error",
    "progress",
    keys.CALLBACKS_SUMMARY,
    keys.CAMPAIGN_FIELD,
)
_COUNTERS = frozenset({"attempts", "throttles", "waits"})

# The state machine: which states each state may be entered from (None: no record yet), each
# with the code paths that make the move. It lists every move that happens and nothing else.
# Every write of `state` is checked against it: in Lua by set_state (nxjobs/lua/lib/state.lua,
# which gets this table rendered in, and refuses too a move the running script does not declare
# in its `-- moves:` header), in Python only by RecordStore.create (CREATED_BY_STORE).
# States move forward, so a late or redelivered worker never drags a job back; the one way
# back is an operator's replay of a dead letter (failed -> queued).
ALLOWED_FROM: dict[JobState, frozenset[JobState | None]] = {
    JobState.SCHEDULED: frozenset(
        {
            None,  # RecordStore.create: a producer's job with a run_at ahead (Producer.enqueue)
            # job_defer.lua: a claimed call outside its calling hours, or whose retry or slot wait
            # would end after closing time, waits for the next opening (nothing was sent)
            JobState.RUNNING,
        }
    ),
    JobState.QUEUED: frozenset(
        {
            # RecordStore.create: a producer's job, a worker's job with no record (tasks/base.py),
            # a replay whose record expired (Producer.replay_dead); coalesce_enqueue.lua.
            None,
            JobState.FAILED,  # deadletters_take.lua: `nxjobs dead replay` (Producer.replay_dead)
            JobState.SCHEDULED,  # schedule_confirm.lua: it was due and its message is published
        }
    ),
    JobState.RUNNING: frozenset(
        {
            JobState.QUEUED,  # store_transition.lua: a claim (tasks/base.py); coalesce_take.lua
            JobState.RUNNING,  # store_transition.lua: a redelivery after a worker died mid-task
            JobState.RETRYING,  # store_transition.lua: the claim of a retry
            # store_transition.lua: the claim of a promoted job whose message came before the
            # promotion's confirm (nxjobs/schedule.py)
            JobState.SCHEDULED,
        }
    ),
    JobState.RETRYING: frozenset(
        {
            # store_transition.lua: retry, throttled, a later step waits for a slot
            JobState.RUNNING,
        }
    ),
    JobState.SUBMITTED: frozenset(
        {
            JobState.RUNNING,  # store_submit.lua (tasks/base.py); coalesce_fan_out.lua
            JobState.RETRYING,  # coalesce_fan_out.lua: it submits a member it finds retrying
        }
    ),
    JobState.COMPLETED: frozenset(
        {
            # callbacks_apply.lua: the last callback; store_submit.lua and coalesce_fan_out.lua:
            # every callback came before the submit answer; store_transition.lua allows it (no
            # caller).
            JobState.SUBMITTED,
            # callbacks_apply.lua: the CDR lookup of reconciliation finds an ambiguous makecall.
            JobState.FAILED,
        }
    ),
    JobState.FAILED: frozenset(
        {
            JobState.QUEUED,  # store_transition.lua: a replay whose message could not be sent
            JobState.RUNNING,  # store_transition.lua (tasks/base.py); coalesce_fan_out.lua
            JobState.RETRYING,  # coalesce_fan_out.lua; store_transition.lua allows it
            JobState.SUBMITTED,  # store_transition.lua: reconciliation gives up (callbacks_timeout)
        }
    ),
    JobState.CANCELLED: frozenset(
        {
            # job_cancel.lua (Producer.cancel): not sent yet; its message, if any, is skipped by
            # the claim, a coalesced member by the take.
            JobState.SCHEDULED,
            JobState.QUEUED,
            JobState.RETRYING,
            # campaign_record.lua: a submitted callbot list completed at the provider by its
            # producer (Producer.callbot_cancel_submitted, docs/campaigns.md).
            JobState.SUBMITTED,
        }
    ),
}
# The moves Python makes itself, outside any script: RecordStore.create writes a queued record, or
# a scheduled one.
CREATED_BY_STORE = frozenset({(None, JobState.QUEUED), (None, JobState.SCHEDULED)})
# The table as the scripts get it: (from, to) values, from "" = no record yet.
STATE_MOVES: scripts.Moves = frozenset(
    ("" if frm is None else frm.value, to.value)
    for to, froms in ALLOWED_FROM.items()
    for frm in froms
)


def register_script(client: Any, name: str) -> Any:
    """A script that writes `state`, rendered with the transition table and registered on a sync
    client. Every such script is loaded here (nxjobs.scripts refuses them otherwise)."""
    return scripts.register(client, name, STATE_MOVES)


def async_script(name: str) -> scripts.AsyncScript:
    """As register_script, for a redis.asyncio client (the receiver's applier)."""
    return scripts.AsyncScript(name, STATE_MOVES)


def load_script(name: str) -> scripts.Loaded:
    """The resolved text of any script, state writers rendered with the table (tests read it)."""
    return scripts.load(name, STATE_MOVES)


@dataclass(frozen=True)
class Transition:
    previous: str
    attempts: int
    throttles: int
    # The state the job is left in: the one asked for, except a submit that completes the job.
    state: str = ""


class TransitionRefused(Exception):
    """The job is not in a state the requested one may follow."""

    def __init__(self, job_id: str, current: str | None, wanted: JobState):
        self.job_id = job_id
        self.current = current
        self.wanted = wanted
        super().__init__(f"job {job_id}: cannot move from {current or 'missing'} to {wanted.value}")


def _encode(fields: dict[str, Any]) -> dict[str, str]:
    out = {}
    for name, value in fields.items():
        if name in _JSON_FIELDS:
            out[name] = "" if value is None else compact_json.dumps(value)
        else:
            out[name] = str(value)
    return out


class RecordStore:
    # `client`: a sync redis client with decode_responses=True (redis-py types replies bytes | str).
    def __init__(
        self,
        client: Any,
        ttl_s: int = 7 * 24 * 3600,
        callback_deadlines_s: dict[str, float] | None = None,
        retention_s: dict[str, int] | None = None,
    ):
        self.redis = client
        self.ttl_s = ttl_s
        # Per state (completed, failed): seconds a record is kept once it enters that state;
        # other states keep ttl_s. Only a store given it (the workers') writes it to Redis.
        self.retention_s = dict(retention_s or {})
        # Per job kind: seconds after submission before a job missing callbacks is reconciled.
        self.callback_deadlines_s = callback_deadlines_s or correlate.DEFAULT_DEADLINES_S
        self._transition = register_script(client, "store_transition")
        self._submit = register_script(client, "store_submit")
        self._incr = scripts.register(client, "store_incr_if_exists")
        self._trim = scripts.register(client, "store_trim_indexes")
        if self.retention_s:
            # In Redis, not rendered or passed: every script that moves a job (the receiver's
            # too) reads the same values, whoever loaded it (lib/state.lua).
            client.hset(keys.RETENTION, mapping={s: int(v) for s, v in self.retention_s.items()})

    def create(
        self,
        job_id: str,
        kind: str,
        input: dict[str, Any],
        expect: correlate.Expectation | None = None,
        pipe: Any = None,
        payload: dict[str, Any] | None = None,
        *,
        state: JobState = JobState.QUEUED,
        extra: dict[str, str] | None = None,
        ttl_s: int | None = None,
        index_score: int | None = None,
        notify_url: str | None = None,
    ) -> JobRecord:
        """Store a new queued record (with `notify_url`: where its end is POSTed); with `expect`,
        also register the ids its callbacks will carry (same transaction), so a callback that
        beats the submit result finds the job.
        With `pipe`, only queue the commands on it (bulk enqueue); the caller executes it.
        A scheduled job (nxjobs.schedule) is created with `state` SCHEDULED, its `extra` fields
        (run_at), a `ttl_s` that covers its wait and an `index_score` of its due time."""
        if (None, state) not in CREATED_BY_STORE:
            raise ValueError(f"a record is not created {state.value}")
        ttl = self.ttl_s if ttl_s is None else int(ttl_s)
        now = utc_now_iso()
        fields: dict[str, Any] = {
            "id": job_id,
            "kind": kind,
            "state": state.value,
            "attempts": 0,
            "created_at": now,
            "updated_at": now,
            "input": input,
            "request": [],
            "result": None,
            "error": None,
        }
        if notify_url is not None:
            fields["notify_url"] = notify_url
        own = pipe is None
        if own:
            pipe = self.redis.pipeline(transaction=True)
        pipe.hset(keys.job(job_id), mapping={**_encode(fields), **(extra or {})})
        score = int(time.time()) if index_score is None else int(index_score)
        pipe.zadd(keys.job_index(kind, state.value), {job_id: score})
        if expect is not None:
            if expect.needed is not None:
                pipe.hset(keys.job(job_id), "callbacks_needed", expect.needed)
            if expect.callbacks_max is not None:
                pipe.hset(keys.job(job_id), "callbacks_max", expect.callbacks_max)
            if expect.paged:
                pipe.hset(keys.job(job_id), keys.CALLBACKS_PAGED, "1")
            proof = dict(expect.proof or {})
            # The per-number / per-order marks live with the job's callbacks (lib/items.lua).
            marks = {f: v for f, v in proof.items() if f.startswith(_PROOF_MARKS)}
            fixed = {f: v for f, v in proof.items() if f not in marks}
            if fixed:
                pipe.hset(keys.job(job_id), mapping=fixed)
            if marks:
                home = callbacks_home(job_id, expect.paged)
                pipe.hset(home, mapping=marks)
                if home != keys.job(job_id):
                    pipe.expire(home, ttl)
            for index_key in expect.index_keys:
                pipe.set(index_key, job_id, ex=ttl)
        pipe.expire(keys.job(job_id), ttl)
        if payload is not None:
            # Kept until the job is submitted or failed, so a lost broker message can be re-sent.
            pipe.set(keys.job_payload(job_id), compact_json.dumps(payload), ex=ttl)
        if own:
            pipe.execute()
        return JobRecord.model_validate({**fields, **(extra or {}), "state": state})

    def delete(self, job_id: str) -> None:
        kind = self.redis.hget(keys.job(job_id), "kind")
        pipe = self.redis.pipeline(transaction=True)
        if kind:
            for state in keys.INDEXED_STATES:
                pipe.zrem(keys.job_index(kind, state), job_id)
        pipe.delete(
            keys.job(job_id),
            keys.job_payload(job_id),
            keys.job_items(job_id),
            keys.scheduled_message(job_id),
        )
        pipe.zrem(keys.SCHEDULE, job_id)
        pipe.execute()

    def kept_s(self, state: str) -> int:
        """How long a record in `state` is kept: its retention, or the record TTL."""
        return int(self.retention_s.get(state, self.ttl_s))

    def trim_indexes(self, kinds: Iterable[str], limit: int = 10_000) -> int:
        """Drop from the job indexes of `kinds` the members that entered their state longer ago
        than the state keeps a record (their records have expired): at most `limit` per call,
        oldest first. Returns how many were dropped."""
        index_keys, cutoffs = [], []
        now = int(time.time())
        for kind in kinds:
            for state in keys.INDEXED_STATES:
                index_keys.append(keys.job_index(kind, state))
                cutoffs.append(str(now - self.kept_s(state)))
        return int(self._trim(keys=index_keys, args=[str(limit), *cutoffs]))

    def transition(
        self, job_id: str, state: JobState, *, incr: Iterable[str] = (), **fields: Any
    ) -> Transition:
        """Move `job_id` to `state`, bump the `incr` counters and set `fields`, if the
        state machine allows it (one round trip; two for `submitted`, which reads the kind:
        a caller that knows it calls `submit`). Raises TransitionRefused otherwise."""
        counters = list(incr)
        if not set(counters) <= _COUNTERS:
            raise ValueError(f"unknown counters {counters}")
        if state is JobState.SUBMITTED:
            kind = self.redis.hget(keys.job(job_id), "kind")
            return self._submit_with_callbacks(job_id, kind, counters, fields, [])
        args: list[str] = [state.value, utc_now_iso(), str(self.ttl_s), ",".join(counters)]
        for name, value in _encode(fields).items():
            args += [name, value]
        status, current, attempts, throttles = self._transition(keys=[keys.job(job_id)], args=args)
        if status != 1:
            raise TransitionRefused(job_id, current or None, state)
        return Transition(current, int(attempts), int(throttles), state.value)

    def submit(
        self,
        job_id: str,
        kind: str,
        *,
        clear: Iterable[str] = (),
        also: Callable[[Any], None] | None = None,
        **fields: Any,
    ) -> Transition:
        """The move to `submitted` of a job of `kind` (the caller's message carries it), with its
        callback bookkeeping, in one round trip; once moved, the `clear` keys are deleted in the
        same step. Raises TransitionRefused otherwise (nothing deleted). `also` queues writes that
        do not depend on the move on the pipeline it is given: they are sent in the same round
        trip, after the move, whatever it answers; their errors are logged and dropped."""
        return self._submit_with_callbacks(job_id, kind, [], fields, list(clear), also)

    def _submit_with_callbacks(
        self,
        job_id: str,
        kind: str | None,
        counters: list[str],
        fields: dict[str, Any],
        clear: list[str],
        also: Callable[[Any], None] | None = None,
    ) -> Transition:
        """The submitted transition with its callback bookkeeping (nxjobs/lua/store_submit.lua)."""
        expect = correlate.on_submit(kind, fields.get("result"), job_id)
        now = time.time()
        family = KINDS[kind].queue if kind in KINDS else "none"
        due_at = now + float(self.callback_deadlines_s.get(kind or "", 0.0))
        proof_id = (expect.proof or {}).get(keys.PROOF_ID, "")
        index_keys = list(expect.index_keys)
        args = [utc_now_iso(), str(self.ttl_s), ",".join(counters)]
        args += [job_id, str(expect.needed or 0), f"{due_at:.3f}", f"{now:.3f}", proof_id]
        args.append(str(len(clear)))
        for name, value in _encode(fields).items():
            args += [name, value]
        redis_keys = [keys.job(job_id), keys.callbacks_waiting(family), *index_keys, *clear]
        if also is None:
            reply = self._submit(keys=redis_keys, args=args)
        else:
            reply = self._submit_with_others(job_id, redis_keys, args, also)
        status, current, attempts, throttles, after = reply
        if status != 1:
            raise TransitionRefused(job_id, current or None, JobState.SUBMITTED)
        return Transition(current, int(attempts), int(throttles), after)

    def _submit_with_others(
        self, job_id: str, redis_keys: list[str], args: list[str], also: Callable[[Any], None]
    ) -> list[Any]:
        # EVALSHA queued by hand: a registered script run on a pipeline costs a SCRIPT EXISTS
        # round trip first.
        pipe = self.redis.pipeline(transaction=False)
        pipe.evalsha(self._submit.sha, len(redis_keys), *redis_keys, *args)
        also(pipe)
        reply, *others = pipe.execute(raise_on_error=False)
        failed = [type(r).__name__ for r in others if isinstance(r, Exception)]
        if failed:
            log.warning("job=%s writes sent with its submit not recorded: %s", job_id, failed)
        if isinstance(reply, redis.exceptions.NoScriptError):
            return list(self._submit(keys=redis_keys, args=args))  # loads it, then runs it
        if isinstance(reply, Exception):
            raise reply
        return list(reply)

    def restore_failed(self, job_id: str, error: dict[str, Any]) -> bool:
        """Put a replayed job back to `failed` with `error` when its message could not be sent
        (Producer.replay_dead). False if the job has moved on meanwhile: it is left alone."""
        try:
            self.transition(job_id, JobState.FAILED, error=error)
        except TransitionRefused:
            return False
        return True

    def incr(self, job_id: str, counter: str) -> None:
        if counter not in _COUNTERS:
            raise ValueError(f"unknown counter {counter}")
        self._incr(keys=[keys.job(job_id)], args=[counter])

    def update(self, job_id: str, **fields: Any) -> None:
        """Set fields without a state change (e.g. progress of a multi-step job)."""
        fields["updated_at"] = utc_now_iso()
        self.redis.hset(keys.job(job_id), mapping=_encode(fields))

    def save_progress(self, job_id: str, progress: dict[str, Any]) -> None:
        """The progress of a multi-step job. A callbot list split by time zone (its `tasks`, each
        with its `contacts`): the tasks' contacts go to the job's plan (keys.ZONE_PLAN), written
        with the first save, when no task is created yet, with how many tasks it has (what its
        callbacks' userTaskIDs are proved against); the progress keeps the rest."""
        fields: dict[str, Any] = {"progress": progress}
        tasks = progress.get("tasks")
        if isinstance(tasks, list) and tasks:
            if not any(t.get("create_sent") or t.get("taskID") for t in tasks):
                fields[keys.ZONE_PLAN] = compact_json.dumps([t.get("contacts") for t in tasks])
                fields[keys.PROOF_TASKS] = len(tasks)
            fields["progress"] = {
                **progress,
                "tasks": [{k: v for k, v in t.items() if k != "contacts"} for t in tasks],
            }
        self.update(job_id, **fields)

    def get_progress(self, job_id: str) -> dict[str, Any]:
        """The progress save_progress saved (a split list's tasks with their contacts again)."""
        raw, plan = self.redis.hmget(keys.job(job_id), ["progress", keys.ZONE_PLAN])
        progress: dict[str, Any] = json.loads(raw) if raw else {}
        tasks = progress.get("tasks")
        if isinstance(tasks, list) and plan:
            for task, contacts in zip(tasks, json.loads(plan), strict=True):
                task["contacts"] = contacts
        return progress

    def zone_plan(self, job_id: str) -> list[list[int]] | None:
        """A callbot list split by time zone: per task, its contacts' indices (None: not split)."""
        raw = self.redis.hget(keys.job(job_id), keys.ZONE_PLAN)
        return json.loads(raw) if raw else None

    def get(self, job_id: str) -> JobRecord | None:
        return self.get_many([job_id])[job_id]

    def get_many(self, job_ids: Iterable[str]) -> dict[str, JobRecord | None]:
        """The records of `job_ids` (None: no record). A paged job's record carries its summary
        and its first RECORD_CALLBACKS callbacks, never all of them: page with `callbacks`."""
        ids = list(job_ids)
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(keys.job(job_id))
        raws = pipe.execute()
        shared = self._batch_shared(raws)
        first = self._first_items(ids, raws)
        return {
            job_id: (
                _decode(raw, shared.get(raw.get("coalesce_batch", "")), first.get(job_id), job_id)
                if raw
                else None
            )
            for job_id, raw in zip(ids, raws, strict=True)
        }

    def _first_items(
        self, ids: list[str], raws: list[dict[str, str]]
    ) -> dict[str, list[dict[str, Any]]]:
        """job id -> the first RECORD_CALLBACKS entries of each paged job among `raws`, read in
        one round trip (none when there is no paged job)."""
        wanted = [
            (job_id, min(int(raw.get("callbacks_stored") or 0), RECORD_CALLBACKS))
            for job_id, raw in zip(ids, raws, strict=True)
            if raw and _paged(raw.get(keys.CALLBACKS_PAGED))
        ]
        out: dict[str, list[dict[str, Any]]] = {job_id: [] for job_id, _ in wanted}
        wanted = [(job_id, n) for job_id, n in wanted if n > 0]
        if not wanted:
            return out
        pipe = self.redis.pipeline(transaction=False)
        for job_id, n in wanted:
            pipe.hmget(callbacks_home(job_id, True), _item_fields(0, n))
        for (job_id, _), values in zip(wanted, pipe.execute(), strict=True):
            out[job_id] = [json.loads(v) for v in values if v]
        return out

    def callbacks(self, job_id: str, cursor: str = "0", count: int = 100) -> CallbackPage | None:
        """One page of a job's callbacks, oldest first: `count` (1..MAX_PAGE) from `cursor` ("0"
        for the first page, then the page's `next_cursor`). None if the job has no record; raises
        InvalidCursor for a cursor no page gave, ValueError for a count out of range. A paged job
        reads its page alone (HMGET of its numbered entries); a small one from its record."""
        start = parse_cursor(cursor)
        if not 1 <= count <= MAX_PAGE:
            raise ValueError(f"count must be 1..{MAX_PAGE}, not {count}")
        kind, paged, stored = self.redis.hmget(
            keys.job(job_id), "kind", keys.CALLBACKS_PAGED, "callbacks_stored"
        )
        if kind is None:
            return None
        if _paged(paged):
            total = int(stored or 0)
            end = min(start + count, total)
            values = (
                self.redis.hmget(callbacks_home(job_id, True), _item_fields(start, end))
                if end > start
                else []
            )
            items = [json.loads(v) for v in values if v]
        else:
            raw = self.redis.hgetall(keys.job(job_id))
            if raw.get("coalesce_batch"):
                # A completed member's entry is read back with its batch's ids (member_entry).
                batch = self._batch_shared([raw]).get(raw["coalesce_batch"])
                entries = _decode(raw, batch, None, job_id).callbacks
            else:
                entries = _inline_callbacks(raw)
            total = len(entries)
            end = min(start + count, total)
            items = entries[start:end]
        return CallbackPage(items, str(end) if end < total else None, total)

    def _batch_shared(self, raws: list[dict[str, str]]) -> dict[str, dict[str, str]]:
        """batch id -> the fields coalesced members among `raws` share with it
        (keys.BATCH_SHAREABLE), read in one round trip; none for a batch that has expired."""
        batch_ids = batch_ids_of(raws)
        if not batch_ids:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for batch_id in batch_ids:
            pipe.hmget(keys.coalesce_batch(batch_id), *BATCH_READ)
        return {
            batch_id: shared_fields(values)
            for batch_id, values in zip(batch_ids, pipe.execute(), strict=True)
        }


# Callback bookkeeping kept in the job's hash, not part of the record a producer reads.
_NOT_RECORD_FIELDS = (keys.UNIT_FIELD, keys.PHONE_FIELD, keys.ORDER_FIELD)
# Proof fields that mark one number or order each: kept where the job's callbacks are.
_PROOF_MARKS = (keys.PHONE_FIELD, keys.ORDER_FIELD)
# Callbacks a paged job's record shows (its first ones); the rest are read by pages.
RECORD_CALLBACKS = 20
# Callbacks one page may hold.
MAX_PAGE = 1000


@dataclass(frozen=True)
class CallbackPage:
    callbacks: list[dict[str, Any]]  # oldest first
    next_cursor: str | None  # what to pass for the next page; None: this was the last
    total: int  # callbacks the job has stored


class InvalidCursor(ValueError):
    """A paging cursor that no page handed out."""


def parse_cursor(cursor: str) -> int:
    """The position a cursor names: "0", or a page's next_cursor (a count of callbacks)."""
    text = str(cursor).strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 12):
        raise InvalidCursor(
            f"invalid cursor {cursor!r}: give 0 for the first page, then the next_cursor a page "
            "returned"
        )
    return int(text)


def callbacks_home(job_id: str, paged: bool) -> str:
    """Where a job's callback entries, units and proof marks live (as lib/items.lua's items_key):
    its own hash, or its items hash when it is paged (keys.CALLBACKS_PAGED)."""
    return keys.job_items(job_id) if paged else keys.job(job_id)


def _paged(flag: str | None) -> bool:
    return flag == "1"


def _item_fields(start: int, end: int) -> list[str]:
    """The items-hash fields of a paged job's entries start+1..end (numbered from 1)."""
    return [f"{keys.ITEM_FIELD}{n}" for n in range(start + 1, end + 1)]


def _inline_callbacks(raw: dict[str, str]) -> list[dict[str, Any]]:
    """A small job's callbacks from its hash, oldest first (same-millisecond ones keep no order)."""
    entries = [json.loads(v) for name, v in raw.items() if name.startswith(keys.CALLBACK_FIELD)]
    return sorted(entries, key=lambda c: c.get("received_at") or "")


# How a member's own field reads while it has none of its own (then its batch's is taken).
_UNSET = ("", "[]")
# The batch hash's batchNo (coalesce_take.lua): what a member's compact DR entry leaves out.
_BATCH_NO = "batch_no"
# What a member reads of its batch: the fields it shares (keys.BATCH_SHAREABLE) and its batchNo.
BATCH_READ = (*keys.BATCH_SHAREABLE, _BATCH_NO)


def _decode(
    raw: dict[str, str],
    batch: dict[str, str] | None = None,
    first_items: list[dict[str, Any]] | None = None,
    job_id: str = "",
) -> JobRecord:
    """The record from its hash; `batch`: the fields its coalesce batch holds for its members
    (keys.BATCH_SHAREABLE), taken where the member has none of its own; `first_items`: a paged
    job's first callbacks (its hash holds none)."""
    raw = {"id": job_id, **raw} if job_id else dict(raw)
    batch = dict(batch or {})
    batch_no = batch.pop(_BATCH_NO, None)
    for name, value in batch.items():
        if raw.get(name, "") in _UNSET:
            raw[name] = value
    if raw.get("coalesce_batch") and "callbacks_needed" not in raw:
        # A completed member keeps no counts (keys.COMPLETED_MEMBER_DROPS): it had 1 of 1.
        stored = sum(1 for name in raw if name.startswith(keys.CALLBACK_FIELD))
        done, needed = member_counts(raw.get("state"), raw.get("coalesce_batch"), None, None)
        raw.update(callbacks_needed=needed, callbacks_done=done, callbacks_stored=str(stored))
        _member_entries_back(raw, batch_no)
    data: dict[str, Any] = {}
    paged = _paged(raw.get(keys.CALLBACKS_PAGED))
    for name, value in raw.items():
        if not name.startswith((keys.CALLBACK_FIELD, *_NOT_RECORD_FIELDS)):
            data[name] = value
    for name in _JSON_FIELDS:
        text = data.get(name)
        data[name] = json.loads(text) if text else None
    data["input"] = data["input"] or {}
    data["request"] = data["request"] or []
    for counter in _COUNTERS:
        data[counter] = int(data.get(counter, 0))
    data["callbacks_stored"] = int(data.get("callbacks_stored") or 0)
    data["callbacks_paged"] = paged
    if paged:
        data["callbacks"] = first_items or []
        data["callbacks_summary"] = data.get(keys.CALLBACKS_SUMMARY) or {}
    else:
        data["callbacks"] = _inline_callbacks(raw)
        data["callbacks_summary"] = correlate.summarize(data["callbacks"])
    return JobRecord.model_validate(data)


def member_counts(
    state: str | None, coalesce_batch: str | None, done: str | None, needed: str | None
) -> tuple[str, str]:
    """A job's (callbacks_done, callbacks_needed) from its fields: a completed coalesced member
    keeps none (keys.COMPLETED_MEMBER_DROPS), it had 1 of 1."""
    if coalesce_batch and needed is None and state == JobState.COMPLETED.value:
        return "1", "1"
    return done or "0", needed or "0"


def member_entry(entry: dict[str, Any], request_id: str) -> tuple[str, str] | None:
    """What a completed coalesced member keeps of the number-check DR `entry` whose per-number id
    is `request_id` + a suffix (request_id: its batch's requestId): (the suffix, the entry
    without what its record or batch has: type, source "callback", received_at, the data's
    requestId and batchNo); None if it does not have that shape. _member_entries_back undoes it."""
    data = entry.get("data")
    if entry.get("type") != "number-check" or not isinstance(data, dict):
        return None
    number_id, batch_no = data.get("requestId"), data.get("batchNo")
    if not (isinstance(number_id, str) and isinstance(batch_no, str) and batch_no and request_id):
        return None
    suffix = number_id.removeprefix(request_id)
    if suffix == number_id or not suffix.startswith("-"):
        return None
    kept: dict[str, Any] = {"data": {k: v for k, v in data.items() if k not in _MEMBER_SHARED}}
    if entry.get("source") != "callback":
        kept["source"] = entry.get("source")
    return suffix, compact_json.dumps(kept)


# What a member's compact DR entry leaves out of its data (its batch's result has them).
_MEMBER_SHARED = ("requestId", "batchNo")


def _member_entries_back(raw: dict[str, str], batch_no: str | None) -> None:
    """A completed member's compact DR entries (keys.MEMBER_CALLBACK_FIELD) as they came: their
    requestId from its result (or its batch's), batchNo its batch's, received_at its
    updated_at."""
    result = json.loads(raw.get("result") or "null") or {}
    for name in [n for n in raw if n.startswith(keys.MEMBER_CALLBACK_FIELD)]:
        kept = json.loads(raw.pop(name))
        suffix = name.removeprefix(keys.MEMBER_CALLBACK_FIELD)
        entry = {
            "type": "number-check",
            "source": kept.get("source", "callback"),
            "received_at": raw.get("updated_at"),
            "data": {
                "requestId": f"{result.get('requestId', '')}{suffix}",
                "batchNo": batch_no or result.get("batchNo"),
                **kept.get("data", {}),
            },
        }
        raw[keys.CALLBACK_FIELD + "nc:" + entry["data"]["requestId"]] = compact_json.dumps(entry)


# ---- what an asyncio reader needs (nxjobs.aio): the same reads, planned here -----------------


def batch_ids_of(raws: Iterable[dict[str, str]]) -> list[str]:
    """The coalesce batches whose shared fields the records `raws` read (as _batch_shared)."""
    return sorted({raw["coalesce_batch"] for raw in raws if raw and raw.get("coalesce_batch")})


def shared_fields(values: list[str | None]) -> dict[str, str]:
    """A batch's fields its members read, from HMGET of BATCH_READ."""
    return {name: v for name, v in zip(BATCH_READ, values, strict=True) if v}


def first_items_wanted(ids: list[str], raws: list[dict[str, str]]) -> list[tuple[str, list[str]]]:
    """(job id, items-hash fields) of the first callbacks of each paged job among `raws`
    (RecordStore._first_items reads them with HMGET of callbacks_home(job id, True))."""
    out = []
    for job_id, raw in zip(ids, raws, strict=True):
        if raw and _paged(raw.get(keys.CALLBACKS_PAGED)):
            n = min(int(raw.get("callbacks_stored") or 0), RECORD_CALLBACKS)
            out.append((job_id, _item_fields(0, n)))
    return out


def decode_record(
    raw: dict[str, str],
    batch: dict[str, str] | None,
    first_items: list[dict[str, Any]] | None,
    job_id: str,
) -> JobRecord:
    """The record from its hash, as RecordStore.get_many builds it."""
    return _decode(raw, batch, first_items, job_id)


def item_fields(start: int, end: int) -> list[str]:
    return _item_fields(start, end)


def inline_callbacks(raw: dict[str, str]) -> list[dict[str, Any]]:
    return _inline_callbacks(raw)


def is_paged(flag: str | None) -> bool:
    return _paged(flag)
