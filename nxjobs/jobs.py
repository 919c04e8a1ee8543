"""Wire contract between producers and workers: job kinds, task names, queues,
and the validated payload model of each kind.

Imports nothing of the service packages; both sides import this.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from nxjobs.calling_hours import CallingHoursError, parse_window

_PHONE_RE = re.compile(r"^[1-9][0-9]{5,19}$")
_ORDER_ID_RE = re.compile(r"^[A-Za-z0-9]{4,32}$")
_CONTACT_ORDER_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_BATCH_NO_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Our own userTaskIDs are job ids (32 hex); others' may be any caller-chosen id of this shape.
_USER_TASK_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

# Provider limits (docs/provider.md §5.1, §6.3, our choice, §7.2).
NUMBER_CHECK_MAX_PHONES = 5000
CALLBOT_CHUNK_SIZE = 500
CALLBOT_MAX_CONTACTS = 100_000


class InvalidJob(ValueError):
    """Producer input rejected before anything was stored or enqueued.

    `field` names the offending input (dotted path, e.g. ``contacts.3.user_phone``).
    """

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


def _phone(value: str) -> str:
    """Country code + subscriber number, digits only (a single leading '+' is dropped)."""
    if not isinstance(value, str):
        raise ValueError("must be a string of digits")
    digits = value[1:] if value.startswith("+") else value
    if not _PHONE_RE.match(digits):
        raise ValueError(
            "must be 6-20 digits with country code, no spaces or symbols (e.g. 8613800138000)"
        )
    return digits


Phone = Annotated[str, AfterValidator(_phone)]


def _window(value: str | None) -> str | None:
    """A job's own calling hours, "HH:MM-HH:MM" (nxjobs.calling_hours), normalised."""
    if value is None:
        return value
    try:
        return str(parse_window(value, "calling_hours"))
    except CallingHoursError as exc:
        raise ValueError(exc.message) from None


CallingHours = Annotated[str | None, AfterValidator(_window)]


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class CallPayload(_Payload):
    """Agent API makecall: ring `phone` from the configured phone account."""

    phone: Phone
    order_id: str | None = Field(
        default=None, description="4-32 letters/digits; defaults to the job id"
    )
    show_phone: str | None = Field(default=None, max_length=32)
    # The job's own calling hours, "HH:MM-HH:MM" in the callee's local time (docs/calling-hours.md):
    # inside the configured rule's window unless the operator allows wider (checked by Producer).
    calling_hours: CallingHours = None

    @field_validator("order_id")
    @classmethod
    def _order_id(cls, v: str | None) -> str | None:
        if v is not None and not _ORDER_ID_RE.match(v):
            raise ValueError("must be 4-32 letters or digits")
        return v

    @field_validator("show_phone")
    @classmethod
    def _show_phone(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z0-9]{1,32}", v):
            raise ValueError("must be 1-32 letters or digits")
        return v


class CallbotParam(_Payload):
    name: str = Field(min_length=1, max_length=64)
    value: str = Field(max_length=1024)


class Contact(_Payload):
    """One callList entry; `order_id` defaults to ``<job id>-<index>`` in a list, to the
    job id alone in a `callbot-contact` job."""

    user_phone: Phone
    order_id: str | None = None
    user_name: str = Field(default="", max_length=128)
    params: list[CallbotParam] = Field(default_factory=list, max_length=64)

    @field_validator("order_id")
    @classmethod
    def _order_id(cls, v: str | None) -> str | None:
        if v is not None and not _CONTACT_ORDER_ID_RE.match(v):
            raise ValueError("must be 1-64 letters, digits, '-' or '_'")
        return v


def _http_url(v: str | None) -> str | None:
    if v is not None and not re.match(r"^https?://[^\s/]+(/\S*)?$", v):
        raise ValueError("must be an http(s) URL")
    return v


OptionalUrl = Annotated[str | None, AfterValidator(_http_url)]


class CallbotListPayload(_Payload):
    """Callbot v3: create a task with this call list, then start it."""

    scene_id: str = Field(min_length=1, max_length=64)
    task_name: str = Field(min_length=1, max_length=128)
    contacts: list[Contact] = Field(min_length=1, max_length=CALLBOT_MAX_CONTACTS)
    strategy_name: str | None = Field(default=None, max_length=128)
    task_callback_url: OptionalUrl = None
    order_callback_url: OptionalUrl = None
    call_callback_url: OptionalUrl = None
    # Unix time the provider starts the task by itself (a scheduled start, docs/provider.md §6.3);
    # set by the producer for a list scheduled with `at` / `delay_s` (nxjobs/schedule.py).
    start_at: int | None = Field(default=None, gt=0)
    # The list's own calling hours, "HH:MM-HH:MM" in each contact's local time: narrows the rule
    # each zone group's task is given (nxjobs.callbot_zones, docs/calling-hours.md).
    calling_hours: CallingHours = None

    @model_validator(mode="after")
    def _unique_order_ids(self) -> CallbotListPayload:
        seen: dict[str, int] = {}
        for i, c in enumerate(self.contacts):
            if c.order_id is None:
                continue
            if c.order_id in seen:
                raise InvalidJob(
                    f"contacts.{i}.order_id", f"duplicate of contacts.{seen[c.order_id]}.order_id"
                )
            seen[c.order_id] = i
        return self


class CallbotContactPayload(_Payload):
    """Callbot v3: add one contact to an existing task (`addBatchCall`); coalesced with others
    for the same task unless the producer says batch=False."""

    user_task_id: str
    contact: Contact

    @field_validator("user_task_id")
    @classmethod
    def _user_task_id(cls, v: str) -> str:
        if not _USER_TASK_ID_RE.match(v):
            raise ValueError(
                "must be 1-64 letters, digits, '-' or '_' (the userTaskID of an existing task)"
            )
        return v


class NumberCheckPayload(_Payload):
    """api2 Number Check submit (async; results arrive by callback)."""

    phones: list[Phone] = Field(min_length=1, max_length=NUMBER_CHECK_MAX_PHONES)
    check_level: int = 1
    batch_no: str | None = None

    @field_validator("check_level")
    @classmethod
    def _check_level(cls, v: int) -> int:
        if v not in (1, 4, 5):
            raise ValueError("must be 1 (basic), 4 (call) or 5 (HLR)")
        return v

    @field_validator("batch_no")
    @classmethod
    def _batch_no(cls, v: str | None) -> str | None:
        if v is not None and not _BATCH_NO_RE.match(v):
            raise ValueError("must be 1-64 letters, digits, '-' or '_'")
        return v

    @model_validator(mode="after")
    def _unique_phones(self) -> NumberCheckPayload:
        seen: dict[str, int] = {}
        for i, p in enumerate(self.phones):
            if p in seen:
                raise InvalidJob(f"phones.{i}", f"duplicate of phones.{seen[p]}")
            seen[p] = i
        return self


class OtaInitPayload(_Payload):
    """api2 OTA init: get the one-click-login URL for `phone` on the device at `user_ip`."""

    phone: Phone
    user_ip: str

    @field_validator("user_ip")
    @classmethod
    def _ip(cls, v: str) -> str:
        try:
            return str(ipaddress.ip_address(v))
        except ValueError:
            raise ValueError("must be an IPv4 or IPv6 address") from None


class WaCallingPayload(_Payload):
    """api2 WhatsApp calling capability query for a business phone."""

    business_phone: Phone


@dataclass(frozen=True)
class JobKind:
    name: str
    task_name: str
    queue: str
    payload_model: type[_Payload]


# A queue per API family, so each family's workers scale (and are throttled) on their own.
QUEUE_AGENT = "agent"
QUEUE_CALLBOT = "callbot"
QUEUE_API2 = "api2"
QUEUES = (QUEUE_AGENT, QUEUE_CALLBOT, QUEUE_API2)
# The job-end webhooks (nxjobs.webhooks) have their own queue and workers: a slow receiving
# application never holds up job work. Not a job family (no kinds, credentials or beat entries).
QUEUE_NOTIFY = "notify"
NOTIFY_TASK = "nxjobs.notify_deliver"
WORKER_QUEUES = (*QUEUES, QUEUE_NOTIFY)

# Message priorities. Celery's Redis transport reads priority 0 first (its
# priority lists are popped in ascending order), so a job holding a reserved
# rate-limit slot overtakes the fresh backlog and is sent on time.
PRIORITY_RESERVED_SLOT = 0
PRIORITY_RETRY = 3
PRIORITY_NEW = 6

KINDS: dict[str, JobKind] = {
    k.name: k
    for k in (
        JobKind("call", "nxjobs.call", QUEUE_AGENT, CallPayload),
        JobKind("callbot-list", "nxjobs.callbot_list", QUEUE_CALLBOT, CallbotListPayload),
        JobKind("callbot-contact", "nxjobs.callbot_contact", QUEUE_CALLBOT, CallbotContactPayload),
        JobKind("number-check", "nxjobs.number_check", QUEUE_API2, NumberCheckPayload),
        JobKind("ota-init", "nxjobs.ota_init", QUEUE_API2, OtaInitPayload),
        JobKind("wa-calling", "nxjobs.wa_calling", QUEUE_API2, WaCallingPayload),
    )
}


def get_kind(name: str) -> JobKind:
    # Not only unknown names: a non-string (a list is unhashable) is bad input too, not a crash.
    if isinstance(name, str) and name in KINDS:
        return KINDS[name]
    raise InvalidJob("kind", f"unknown job kind {name!r}; expected one of: {', '.join(KINDS)}")


def validate_payload(kind: str, payload: Any) -> _Payload:
    """Validate producer input for `kind`; raise InvalidJob naming the first bad field."""
    job_kind = get_kind(kind)
    if not isinstance(payload, dict):
        raise InvalidJob("payload", "must be a JSON object")
    try:
        return job_kind.payload_model.model_validate(payload)
    except InvalidJob:
        raise
    except ValidationError as exc:
        err = exc.errors()[0]
        original = (err.get("ctx") or {}).get("error")
        if isinstance(original, InvalidJob):
            raise InvalidJob(original.field, original.message) from None
        field = ".".join(str(p) for p in err["loc"]) or "payload"
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown field"
        raise InvalidJob(field, message) from None
