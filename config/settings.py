"""All service settings, read from `NXJOBS_*` environment variables or `.env`.

Nested groups use `__`: `NXJOBS_API2__ACCESS_KEY`. Credentials have no default;
`Settings.require(family)` turns a missing one into one clear error naming the
variable, checked when a worker starts rather than mid-job.

Any setting can also come from a file named like its variable in the secrets directory
(`NXJOBS_SECRETS_DIR`, or `/run/secrets/nxjobs` when that exists): a Kubernetes Secret or a
Docker secret mounted as files, so credentials never sit in the process's environment.
An environment variable (or `.env`) of the same name wins over the file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

ENV_PREFIX = "NXJOBS_"
# Where the settings files are: this variable names the directory; unset, the default is used
# when it exists (a container without the mount simply has no files).
SECRETS_DIR_VARIABLE = f"{ENV_PREFIX}SECRETS_DIR"
DEFAULT_SECRETS_DIR = Path("/run/secrets/nxjobs")


class MissingSetting(RuntimeError):
    """A credential the job needs is not configured."""

    def __init__(self, variables: list[str]):
        self.variables = variables
        super().__init__("missing required setting(s): " + ", ".join(variables))


# Which credentials each API family (= queue) needs, as (group, field).
REQUIRED_CREDENTIALS = {
    "api2": [("api2", "access_key"), ("api2", "access_secret"), ("api2", "appkey")],
    "callbot": [("callbot", "uuid"), ("callbot", "secret_key")],
    "agent": [("agent", "appkey"), ("agent", "secretkey"), ("agent", "username")],
    # The webhook workers sign every delivery: a per-job notify_url needs the secret as well.
    "notify": [("notify", "secret")],
}


class Api2Settings(BaseModel):
    """api2 open platform: Number Check, OTA, WhatsApp (docs/provider.md §2)."""

    base_url: str = "https://api2.nxcloud.com"
    access_key: str | None = None
    access_secret: SecretStr | None = None
    appkey: str | None = None
    algorithm: Literal["md5", "sha256"] = "md5"
    # Quota per accessKey shared by every worker (docs/provider.md §8, our choice); 0 = unlimited.
    rate_per_s: float = Field(default=10.0, ge=0)
    # Number Check batches of more than 2 000 numbers have their own, lower quota.
    big_batch_rate_per_s: float = Field(default=1.0, ge=0)
    burst: int = Field(default=1, ge=1)


class CallbotSettings(BaseModel):
    """Callbot v3 (docs/provider.md §3, §6)."""

    base_url: str = "https://nxbot.nxcloud.com"
    uuid: str | None = None
    secret_key: SecretStr | None = None
    algorithm: Literal["md5", "sha256"] = "md5"
    strategy_name: str = "Default Strategy"
    # Quota per uuid shared by every worker (docs/provider.md §8, our choice); 0 = unlimited.
    rate_per_s: float = Field(default=10.0, ge=0)
    burst: int = Field(default=1, ge=1)


class AgentSettings(BaseModel):
    """Legacy Agent API: token + makecall on as01, CDR lookups on api.nxcloud.com
    (docs/provider.md §7)."""

    base_url: str = "https://as01.nxcloud.com"
    cdr_base_url: str = "https://api.nxcloud.com"
    appkey: str | None = None
    secretkey: SecretStr | None = None
    username: str | None = None
    # Caller id shown to the callee; None lets NXCloud use its default ("nxcloud").
    show_phone: str | None = None
    # Renew when less than this share of the token's lifetime is left (docs/provider.md §7.1, our
    # choice).
    token_renew_fraction: float = Field(default=0.2, gt=0, lt=1)
    # makecall quota per phone account (username), and CDR lookups per appkey (docs/provider.md §8).
    rate_per_s: float = Field(default=1.0, ge=0)
    burst: int = Field(default=1, ge=1)
    cdr_rate_per_s: float = Field(default=1.0, ge=0)


class RateLimitSettings(BaseModel):
    """How the shared limiter spends the quotas above."""

    # Space slots this fraction below each quota. The send log is what keeps a
    # provider window from ever holding quota + 1 requests; the headroom only
    # makes it rarely have to hold a sender back.
    headroom: float = Field(default=0.01, ge=0, lt=0.5)
    # Reserve slots at most this far ahead; jobs further back re-check later.
    horizon_s: float = Field(default=30.0, gt=0)
    # Shared cooldown after a "too frequent" answer. Our own limiter already
    # spaces requests, so an isolated one is jitter and costs little; repeats
    # within `cooldown_repeat_s` double it up to the cap (a provider stricter
    # than the configured quota, or another client on the same credential).
    cooldown_base_s: float = Field(default=0.25, gt=0)
    cooldown_cap_s: float = Field(default=60.0, gt=0)
    cooldown_repeat_s: float = Field(default=5.0, gt=0)
    # A job answered "too frequent" more often than this fails (code 2206 / retCode 7).
    max_throttles: int = Field(default=50, ge=1)
    # A job further back than the horizon re-checks at most this long later, so the
    # countdown message it sits in stays far inside the broker's visibility timeout.
    max_wait_s: float = Field(default=600.0, gt=0)


class CallbacksSettings(BaseModel):
    """Where NXCloud calls us back, how the receiver checks callbacks, and when a
    job whose callbacks are late is reconciled by the query APIs (seconds throughout)."""

    # Base URL NXCloud can reach; the callback URLs sent with each request are built from it.
    public_url: str | None = None
    # Unguessable per-deployment secret in the URL of the unsigned callbacks (Number Check DR,
    # Agent CDR), docs/provider.md §4. Required when public_url is set; also needed by the receiver.
    token: SecretStr | None = None
    # Bigger bodies are refused with 413 before they are read to the end.
    max_body_bytes: int = Field(default=64 * 1024, gt=0)
    # Signed (Callbot) callbacks: |now - createTs| must be within this (docs/provider.md §4, our
    # choice).
    signature_tolerance_s: int = Field(default=300, gt=0)
    # A submitted job still missing callbacks this long after submission is looked up with the
    # query APIs (Number Check query, Callbot listTask/listOrderDetail, CDR by orderid).
    number_check_deadline_s: float = Field(default=600, gt=0)
    call_deadline_s: float = Field(default=1800, gt=0)
    callbot_deadline_s: float = Field(default=3600, gt=0)
    # While the provider says "not finished yet", look again this often.
    recheck_s: float = Field(default=300, gt=0)
    # ... and give up (job failed, code callbacks_timeout) this long after submission.
    number_check_give_up_s: float = Field(default=7200, gt=0)
    call_give_up_s: float = Field(default=7200, gt=0)
    callbot_give_up_s: float = Field(default=3 * 86400, gt=0)
    # A makecall whose answer was lost (error "ambiguous") is looked up by orderid after this
    # long: found = the call happened (job completed); not found = it is sent again, once.
    ambiguous_lookup_after_s: float = Field(default=300, gt=0)
    # How often Celery beat runs the reconciliation, and how many due jobs one run takes per
    # family. A run asks the provider once per requestId / 20 orderids / task (docs/callbacks.md
    # § Reconciliation capacity), and starts no new question past reconcile_max_requests requests
    # or reconcile_max_run_s seconds; what is left waits for the next run.
    reconcile_interval_s: float = Field(default=30, gt=0)
    reconcile_batch: int = Field(default=5000, ge=1, le=100_000)
    reconcile_max_requests: int = Field(default=200, ge=1)
    # Below the task's 300 s time limit, with room for the question a run finishes past it.
    reconcile_max_run_s: float = Field(default=20, gt=0, le=120)
    # Callbacks that match no job are kept for operators, newest first, at most this many,
    # and at most this many bytes in all (each entry's body is cut to unmatched_body_bytes).
    unmatched_max: int = Field(default=10_000, ge=1)
    unmatched_max_bytes: int = Field(default=8 * 1024 * 1024, ge=4096)
    unmatched_body_bytes: int = Field(default=2048, ge=64, le=65536)
    # The receiver's HTTP limits against any client (nxjobs/callbacks/http.py). Everything of a
    # request but its body (request line, headers, chunk framing and extensions, trailers).
    max_head_bytes: int = Field(default=16 * 1024, ge=1024, le=1024 * 1024)
    # Open connections per receiver process; at the cap, idle then slow ones are closed first.
    # Kept below the process's descriptor limit at startup.
    max_connections: int = Field(default=512, ge=2)
    # Answers a client has not read, per connection, before its requests stop being read.
    write_buffer_bytes: int = Field(default=64 * 1024, ge=4096)
    keep_alive_s: float = Field(default=15.0, gt=0)
    # A request's head must arrive within head_timeout_s of its first byte, all of it within
    # request_timeout_s.
    head_timeout_s: float = Field(default=10.0, gt=0)
    request_timeout_s: float = Field(default=30.0, gt=0)
    # A connection is closed (after its answer) past this many requests or this age.
    max_requests_per_connection: int = Field(default=10_000, ge=1)
    max_connection_age_s: float = Field(default=600.0, gt=0)

    @model_validator(mode="after")
    def _token_with_public_url(self) -> CallbacksSettings:
        token = self.token.get_secret_value() if self.token else ""
        # Example values the repo has shipped (.env.example, the old compose default) and the usual
        # stand-ins: a receiver started with one has a callback URL anyone could guess.
        placeholders = {
            "change-me-to-a-long-random-token",
            "sandbox-callbacks-token-not-a-secret",
            "changeme",
            "change-me",
            "change_me",
        }
        folded = token.strip().lower()
        if token and (
            folded in placeholders
            or folded.startswith(("change-me", "changeme", "change_me", "replace-me", "replaceme"))
        ):
            raise ValueError(
                "NXJOBS_CALLBACKS__TOKEN is a placeholder from the examples: set a random one "
                '(python -c "import secrets; print(secrets.token_urlsafe(32))")'
            )
        if token and len(token) < 16:
            raise ValueError(
                "NXJOBS_CALLBACKS__TOKEN must be at least 16 characters (use a random one)"
            )
        if self.public_url and not token:
            raise ValueError(
                "NXJOBS_CALLBACKS__TOKEN is required when NXJOBS_CALLBACKS__PUBLIC_URL is set"
            )
        return self

    def deadlines_s(self) -> dict[str, float]:
        """Deadline per job kind that waits for callbacks (reconciliation starts after it)."""
        return {
            "number-check": self.number_check_deadline_s,
            "call": self.call_deadline_s,
            "callbot-list": self.callbot_deadline_s,
            "callbot-contact": self.callbot_deadline_s,
        }

    def give_up_s(self) -> dict[str, float]:
        return {
            "number-check": self.number_check_give_up_s,
            "call": self.call_give_up_s,
            "callbot-list": self.callbot_give_up_s,
            "callbot-contact": self.callbot_give_up_s,
        }


class HttpSettings(BaseModel):
    connect_timeout_s: float = Field(default=3.05, gt=0)
    read_timeout_s: float = Field(default=15.0, gt=0)


class DeadLetterSettings(BaseModel):
    """Jobs that failed for good (retries exhausted or a permanent error), kept for
    `nxjobs dead`."""

    # Oldest entries are dropped beyond this many, and once older than max_age_s.
    max_entries: int = Field(default=10_000, ge=1)
    max_age_s: int = Field(default=7 * 24 * 3600, gt=0)


class RecoverSettings(BaseModel):
    """The lost-message sweeper (nxjobs/recover.py), run by beat per queue family."""

    # How often it looks; a job whose message is in no queue and not unacked, with its
    # record unchanged, for confirm_s twice in a row, is re-published. Longer than the
    # time a popped message can sit in a live worker's socket (kombu drops a BRPOP
    # connection silent for ~51 s).
    interval_s: float = Field(default=60.0, gt=0)
    confirm_s: float = Field(default=120.0, gt=0)


class RetentionSettings(BaseModel):
    """How long a finished job's record (and its index entry) is kept, by the state it ended in;
    a job still scheduled, queued, running, retrying or submitted keeps NXJOBS_RECORD_TTL_S."""

    completed_s: int = Field(default=86400, gt=0)
    failed_s: int = Field(default=7 * 24 * 3600, gt=0)
    # A job cancelled before it was sent (nxjobs/cancel.py).
    cancelled_s: int = Field(default=7 * 24 * 3600, gt=0)

    def by_state(self) -> dict[str, int]:
        return {
            "completed": self.completed_s,
            "failed": self.failed_s,
            "cancelled": self.cancelled_s,
        }


class ScheduleSettings(BaseModel):
    """Scheduled jobs (nxjobs/schedule.py): every worker's main process publishes the due ones."""

    # How often each worker looks for due jobs: a due job starts within about this much.
    interval_s: float = Field(default=0.5, gt=0, le=10)
    # Most due jobs one look takes (the rest are taken by the next).
    batch: int = Field(default=100, ge=1, le=10_000)
    # A job taken but not confirmed (its worker died publishing it) is offered again after this.
    lease_s: float = Field(default=30.0, gt=0, le=3600)


class HeldSettings(BaseModel):
    """Messages a worker holds (running, prefetched, countdowns waiting in its timer): each
    worker's main process lists their delivery tags in Redis, and puts back on their queue the
    unacked messages no live worker lists (a worker killed with -9), nxjobs/held.py."""

    # How often each worker lists what it holds and looks for orphaned messages.
    interval_s: float = Field(default=5.0, gt=0)
    # An unacked message delivered longer ago than this, listed by no worker that wrote its list
    # within this, is orphaned. Unset: 3 x interval_s. At least 2 x interval_s, so a live worker
    # always lists a message before it can look orphaned.
    grace_s: float | None = Field(default=None, gt=0)
    # Most orphans one run puts back (the rest wait for the next run).
    restore_limit: int = Field(default=1000, ge=1)

    @model_validator(mode="after")
    def _grace_covers_two_beats(self) -> HeldSettings:
        if self.grace_s is not None and self.grace_s < 2 * self.interval_s:
            raise ValueError("NXJOBS_HELD__GRACE_S must be at least 2 x NXJOBS_HELD__INTERVAL_S")
        return self

    def grace(self) -> float:
        return self.grace_s if self.grace_s is not None else 3 * self.interval_s


class RetrySettings(BaseModel):
    """Capped exponential backoff with full jitter (docs/provider.md §8, our choice)."""

    max_attempts: int = Field(default=8, ge=1, description="for codes classed 'retry'")
    bounded_attempts: int = Field(default=3, ge=1, description="for codes classed 'retry bounded'")
    base_s: float = Field(default=1.0, gt=0)
    cap_s: float = Field(default=60.0, gt=0)


class MetricsSettings(BaseModel):
    """The exporter (`python -m workers.exporter`): Prometheus metrics and the stall
    health check."""

    # /healthz fails when a queue has had messages waiting this long while no worker
    # finished an attempt from it (workers can stay connected yet stop consuming).
    stall_s: float = Field(default=300.0, gt=0)


class CoalesceSettings(BaseModel):
    """Gathering one-number Number Checks and single Callbot contacts into provider batches.
    Producers read the first three from the same variables (nxjobs.producers.ProducerSettings)."""

    # Longest a queued number waits for company before its batch is sent anyway.
    linger_s: float = Field(default=0.5, gt=0, le=60)
    # Numbers per provider request (at most 5 000, docs/provider.md §8). Above 2 000 the
    # provider allows 1 request/s instead of 10.
    max_numbers: int = Field(default=2000, ge=1, le=5000)
    # Contacts per addBatchCall (docs/provider.md §6.3, our choice; the sandbox refuses > 1 000).
    max_contacts: int = Field(default=500, ge=1, le=1000)
    # How often beat looks for pending numbers with no flush on its way, and for stuck batches.
    sweep_interval_s: float = Field(default=5.0, gt=0)
    # A built batch untouched this long is re-flushed by the sweep (its flush message was lost).
    # Every wait or retry of a batch touches it, and none is longer than ratelimit.max_wait_s (600
    # s).
    stale_batch_s: float = Field(default=900.0, gt=0)


class NotifySettings(BaseModel):
    """Job-end notifications (docs/notifications.md): the events stream every finished job adds
    to, and the webhooks the `notify` workers POST from it."""

    # Where every job's end is POSTed (docs/notifications.md); a job's own notify_url is POSTed
    # too. Unset: only those.
    url: str | None = None
    # Key of the HMAC-SHA256 Nxjobs-Signature header, shared with the receiving application.
    secret: SecretStr | None = None
    # Entries the job events stream keeps, about (XADD MAXLEN ~).
    events_maxlen: int = Field(default=100_000, ge=1000)
    # Wait before the first retry of a POST answered other than 2xx (or not answered).
    base_s: float = Field(default=10.0, gt=0)
    # Longest wait between retries (each wait doubles the one before).
    cap_s: float = Field(default=3600.0, gt=0)
    # A delivery still failing this long after the job ended is given up (and counted).
    max_age_s: float = Field(default=24 * 3600.0, gt=0)
    # Connect timeout of each POST.
    connect_timeout_s: float = Field(default=3.05, gt=0)
    # Read timeout of each POST.
    read_timeout_s: float = Field(default=10.0, gt=0)
    # Events, and due retries, the dispatcher takes per read.
    batch: int = Field(default=100, ge=1, le=10_000)
    # How long the dispatcher's read of the stream blocks waiting for events.
    block_s: float = Field(default=1.0, gt=0, le=5)
    # An event a dispatcher read but did not acknowledge this long ago (it died) is taken over.
    claim_idle_s: float = Field(default=60.0, gt=0)

    @model_validator(mode="after")
    def _secret_with_url(self) -> NotifySettings:
        if self.url and not self.secret:
            raise ValueError(
                f"{ENV_PREFIX}NOTIFY__SECRET is required when {ENV_PREFIX}NOTIFY__URL is set"
            )
        if self.url and not self.url.lower().startswith(("http://", "https://")):
            raise ValueError(f"{ENV_PREFIX}NOTIFY__URL must be an http or https URL")
        return self


# The shapes of the calling-hours settings; what they mean (equal ends refused, known countries,
# the window arithmetic) is checked by nxjobs.calling_hours.Policy.build when a worker or producer
# starts (workers/__main__.py, tasks/services.py, nxjobs.producers).
WINDOW_PATTERN = r"^[0-9]{2}:[0-9]{2}-[0-9]{2}:[0-9]{2}$"
DAYS_PATTERN = r"^[A-Za-z]{3}(,[A-Za-z]{3})*$"
COUNTRIES_PATTERN = r"^([A-Za-z]{2}(,[A-Za-z]{2})*)?$"


class CallingHoursSettings(BaseModel):
    """When a call may ring, in the called party's local time (docs/calling-hours.md). Producers
    read the same variables (nxjobs.producers.ProducerCallingHoursSettings)."""

    # Off: calls go whenever their turn comes.
    enabled: bool = True
    # Local time, end excluded; may span midnight (20:00-02:00 belongs to the day it opens).
    window: str = Field(default="09:00-20:00", pattern=WINDOW_PATTERN)
    # Days the window opens on.
    days: str = Field(default="mon,tue,wed,thu,fri,sat", pattern=DAYS_PATTERN)
    # JSON: ISO 3166 alpha-2 -> {"window": "HH:MM-HH:MM", "days": "..."}, either key optional.
    by_country: dict[str, dict[str, str]] = Field(default_factory=dict)
    # Countries (ISO 3166 alpha-2, comma-separated) whose public holidays close the window.
    holidays: str = Field(default="", pattern=COUNTRIES_PATTERN)
    # A job's own calling_hours may be wider than the rule's window (else it may only narrow it).
    allow_wider: bool = False


class SuppressionSettings(BaseModel):
    """The do-not-call list (docs/suppression.md). Producers read the same variable."""

    # HMAC key the list's numbers are stored under (never in plain form). Without it the
    # `suppress` commands refuse to run, and calls are refused while the list is not empty.
    secret: SecretStr | None = Field(default=None, min_length=16)


class RedisTlsSettings(BaseModel):
    """TLS for `rediss://` URLs, the record store's and the broker's alike (docs/configuration.md
    § Redis)."""

    # The CA that signed the server's certificate (PEM); unset: the system's CAs.
    ca_file: str | None = None
    # A client certificate and its key, for servers with `tls-auth-clients yes`.
    cert_file: str | None = None
    key_file: str | None = None
    # The server's name must match its certificate.
    check_hostname: bool = True


class BeatSettings(BaseModel):
    """Celery beat: only the one holding the beat lock sends periodic tasks (workers/beat.py)."""

    # The lock lapses this long after its holder's last renewal (renewed every third of it); a
    # standby beat takes over within it.
    lock_ttl_s: float = Field(default=30.0, ge=1)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        env_file=".env",
        # Compose passes unset variables through as "": treat those as unset.
        env_ignore_empty=True,
        extra="ignore",
    )

    # The record store: job records, rate limits, metrics, locks. `redis://`, `rediss://` or
    # `sentinel://h1:26379;sentinel://h2:26379/0` (docs/configuration.md § Redis); a user and
    # password go in the URL.
    redis_url: str = "redis://localhost:6379/0"
    # The Sentinel master's name, for a sentinel:// NXJOBS_REDIS_URL.
    redis_sentinel_master: str | None = None
    # The sentinels' own password (requirepass of the sentinels), if they have one.
    redis_sentinel_password: SecretStr | None = None
    # For rediss:// URLs (both the record store's and the broker's).
    redis_tls: RedisTlsSettings = RedisTlsSettings()
    # Celery's broker (kombu's queues); unset: NXJOBS_REDIS_URL. Same URL forms.
    broker_url: str | None = None
    # The broker's Sentinel master; unset: NXJOBS_REDIS_SENTINEL_MASTER.
    broker_sentinel_master: str | None = None
    # Job records outlive the job by this long, then Redis drops them.
    record_ttl_s: int = Field(default=7 * 24 * 3600, gt=0)
    # Finished jobs by their final state (completed, failed).
    retention: RetentionSettings = RetentionSettings()
    api2: Api2Settings = Api2Settings()
    callbot: CallbotSettings = CallbotSettings()
    agent: AgentSettings = AgentSettings()
    callbacks: CallbacksSettings = CallbacksSettings()
    http: HttpSettings = HttpSettings()
    retry: RetrySettings = RetrySettings()
    ratelimit: RateLimitSettings = RateLimitSettings()
    metrics: MetricsSettings = MetricsSettings()
    # Log lines as JSON objects (containers, log shippers) or as readable text (a terminal).
    log_format: Literal["text", "json"] = "text"
    # Hard/soft per-task time limits; every request has its own shorter HTTP timeout.
    task_time_limit_s: int = Field(default=300, gt=0)
    task_soft_time_limit_s: int = Field(default=240, gt=0)
    dead_letters: DeadLetterSettings = DeadLetterSettings()
    recover: RecoverSettings = RecoverSettings()
    # Held messages of a dead worker put back on their queue within seconds (nxjobs/held.py).
    held: HeldSettings = HeldSettings()
    # Jobs scheduled for later wait in Redis; workers publish them when due (nxjobs/schedule.py).
    schedule: ScheduleSettings = ScheduleSettings()
    # Gathering one-number Number Checks and single Callbot contacts into provider batches
    # (nxjobs/coalesce.py).
    coalesce: CoalesceSettings = CoalesceSettings()
    # Job-end events and webhooks (nxjobs/webhooks.py).
    notify: NotifySettings = NotifySettings()
    # Calling hours by the called party's local time (nxjobs/calling_hours.py).
    calling_hours: CallingHoursSettings = CallingHoursSettings()
    # The do-not-call list (nxjobs/suppression.py).
    suppression: SuppressionSettings = SuppressionSettings()
    # One beat sends at a time (a Redis lock; docs/operations.md § One beat).
    beat: BeatSettings = BeatSettings()
    # Unacked messages (running jobs, and countdown retries a worker holds) come back
    # this long after their worker vanished. workers/delivery.py checks at startup that
    # it exceeds the task time limit plus the longest countdown we ever set.
    broker_visibility_timeout_s: int = Field(default=3600, gt=0)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Highest first: arguments, environment, .env, then the settings files.
        return (
            init_settings,
            env_settings,
            dotenv_settings,
            SecretFilesSource(settings_cls, secrets_dir()),
        )

    def store_redis(self) -> dict[str, Any]:
        """The record store's Redis, as nxjobs.redis_conn.target's arguments."""
        return self._redis(self.redis_url, self.redis_sentinel_master)

    def broker_redis(self) -> dict[str, Any]:
        """The broker's Redis (defaults to the record store's), same shape."""
        return self._redis(
            self.broker_url or self.redis_url,
            self.broker_sentinel_master or self.redis_sentinel_master,
        )

    def _redis(self, url: str, master: str | None) -> dict[str, Any]:
        password = self.redis_sentinel_password
        return {
            "url": url,
            "sentinel_master": master,
            "sentinel_password": password.get_secret_value() if password else None,
            "tls": self.redis_tls.model_dump(),
        }

    def missing(self, family: str) -> list[str]:
        """Environment variable names of the credentials `family` needs but lacks."""
        out = []
        for group, field in REQUIRED_CREDENTIALS[family]:
            if not getattr(getattr(self, group), field):
                out.append(f"{ENV_PREFIX}{group.upper()}__{field.upper()}")
        return out

    def require(self, *families: str) -> None:
        missing = [v for f in families for v in self.missing(f)]
        if missing:
            raise MissingSetting(missing)


class SecretsDirMissing(RuntimeError):
    """NXJOBS_SECRETS_DIR names a directory that is not there (a Secret not mounted)."""


def secrets_dir(environ: Mapping[str, str] | None = None) -> Path | None:
    """The settings-files directory: NXJOBS_SECRETS_DIR (which must exist: a deployment that
    names one and lacks it starts with nothing rather than with defaults), else
    DEFAULT_SECRETS_DIR if it exists, else None."""
    env = os.environ if environ is None else environ
    named = (env.get(SECRETS_DIR_VARIABLE) or "").strip()
    if named:
        path = Path(named)
        if not path.is_dir():
            raise SecretsDirMissing(f"{SECRETS_DIR_VARIABLE}={named} is not a directory")
        return path
    return DEFAULT_SECRETS_DIR if DEFAULT_SECRETS_DIR.is_dir() else None


class SecretFilesSource(EnvSettingsSource):
    """Settings from files named like their variables (`NXJOBS_API2__ACCESS_SECRET`), one value
    each, surrounding whitespace stripped. pydantic-settings' own `secrets_dir` source matches
    top-level field names only; this is its environment source, `__` nesting and all, reading
    the directory instead of the environment."""

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
            if (
                name.startswith(".")
                or not name.upper().startswith(ENV_PREFIX)
                or not path.is_file()
            ):
                continue
            value = path.read_text(encoding="utf-8").strip()
            if value or not self.env_ignore_empty:
                values[name.lower()] = value
        return values


def load_settings() -> Settings:
    return Settings()
