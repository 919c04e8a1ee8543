"""Enqueue NXCloud jobs from application code and read their records back.

    from nxjobs.producers import Producer
    jobs = Producer()                      # NXJOBS_REDIS_URL, or redis://localhost:6379/0
    job_id = jobs.call(phone="8613800138000")
    record = jobs.wait([job_id], until="submitted", timeout_s=30)[job_id]

Input is validated before anything is written: bad input raises InvalidJob
naming the field, and nothing is stored or enqueued. Tasks are sent by name,
so applications need neither our task code nor our service configuration.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Iterable
from typing import Any, TypeGuard

import redis
from celery import Celery
from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from nxjobs import coalesce, compact_json, correlate, keys, redis_conn
from nxjobs.deadletters import DeadLetters
from nxjobs.jobs import (
    CALLBOT_CHUNK_SIZE,
    NUMBER_CHECK_MAX_PHONES,
    PRIORITY_NEW,
    CallbotContactPayload,
    InvalidJob,
    NumberCheckPayload,
    get_kind,
    validate_payload,
)
from nxjobs.records import JobRecord, JobState, utc_now_iso
from nxjobs.redact import flower_repr, redact
from nxjobs.redis_conn import RedisTarget, RedisUnavailable, describe
from nxjobs.store import CallbackPage, RecordStore
from nxjobs.wire import call_list_item, contact_job_order_id

log = logging.getLogger("nxjobs.producer")

__all__ = ["Producer", "InvalidJob", "RedisUnavailable", "EnqueueError", "JobRecord", "JobState"]


class ProducerCoalesceSettings(BaseModel):
    """The coalesce settings a producer needs: when a batch is full, how long it lingers.
    Same variables, defaults and bounds as the service's (tests/unit/test_settings_shared.py)."""

    linger_s: float = Field(default=0.5, gt=0, le=60)
    max_numbers: int = Field(default=coalesce.BIG_BATCH_NUMBERS, ge=1, le=NUMBER_CHECK_MAX_PHONES)
    max_contacts: int = Field(default=CALLBOT_CHUNK_SIZE, ge=1, le=1000)


class ProducerRedisTlsSettings(BaseModel):
    """NXJOBS_REDIS_TLS__*: same fields and defaults as the service's (config.settings)."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    check_hostname: bool = True


class ProducerSettings(BaseSettings):
    """The settings a producer needs; same names as the service's config.settings."""

    model_config = SettingsConfigDict(
        env_prefix="NXJOBS_",
        env_nested_delimiter="__",
        env_file=".env",
        env_ignore_empty=True,
        extra="ignore",
    )
    redis_url: str = "redis://localhost:6379/0"
    redis_sentinel_master: str | None = None
    redis_sentinel_password: SecretStr | None = None
    redis_tls: ProducerRedisTlsSettings = ProducerRedisTlsSettings()
    broker_url: str | None = None
    broker_sentinel_master: str | None = None
    record_ttl_s: int = Field(default=7 * 24 * 3600, gt=0)
    coalesce: ProducerCoalesceSettings = ProducerCoalesceSettings()

    def target(self, url: str, master: str | None) -> RedisTarget:
        password = self.redis_sentinel_password
        return redis_conn.target(
            url,
            sentinel_master=master,
            sentinel_password=password.get_secret_value() if password else None,
            tls=self.redis_tls.model_dump(),
        )


class EnqueueError(RuntimeError):
    """The job was valid but could not be enqueued; nothing was left behind. `job_ids`: of a
    batch, the jobs enqueued before the failure (they stand)."""

    job_ids: list[str]


def _as_target(
    given: str | RedisTarget | None, default: str, master: str | None, settings: ProducerSettings
) -> RedisTarget:
    if isinstance(given, RedisTarget):
        return given
    return settings.target(given or default, master)


class Producer:
    """Enqueue jobs and read their records.

    Parameters
    ----------
    redis_url: the record store, a URL or a nxjobs.redis_conn.RedisTarget; default
        NXJOBS_REDIS_URL (with NXJOBS_REDIS_SENTINEL_MASTER, NXJOBS_REDIS_TLS__*).
    broker_url: Celery's broker, same forms; default NXJOBS_BROKER_URL, else the record store's
        (an explicit `redis_url` without `broker_url` publishes there too).
    record_ttl_s: job records' TTL; default NXJOBS_RECORD_TTL_S.
    """

    def __init__(
        self,
        redis_url: str | RedisTarget | None = None,
        *,
        broker_url: str | RedisTarget | None = None,
        record_ttl_s: int | None = None,
    ):
        settings = ProducerSettings()
        self.target = _as_target(
            redis_url, settings.redis_url, settings.redis_sentinel_master, settings
        )
        self.redis_url = self.target.url
        if broker_url is None and redis_url is not None:
            broker_url = self.target
        self.broker = _as_target(
            broker_url,
            settings.broker_url or settings.redis_url,
            settings.broker_sentinel_master or settings.redis_sentinel_master,
            settings,
        )
        self.redis = self.target.connect()
        self.store = RecordStore(self.redis, ttl_s=record_ttl_s or settings.record_ttl_s)
        self.coalesce = coalesce.CoalesceQueue(
            self.redis, settings.coalesce, ttl_s=self.store.ttl_s
        )
        self._celery = Celery("nxjobs-producer", broker=self.broker.url, set_as_current=False)
        self._celery.conf.update(
            # Sentinel: the master's name; rediss://: the CA and client certificate.
            broker_transport_options=self.broker.kombu_transport_options(),
            broker_use_ssl=self.broker.kombu_ssl(),
            task_serializer="json",
            accept_content=["json"],
            # Flower shows a job as "sent" the moment it is enqueued.
            task_send_sent_event=True,
            # Bounded: a producer must get an error, not hang, when Redis is gone.
            task_publish_retry_policy={
                "max_retries": 3,
                "interval_start": 0.2,
                "interval_step": 0.5,
                "interval_max": 1.0,
            },
            broker_connection_timeout=3,
            broker_connection_retry=False,
        )

    # ---- enqueue ----------------------------------------------------------

    def enqueue(self, kind: str, payload: dict[str, Any], *, batch: bool = True) -> str:
        """Validate `payload` for `kind`, store its record, enqueue it; return the job id.

        A one-number Number Check (no batchNo of its own), or a Callbot contact, is sent together
        with others (of its check level, of its task) in one provider request (nxjobs.coalesce),
        unless `batch=False`: then it is sent on its own at once, for a latency-sensitive job."""
        job_kind = get_kind(kind)
        model = validate_payload(kind, payload)
        self._check_order_ids([model])
        if batch and _coalescible(model):
            return self._enqueue_coalesced([model])[0]
        body = model.model_dump(mode="json", exclude_none=True)
        job_id = uuid.uuid4().hex
        kwargs = {"job_id": job_id, "payload": body}
        try:
            # With the ids its callbacks will carry, so one that beats the worker still finds the
            # job.
            self.store.create(
                job_id,
                kind,
                redact(body),
                expect=correlate.on_enqueue(kind, job_id, model),
                payload=body,
            )
        except redis.RedisError as exc:
            raise RedisUnavailable(
                f"cannot reach Redis at {describe(self.redis_url)}: {exc}"
            ) from None
        try:
            self._celery.send_task(
                job_kind.task_name,
                kwargs=kwargs,
                task_id=job_id,
                queue=job_kind.queue,
                routing_key=job_kind.queue,
                priority=PRIORITY_NEW,
                kwargsrepr=flower_repr(kwargs, kind),
                argsrepr="()",
            )
        except Exception as exc:
            self._forget(job_id)
            raise EnqueueError(
                f"could not enqueue {kind} job on {describe(self.broker)}: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        return job_id

    def enqueue_many(
        self, kind: str, payloads: Iterable[dict[str, Any]], *, batch: bool = True
    ) -> list[str]:
        """Validate and enqueue several jobs of one kind; return their ids, in order.

        Every payload is validated before anything is written. The records are
        created in one pipelined round trip, then the messages go out over one
        broker connection (one LPUSH and one "sent" event each). If publishing
        fails part way, the records of the unsent jobs are removed and
        EnqueueError says how many were enqueued (their ids in `.job_ids`).
        One-number Number Checks are coalesced as in `enqueue` (all of them, or none
        if `batch=False`); they need no message of their own.
        """
        job_kind = get_kind(kind)
        models = [validate_payload(kind, payload) for payload in payloads]
        self._check_order_ids(models)
        coalescible = [m for m in models if _coalescible(m)] if batch else []
        if models and len(coalescible) == len(models):
            return self._enqueue_coalesced(coalescible)
        jobs = [
            (job_id, model, model.model_dump(mode="json", exclude_none=True))
            for job_id, model in zip(new_job_ids(len(models)), models, strict=True)
        ]
        try:
            pipe = self.redis.pipeline(transaction=True)
            for job_id, model, body in jobs:
                self.store.create(
                    job_id,
                    kind,
                    redact(body),
                    expect=correlate.on_enqueue(kind, job_id, model),
                    pipe=pipe,
                    payload=body,
                )
            pipe.execute()
        except redis.RedisError as exc:
            raise RedisUnavailable(
                f"cannot reach Redis at {describe(self.redis_url)}: {exc}"
            ) from None
        sent: list[str] = []
        try:
            with self._celery.producer_or_acquire() as publisher:
                for job_id, _model, body in jobs:
                    kwargs = {"job_id": job_id, "payload": body}
                    self._celery.send_task(
                        job_kind.task_name,
                        kwargs=kwargs,
                        task_id=job_id,
                        queue=job_kind.queue,
                        routing_key=job_kind.queue,
                        priority=PRIORITY_NEW,
                        producer=publisher,
                        kwargsrepr=flower_repr(kwargs, kind),
                        argsrepr="()",
                    )
                    sent.append(job_id)
        except Exception as exc:
            for job_id, _model, _body in jobs[len(sent) :]:
                self._forget(job_id)
            err = EnqueueError(
                f"enqueued {len(sent)} of {len(jobs)} {kind} jobs on {describe(self.broker)}, "
                f"then: {type(exc).__name__}: {exc}"
            )
            err.job_ids = sent
            raise err from None
        return sent

    def _enqueue_coalesced(
        self, models: list[NumberCheckPayload | CallbotContactPayload]
    ) -> list[str]:
        """Records plus pending entries (one atomic step per group), then the flush messages due."""
        job_ids = new_job_ids(len(models))
        groups: dict[str, list[tuple[str, ...]]] = {}
        for job_id, model in zip(job_ids, models, strict=True):
            shown = compact_json.dumps(redact(model.model_dump(mode="json", exclude_none=True)))
            if isinstance(model, CallbotContactPayload):
                # Key: the orderID (indexed at once for its callbacks); item: the callList entry to
                # send.
                order_id = contact_job_order_id(job_id, model)
                groups.setdefault(coalesce.contact_group(model.user_task_id), []).append(
                    (
                        job_id,
                        order_id,
                        shown,
                        compact_json.dumps(call_list_item(model.contact, order_id)),
                    )
                )
            else:
                groups.setdefault(coalesce.group_of(model.check_level), []).append(
                    (job_id, model.phones[0], shown)
                )
        for group, jobs in groups.items():
            try:
                flushes = self.coalesce.enqueue(group, jobs, utc_now_iso())
            except redis.RedisError as exc:
                raise RedisUnavailable(
                    f"cannot reach Redis at {describe(self.redis_url)}: {exc}"
                ) from None
            self._send_flushes(group, flushes)
        return job_ids

    def _send_flushes(self, group: str, flushes: coalesce.Flushes) -> None:
        try:
            with self._celery.producer_or_acquire() as publisher:
                for _ in range(flushes.now):
                    coalesce.send_flush(self._celery, group, "full", producer=publisher)
                if flushes.linger:
                    coalesce.send_flush(
                        self._celery,
                        group,
                        "linger",
                        countdown=self.coalesce.settings.linger_s,
                        producer=publisher,
                    )
        except Exception as exc:
            # The jobs are stored and pending: the flag left armed expires, and the next push
            # or beat's sweep sends the flush this one could not. Nothing is lost; it is late.
            log.warning(
                "could not send a %s flush (%s: %s); the sweep will", group, type(exc).__name__, exc
            )

    def _check_order_ids(self, models: list[Any]) -> None:
        """A contact's own orderID must be new: it is the contact's idempotency key and the key its
        callbacks are found by (orderIDs are globally unique, docs/provider.md §6.1). Checked before
        anything is written; a race with another producer is the caller's (unique ids are
        theirs)."""
        given = [
            (i, m.contact.order_id)
            for i, m in enumerate(models)
            if isinstance(m, CallbotContactPayload) and m.contact.order_id
        ]
        if not given:
            return
        prefix = "" if len(models) == 1 else "{}."
        seen: dict[str, int] = {}
        for i, order_id in given:
            if order_id in seen:
                raise InvalidJob(
                    f"{prefix.format(i)}contact.order_id", f"duplicate of job {seen[order_id]}'s"
                )
            seen[order_id] = i
        try:
            taken: list[Any] = self.redis.mget(
                [correlate.contact_index(order_id) for _, order_id in given]
            )
        except redis.RedisError as exc:
            raise RedisUnavailable(
                f"cannot reach Redis at {describe(self.redis_url)}: {exc}"
            ) from None
        for (i, _order_id), owner in zip(given, taken, strict=True):
            if owner:
                raise InvalidJob(
                    f"{prefix.format(i)}contact.order_id", f"already used by job {owner}"
                )

    def _forget(self, job_id: str) -> None:
        try:
            self.store.delete(job_id)
        except redis.RedisError:
            pass  # Redis is gone: the record is as unreachable as the message would be

    def call(
        self, *, phone: str, order_id: str | None = None, show_phone: str | None = None
    ) -> str:
        return self.enqueue(
            "call", _drop_none(phone=phone, order_id=order_id, show_phone=show_phone)
        )

    def callbot_list(
        self,
        *,
        scene_id: str,
        task_name: str,
        contacts: list[dict[str, Any]],
        strategy_name: str | None = None,
        task_callback_url: str | None = None,
        order_callback_url: str | None = None,
        call_callback_url: str | None = None,
    ) -> str:
        return self.enqueue(
            "callbot-list",
            _drop_none(
                scene_id=scene_id,
                task_name=task_name,
                contacts=contacts,
                strategy_name=strategy_name,
                task_callback_url=task_callback_url,
                order_callback_url=order_callback_url,
                call_callback_url=call_callback_url,
            ),
        )

    def callbot_contact(
        self, *, user_task_id: str, contact: dict[str, Any], batch: bool = True
    ) -> str:
        """Add one contact to the existing Callbot task `user_task_id` (e.g. a callbot-list job's
        id). Shares an addBatchCall with other contacts for that task (nxjobs.coalesce), unless
        `batch=False`: then it gets a request of its own, at once."""
        return self.enqueue(
            "callbot-contact", {"user_task_id": user_task_id, "contact": contact}, batch=batch
        )

    def number_check(
        self,
        *,
        phones: list[str],
        check_level: int = 1,
        batch_no: str | None = None,
        batch: bool = True,
    ) -> str:
        """`batch=False`: a one-number check gets a request of its own instead of sharing one."""
        return self.enqueue(
            "number-check",
            _drop_none(phones=phones, check_level=check_level, batch_no=batch_no),
            batch=batch,
        )

    def ota_init(self, *, phone: str, user_ip: str) -> str:
        return self.enqueue("ota-init", {"phone": phone, "user_ip": user_ip})

    def wa_calling(self, *, business_phone: str) -> str:
        return self.enqueue("wa-calling", {"business_phone": business_phone})

    # ---- dead letters -----------------------------------------------------

    @property
    def dead_letters(self) -> DeadLetters:
        return DeadLetters(self.redis)

    def replay_dead(self, job_id: str) -> str:
        """Re-enqueue a dead-lettered job under its own id and payload; returns what happened:
        `replayed`, or `stale` (the job is no longer failed, e.g. reconciliation completed it;
        the entry is dropped, nothing is sent). Raises KeyError if there is no such entry.

        The record goes `failed` -> `queued` (counters reset, `replays` + 1) before the
        message is sent, so the worker can claim it; if sending fails, the record and
        the entry are put back and EnqueueError is raised."""
        dead = self.dead_letters
        try:
            status, entry = dead.take(job_id, self.store.ttl_s)
            if status == -1:
                raise KeyError(job_id)
            if status == 0:
                return "stale"
            job_kind = get_kind(entry["kind"])
            body = entry["payload"]
            if status == 2:  # the record expired meanwhile: a fresh queued one under the same id
                model = validate_payload(entry["kind"], body)
                self.store.create(
                    job_id,
                    entry["kind"],
                    redact(body),
                    expect=correlate.on_enqueue(entry["kind"], job_id, model),
                    payload=body,
                )
        except redis.RedisError as exc:
            raise RedisUnavailable(
                f"cannot reach Redis at {describe(self.redis_url)}: {exc}"
            ) from None
        kwargs = {"job_id": job_id, "payload": body}
        try:
            self.redis.set(keys.job_payload(job_id), compact_json.dumps(body), ex=self.store.ttl_s)
            self._celery.send_task(
                job_kind.task_name,
                kwargs=kwargs,
                task_id=job_id,
                queue=job_kind.queue,
                routing_key=job_kind.queue,
                priority=PRIORITY_NEW,
                kwargsrepr=flower_repr(kwargs),
                argsrepr="()",
            )
        except Exception as exc:
            try:  # back to where it was: failed, and in the dead letters
                self.store.restore_failed(job_id, entry.get("reason") or {})
                dead.add(
                    job_id, entry["kind"], body, entry.get("reason") or {}, entry.get("record")
                )
            except redis.RedisError:
                pass
            raise EnqueueError(
                f"could not replay {entry['kind']} job {job_id} on {describe(self.broker)}: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        return "replayed"

    # ---- read back --------------------------------------------------------

    def get(self, job_id: str) -> JobRecord | None:
        return self.store.get(job_id)

    def callbacks(self, job_id: str, cursor: str = "0", limit: int = 100) -> CallbackPage | None:
        """One page of a job's callbacks, oldest first (RecordStore.callbacks): start at "0", then
        pass the page's `next_cursor` until it is None. None if the job has no record; raises
        InvalidCursor (a ValueError) for a cursor no page gave."""
        return self.store.callbacks(job_id, cursor, limit)

    def wait(
        self,
        job_ids: Iterable[str],
        *,
        until: str | JobState = JobState.SUBMITTED,
        timeout_s: float = 60.0,
        poll_s: float = 0.2,
    ) -> dict[str, JobRecord | None]:
        """Poll until every job reached `until` or failed, or `timeout_s` passed; return the
        last records."""
        target = JobState(until)
        ids = list(job_ids)
        deadline = time.monotonic() + timeout_s
        while True:
            records = self.store.get_many(ids)
            done = all(
                r is not None and (r.reached(target) or r.state == JobState.FAILED)
                for r in records.values()
            )
            if done or time.monotonic() >= deadline:
                return records
            time.sleep(poll_s)

    def close(self) -> None:
        self.redis.close()
        self._celery.close()

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


def new_job_ids(count: int) -> list[str]:
    """`count` random (version 4) UUIDs as 32 hex digits, from one read of the OS's randomness
    (`uuid.uuid4()` reads it once per id)."""
    raw = os.urandom(16 * count)
    return [
        "%032x" % (int.from_bytes(raw[i : i + 16], "big") & _UUID4_CLEAR | _UUID4_SET)
        for i in range(0, 16 * count, 16)
    ]


def _coalescible(model: Any) -> TypeGuard[NumberCheckPayload | CallbotContactPayload]:
    """One number and no batchNo of its own, or one contact: it can share a request
    (nxjobs.coalesce)."""
    if isinstance(model, CallbotContactPayload):
        return True
    return (
        isinstance(model, NumberCheckPayload) and len(model.phones) == 1 and model.batch_no is None
    )


def _drop_none(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}
