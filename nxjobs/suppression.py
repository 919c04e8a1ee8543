"""The do-not-call (suppression) list: numbers that must never be called (docs/suppression.md).

Stored as one Redis set of keyed hashes, HMAC-SHA256(secret, E.164 number), cut to 128 bits:
whoever reads Redis learns neither the numbers nor, without the secret, whether a given number is
listed. Numbers are normalised with `phonenumbers` first, so "+65 9123 4567" and "6591234567" are
one entry.

Fail closed: without a secret the list cannot be read or written (`SuppressionUnavailable`, naming
the variable), and a call is refused while the list holds entries it cannot check; only an empty
list with no secret means "no list" and lets calls through unchecked.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

import phonenumbers

from nxjobs import keys

SECRET_VARIABLE = "NXJOBS_SUPPRESSION__SECRET"
# Numbers per pipelined round trip of an import, and per SMISMEMBER.
CHUNK = 10_000


class SuppressionUnavailable(RuntimeError):
    """The list needs NXJOBS_SUPPRESSION__SECRET to be read or written."""


class InvalidNumber(ValueError):
    """Not a phone number phonenumbers can parse (with its country code)."""


def e164(phone: str) -> str:
    """`phone` (digits with country code, optional '+', spaces/dashes allowed) in E.164."""
    raw = phone.strip()
    try:
        number = phonenumbers.parse(raw if raw.startswith("+") else "+" + raw)
    except phonenumbers.NumberParseException:
        raise InvalidNumber("not a phone number with country code") from None
    if not phonenumbers.is_possible_number(number):
        raise InvalidNumber("not a possible phone number for its country code")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


@dataclass
class AddResult:
    added: int = 0
    already: int = 0
    invalid: int = 0


class SuppressionList:
    """`secret`: NXJOBS_SUPPRESSION__SECRET's value, or None (see the module's fail-closed rule)."""

    def __init__(self, redis: Any, secret: str | None):
        self.redis = redis
        self._key = secret.encode() if secret else None

    @property
    def configured(self) -> bool:
        return self._key is not None

    def digest(self, phone: str) -> str:
        if self._key is None:
            raise SuppressionUnavailable(f"the do-not-call list needs {SECRET_VARIABLE}")
        mac = hmac.new(self._key, e164(phone).encode(), hashlib.sha256)
        return mac.hexdigest()[:32]

    def add(self, phones: Iterable[str], *, on_chunk: Any = None) -> AddResult:
        """Add numbers, streamed in pipelined chunks; `on_chunk(result)` after each. Duplicates,
        in the list or in `phones`, count as `already`; unparseable ones as `invalid`."""
        result = AddResult()
        for chunk in _chunks(phones):
            digests = self._digests(chunk, result)
            if digests:
                pipe = self.redis.pipeline(transaction=False)
                for d in digests:
                    pipe.sadd(keys.SUPPRESSION, d)
                added = sum(pipe.execute())
                result.added += added
                result.already += len(digests) - added
            if on_chunk is not None:
                on_chunk(result)
        return result

    def remove(self, phones: Iterable[str]) -> AddResult:
        """`added` = removed, `already` = were not listed."""
        result = AddResult()
        for chunk in _chunks(phones):
            digests = self._digests(chunk, result)
            if digests:
                removed = int(self.redis.srem(keys.SUPPRESSION, *digests))
                result.added += removed
                result.already += len(digests) - removed
        return result

    def contains(self, phone: str) -> bool:
        return self.contains_many([phone])[0]

    def contains_many(self, phones: list[str]) -> list[bool]:
        """Whether each number is listed; a number phonenumbers cannot parse is not (it cannot
        have been added). Fail closed: no secret and a non-empty list raises
        SuppressionUnavailable; no secret and an empty list: nothing is listed."""
        if self._key is None:
            if self.count():
                raise SuppressionUnavailable(
                    f"the do-not-call list has entries but {SECRET_VARIABLE} is not set: "
                    "calls cannot be checked against it"
                )
            return [False] * len(phones)
        out: list[bool] = []
        for start in range(0, len(phones), CHUNK):
            part = phones[start : start + CHUNK]
            digests = []
            for phone in part:
                try:
                    digests.append(self.digest(phone))
                except InvalidNumber:
                    digests.append("")
            found = self.redis.smismember(keys.SUPPRESSION, digests)
            out.extend(bool(f) for f in found)
        return out

    def count(self) -> int:
        return int(self.redis.scard(keys.SUPPRESSION))

    def _digests(self, chunk: list[str], result: AddResult) -> list[str]:
        out = []
        for phone in chunk:
            try:
                out.append(self.digest(phone))
            except InvalidNumber:
                result.invalid += 1
        return out


def _chunks(items: Iterable[str]) -> Iterator[list[str]]:
    it = iter(items)
    while chunk := list(islice(it, CHUNK)):
        yield chunk
