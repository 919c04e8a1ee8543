"""Held messages: what a worker holds unacknowledged, and putting back what a dead one held.

Kombu's Redis transport records every message it hands a worker as unacked: the hash `unacked`
(delivery tag -> [message, exchange, routing key]) and the sorted set `unacked_index` (delivery
tag -> unix time delivered). Left alone, a message whose worker died comes back only after the
visibility timeout (an hour). So each worker's main process lists, every `interval_s`, the
delivery tags of every message it holds (running, prefetched, countdowns waiting in its timer)
in one hash field of `keys.WORKERS_HELD`; and, under a short lock so one worker at a time does
it, puts back on its queue (next in line) every unacked message that is *orphaned*: delivered
more than `grace_s` ago and listed by no worker whose list is younger than `grace_s`. A dead
worker's entry is deleted once none of its tags is unacked any more.

A message put back while its worker still lives (its list went stale, e.g. a stalled main
process) is delivered twice; the claim, the in-flight marker and the idempotency keys decide
what gets sent (nxjobs/attempts/), as for any redelivery.

The channel is a kombu Redis channel of the worker app's own broker connection: its client
reads the unacked keys under the names the transport options give them, and its QoS puts a
message back exactly as kombu itself does (`restore_by_tag`). No Celery here; the thread that
runs this in a worker is in workers/held.py.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from nxjobs import compact_json, keys, metrics, scripts

log = logging.getLogger("nxjobs.held")

# Entries of `unacked_index` read per page, and at most per run (never the whole `unacked` hash).
SCAN_PAGE = 500
SCAN_MAX = 20_000
# Job ids named in the one log line of a run (a line stays readable after a big worker died).
LOG_JOBS = 100


@dataclass(frozen=True)
class Heartbeat:
    at: float  # unix time the worker took its list
    tags: frozenset[str]


def encode(at: float, tags: Iterable[str]) -> str:
    return compact_json.dumps({"at": round(at, 3), "tags": sorted(set(tags))})


def decode(raw: str | bytes) -> Heartbeat:
    """A malformed entry reads as a list as old as time: it protects nothing and is deleted."""
    try:
        value = json.loads(raw)
        return Heartbeat(float(value["at"]), frozenset(str(t) for t in value["tags"]))
    except (ValueError, KeyError, TypeError):
        return Heartbeat(0.0, frozenset())


def fresh_tags(heartbeats: Mapping[str, Heartbeat], *, now: float, grace_s: float) -> set[str]:
    """Every tag listed by a worker whose list is at most `grace_s` old."""
    out: set[str] = set()
    for beat in heartbeats.values():
        if now - beat.at <= grace_s:
            out |= beat.tags
    return out


def orphaned(
    unacked: Iterable[tuple[str, float]],
    heartbeats: Mapping[str, Heartbeat],
    *,
    now: float,
    grace_s: float,
) -> list[str]:
    """Tags of the unacked (tag, delivered at) delivered more than `grace_s` ago that no fresh
    list names: a live worker lists a message within one interval of taking it."""
    held = fresh_tags(heartbeats, now=now, grace_s=grace_s)
    return [tag for tag, delivered in unacked if now - delivered > grace_s and tag not in held]


def forgettable(
    heartbeats: Mapping[str, Heartbeat],
    *,
    now: float,
    grace_s: float,
    still_unacked: set[str],
) -> list[str]:
    """Workers whose list is older than `grace_s` and none of whose tags is still unacked (each
    was put back or acknowledged)."""
    return [
        name
        for name, beat in heartbeats.items()
        if now - beat.at > grace_s and not (beat.tags & still_unacked)
    ]


@dataclass
class RestoreRun:
    locked: bool = False  # False: another worker was doing it
    restored: list[tuple[str, str]] = field(default_factory=list)  # (job id, queue)
    forgotten: list[str] = field(default_factory=list)  # workers whose entry was deleted


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def describe(raw: str | bytes) -> tuple[str, str]:
    """(job id, queue) of one `unacked` entry: the task id header and the routing key."""
    try:
        message, _exchange, routing_key = json.loads(raw)
        return str(message.get("headers", {}).get("id", "?")), str(routing_key or "?")
    except (ValueError, TypeError, AttributeError):
        return "?", "?"


class HeldMessages:
    """One worker's side of it: `beat` lists what it holds, `restore_orphans` puts back what
    nobody alive holds."""

    def __init__(
        self,
        client: Any,
        channel: Any,
        *,
        node: str,
        interval_s: float,
        grace_s: float,
        restore_limit: int = 1000,
        clock: Callable[[], float] = time.time,
    ):
        self.redis = client  # our Redis client (decode_responses), for nxjobs keys
        self.channel = channel  # kombu Redis channel, for kombu's keys and its restore
        self.node = node
        self.interval_s = interval_s
        self.grace_s = grace_s
        self.restore_limit = restore_limit
        self.clock = clock
        self._forget = scripts.register(client, "held_forget")
        self._unlock = scripts.register(client, "token_delete_if_equal")

    def beat(self, at: float, tags: Iterable[str]) -> None:
        """Write this worker's list, taken at `at` (one round trip)."""
        self.redis.hset(keys.WORKERS_HELD, self.node, encode(at, tags))

    def forget_self(self) -> None:
        self.redis.hdel(keys.WORKERS_HELD, self.node)

    def restore_orphans(self) -> RestoreRun:
        run = RestoreRun()
        token = uuid.uuid4().hex
        lock_ms = max(1000, int(self.interval_s * 1000))
        if not self.redis.set(keys.WORKERS_HELD_LOCK, token, nx=True, px=lock_ms):
            return run
        run.locked = True
        try:
            self._restore(run)
        finally:
            self._unlock(keys=[keys.WORKERS_HELD_LOCK], args=[token])
        if run.restored:
            by_queue = Counter(queue for _job, queue in run.restored)
            metrics.record_restored(self.redis, by_queue)
            shown = run.restored[:LOG_JOBS]
            more = len(run.restored) - len(shown)
            log.warning(
                "put back %d message(s) no live worker holds (delivered over %.0fs ago): jobs %s%s",
                len(run.restored),
                self.grace_s,
                " ".join(f"{job}@{queue}" for job, queue in shown),
                f" and {more} more" if more else "",
            )
        return run

    def _restore(self, run: RestoreRun) -> None:
        broker = self.channel.client
        index_key, unacked_key = self.channel.unacked_index_key, self.channel.unacked_key
        now = self.clock()
        raw_beats = self.redis.hgetall(keys.WORKERS_HELD)
        beats = {name: decode(raw) for name, raw in raw_beats.items()}
        cutoff = now - self.grace_s
        offset = scanned = 0
        while scanned < SCAN_MAX and len(run.restored) < self.restore_limit:
            page = broker.zrangebyscore(
                index_key, "-inf", cutoff, start=offset, num=SCAN_PAGE, withscores=True
            )
            scanned += len(page)
            entries = [(_text(tag), float(score)) for tag, score in page]
            tags = orphaned(entries, beats, now=now, grace_s=self.grace_s)
            tags = tags[: self.restore_limit - len(run.restored)]
            if tags:
                for tag, raw in zip(tags, broker.hmget(unacked_key, tags), strict=True):
                    # leftmost=False: RPUSH, the end BRPOP takes from (kombu publishes with
                    # LPUSH), so it is the next taken; leftmost=True would queue it behind all.
                    self.channel.qos.restore_by_tag(tag, leftmost=False)
                    if raw is not None:  # else acknowledged meanwhile: only its index went
                        run.restored.append(describe(raw))
            # What was put back left the index: the next page starts that much earlier.
            offset += len(page) - len(tags)
            if len(page) < SCAN_PAGE:
                break
        stale = {n: b for n, b in beats.items() if now - b.at > self.grace_s}
        if not stale:
            return
        listed = sorted(set().union(*(b.tags for b in stale.values())))
        pipe = broker.pipeline(transaction=False)
        for tag in listed:
            pipe.zscore(index_key, tag)
        still = {
            tag for tag, score in zip(listed, pipe.execute(), strict=True) if score is not None
        }
        for name in forgettable(stale, now=now, grace_s=self.grace_s, still_unacked=still):
            if self._forget(keys=[keys.WORKERS_HELD], args=[name, raw_beats[name]]):
                run.forgotten.append(name)
