"""What every fake NXCloud endpoint shares: the reply, the parsed request, its route, and
small parsers. Names with a leading underscore are the sandbox package's own, not an API."""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from sandbox.state import SandboxState

_DIGITS = re.compile(r"[0-9]+")
# Longest-prefix match is enough for plausible fake rows.
_COUNTRIES = {
    "1": "US",
    "44": "GB",
    "52": "MX",
    "55": "BR",
    "60": "MY",
    "62": "ID",
    "63": "PH",
    "65": "SG",
    "66": "TH",
    "81": "JP",
    "82": "KR",
    "84": "VN",
    "86": "CN",
    "91": "IN",
    "234": "NG",
    "852": "HK",
    "853": "MO",
    "886": "TW",
    "971": "AE",
}


@dataclass
class Reply:
    """An HTTP answer; `delay_s` > 0 asks the server to stall after the side effect."""

    status: int
    body: dict[str, Any]
    delay_s: float = 0.0

    def __iter__(self) -> Iterator[Any]:
        yield self.status
        yield self.body


class _Answer(Exception):
    """Early exit carrying a complete business-error body (HTTP 200)."""

    def __init__(self, body: dict[str, Any]):
        self.body = body


@dataclass
class _Request:
    path: str
    headers: dict[str, str]
    raw: bytes
    now: float
    body: Any = None
    credential: str = ""


@dataclass(frozen=True)
class _Route:
    family: str
    verify: Callable[[SandboxState, _Request], None]
    endpoint: Callable[[SandboxState, _Request], dict[str, Any]]
    envelope: Callable[[_Request, Any, str], dict[str, Any]]
    throttle: Callable[[_Request], dict[str, Any]]
    quotas: Callable[[SandboxState, _Request], list[tuple[str, str, int]]]


def _hex32() -> str:
    return uuid.uuid4().hex


def _country(phone: str) -> tuple[str, str]:
    """(dialling code, ISO2) for a digits-only number; ("", "XX") if unknown."""
    for n in (3, 2, 1):
        if phone[:n] in _COUNTRIES:
            return phone[:n], _COUNTRIES[phone[:n]]
    return "", "XX"


@dataclass(frozen=True)
class _Outcome:
    answered: bool
    call_status: int  # Callbot callStatus as simulated (docs/provider.md §6.4, our choice)
    hangup_cause: str
    sip_code: str


def _outcome(phone: str) -> _Outcome:
    """Sandbox convention: 999... is not a real number, 998... rings out unanswered, the
    rest answer."""
    if phone.startswith("999"):
        return _Outcome(False, 4, "UNALLOCATED_NUMBER", "404")
    if phone.startswith("998"):
        return _Outcome(False, 2, "NO_ANSWER", "480")
    return _Outcome(True, 1, "NORMAL_CLEARING", "200")


def _fmt_time(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _decode(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _json_object(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def _form(raw: bytes) -> dict[str, str]:
    text = _decode(raw) or ""
    return {k: v[0] for k, v in parse_qs(text, keep_blank_values=True).items()}


def _nonempty(value: Any) -> bool:
    return value is not None and value != "" and not isinstance(value, (dict, list, bool))


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        return int(value)
    return None
