"""Re-send jobs whose broker message was lost.

Kombu's Redis transport pops a message (BRPOP) before it records it as
unacked; a worker process killed in between, or holding a popped reply in the
socket of a paused BRPOP while it is busy, takes the message with it. The
visibility timeout cannot bring it back: Redis no longer has it. A `kill -9`
of a whole worker can land there (docs/delivery.md).

Every job keeps its raw payload (`nxjobs:job:<id>:payload`) until it is
submitted or failed. The sweeper, run by beat per queue family, takes jobs of
that family still `queued`, `running` or `retrying` whose record has not
changed for `confirm_s` (the oldest of each kind's state index, nxjobs.keys.job_index,
at most `per_state` per index and run: nothing it reads grows with history), and
looks for their message in the family's queue lists (one per priority step,
nxjobs.broker) and in kombu's `unacked` hash (a server-side Lua scan, in chunks). A job
found nowhere is a suspect; still found nowhere, with its record unchanged,
`confirm_s` later, its message is re-published under the same job id and
payload. The second look rules out a message that was only passing through a
live worker's socket. A duplicate message would be harmless anyway: the claim,
the in-flight marker and the idempotency keys decide what gets sent.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import redis

from nxjobs import broker, compact_json, keys, scripts
from nxjobs.jobs import KINDS
from nxjobs.records import JobState

log = logging.getLogger("nxjobs.recover")

SCAN_CHUNK = 2000
# Candidates read per state index and run: the oldest first, so a backlog is worked through.
PER_STATE = 1000
ACTIVE = (JobState.QUEUED.value, JobState.RUNNING.value, JobState.RETRYING.value)


class LostMessageSweeper:
    def __init__(
        self,
        client: redis.Redis,
        publish: Callable[[str, str, dict[str, Any]], None],
        *,
        confirm_s: float,
        clock: Callable[[], float] = time.time,
        transport_options: dict[str, Any] | None = None,
        per_state: int = PER_STATE,
        broker_client: redis.Redis | None = None,
    ):
        self.redis = client
        # kombu's keys live on the broker's Redis (the record store's unless set apart).
        self.broker = broker_client if broker_client is not None else client
        self.publish = publish  # (kind, job id, payload) -> sends the task message
        self.confirm_s = confirm_s
        self.clock = clock
        # The broker's (Celery's broker_transport_options): they name the queue lists.
        self.transport_options = dict(transport_options or {})
        self.per_state = per_state
        self._ids = scripts.register(self.broker, "recover_ids")

    def run(self, family: str) -> dict[str, int]:
        counts = {"candidates": 0, "suspects": 0, "republished": 0}
        candidates = self._candidates(family)
        counts["candidates"] = len(candidates)
        suspects_key = keys.recover_suspects(family)
        suspects = self.redis.hgetall(suspects_key)
        missing = set(candidates) - self._present(family) if candidates else set()
        now = self.clock()
        # Forget suspects that turned up, moved on, or changed since they were suspected.
        stale = [
            j
            for j, v in suspects.items()
            if j not in missing
            or json.loads(v)["updated_at"] != candidates.get(j, {}).get("updated_at")
        ]
        if stale:
            self.redis.hdel(suspects_key, *stale)
        for job_id in missing:
            entry = suspects.get(job_id)
            if entry is None or job_id in stale:
                self.redis.hset(
                    suspects_key,
                    job_id,
                    compact_json.dumps(
                        {"since": now, "updated_at": candidates[job_id]["updated_at"]}
                    ),
                )
                counts["suspects"] += 1
                continue
            if now - json.loads(entry)["since"] < self.confirm_s:
                counts["suspects"] += 1
                continue
            raw = self.redis.get(keys.job_payload(job_id))
            if raw is None:
                continue
            kind = candidates[job_id]["kind"]
            self.publish(kind, job_id, json.loads(raw))
            self.redis.hdel(suspects_key, job_id)
            counts["republished"] += 1
            log.warning(
                "job=%s kind=%s state=%s: its message was in no queue and not unacked for %.0fs; "
                "re-published",
                job_id,
                kind,
                candidates[job_id]["state"],
                now - json.loads(entry)["since"],
            )
        return counts

    def _candidates(self, family: str) -> dict[str, dict[str, str]]:
        """Active jobs of `family` with a kept payload, unchanged for at least confirm_s."""
        out: dict[str, dict[str, str]] = {}
        cutoff = self.clock() - self.confirm_s
        pipe = self.redis.pipeline(transaction=False)
        for kind in (name for name, k in KINDS.items() if k.queue == family):
            for state in ACTIVE:
                pipe.zrangebyscore(
                    keys.job_index(kind, state), "-inf", cutoff, start=0, num=self.per_state
                )
        ids = sorted({job_id for found in pipe.execute() for job_id in found})
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            pipe = self.redis.pipeline(transaction=False)
            for job_id in chunk:
                pipe.hmget(keys.job(job_id), "state", "kind", "updated_at")
                pipe.exists(keys.job_payload(job_id))
            replies = pipe.execute()
            for job_id, (state, kind, updated), kept in zip(
                chunk, replies[::2], replies[1::2], strict=True
            ):
                if (
                    state not in ACTIVE
                    or kind not in KINDS
                    or KINDS[kind].queue != family
                    or not updated
                    or not kept
                ):
                    continue
                if _epoch(updated) <= cutoff:
                    out[job_id] = {"state": state, "kind": kind, "updated_at": updated}
        return out

    def _present(self, family: str) -> set[str]:
        """Ids of every message in the family's queue lists (one per priority step) or unacked."""
        found: set[str] = set()
        for key in broker.queue_lists(family, self.transport_options):
            for start in range(0, self.broker.llen(key), SCAN_CHUNK):
                found.update(self._ids(keys=[key], args=["list", start, start + SCAN_CHUNK - 1]))
        unacked = broker.unacked_key(self.transport_options)
        found.update(self._ids(keys=[unacked], args=["hash", 0, -1]))
        return found


def _epoch(iso: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
