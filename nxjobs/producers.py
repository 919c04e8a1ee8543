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
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeGuard

import redis
from celery import Celery
from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from nxjobs import (
    callbot_zones,
    calling_hours,
    campaign,
    coalesce,
    compact_json,
    correlate,
    keys,
    redis_conn,
    schedule,
)
from nxjobs import cancel as cancelling
from nxjobs.campaign import CampaignRefused
from nxjobs.cancel import Cancelled
from nxjobs.deadletters import DeadLetters
from nxjobs.jobs import (
    CALLBOT_CHUNK_SIZE,
    NUMBER_CHECK_MAX_PHONES,
    PRIORITY_NEW,
    CallbotContactPayload,
    CallbotListPayload,
    CallPayload,
    InvalidJob,
    NumberCheckPayload,
    get_kind,
    validate_payload,
)
from nxjobs.notify import valid_url
from nxjobs.records import TERMINAL_STATES, JobRecord, JobState, utc_now_iso
from nxjobs.redact import flower_repr, redact
from nxjobs.redis_conn import RedisTarget, RedisUnavailable, describe
from nxjobs.store import CallbackPage, RecordStore
from nxjobs.suppression import AddResult, SuppressionList, SuppressionUnavailable
from nxjobs.wire import call_list_item, contact_job_order_id

log = logging.getLogger("nxjobs.producer")

__all__ = [
    "Producer",
    "InvalidJob",
    "CampaignRefused",
    "RedisUnavailable",
    "EnqueueError",
    "JobRecord",
    "JobState",
    "Cancelled",
]


# The calling-hours settings' shapes, as config.settings spells them (its meaning:
# calling_hours.Policy.build).
WINDOW_PATTERN = r"^[0-9]{2}:[0-9]{2}-[0-9]{2}:[0-9]{2}$"
DAYS_PATTERN = r"^[A-Za-z]{3}(,[A-Za-z]{3})*$"
COUNTRIES_PATTERN = r"^([A-Za-z]{2}(,[A-Za-z]{2})*)?$"


class ProducerCoalesceSettings(BaseModel):
    """The coalesce settings a producer needs: when a batch is full, how long it lingers.
    Same variables, defaults and bounds as the service's (tests/unit/test_settings_shared.py)."""

    linger_s: float = Field(default=0.5, gt=0, le=60)
    max_numbers: int = Field(default=coalesce.BIG_BATCH_NUMBERS, ge=1, le=NUMBER_CHECK_MAX_PHONES)
    max_contacts: int = Field(default=CALLBOT_CHUNK_SIZE, ge=1, le=1000)


class ProducerCallingHoursSettings(BaseModel):
    """The calling-hours rule, which a producer checks a job's own `calling_hours` against. Same
    variables, defaults and bounds as the service's (tests/unit/test_settings_shared.py)."""

    enabled: bool = True
    window: str = Field(default=calling_hours.DEFAULT_WINDOW, pattern=WINDOW_PATTERN)
    days: str = Field(default=calling_hours.DEFAULT_DAYS, pattern=DAYS_PATTERN)
    by_country: dict[str, dict[str, str]] = Field(default_factory=dict)
    holidays: str = Field(default="", pattern=COUNTRIES_PATTERN)
    allow_wider: bool = False


class ProducerSuppressionSettings(BaseModel):
    """The do-not-call list's key (nxjobs.suppression); same variable as the service's."""

    secret: SecretStr | None = Field(default=None, min_length=16)


# The settings-files directory, as config.settings finds it (tests/unit/test_settings_shared.py
# keeps the two equal): a Secret mounted as files, one per variable.
SECRETS_DIR_VARIABLE = "NXJOBS_SECRETS_DIR"
DEFAULT_SECRETS_DIR = Path("/run/secrets/nxjobs")


def settings_files_dir(environ: Mapping[str, str] | None = None) -> Path | None:
    """NXJOBS_SECRETS_DIR (which must exist), else DEFAULT_SECRETS_DIR if it exists, else None."""
    env = os.environ if environ is None else environ
    named = (env.get(SECRETS_DIR_VARIABLE) or "").strip()
    if named:
        if not Path(named).is_dir():
            raise RuntimeError(f"{SECRETS_DIR_VARIABLE}={named} is not a directory")
        return Path(named)
    return DEFAULT_SECRETS_DIR if DEFAULT_SECRETS_DIR.is_dir() else None


class ProducerRedisTlsSettings(BaseModel):
    """NXJOBS_REDIS_TLS__*: same fields and defaults as the service's (config.settings)."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    check_hostname: bool = True


class _SettingsFiles(EnvSettingsSource):
    """Settings from files named like their variables, `__` nesting and all (the do-not-call
    list's NXJOBS_SUPPRESSION__SECRET): pydantic-settings' environment source reading the
    directory; the service's twin is config.settings.SecretFilesSource (the same rule, and
    tests/unit/test_settings_shared.py)."""

    def __init__(self, settings_cls: type[BaseSettings], directory: Path | None) -> None:
        self.directory = directory
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        if self.directory is None:
            return {}
        values: dict[str, str | None] = {}
        # Kubernetes mounts each key as a symlink into a hidden `..data` directory: skip dot files.
        for path in sorted(self.directory.iterdir()):
            name = path.name
            if name.startswith(".") or not name.upper().startswith("NXJOBS_"):
                continue
            if path.is_file():
                value = path.read_text(encoding="utf-8").strip()
                if value or not self.env_ignore_empty:
                    values[name.lower()] = value
        return values


class ProducerSettings(BaseSettings):
    """The settings a producer needs; same names as the service's config.settings. Each
    top-level one can also be a file named like its variable in the settings-files directory
    (`NXJOBS_REDIS_URL`), below the environment and `.env`."""

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
    calling_hours: ProducerCallingHoursSettings = ProducerCallingHoursSettings()
    suppression: ProducerSuppressionSettings = ProducerSuppressionSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        files = _SettingsFiles(settings_cls, settings_files_dir())
        return (init_settings, env_settings, dotenv_settings, files)

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
        # Bad calling-hours settings fail here, naming the variable (CallingHoursError).
        self.calling_hours = calling_hours.Policy.from_settings(settings.calling_hours)
        secret = settings.suppression.secret
        self.suppression = SuppressionList(
            self.redis, secret.get_secret_value() if secret else None
        )
        self.schedule = schedule.Schedule(self.redis, self.store.ttl_s)
        self._canceller = cancelling.Canceller(self.redis, self.store.ttl_s)
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

    def enqueue(
        self,
        kind: str,
        payload: dict[str, Any],
        *,
        batch: bool = True,
        at: datetime | None = None,
        delay_s: float | None = None,
        notify_url: str | None = None,
    ) -> str:
        """Validate `payload` for `kind`, store its record, enqueue it; return the job id.
        `notify_url`: an http(s) URL the job's end is POSTed to (docs/notifications.md), besides
        NXJOBS_NOTIFY__URL.

        With `at` (an aware datetime) or `delay_s` (seconds), the job is `scheduled` until then
        (nxjobs.schedule): it waits in Redis, and a worker publishes it when due. A coalescible
        job scheduled so is sent as a single job (its own request). An `at` already past runs at
        once, and its record says so (`schedule_note`); a naive datetime is refused.

        A one-number Number Check (no batchNo of its own), or a Callbot contact, is sent together
        with others (of its check level, of its task) in one provider request (nxjobs.coalesce),
        unless `batch=False`: then it is sent on its own at once, for a latency-sensitive job."""
        job_kind = get_kind(kind)
        timing = schedule.when(at, delay_s)
        model = validate_payload(kind, payload)
        _check_notify_url(notify_url)
        self._check_order_ids([model])
        self._check_calling_hours([model])
        [(model, left_out)] = self._screen([model])
        past = _past_fields(timing)
        if timing.due is not None and isinstance(model, CallbotListPayload):
            # The provider starts it at its time (startupType 2); we create it a lead before.
            model = model.model_copy(update={"start_at": int(timing.due.timestamp())})
            wake = timing.due - timedelta(seconds=schedule.PROVIDER_START_LEAD_S)
            if wake > datetime.now(UTC):
                return self._enqueue_scheduled(
                    kind, model, wake, run_at=timing.due, note=_PROVIDER_STARTS, left_out=left_out
                )
            past = {"run_at": schedule.iso(timing.due), "schedule_note": _PROVIDER_STARTS}
        elif (deferred := self._outside_calling_hours(model, timing)) is not None:
            opening, note = deferred
            return self._enqueue_scheduled(
                kind, model, opening, note=note, left_out=left_out, notify_url=notify_url
            )
        elif timing.due is not None:
            return self._enqueue_scheduled(
                kind, model, timing.due, left_out=left_out, notify_url=notify_url
            )
        if batch and _coalescible(model):
            job_id = self._enqueue_coalesced([model], notify_url)[0]
            if past:
                self._note(job_id, past)
            return job_id
        body = model.model_dump(mode="json", exclude_none=True)
        job_id = uuid.uuid4().hex
        kwargs = {"job_id": job_id, "payload": body}
        try:
            # With the ids its callbacks will carry, so one that beats the worker still finds the
            # job.
            self.store.create(
                job_id,
                kind,
                _shown(body, left_out),
                expect=correlate.on_enqueue(kind, job_id, model),
                payload=body,
                extra=past,
                notify_url=notify_url,
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

    def _enqueue_scheduled(
        self,
        kind: str,
        model: Any,
        due: datetime,
        run_at: datetime | None = None,
        note: str | None = None,
        left_out: int = 0,
        notify_url: str | None = None,
    ) -> str:
        """The record (`scheduled`, with run_at), its schedule entry (due at `due`) and its stored
        message, in one transaction: nothing is sent now (nxjobs.schedule). `run_at`: when the
        job runs, if not when it is due (a callbot list the provider starts)."""
        job_kind = get_kind(kind)
        body = model.model_dump(mode="json", exclude_none=True)
        job_id = uuid.uuid4().hex
        keep_s = self.schedule.keep_s(due)
        msg = schedule.message(
            kind,
            job_kind.task_name,
            job_kind.queue,
            PRIORITY_NEW,
            {"job_id": job_id, "payload": body},
        )
        try:
            pipe = self.redis.pipeline(transaction=True)
            self.store.create(
                job_id,
                kind,
                _shown(body, left_out),
                expect=correlate.on_enqueue(kind, job_id, model),
                pipe=pipe,
                payload=body,
                state=JobState.SCHEDULED,
                extra={
                    "run_at": schedule.iso(run_at or due),
                    **({"schedule_note": note} if note else {}),
                },
                ttl_s=keep_s,
                index_score=int(due.timestamp()),
                notify_url=notify_url,
            )
            self.schedule.add(pipe, job_id, due, msg)
            pipe.execute()
        except redis.RedisError as exc:
            raise RedisUnavailable(
                f"cannot reach Redis at {describe(self.redis_url)}: {exc}"
            ) from None
        return job_id

    def _note(self, job_id: str, fields: dict[str, str]) -> None:
        """Add what the schedule says to a record just created (a past `at`)."""
        client: Any = self.redis
        try:
            client.hset(keys.job(job_id), mapping=fields)
        except redis.RedisError:
            pass  # only a note; the job itself is enqueued

    def enqueue_many(
        self,
        kind: str,
        payloads: Iterable[dict[str, Any]],
        *,
        batch: bool = True,
        notify_url: str | None = None,
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
        _check_notify_url(notify_url)
        self._check_order_ids(models)
        self._check_calling_hours(models)
        screened = self._screen(models)
        models = [m for m, _ in screened]
        coalescible = [m for m in models if _coalescible(m)] if batch else []
        if models and len(coalescible) == len(models):
            return self._enqueue_coalesced(coalescible, notify_url)
        jobs = [
            (job_id, model, model.model_dump(mode="json", exclude_none=True))
            for job_id, model in zip(new_job_ids(len(models)), models, strict=True)
        ]
        left_outs = [n for _, n in screened]
        try:
            pipe = self.redis.pipeline(transaction=True)
            for (job_id, model, body), left_out in zip(jobs, left_outs, strict=True):
                self.store.create(
                    job_id,
                    kind,
                    _shown(body, left_out),
                    expect=correlate.on_enqueue(kind, job_id, model),
                    pipe=pipe,
                    payload=body,
                    notify_url=notify_url,
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
        self,
        models: list[NumberCheckPayload | CallbotContactPayload],
        notify_url: str | None = None,
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
                flushes = self.coalesce.enqueue(group, jobs, utc_now_iso(), notify_url)
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

    def _check_calling_hours(self, models: list[Any]) -> None:
        """A call's own window must lie inside its number's rule (unless the operator allows
        wider); a call to a number with no known time zone is refused while calling hours are on
        (fail closed: its local time is unknown)."""
        if self.calling_hours is None:
            return
        prefix = "" if len(models) == 1 else "{}."
        for i, m in enumerate(models):
            if isinstance(m, CallbotListPayload):
                self._check_list_zones(m, prefix.format(i))
                continue
            if not isinstance(m, CallPayload):
                continue
            try:
                if m.calling_hours is not None:
                    self.calling_hours.narrow(m.phone, m.calling_hours)
                else:
                    self.calling_hours.rule_for(m.phone)
            except calling_hours.CallingHoursError as exc:
                raise InvalidJob(prefix.format(i) + exc.field, exc.message) from None
            except calling_hours.NoTimeZone as exc:
                raise InvalidJob(
                    prefix.format(i) + "phone", f"{exc}: its calling hours cannot be checked"
                ) from None

    def _check_list_zones(self, model: CallbotListPayload, prefix: str) -> None:
        """A list's own window must lie inside every contact's rule (unless wider is allowed), and
        every contact must have dialling hours a provider task can be given (nxjobs.callbot_zones:
        a known zone, an hour open in all its zones)."""
        assert self.calling_hours is not None
        try:
            if model.calling_hours is not None:
                for c in model.contacts:
                    self.calling_hours.narrow(c.user_phone, model.calling_hours)
            callbot_zones.plan_zones(model, self.calling_hours)
        except calling_hours.CallingHoursError as exc:
            raise InvalidJob(prefix + exc.field, exc.message) from None
        except callbot_zones.ZoneError as exc:
            raise InvalidJob(prefix + exc.field, exc.message) from None

    def _outside_calling_hours(
        self, model: Any, timing: schedule.When
    ) -> tuple[datetime, str] | None:
        """A call whose window is closed when it would run (now, or at its `at`) is deferred:
        (the next opening, the record's schedule_note). One with no opening at all is refused
        (InvalidJob naming its window, or its phone): it could never be called."""
        if self.calling_hours is None or not isinstance(model, CallPayload):
            return None
        deferral = self.calling_hours.defer(
            model.phone, model.calling_hours, timing.due or datetime.now(UTC)
        )
        if deferral is None:
            return None
        if deferral.until is None:
            raise InvalidJob(
                "calling_hours" if model.calling_hours else "phone",
                f"{deferral.reason}: no time inside the window in every zone within "
                f"{calling_hours.SEARCH_DAYS} days",
            )
        note = deferral.note
        if timing.asked is not None:
            asked = schedule.iso(timing.asked)
            note += (
                f"; the run_at asked for, {asked}, is outside it"
                if timing.due is not None
                else f"; the run_at asked for, {asked}, was already past"
            )
        return deferral.until, note

    def _screen(self, models: list[Any]) -> list[tuple[Any, int]]:
        """The do-not-call list at enqueue: a call or a single contact to a listed number is
        refused (InvalidJob, `suppressed`, nothing written); a list's listed contacts are left
        out and counted. Returns each model (its contacts screened) with how many were left
        out. Number checks, OTA init and WhatsApp queries call nobody: not screened."""
        phones: list[tuple[int, str]] = []
        for i, m in enumerate(models):
            if isinstance(m, CallPayload):
                phones.append((i, m.phone))
            elif isinstance(m, CallbotContactPayload):
                phones.append((i, m.contact.user_phone))
            elif isinstance(m, CallbotListPayload):
                phones.extend((i, c.user_phone) for c in m.contacts)
        if not phones:
            return [(m, 0) for m in models]
        try:
            listed = self.suppression.contains_many([p for _, p in phones])
        except SuppressionUnavailable as exc:
            raise InvalidJob("suppression", str(exc)) from None
        except redis.RedisError as exc:
            raise RedisUnavailable(
                f"cannot reach Redis at {describe(self.redis_url)}: {exc}"
            ) from None
        flags = iter(listed)
        out: list[tuple[Any, int]] = []
        prefix = "" if len(models) == 1 else "{}."
        for i, m in enumerate(models):
            if isinstance(m, CallbotListPayload):
                keep = [c for c in m.contacts if not next(flags)]
                left_out = len(m.contacts) - len(keep)
                if not keep:
                    raise InvalidJob(
                        prefix.format(i) + "contacts",
                        f"suppressed: all {left_out} contacts are on the do-not-call list",
                    )
                out.append((m.model_copy(update={"contacts": keep}) if left_out else m, left_out))
                continue
            if isinstance(m, CallPayload | CallbotContactPayload) and next(flags):
                field = "phone" if isinstance(m, CallPayload) else "contact.user_phone"
                raise InvalidJob(
                    prefix.format(i) + field, "suppressed: the number is on the do-not-call list"
                )
            out.append((m, 0))
        return out

    def _forget(self, job_id: str) -> None:
        try:
            self.store.delete(job_id)
        except redis.RedisError:
            pass  # Redis is gone: the record is as unreachable as the message would be

    def call(
        self,
        *,
        phone: str,
        order_id: str | None = None,
        show_phone: str | None = None,
        calling_hours: str | None = None,
        at: datetime | None = None,
        delay_s: float | None = None,
        notify_url: str | None = None,
    ) -> str:
        """`calling_hours`: "HH:MM-HH:MM" in the callee's local time, narrowing the configured
        rule's window (docs/calling-hours.md). A call whose window is closed when it would run
        (now, or at `at`) is `scheduled` for the next opening, its `schedule_note` saying why."""
        return self.enqueue(
            "call",
            _drop_none(
                phone=phone,
                order_id=order_id,
                show_phone=show_phone,
                calling_hours=calling_hours,
            ),
            at=at,
            delay_s=delay_s,
            notify_url=notify_url,
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
        at: datetime | None = None,
        delay_s: float | None = None,
        notify_url: str | None = None,
        calling_hours: str | None = None,
    ) -> str:
        """`calling_hours`: "HH:MM-HH:MM" in each contact's local time, narrowing the configured
        rule its zone group's task dials by (docs/calling-hours.md, "Callbot lists")."""
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
                calling_hours=calling_hours,
            ),
            at=at,
            delay_s=delay_s,
            notify_url=notify_url,
        )

    def callbot_contact(
        self,
        *,
        user_task_id: str,
        contact: dict[str, Any],
        batch: bool = True,
        at: datetime | None = None,
        delay_s: float | None = None,
        notify_url: str | None = None,
    ) -> str:
        """Add one contact to the existing Callbot task `user_task_id` (e.g. a callbot-list job's
        id). Shares an addBatchCall with other contacts for that task (nxjobs.coalesce), unless
        `batch=False`: then it gets a request of its own, at once."""
        return self.enqueue(
            "callbot-contact",
            {"user_task_id": user_task_id, "contact": contact},
            batch=batch,
            at=at,
            delay_s=delay_s,
            notify_url=notify_url,
        )

    def number_check(
        self,
        *,
        phones: list[str],
        check_level: int = 1,
        batch_no: str | None = None,
        batch: bool = True,
        at: datetime | None = None,
        delay_s: float | None = None,
        notify_url: str | None = None,
    ) -> str:
        """`batch=False`: a one-number check gets a request of its own instead of sharing one."""
        return self.enqueue(
            "number-check",
            _drop_none(phones=phones, check_level=check_level, batch_no=batch_no),
            batch=batch,
            at=at,
            delay_s=delay_s,
            notify_url=notify_url,
        )

    def ota_init(
        self,
        *,
        phone: str,
        user_ip: str,
        at: datetime | None = None,
        delay_s: float | None = None,
        notify_url: str | None = None,
    ) -> str:
        return self.enqueue(
            "ota-init",
            {"phone": phone, "user_ip": user_ip},
            at=at,
            delay_s=delay_s,
            notify_url=notify_url,
        )

    def wa_calling(
        self,
        *,
        business_phone: str,
        at: datetime | None = None,
        delay_s: float | None = None,
        notify_url: str | None = None,
    ) -> str:
        return self.enqueue(
            "wa-calling",
            {"business_phone": business_phone},
            at=at,
            delay_s=delay_s,
            notify_url=notify_url,
        )

    # ---- cancel -----------------------------------------------------------

    def cancel(self, job_id: str, *, timeout_s: float = 60.0) -> Cancelled:
        """Cancel a job that has not been sent (nxjobs.cancel): scheduled, queued, waiting for its
        slot, retrying, or a coalesced member whose batch is not built. Atomic with a worker's
        claim: exactly one of them wins, and the record says which. A submitted callbot list is
        completed at the provider (waiting up to `timeout_s` for its answer). Anything else is
        refused with its reason and nothing changes. Raises InvalidJob for an id that cannot be
        a job's."""
        if (
            not isinstance(job_id, str)
            or not job_id
            or len(job_id) > 128
            or not job_id.isprintable()
        ):
            raise InvalidJob("job_id", f"not a job id: {job_id!r}")
        if any(c.isspace() for c in job_id):
            raise InvalidJob("job_id", f"not a job id: {job_id!r}")
        try:
            status, state, why = self._canceller.try_cancel(job_id)
            if status == 1:
                return Cancelled(job_id, True, state, f"cancelled (was {state})")
            if status == -1:
                return Cancelled(job_id, False, None, cancelling.NOT_FOUND)
            if state == JobState.SUBMITTED.value and (
                self.redis.hget(keys.job(job_id), "kind") == "callbot-list"
            ):
                return self._cancel_submitted_callbot_list(job_id, timeout_s)
        except redis.RedisError as exc:
            raise RedisUnavailable(
                f"cannot reach Redis at {describe(self.redis_url)}: {exc}"
            ) from None
        return Cancelled(job_id, False, state, cancelling.refusal(state, why))

    def _cancel_submitted_callbot_list(self, job_id: str, timeout_s: float) -> Cancelled:
        """The one place a submitted callbot list's cancel is decided: campaign control completes
        its task at the provider, undialled numbers deleted, and the job goes submitted ->
        cancelled keeping what was dialled (docs/campaigns.md). Waits up to `timeout_s` for the
        provider's answer."""
        submitted = JobState.SUBMITTED.value
        try:
            op_id = self.callbot_cancel_submitted(job_id)
        except CampaignRefused as exc:
            reason = f"{cancelling.CALLBOT_LIST_SUBMITTED}: {exc}"
            return Cancelled(job_id, False, submitted, reason)
        entry = self.wait_campaign(job_id, op_id, timeout_s=timeout_s)
        if entry is None:
            return Cancelled(
                job_id,
                False,
                submitted,
                f"{cancelling.CALLBOT_LIST_SUBMITTED}: asked (operation {op_id}), no answer within "
                f"{timeout_s:g} s; `nxjobs status {job_id}` shows the outcome",
            )
        if entry.get("outcome") == "done":
            return Cancelled(
                job_id, True, submitted, "cancelled (was submitted): task completed at the provider"
            )
        return Cancelled(
            job_id,
            False,
            submitted,
            f"{cancelling.CALLBOT_LIST_SUBMITTED}: the provider did not complete it: "
            f"{campaign.describe(entry)}",
        )

    # ---- do-not-call list (nxjobs.suppression) -----------------------------

    def suppress(self, phones: Iterable[str]) -> AddResult:
        """Add numbers to the do-not-call list: (added, already listed, invalid)."""
        return self.suppression.add(phones)

    def unsuppress(self, phones: Iterable[str]) -> int:
        """Remove numbers from the list; returns how many were listed."""
        return self.suppression.remove(phones).added

    def is_suppressed(self, phone: str) -> bool:
        self.suppression.digest(phone)  # no secret: SuppressionUnavailable, even for an empty list
        return self.suppression.contains(phone)

    def suppressed_count(self) -> int:
        return self.suppression.count()

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

    # ---- campaign control of a callbot list (nxjobs.campaign, docs/campaigns.md) ----------

    def callbot_pause(self, job_id: str) -> str:
        """Pause the task of submitted callbot list `job_id`: it stops dialling. Returns the
        operation id to wait on (`wait_campaign`); raises CampaignRefused naming why not, with
        nothing enqueued. So do the other callbot_* operations."""
        return self._control(job_id, "pause", {})

    def callbot_resume(self, job_id: str) -> str:
        """Start the paused task of `job_id` again."""
        return self._control(job_id, "resume", {})

    def callbot_complete(self, job_id: str, delete_undialled: bool = False) -> str:
        """End the task of `job_id` at the provider; `delete_undialled`: drop the numbers not yet
        dialled. The job completes when the task's callback says so, as every list does."""
        return self._control(job_id, "complete", {"delete_undialled": delete_undialled})

    def callbot_stop_contacts(self, job_id: str, order_ids: Iterable[str]) -> str:
        """Stop these orders (the list's orderIDs) for good: they are not dialled again."""
        return self._control(job_id, "stop-contacts", {"order_ids": list(order_ids)})

    def callbot_update(self, job_id: str, settings: dict[str, Any]) -> str:
        """Change taskCreateSetting fields of the task of `job_id`, only while it is paused."""
        return self._control(job_id, "update", {"settings": settings})

    def callbot_cancel_submitted(self, job_id: str) -> str:
        """Cancel a submitted callbot list: its task is completed at the provider with its
        undialled numbers deleted, and the job ends `cancelled` keeping what was dialled."""
        return self._control(job_id, "cancel", {})

    def wait_campaign(
        self, job_id: str, op_id: str, *, timeout_s: float = 60.0, poll_s: float = 0.2
    ) -> dict[str, Any] | None:
        """Poll until operation `op_id` of `job_id` is recorded; return its entry (op, at,
        outcome: done, refused or failed, detail), or None at `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            entry = campaign.find_operation(self.store.get(job_id), op_id)
            if entry is not None or time.monotonic() >= deadline:
                return entry
            time.sleep(poll_s)

    def _control(self, job_id: str, op: str, args: dict[str, Any]) -> str:
        try:
            record = self.store.get(job_id)
            plan = self.store.zone_plan(job_id)  # a list split by time zone: its tasks' contacts
        except redis.RedisError as exc:
            raise RedisUnavailable(
                f"cannot reach Redis at {describe(self.redis_url)}: {exc}"
            ) from None
        checked = campaign.check(record, job_id, op, args, plan)
        op_id = uuid.uuid4().hex
        kwargs = {"job_id": job_id, "op_id": op_id, "op": op, "args": checked}
        try:
            self._celery.send_task(
                campaign.CONTROL_TASK,
                kwargs=kwargs,
                task_id=op_id,
                queue=campaign.CONTROL_QUEUE,
                routing_key=campaign.CONTROL_QUEUE,
                priority=PRIORITY_NEW,
                kwargsrepr=repr(redact(kwargs)),
                argsrepr="()",
            )
        except Exception as exc:
            raise EnqueueError(
                f"could not enqueue {op} of job {job_id} on {describe(self.redis_url)}: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        return op_id

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
        """Poll until every job reached `until`, failed or was cancelled, or `timeout_s` passed;
        return the last records."""
        target = JobState(until)
        ids = list(job_ids)
        deadline = time.monotonic() + timeout_s
        while True:
            records = self.store.get_many(ids)
            done = all(
                r is not None and (r.reached(target) or r.state in TERMINAL_STATES)
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


def _shown(body: dict[str, Any], left_out: int) -> dict[str, Any]:
    """The record's input: phones masked, and how many contacts the do-not-call list left out."""
    shown = redact(body)
    if left_out:
        shown["suppressed"] = left_out
    return shown


_PROVIDER_STARTS = "created at the provider with its scheduled start (startupAt = run_at)"


def _past_fields(timing: schedule.When) -> dict[str, str] | None:
    """The record fields of an `at` that was already past (it runs now)."""
    if timing.note is None or timing.asked is None:
        return None
    return {"run_at": schedule.iso(timing.asked), "schedule_note": timing.note}


# A notify_url longer than this is refused (it is stored in every record that has one).
NOTIFY_URL_MAX = 2048


def _check_notify_url(url: str | None) -> None:
    """Raise InvalidJob("notify_url") unless `url` is None or an absolute http(s) URL."""
    if url is None:
        return
    if not isinstance(url, str) or len(url) > NOTIFY_URL_MAX or not valid_url(url):
        raise InvalidJob("notify_url", "must be an http or https URL (at most 2048 characters)")


def _drop_none(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}
