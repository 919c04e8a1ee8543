"""Coalescing: one-item jobs gathered into one provider request.

The provider's quotas count requests, not items (docs/provider.md §5.1, §6.3, §8): one
Number Check request carries up to 5 000 numbers, one Callbot `addBatchCall`
many contacts. A producer enqueueing single items (a sign-up form, a CRM row)
would otherwise spend a request per item. Two kinds are coalesced (`Spec`):
one-number `number-check` jobs (group = check level, key = phone) and
`callbot-contact` jobs (group = the task's userTaskID, key = orderID). The
machinery below is the same for both; what differs is in their Spec, and in
the request the flush sends (tasks/flush.py).

How a job travels (number checks; contacts alike, with orderID for phone):

1. The producer stores the job's record (state `queued`, one callback needed)
   and appends `<job id>|<key>[|<item>]` to its group's pending list, in one script.
   A group is one check level (one Callbot task): every member of a batch is sent
   with the same credential, that of the workers consuming the kind's queue.
   The script says when a flush message is due: when this push filled a whole
   batch (send one now), or when the list had no flush on its way (send one
   after the linger). That flag expires, so a flush lost with its producer is
   re-armed by the next push or by the periodic sweep.
2. A flush (the Celery task `nxjobs.number_check_batch`, `nxjobs.callbot_contact_batch`)
   takes its rate-limit slot, then takes up to `max_numbers` (`max_contacts`)
   entries into a batch named after its own task id, in one script: members go
   `running`, and the batch's correlation hash `batchNo: phone -> job id` is
   set before anything is sent, so a callback that beats the fan-out still finds
   its job. A redelivered flush finds its batch already built and sends (or
   looks up) that batch.
   Two jobs with the same phone never share a batch: the second waits for the next.
3. After the answer, one script fans the result out: each member becomes
   `submitted` with its share of the result (or `failed`, if the provider
   rejected its number in `failNumber`, its contact in `errList`), or `completed` at once if its
   callback came early. The batch is then dropped.

Callbacks carry a per-number id `<requestId>-NNNNNN` (§5.1's id rule) plus
`batchNo` and `phone`; the receiver finds a member by `(batchNo, phone)` and
deduplicates by the per-number id, like any Number Check result. A contact's
call and order callbacks carry its orderID, indexed when the job is enqueued
(it is ours, and globally unique), so the member is found whatever its batch.

Imports nothing of the service packages: producers use the enqueue half.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from nxjobs import compact_json, correlate, keys, store
from nxjobs.jobs import PRIORITY_NEW, QUEUE_API2, QUEUE_CALLBOT

FLUSH_TASK = "nxjobs.number_check_batch"
CONTACT_FLUSH_TASK = "nxjobs.callbot_contact_batch"
SWEEP_TASK = "nxjobs.coalesce_sweep"
# Batches above this many numbers fall under the provider's lower quota (1 request/s,
# docs/provider.md §8): 2 000-number batches at 10 requests/s carry four times as many numbers.
BIG_BATCH_NUMBERS = 2000
# Jobs per enqueue script call: bounds one script's time inside Redis.
ENQUEUE_CHUNK = 1000
# The flush-armed flag outlives the linger by this much: long enough for a flush waiting for
# its rate-limit slot, short enough that a flush lost with its producer is soon re-armed.
ARMED_GRACE_S = 30.0


class BatchSizing(Protocol):
    """The coalesce settings the queue reads: the service's config and a producer's settings
    both provide them (same NXJOBS_COALESCE__* variables)."""

    # Longest a queued number waits for company before its batch is sent anyway.
    linger_s: float
    # Numbers per provider request, contacts per addBatchCall.
    max_numbers: int
    max_contacts: int


@dataclass(frozen=True)
class Spec:
    """What differs between the coalesced kinds; the queue, scripts and flush flow are shared.

    Parameters: `kind` the members' job kind; `family` the queue whose workers hold the credential
    the batch is sent with (flushes run there); `flush_task` the Celery task that sends a batch;
    `prefix` starts every group name of the kind; `max_setting` the BatchSizing field that caps
    a batch; `index_at_enqueue` builds a member's correlation index key from its key, set when the
    job is enqueued (the id is ours and known then); `index_at_take` builds, from a batch's batchNo,
    the one index hash of its members (key -> job id), set when the batch is built (the id is the
    batch's); None = no such index."""

    kind: str
    family: str
    flush_task: str
    prefix: str
    max_setting: str
    index_at_enqueue: Callable[[str], str] | None = None
    index_at_take: Callable[[str], str] | None = None

    def max_items(self, settings: BatchSizing) -> int:
        return int(getattr(settings, self.max_setting))


NUMBER_CHECKS = Spec(
    "number-check", QUEUE_API2, FLUSH_TASK, "nc", "max_numbers", index_at_take=keys.member_index
)
CONTACTS = Spec(
    "callbot-contact",
    QUEUE_CALLBOT,
    CONTACT_FLUSH_TASK,
    "cbt:",
    "max_contacts",
    index_at_enqueue=correlate.contact_index,
)
SPECS = (NUMBER_CHECKS, CONTACTS)


def spec_of(group: str) -> Spec:
    return CONTACTS if group.startswith(CONTACTS.prefix) else NUMBER_CHECKS


def group_of(check_level: int) -> str:
    return f"nc{int(check_level)}"


def level_of(group: str) -> int:
    return int(group.removeprefix("nc"))


def contact_group(user_task_id: str) -> str:
    """Contacts for one Callbot task. Every worker of the callbot queue sends with the one Callbot
    credential of the deployment, so the task id alone names the (credential, task) pair."""
    return CONTACTS.prefix + user_task_id


def user_task_id_of(group: str) -> str:
    return group.removeprefix(CONTACTS.prefix)


def member_index_key(batch_no: str) -> str:
    """Correlation index of a batch's members: a hash a callback's phone -> job id."""
    return keys.member_index(batch_no)


@dataclass(frozen=True)
class Taken:
    # 0 nothing taken, 1 built by an earlier delivery, 2 built now, 3 already sent and recorded
    status: int
    # (job id, key): the phone of a number check, the orderID of a contact
    members: list[tuple[str, str]]
    pending_left: int
    # job id -> what the request needs of the member beyond its key (a contact: its callList item,
    # unmasked)
    items: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Flushes:
    now: int  # flush messages to send at once (pushes that filled a batch)
    linger: bool  # a flush to send after the linger


class MemberOutcome(NamedTuple):
    job_id: str
    failed: bool
    document: dict[str, Any]  # the member's result, or its error


class CoalesceQueue:
    """The Redis side of coalescing; `client` is a sync redis client (decode_responses=True)."""

    def __init__(self, client: Any, settings: BatchSizing, *, ttl_s: int):
        self.redis = client
        self.settings = settings
        self.ttl_s = ttl_s
        self._enqueue = store.register_script(client, "coalesce_enqueue")
        self._take = store.register_script(client, "coalesce_take")
        self._fan_out = store.register_script(client, "coalesce_fan_out")
        self._drop_group = store.register_script(client, "coalesce_drop_group")

    # ---- producer half ------------------------------------------------------

    def enqueue(
        self,
        group: str,
        jobs: Iterable[tuple[str, ...]],
        now_iso: str,
        notify_url: str | None = None,
    ) -> Flushes:
        """Store queued records for (job id, key, redacted input JSON[, item JSON]) and add them to
        `group` (key: the phone of a number check, the orderID of a contact; item: what the request
        needs beyond the key). Chunks of ENQUEUE_CHUNK go to Redis in one transaction (all or
        nothing, and one round trip): keep a call to some 10 000 jobs, which holds Redis for
        about 0.1 s. `notify_url`: set on every record, in the same transaction."""
        spec = spec_of(group)
        index = spec.index_at_enqueue
        head = [
            str(self.ttl_s),
            str(self.max_items(group)),
            str(self.armed_ms),
            now_iso,
            group,
            spec.kind,
            "2" if index else "1",
            str(correlate.member_callbacks_max(spec.kind)),
        ]
        head_keys = [
            keys.coalesce_pending(group),
            keys.coalesce_armed(group),
            keys.COALESCE_GROUPS,
        ]
        pipe = self.redis.pipeline(transaction=True)
        chunk: list[str] = []
        chunk_keys: list[str] = []
        calls = 0
        urls: list[str] = []
        task = user_task_id_of(group)
        for job_id, key, input_json, *item in jobs:
            chunk += [
                job_id,
                key,
                item[0] if item else "",
                input_json,
                *correlate.member_proof(spec.kind, key, task),
            ]
            chunk_keys += [keys.job(job_id), index(key)] if index else [keys.job(job_id)]
            if notify_url is not None:
                urls.append(job_id)
            if len(chunk) >= 6 * ENQUEUE_CHUNK:
                self._enqueue(keys=head_keys + chunk_keys, args=head + chunk, client=pipe)
                chunk, chunk_keys, calls = [], [], calls + 1
        if chunk:
            self._enqueue(keys=head_keys + chunk_keys, args=head + chunk, client=pipe)
            calls += 1
        if not calls:
            return Flushes(0, False)
        for job_id in urls:
            pipe.hset(keys.job(job_id), "notify_url", notify_url)
        replies = pipe.execute()[:calls]
        return Flushes(sum(int(r[0]) for r in replies), any(int(r[1]) for r in replies))

    # ---- worker half ----------------------------------------------------------

    def pending(self, group: str) -> int:
        return int(self.redis.llen(keys.coalesce_pending(group)))

    def max_items(self, group: str) -> int:
        return spec_of(group).max_items(self.settings)

    def take(self, group: str, batch_id: str, now_s: float, now_iso: str) -> Taken:
        batch_no = batch_no_of(batch_id)
        index = spec_of(group).index_at_take
        status, members, left, items = self._take(
            keys=[
                keys.coalesce_batch(batch_id),
                keys.coalesce_pending(group),
                keys.COALESCE_OPEN,
                keys.coalesce_armed(group),
                keys.COALESCE_GROUPS,
                *([index(batch_no)] if index else []),
            ],
            args=[
                batch_id,
                self.max_items(group),
                batch_no,
                f"{now_s:.3f}",
                now_iso,
                self.ttl_s,
                keys.JOB_KEY_PREFIX,
                group,
            ],
        )
        decoded = json.loads(members) if members not in ("", "{}") else []
        extra = json.loads(items) if items not in ("", "{}", "[]") else {}
        return Taken(
            int(status),
            [(str(m[0]), str(m[1])) for m in decoded],
            int(left),
            {job_id: json.loads(item) for job_id, item in extra.items()},
        )

    def batch_state(self, batch_id: str) -> str | None:
        """None (not built), "built" or "done" (sent and recorded)."""
        done, group = self.redis.hmget(keys.coalesce_batch(batch_id), "done", "group")
        return "done" if done else ("built" if group else None)

    def touch(self, batch_id: str, now_s: float) -> None:
        """A built batch is still being worked on (retry, wait): not stale for the sweep."""
        self.redis.zadd(keys.COALESCE_OPEN, {batch_id: now_s}, xx=True)

    def batch_counter(self, batch_id: str, name: str) -> int:
        """Bump and return the batch's `attempts` or `throttles` (0 if the batch is gone)."""
        if not self.redis.exists(keys.coalesce_batch(batch_id)):
            return 0
        return int(self.redis.hincrby(keys.coalesce_batch(batch_id), name, 1))

    def fan_out(
        self,
        batch_id: str,
        request: list[dict[str, Any]],
        outcomes: list[MemberOutcome],
        *,
        now_s: float,
        now_iso: str,
        due_at_s: float,
        family: str = QUEUE_API2,
    ) -> list[str]:
        """Record each member's outcome and mark the batch done; return members completed at once.
        Members still waiting for their callback join `family`'s waiting set, due at `due_at_s`."""
        attempts, throttles = self.redis.hmget(
            keys.coalesce_batch(batch_id), "attempts", "throttles"
        )
        # Members of one answer share one result object (their share of it): sent once, with their
        # ids.
        shared = next((o.document for o in outcomes if not o.failed), None)
        sharing = [o.job_id for o in outcomes if not o.failed and o.document is shared]
        # A number check's callbacks must carry its batch's requestId (nxjobs.callbacks.ledger).
        request_id = (shared or {}).get("requestId") if family == QUEUE_API2 else None
        args: list[Any] = [
            keys.JOB_KEY_PREFIX,
            now_iso,
            f"{now_s:.3f}",
            f"{due_at_s:.3f}",
            self.ttl_s,
            batch_id,
            compact_json.dumps(request),
            int(attempts or 1),
            int(throttles or 0),
            compact_json.dumps(shared) if shared is not None else "",
            compact_json.dumps(sharing),
            request_id or "",
        ]
        for o in outcomes:
            if o.failed or o.document is not shared:
                args += [o.job_id, "f" if o.failed else "s", compact_json.dumps(o.document)]
        return list(
            self._fan_out(
                keys=[
                    keys.callbacks_waiting(family),
                    keys.coalesce_batch(batch_id),
                    keys.COALESCE_OPEN,
                    *([keys.member_index(batch_no_of(batch_id))] if request_id else []),
                ],
                args=args,
            )
        )

    def stale_batches(self, older_than_s: float, now_s: float) -> list[tuple[str, str]]:
        """(batch id, group) of built batches older than `older_than_s` (their flush may be
        lost)."""
        ids = self.redis.zrangebyscore(
            keys.COALESCE_OPEN, "-inf", now_s - older_than_s, start=0, num=100
        )
        if not ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for batch_id in ids:
            pipe.hget(keys.coalesce_batch(batch_id), "group")
        out = []
        for batch_id, group in zip(ids, pipe.execute(), strict=True):
            if group is None:
                self.redis.zrem(keys.COALESCE_OPEN, batch_id)  # expired with its record ttl
            else:
                out.append((batch_id, group))
        return out

    def unarmed_groups(self, wanted: Callable[[str], bool] = lambda group: True) -> list[str]:
        """Groups (of those `wanted`) with pending items and no flush on its way (its
        message was lost). Reads the groups set, whose size is the groups with work waiting
        (levels, Callbot tasks), not the keyspace; a group found empty leaves the set."""
        groups = sorted(self.redis.smembers(keys.COALESCE_GROUPS))
        pipe = self.redis.pipeline(transaction=False)
        for group in groups:
            pipe.llen(keys.coalesce_pending(group))
        out = []
        for group, left in zip(groups, pipe.execute(), strict=True):
            if not left:
                self._drop_group(
                    keys=[keys.COALESCE_GROUPS, keys.coalesce_pending(group)], args=[group]
                )
            elif wanted(group) and self.arm(group):
                out.append(group)
        return out

    def adopt_pending_lists(self) -> list[str]:
        """Add to the groups set every group with a pending list, found by one SCAN of the
        keyspace: a one-off after upgrading from a version that kept no such set (`nxjobs
        coalesce-adopt`), never run by a sweep."""
        head, tail = keys.coalesce_pending("\0").split("\0")
        found = sorted(
            key.removeprefix(head).removesuffix(tail)
            for key in self.redis.scan_iter(match=keys.coalesce_pending("*"), count=1000)
        )
        if found:
            self.redis.sadd(keys.COALESCE_GROUPS, *found)
        return found

    @property
    def armed_ms(self) -> int:
        return int((self.settings.linger_s + ARMED_GRACE_S) * 1000)

    def arm(self, group: str) -> bool:
        """True if no lingering flush of `group` was on its way: the caller must now send one."""
        return bool(self.redis.set(keys.coalesce_armed(group), "1", nx=True, px=self.armed_ms))


def send_flush(
    app: Any,
    group: str,
    trigger: str,
    *,
    countdown: float | None = None,
    producer: Any = None,
    task_id: str | None = None,
    priority: int = PRIORITY_NEW,
) -> None:
    """Publish a flush of `group` on its kind's queue ("full": a whole batch waits; "linger":
    send what is there). `task_id` names the batch: a stale batch is flushed again under its
    own id."""
    spec = spec_of(group)
    app.send_task(
        spec.flush_task,
        kwargs={"group": group, "trigger": trigger, "slot_at_us": None},
        queue=spec.family,
        routing_key=spec.family,
        priority=priority,
        countdown=countdown,
        producer=producer,
        task_id=task_id,
    )


def batch_no_of(batch_id: str) -> str:
    # The flush task id (a uuid) without dashes: 32 characters, within the 64 allowed.
    return batch_id.replace("-", "")


def rejected_members(members: list[tuple[str, str]], fail_numbers: list[Any]) -> dict[str, str]:
    """job id -> reason, for members whose number the provider listed in `failNumber`.

    Entries may carry the number whole or masked (`999***6789`, docs/provider.md §5.1). A masked
    entry that fits more than one member names none of them for sure: those members stay
    submitted, and their callback (or reconciliation's query) settles them. Never fails a job on
    a guess."""
    by_phone = {phone: job_id for job_id, phone in members}
    out: dict[str, str] = {}
    for entry in fail_numbers:
        number = str(entry.get("number", "")) if isinstance(entry, dict) else str(entry)
        reason = (
            str(entry.get("reason") or "rejected by the provider")
            if isinstance(entry, dict)
            else "rejected by the provider"
        )
        if number in by_phone:
            out[by_phone[number]] = reason
            continue
        head, stars, tail = number.partition("*")
        tail = tail.lstrip("*")
        if not stars or not head.isdigit() or not tail.isdigit():
            continue
        fits = [
            job_id
            for phone, job_id in by_phone.items()
            if phone.startswith(head)
            and phone.endswith(tail)
            and len(phone) > len(head) + len(tail)
        ]
        if len(fits) == 1:
            out[fits[0]] = reason
    return out
