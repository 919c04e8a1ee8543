"""Webhook deliveries of job events: the dispatcher that reads the events stream, and the
delivery that POSTs one event (docs/notifications.md). No Celery: the caller hands in how a
delivery is sent (tasks/notify.py, workers/notify.py).

    set_state (a job ends) ──► events stream ──XREADGROUP──► Dispatcher ──send(id)──► notify queue
                                XACK once sent ◄────────────┘   ▲                       │
                                        due retries (NOTIFY_DUE) └──── deliver() ◄───────┘

A delivery is a hash (keys.notify_delivery: url, body, first_at, attempts) written before its
message is sent; its id is the event id, with a suffix when the job has its own URL too. Its
body is built once, so every attempt POSTs the same bytes with the same event id (a fresh
signature each time). A non-2xx answer or a connection error puts it in NOTIFY_DUE for its
backoff; the dispatcher sends it again when due, until `max_age_s` after the job ended. Celery
countdowns are not used for these waits: they may not outlive the broker visibility timeout.
A delivery is in NOTIFY_DUE while its message is on its way too, due `lost_after_s` later: a
lost message is sent again (at least once), and the POST moves or removes the entry.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
import requests

from nxjobs import keys, metrics, notify
from nxjobs.store import RecordStore

log = logging.getLogger("nxjobs.notify")

# What a delivery hash outlives its give-up age by (a retry in flight still finds it).
DELIVERY_TTL_MARGIN_S = 3600


@dataclass(frozen=True)
class Policy:
    """How deliveries are retried and read. Parameters (seconds unless named):

    base_s, cap_s: backoff of retry n is min(cap_s, base_s * 2**(n-1));
    max_age_s: a delivery still failing this long after the job ended is given up;
    connect_timeout_s, read_timeout_s: of each POST;
    batch: events (and due retries) taken per read; block_s: how long a read waits for events;
    claim_idle_s: an event read but not acknowledged this long ago is taken over;
    lost_margin_s: how long a delivery's message may wait in the notify queue, beyond one
    POST's timeouts, before it counts as lost and is sent again.
    """

    base_s: float = 10.0
    cap_s: float = 3600.0
    max_age_s: float = 24 * 3600.0
    connect_timeout_s: float = 3.05
    read_timeout_s: float = 10.0
    batch: int = 100
    block_s: float = 1.0
    claim_idle_s: float = 60.0
    lost_margin_s: float = 120.0

    @property
    def lost_after_s(self) -> float:
        """A delivery sent this long ago and neither done nor rescheduled is sent again (its
        message was lost): one POST's timeouts plus a margin for the queue."""
        return self.connect_timeout_s + self.read_timeout_s + self.lost_margin_s

    def delay_s(self, attempts: int) -> float:
        """The wait after the `attempts`-th failed POST."""
        return float(min(self.cap_s, self.base_s * 2 ** max(0, attempts - 1)))


def safe_url(url: str) -> str:
    """`url` without its query string and fragment (they may carry a token), for logs."""
    parts = urlsplit(url)
    query = "..." if parts.query else ""
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


def ensure_group(client: Any) -> None:
    """The dispatchers' consumer group on the events stream, created at the stream's end (events
    before it are not delivered); a no-op once it exists."""
    try:
        client.xgroup_create(keys.EVENTS, keys.NOTIFY_GROUP, id="$", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def set_maxlen(client: Any, maxlen: int) -> None:
    """The stream length set_state trims to (read by every script that ends a job)."""
    client.hset(keys.EVENTS_SETTINGS, "maxlen", int(maxlen))


class Dispatcher:
    """Turns events into deliveries for `send`. `url`: NXJOBS_NOTIFY__URL (every job's events),
    or None; a job's own notify_url gets a delivery of its own. `consumer`: this dispatcher's
    name in the group (one per worker)."""

    def __init__(
        self,
        client: Any,
        send: Callable[[str], None],
        policy: Policy,
        *,
        consumer: str,
        url: str | None = None,
        now: Callable[[], float] = time.time,
    ):
        self.redis = client
        self.send = send
        self.policy = policy
        self.consumer = consumer
        self.url = url
        self.now = now
        self.store = RecordStore(client)

    def run_once(self, block: bool = True) -> dict[str, int]:
        """One pass: send the retries now due, take over stale events, read new ones (waiting up
        to block_s for some when `block`), make their deliveries, acknowledge them."""
        report = {"retries": self.send_due()}
        claimed = self._claim_stale()
        fresh = self._read(block)
        report["events"] = len(claimed) + len(fresh)
        report["deliveries"] = self.dispatch(claimed + fresh)
        return report

    def send_due(self) -> int:
        """Send the deliveries whose retry is due; a delivery is taken by one dispatcher only
        (ZREM answers 1 to one of them)."""
        due = self.redis.zrangebyscore(
            keys.NOTIFY_DUE, "-inf", self.now(), start=0, num=self.policy.batch
        )
        sent = 0
        for delivery_id in due:
            if not self.redis.zrem(keys.NOTIFY_DUE, delivery_id):
                continue
            # Back in the set for when its message would be lost; deliver() moves or removes it.
            self.redis.zadd(keys.NOTIFY_DUE, {delivery_id: self.now() + self.policy.lost_after_s})
            self.send(delivery_id)
            sent += 1
        return sent

    def _claim_stale(self) -> list[tuple[str, dict[str, str]]]:
        reply = self.redis.xautoclaim(
            keys.EVENTS,
            keys.NOTIFY_GROUP,
            self.consumer,
            int(self.policy.claim_idle_s * 1000),
            start_id="0-0",
            count=self.policy.batch,
        )
        return [(entry_id, fields) for entry_id, fields in reply[1] if fields]

    def _read(self, block: bool) -> list[tuple[str, dict[str, str]]]:
        reply = self.redis.xreadgroup(
            keys.NOTIFY_GROUP,
            self.consumer,
            {keys.EVENTS: ">"},
            count=self.policy.batch,
            block=int(self.policy.block_s * 1000) if block else None,
        )
        return [(entry_id, fields) for _, entries in reply or [] for entry_id, fields in entries]

    def dispatch(self, entries: list[tuple[str, dict[str, str]]]) -> int:
        """Store and send the deliveries of `entries`, then acknowledge them (an entry whose
        delivery could not be sent stays pending: it is taken over after claim_idle_s)."""
        if not entries:
            return 0
        records = self.store.get_many(fields.get("id", "") for _, fields in entries)
        made = 0
        for entry_id, fields in entries:
            record = records.get(fields.get("id", ""))
            job: dict[str, Any] = (
                record.model_dump(mode="json") if record is not None else dict(fields)
            )
            job["state"] = fields.get("state")  # the state this event is about
            body = notify.encode(
                notify.event_body(entry_id, fields.get("state", ""), int(fields.get("at", 0)), job)
            )
            event_id = notify.event_id(entry_id)
            targets = [(event_id, self.url)] if self.url else []
            own = record.notify_url if record is not None else None
            if own and own != self.url:
                targets.append((f"{event_id}.job", own))
            for delivery_id, url in targets:
                self._store(delivery_id, url, body, int(fields.get("at", 0)) / 1000)
                self.send(delivery_id)
                made += 1
            self.redis.xack(keys.EVENTS, keys.NOTIFY_GROUP, entry_id)
        return made

    def _store(self, delivery_id: str, url: str, body: bytes, ended_at: float) -> None:
        key = keys.notify_delivery(delivery_id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(key, mapping={"url": url, "body": body.decode()})
        # A delivery made again (its event taken over) keeps its age and attempts.
        pipe.hsetnx(key, "first_at", f"{ended_at or self.now():.3f}")
        pipe.hsetnx(key, "attempts", 0)
        pipe.expire(key, int(self.policy.max_age_s + DELIVERY_TTL_MARGIN_S))
        # Sent again if its message is lost: deliver() moves or removes this entry.
        pipe.zadd(keys.NOTIFY_DUE, {delivery_id: self.now() + self.policy.lost_after_s})
        pipe.execute()


@dataclass(frozen=True)
class Outcome:
    status: str  # delivered, retry, gave_up, gone (no such delivery: done or expired)
    attempts: int = 0
    http_status: int | None = None
    retry_in_s: float | None = None


def deliver(
    client: Any,
    delivery_id: str,
    secret: str,
    policy: Policy,
    *,
    session: Any = requests,
    now: Callable[[], float] = time.time,
) -> Outcome:
    """POST delivery `delivery_id` once, signed with `secret`; on failure schedule its retry
    (NOTIFY_DUE) or give it up past max_age_s. Counts the outcome (nxjobs.metrics)."""
    key = keys.notify_delivery(delivery_id)
    stored = client.hgetall(key)
    if not stored or "body" not in stored:
        client.zrem(keys.NOTIFY_DUE, delivery_id)
        return Outcome("gone")
    body = stored["body"].encode()
    url = stored["url"]
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "nxjobs-notify",
        notify.HEADER: notify.sign(body, secret, int(now())),
    }
    status: int | None = None
    try:
        answer = session.post(
            url,
            data=body,
            headers=headers,
            timeout=(policy.connect_timeout_s, policy.read_timeout_s),
            allow_redirects=False,
        )
        status = answer.status_code
        answer.close()
        ok = 200 <= status < 300
        why = f"HTTP {status}"
    except requests.RequestException as exc:
        ok = False
        why = type(exc).__name__
    if ok:
        pipe = client.pipeline(transaction=True)
        pipe.delete(key)
        pipe.zrem(keys.NOTIFY_DUE, delivery_id)
        metrics.queue_notify(pipe, "delivered")
        pipe.execute()
        return Outcome("delivered", int(stored.get("attempts", 0)) + 1, status)
    attempts = int(client.hincrby(key, "attempts", 1))
    delay = policy.delay_s(attempts)
    age = now() - float(stored.get("first_at") or now())
    if age + delay > policy.max_age_s:
        pipe = client.pipeline(transaction=True)
        pipe.delete(key)
        pipe.zrem(keys.NOTIFY_DUE, delivery_id)
        metrics.queue_notify(pipe, "gave_up")
        pipe.execute()
        log.warning(
            "notify %s to %s given up after %d attempts (%s)",
            delivery_id,
            safe_url(url),
            attempts,
            why,
        )
        return Outcome("gave_up", attempts, status)
    pipe = client.pipeline(transaction=True)
    pipe.zadd(keys.NOTIFY_DUE, {delivery_id: now() + delay})
    metrics.queue_notify(pipe, "retry")
    pipe.execute()
    log.info(
        "notify %s to %s: %s, attempt %d, again in %.1f s",
        delivery_id,
        safe_url(url),
        why,
        attempts,
        delay,
    )
    return Outcome("retry", attempts, status, delay)
