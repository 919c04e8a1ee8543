"""The Redis side of callbacks: apply one in a single round trip, list the
unmatched ones, and the waiting sets reconciliation works from.

One Lua script per callback (nxjobs/lua/callbacks_apply.lua) finds the job
(correlation index keys, then a direct id), proves the callback is the job's
own, drops a repeat, stores the entry where the job keeps its callbacks
(nxjobs/lua/lib/items.lua: a small job in its own hash, field `cb:<dedupe key>`,
so one key and one TTL; a job that can have many, a number check of more than
8 numbers or a callbot list, in its items hash, numbered in arrival order, with
counts by outcome in its record: nxjobs.correlate.INLINE_CALLBACKS,
callback_outcome), counts completion units and, when the last
one arrived and the job is submitted, completes it and takes it off the
waiting set. A callback whose job is not submitted yet is kept and counted;
the submit step (nxjobs/lua/store_submit.lua) completes the job if nothing is
left to wait for.

Whoever holds the URL token can post an unsigned callback, so finding a job
proves nothing by itself. A callback from the receiver changes a job only when
its ids agree with what the job recorded (nxjobs.keys.PROOF_*):
- Number Check DR: its batchNo is the job's, its number one of the job's
  (compared masked), and its per-number id `<requestId>-<suffix>` carries the
  job's requestId (a coalesced member's: its batch's). Before the submit answer
  names the requestId, the first DR fixes it and the submit step drops every
  early DR if the answer names another (nxjobs/lua/lib/prove_early.lua).
- Agent CDR: its sessionid is the makecall's (the same early rule). A call that
  failed `ambiguous` or `call_not_found` is never resolved by a callback: the
  callback makes its provider lookup due now, and only that answer moves it.
- Callbot call/order: a contact's userTaskID is its task; a list's orderID is
  one of its contacts' (`<job id>-<index>`, or an explicit one marked at enqueue).
A job stores at most `callbacks_max` entries (a Number Check: one per number);
distinct ones past that are counted (`callbacks_dropped`) and not kept.
Whatever proves nothing goes to the unmatched store with its reason: bounded in
count and bytes, a body cut to a prefix, a repeat stored once and counted. A
signed callback is remembered by its signature until its createTs leaves the
tolerance window, so a replay is answered and stored nowhere. Answers from the
provider's query APIs (reconciliation, `source` other than "callback") are the
provider's own word and skip the proof.

`Ledger` works with a sync client (reconciliation, operators);
`nxjobs.callbacks.applier.BatchApplier` serves the asyncio receiver. The script derives the job's
keys from its id, so it needs a single Redis (not a cluster), as the rest of nxjobs.
"""

from __future__ import annotations

import json
import time
from typing import Any, NamedTuple

from nxjobs import compact_json, correlate, keys, store
from nxjobs.callbacks.events import Event
from nxjobs.jobs import KINDS
from nxjobs.records import utc_now_iso

RECORDED, DUPLICATE, UNMATCHED, DROPPED, DEFERRED = 1, 2, 0, 3, 4
_SUMMARY_MAX = str(correlate.SUMMARY_OUTCOMES_MAX)
_OUTCOMES = {
    RECORDED: "recorded",
    DUPLICATE: "duplicate",
    UNMATCHED: "unmatched",
    DROPPED: "dropped",
    DEFERRED: "deferred",
}


class Applied(NamedTuple):
    status: int  # RECORDED, DUPLICATE, UNMATCHED, DROPPED or DEFERRED
    job_id: str
    state: str
    # Set only on the callback that completed its job: when the job was submitted (unix s).
    submitted_at: str = ""
    # The kind of the job it was recorded on (a Callbot order may belong to a list or a contact
    # job).
    kind: str = ""

    @property
    def outcome(self) -> str:
        return _OUTCOMES[self.status]


def family_of(job_kind: str) -> str:
    """The API family (= queue) of a job kind; reconciliation runs per family."""
    return KINDS[job_kind].queue


class Ledger:
    """Parameters: `client` a Redis client with decode_responses=True (sync for `apply` and the
    listing methods; an asyncio one for BatchApplier); `unmatched_max` how many unmatched callbacks
    to keep and `unmatched_max_bytes` how many bytes they may take in all (oldest dropped first),
    each keeping at most `unmatched_body_bytes` of its body."""

    def __init__(
        self,
        client: Any,
        *,
        unmatched_max: int = 10_000,
        unmatched_max_bytes: int = 8 * 1024 * 1024,
        unmatched_body_bytes: int = 2048,
    ):
        self.redis = client
        self.unmatched_max = unmatched_max
        self.unmatched_max_bytes = unmatched_max_bytes
        self.unmatched_body_bytes = unmatched_body_bytes
        sync = not _is_async(client)
        self._apply = store.register_script(client, "callbacks_apply") if sync else None
        # nxjobs/lua/callbacks_apply_batch.lua: a page of query rows in one call (apply_many).
        self._apply_batch = store.register_script(client, "callbacks_apply_batch") if sync else None

    def _call(self, event: Event, source: str, received_at: str) -> tuple[list[str], list[str]]:
        entry = {
            "type": event.type,
            "source": source,
            "received_at": received_at,
            "data": event.data,
        }
        proof = (*event.proof, "", "", "")[:3]
        keys_ = [
            keys.CALLBACKS_UNMATCHED,
            keys.CALLBACKS_UNMATCHED_ENTRIES,
            keys.callbacks_waiting(family_of(event.job_kind)),
            keys.RECONCILE,
            keys.callback_replay(event.replay) if event.replay else keys.callback_replay("-"),
            *event.index_keys,
        ]
        args = [
            keys.JOB_KEY_PREFIX,
            event.direct_id,
            event.job_kind,
            event.dedupe,
            event.unit,
            compact_json.dumps(entry),
            compact_json.dumps(event.ids),
            received_at,
            str(self.unmatched_max),
            compact_json.dumps(event.resolves) if event.resolves else "",
            event.alt_kind,
            event.alt_unit,
            source,
            event.check,
            *proof,
            str(event.replay_until) if event.replay else "",
            str(self.unmatched_max_bytes),
            str(self.unmatched_body_bytes),
            str(int(time.time() * 1000)),
            event.type,
            correlate.callback_outcome(event.type, event.data),
            _SUMMARY_MAX,
            event.member,
            *_member_entry(event, entry),
        ]
        return keys_, args

    def apply(self, event: Event, *, source: str = "callback") -> Applied:
        """Record `event` on its job (one round trip, sync client)."""
        assert self._apply is not None, (
            "Ledger.apply needs a sync client (the applier batches async)"
        )
        keys_, args = self._call(event, source, utc_now_iso())
        return _applied(self._apply(keys=keys_, args=args))

    def apply_many(self, events: list[Event], *, source: str) -> list[Applied | str]:
        """Record each of `events` on its job as `apply` would, all in one script call (sync
        client): each atomically and on its own. Per event its Applied, or the error message
        of the one that raised."""
        assert self._apply_batch is not None, "Ledger.apply_many needs a sync client"
        if not events:
            return []
        received_at = utc_now_iso()
        payload = compact_json.dumps([self._call(e, source, received_at) for e in events])
        replies = self._apply_batch(args=[payload])
        return [str(r[1]) if int(r[0]) == -1 else _applied(r) for r in replies]

    # ---- for operators and reconciliation (sync client) -------------------

    def unmatched(self, limit: int = 50) -> list[dict[str, Any]]:
        """The `limit` most recently seen callbacks that matched no job, newest first, each with
        `repeats` (times it came) and its callback (a cut one as `truncated` text)."""
        fps = self.redis.zrevrange(keys.CALLBACKS_UNMATCHED, 0, max(limit, 1) - 1)
        if not fps:
            return []
        fields = [f"{p}:{fp}" for fp in fps for p in ("e", "n")]
        values = self.redis.hmget(keys.CALLBACKS_UNMATCHED_ENTRIES, fields)
        out = []
        for entry, repeats in zip(values[::2], values[1::2], strict=True):
            if entry is None:
                continue
            row = json.loads(entry)
            if not row["truncated"]:
                row.update(json.loads(row.pop("callback")))  # type, source, received_at, data
            row["repeats"] = int(repeats or 1)
            out.append(row)
        return out

    def unmatched_count(self) -> int:
        return int(self.redis.zcard(keys.CALLBACKS_UNMATCHED))

    def unmatched_bytes(self) -> int:
        return int(self.redis.hget(keys.CALLBACKS_UNMATCHED_ENTRIES, "bytes") or 0)

    def due(self, family: str, *, now: float | None = None, limit: int = 50) -> list[str]:
        """Job ids of `family` whose reconciliation is due."""
        now = time.time() if now is None else now
        return list(
            self.redis.zrangebyscore(
                keys.callbacks_waiting(family), "-inf", now, start=0, num=limit
            )
        )

    def recheck_at(self, family: str, job_id: str, at: float) -> None:
        self.redis.zadd(keys.callbacks_waiting(family), {job_id: at})

    def forget(self, family: str, job_id: str) -> None:
        self.redis.zrem(keys.callbacks_waiting(family), job_id)

    def recheck_many(self, family: str, job_ids: list[str], at: float) -> None:
        # One ZADD per 1 000 ids: a run may settle thousands.
        for start in range(0, len(job_ids), 1000):
            chunk = job_ids[start : start + 1000]
            self.redis.zadd(keys.callbacks_waiting(family), dict.fromkeys(chunk, at))

    def forget_many(self, family: str, job_ids: list[str]) -> None:
        for start in range(0, len(job_ids), 1000):
            self.redis.zrem(keys.callbacks_waiting(family), *job_ids[start : start + 1000])


def _member_entry(event: Event, entry: dict[str, Any]) -> tuple[str, str]:
    """(entry JSON, field suffix) a coalesced member keeps of this DR once it completes, or
    ("", "") (nxjobs.store.member_entry)."""
    kept = store.member_entry(entry, event.proof[0]) if event.member else None
    return ("", "") if kept is None else (kept[1], kept[0])


def _is_async(client: Any) -> bool:
    import redis.asyncio

    return isinstance(client, redis.asyncio.Redis)


def _applied(reply: list) -> Applied:
    status, job_id, state = reply[:3]
    return Applied(
        int(status),
        job_id or "",
        state or "",
        (reply[3] if len(reply) > 3 else "") or "",
        (reply[4] if len(reply) > 4 else "") or "",
    )
