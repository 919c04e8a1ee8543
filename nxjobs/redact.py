"""Make data safe for an operator's eyes: mask phone numbers, drop secrets.

Used for job records, logs and Flower's task-argument reprs. Pure functions.
"""

from __future__ import annotations

from typing import Any

# Keys (any spelling the APIs use) whose values are phone numbers, in requests, answers and every
# callback shape: Number Check DRs (current `phone`; legacy
# `data.basic.nationalNumber`/`standNumber`), failNumber entries (`number`), Callbot call/order
# callbacks (`userPhone`, `callInfoDetail.callingNumber`), Agent CDRs and CDR rows (`phone`,
# `show_phone`, `effective_called_number`). Compared case-insensitively.
PHONE_KEYS = frozenset(
    {
        "phone",
        "phones",
        "userPhone",
        "user_phone",
        "business_phone",
        "mobile",
        "number",
        "showphone",
        "show_phone",
        "effective_called_number",
        "callingNumber",
        "nationalNumber",
        "standNumber",
        "calledNumber",
        "callerNumber",
    }
)
# Keys whose values are credentials and never leave the worker.
SECRET_KEYS = frozenset(
    {
        "token",
        "secretkey",
        "secret_key",
        "secretKey",
        "accesssecret",
        "access_secret",
        "accessSecret",
        "sign",
        "password",
    }
)
_SECRET_KEYS_LOWER = frozenset(k.lower() for k in SECRET_KEYS)
_PHONE_KEYS_LOWER = frozenset(k.lower() for k in PHONE_KEYS)
REDACTED = "[redacted]"


def mask_phone(phone: str) -> str:
    """Keep enough to tell numbers apart (country prefix and last 4), hide the rest."""
    digits = str(phone)
    if len(digits) <= 6:
        return "*" * len(digits)
    keep_tail = 4 if len(digits) >= 10 else 2
    return digits[:3] + "*" * (len(digits) - 3 - keep_tail) + digits[-keep_tail:]


def _mask_phone_value(value: Any) -> Any:
    if isinstance(value, list):
        return [_mask_phone_value(v) for v in value]
    if isinstance(value, str):
        # Number Check sends many numbers in one comma-separated string.
        return ",".join(mask_phone(p) for p in value.split(",")) if value else value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        # A number sent as a JSON number is still a number: masked, as text.
        return mask_phone(
            str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
        )
    if isinstance(value, dict):
        return redact(value)
    return value


_PLAIN, _SECRET, _PHONE = 0, 1, 2
# What each key is, by its exact spelling: the receiver redacts every callback, and lower-casing
# each key each time was a measurable part of it. Bounded: keys come from outside.
_KEY_CLASS: dict[Any, int] = {}
_KEY_CLASS_MAX = 4096


def _key_class(key: Any) -> int:
    cls = _KEY_CLASS.get(key)
    if cls is None:
        lower = str(key).lower()
        cls = (
            _SECRET
            if lower in _SECRET_KEYS_LOWER
            else _PHONE
            if lower in _PHONE_KEYS_LOWER
            else _PLAIN
        )
        if len(_KEY_CLASS) < _KEY_CLASS_MAX:
            _KEY_CLASS[key] = cls
    return cls


def redact(obj: Any) -> Any:
    """A copy of `obj` with secrets replaced and phone numbers masked, at any depth."""
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            cls = _KEY_CLASS.get(key)  # inline: a call per key was a visible share of the receiver
            if cls is None:
                cls = _key_class(key)
            if cls == _SECRET:
                out[key] = REDACTED
            elif cls == _PHONE:
                out[key] = _mask_phone_value(value)
            elif isinstance(value, (dict, list)):
                out[key] = redact(value)
            else:
                out[key] = value
        return out
    if isinstance(obj, list):
        return [redact(v) if isinstance(v, (dict, list)) else v for v in obj]
    return obj


def summarize_list(items: list[Any], keep: int = 20) -> list[Any] | dict[str, Any]:
    """Long lists (a 500-contact chunk) are stored as a head plus a count."""
    if len(items) <= keep:
        return items
    return {"count": len(items), "first": items[:keep]}


class _More:
    """Stands for the cut tail of a list; not a str, so masking leaves it alone."""

    def __init__(self, count: int):
        self.count = count

    def __repr__(self) -> str:
        return f"'... {self.count} more'"


def _shorten(obj: Any, keep: int) -> Any:
    if isinstance(obj, dict):
        return {k: _shorten(v, keep) for k, v in obj.items()}
    if isinstance(obj, list):
        head = [_shorten(v, keep) for v in obj[:keep]]
        return head + [_More(len(obj) - keep)] if len(obj) > keep else head
    return obj


def flower_repr(kwargs: dict[str, Any], kind: str | None = None, keep: int = 5) -> str:
    """What Flower shows as a job's arguments (`kwargsrepr`): its kind first, secrets removed,
    phones masked, long lists cut to `keep` items plus a count (a 5 000-number check stays
    short)."""
    shown = redact(_shorten(kwargs, keep))  # cut first: masking 5 000 phones to show 5 is waste
    if kind is not None:
        shown = {"kind": kind, **shown}
    return repr(shown)
