"""NXCloud errors and the one table that classifies every documented code.

Error tree::

    NXCloudError          anything that stopped a request from succeeding
    ├── ProviderError     the API answered with a non-success code (HTTP 200 + body code)
    └── TransportError    no usable answer: connect failure, timeout, HTTP 5xx/4xx, garbage body

Every error carries a `Classification`: what the caller should do next.
`classify()` is pure and table-driven (docs/provider.md §9); unknown codes are permanent.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Action(StrEnum):
    SUCCESS = "success"
    RETRY = "retry"  # transient: back off, re-sign, resend with the same idempotency key
    REFRESH = "refresh"  # credentials stale: refresh them, then retry once
    PERMANENT = "permanent"  # fail the job now


@dataclass(frozen=True)
class Classification:
    action: Action
    # Bounded retries stop after RetrySettings.bounded_attempts (docs/provider.md §9 "retry
    # bounded").
    bounded: bool = False
    # The provider's "too frequent" signal: the caller should slow down, not just retry.
    throttled: bool = False
    # Minimum backoff base for slow-recovering conditions (Callbot maintenance).
    min_backoff_s: float = 0.0

    @property
    def retryable(self) -> bool:
        return self.action in (Action.RETRY, Action.REFRESH)


SUCCESS = Classification(Action.SUCCESS)
RETRY = Classification(Action.RETRY)
BOUNDED = Classification(Action.RETRY, bounded=True)
THROTTLED = Classification(Action.RETRY, throttled=True)
REFRESH = Classification(Action.REFRESH)
PERMANENT = Classification(Action.PERMANENT)

# Families: "api2" (Number Check, OTA, WhatsApp share one code space),
# "callbot" (retCode), "agent" (token/makecall), "cdr" (CDR lookups, string codes).
CODE_TABLE: dict[str, dict[str, Classification]] = {
    "api2": {
        "0": SUCCESS,
        # §9.1 authentication
        "1001": PERMANENT,
        "1002": PERMANENT,
        "1003": PERMANENT,
        "1004": BOUNDED,
        "1005": PERMANENT,
        # §9.2 Number Check submit/query
        "201": PERMANENT,
        "202": PERMANENT,
        "203": PERMANENT,
        "204": BOUNDED,
        "205": PERMANENT,
        "206": BOUNDED,
        "207": PERMANENT,
        "210": PERMANENT,
        "211": PERMANENT,
        "212": PERMANENT,
        "288": BOUNDED,
        "88": BOUNDED,
        "299": RETRY,
        "2206": THROTTLED,
        # §9.2 per-number callback codes
        "103": BOUNDED,
        "112": BOUNDED,
        "121": BOUNDED,
        "108": PERMANENT,
        "114": PERMANENT,
        "120": PERMANENT,
        "122": SUCCESS,
        "266": PERMANENT,
        # §9.5 OTA / WhatsApp
        "99": RETRY,
        "9001": BOUNDED,
        "-1": BOUNDED,
        "9901": PERMANENT,
        "9000": PERMANENT,
        "9002": PERMANENT,
        "9906": PERMANENT,
        "9003": PERMANENT,
        "9907": PERMANENT,
        "9908": PERMANENT,
        "1102": PERMANENT,
        "1100": PERMANENT,
        "2205": PERMANENT,
    },
    "callbot": {
        "0": SUCCESS,
        "1": BOUNDED,
        "2": PERMANENT,
        "3": PERMANENT,
        "4": PERMANENT,
        "4001": PERMANENT,
        "5": Classification(Action.RETRY, min_backoff_s=30.0),
        "5001": BOUNDED,
        "6": PERMANENT,
        "6001": PERMANENT,
        "6002": PERMANENT,
        "6003": PERMANENT,
        "7": THROTTLED,
        "1001": RETRY,
    },
    "agent": {
        "0": SUCCESS,
        "1000": REFRESH,
        "1201": REFRESH,
        "1101": PERMANENT,
        "1001": PERMANENT,
        "1006": PERMANENT,
        "1002": PERMANENT,
        "1003": BOUNDED,
        "1004": BOUNDED,
        "1005": BOUNDED,
        "1007": PERMANENT,
        "1008": PERMANENT,
        "1100": BOUNDED,
        "1200": PERMANENT,
        "10000": BOUNDED,
        # Not documented for makecall; our sandbox (and api2) use it for "too frequent".
        "2206": THROTTLED,
    },
    "cdr": {
        "0": SUCCESS,
        # CDR-by-orderid answers code "1" for every failure; the text tells them apart.
        "1:appkey access rate limit": THROTTLED,
        "1": PERMANENT,
    },
}


def classify(family: str, code: int | str, message: str = "") -> Classification:
    """What to do about body `code` from API `family`. Unknown codes are permanent."""
    table = CODE_TABLE[family]
    code_text = str(code).strip()
    specific = table.get(f"{code_text}:{message.strip()}")
    return specific or table.get(code_text, PERMANENT)


def classify_http_status(status: int) -> Classification:
    """Transport-level outcome of a non-2xx HTTP status (docs/provider.md §9 last paragraph)."""
    if status == 429:
        return THROTTLED
    if status >= 500:
        return RETRY
    return PERMANENT


class NXCloudError(Exception):
    def __init__(self, message: str, *, code: str, classification: Classification):
        super().__init__(message)
        self.code = code
        self.message = message
        self.classification = classification

    @property
    def retryable(self) -> bool:
        return self.classification.retryable


class ProviderError(NXCloudError):
    """A business error: the API answered, with a code other than success."""

    def __init__(self, family: str, code: int | str, message: str, *, endpoint: str = ""):
        self.family = family
        self.endpoint = endpoint
        super().__init__(message, code=str(code), classification=classify(family, code, message))

    def __str__(self) -> str:
        return f"{self.family} {self.endpoint} answered code {self.code}: {self.message}"


class TransportError(NXCloudError):
    """No usable answer. `may_have_reached` is True when the provider may have acted
    on the request (we sent it but lost the answer): unsafe to resend blindly."""

    def __init__(
        self, message: str, *, code: str, classification: Classification, may_have_reached: bool
    ):
        super().__init__(message, code=code, classification=classification)
        self.may_have_reached = may_have_reached
