"""Bulk submission from files: `nxjobs submit number-check --file F` and
`nxjobs submit callbot-list --contacts F` (CSV with or without a header, JSON lines, a JSON
array: nxjobs/bulk_files.py reads them).

Two streaming passes, so memory does not grow with the file:

1. validate every row (a rejected row is reported with its line number and reason,
   its value masked), count the valid ones; nothing is written to Redis;
2. if no more rows were rejected than allowed, read the file again, cut the valid
   rows into jobs (number-check: 5 000 phones; callbot-list: up to 100 000 contacts,
   `--per-job`) and enqueue them a few jobs at a time (`Producer.enqueue_many`:
   one pipelined round trip for the records, one broker connection for the messages).

Only the line numbers of rejected rows and, for number checks, the set of phones
seen (duplicates across the whole file are rejected: each would be billed twice)
are held across rows. Imports nothing of the service packages.
"""

from __future__ import annotations

import csv
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from nxjobs.bulk_files import MAX_UNKNOWN, PHONE_SPELLINGS, Reader, open_reader
from nxjobs.jobs import CALLBOT_MAX_CONTACTS, NUMBER_CHECK_MAX_PHONES, Contact, InvalidJob, _phone
from nxjobs.redact import mask_phone

# Rows handed to one enqueue_many call (whole jobs, at least one): bounds memory in flight.
ENQUEUE_BATCH_ROWS = 50_000


@dataclass
class Rejects:
    """Rejected rows: counted, the first few kept for the terminal, all written to
    `path` if given."""

    path: str | None = None
    keep: int = 10
    count: int = 0
    first: list[tuple[int, str, str]] = field(default_factory=list)
    lines: set[int] = field(default_factory=set)
    _writer: Any = None
    _fh: TextIO | None = None

    def add(self, line: int, value: str, reason: str) -> None:
        self.count += 1
        self.lines.add(line)
        shown = mask_phone(value) if value else value
        if len(self.first) < self.keep:
            self.first.append((line, shown, reason))
        if self.path:
            if self._writer is None:
                self._fh = open(self.path, "w", newline="", encoding="utf-8")
                self._writer = csv.writer(self._fh)
                self._writer.writerow(["line", "value", "reason"])
            self._writer.writerow([line, shown, reason])

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()


class Progress:
    """A one-line progress bar on stderr, redrawn at most 10 times a second."""

    def __init__(self, enabled: bool, stream: TextIO = sys.stderr):
        self.enabled = enabled
        self.stream = stream
        self._last = 0.0

    def show(self, label: str, fraction: float, detail: str, *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.1:
            return
        self._last = now
        fraction = min(max(fraction, 0.0), 1.0)
        bar = ("=" * int(fraction * 30)).ljust(30)
        self.stream.write(f"\r{label:<10} [{bar}] {fraction * 100:5.1f}%  {detail}\x1b[K")
        self.stream.flush()

    def done(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def _reason(err: ErrorDetails, spelled: dict[str, str]) -> str:
    """A validation error as `<column as the file spells it>: <message>`."""
    loc = [str(p) for p in err["loc"]]
    where = ".".join(loc)
    if loc and loc[0] in spelled:
        where = spelled[loc[0]]
    elif len(loc) >= 2 and f"{loc[0]}.{loc[1]}" in spelled:
        where = spelled[f"{loc[0]}.{loc[1]}"]
        if len(loc) > 2 and loc[2] == "name":
            where += " (its name)"
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        message = "unknown field"
    return f"{where}: {message}"


# ---- number check -------------------------------------------------------------


def _number_rows(
    reader: Reader, per_job: int, rejected: set[int] | None = None
) -> Iterator[tuple[int, str | None, str, float]]:
    """(line, phone or None, reason or raw value, fraction); phones normalised, duplicates rejected.

    With `rejected` (the lines pass 1 rejected) rows are trusted: those lines are skipped and the
    rest only normalised as `_phone` does, without the regex or the set of phones seen."""
    seen: set[int] = set()
    for line, cell, spelled, error, frac in reader.phones():
        if rejected is not None:
            if line not in rejected:
                yield line, cell[1:] if cell.startswith("+") else cell, "", frac
            continue
        shown = cell if isinstance(cell, str) else ""
        if error:
            yield line, None, f"{shown}\x00{error}", frac
            continue
        if cell is None:
            yield line, None, f"\x00{_PHONE_MISSING['number-check']}", frac
            continue
        try:
            phone = _phone(cell)
        except ValueError as exc:
            yield line, None, f"{shown or repr(cell)}\x00{spelled}: {exc}", frac
            continue
        key = int(phone)
        if key in seen:
            yield line, None, f"{cell}\x00duplicate phone", frac
            continue
        seen.add(key)
        yield line, phone, "", frac


_PHONE_MISSING = {kind: f"no phone (one of {names})" for kind, names in PHONE_SPELLINGS.items()}


def _contact_rows(
    reader: Reader, per_job: int, rejected: set[int] | None = None
) -> Iterator[tuple[int, dict[str, Any] | None, str, float]]:
    """(line, contact or None, reason or raw value, fraction); order ids unique within each job.

    Always validates (`rejected` is not needed: the same rows fail again), since pass 2 needs
    the normalised contact that validation produces."""
    order_ids: set[str] = set()
    valid = 0
    for row in reader.rows():
        line, frac = row.line, row.frac
        if row.error:
            yield line, None, f"{row.value}\x00{row.error}", frac
            continue
        if "user_phone" not in row.fields:
            yield line, None, f"\x00{_PHONE_MISSING['callbot-list']}", frac
            continue
        try:
            model = Contact.model_validate(row.fields)
        except ValidationError as exc:
            yield line, None, f"{row.value}\x00{_reason(exc.errors()[0], row.spelled)}", frac
            continue
        if valid % per_job == 0:
            order_ids.clear()  # a new job starts here
        if model.order_id is not None:
            if model.order_id in order_ids:
                where = row.spelled.get("order_id", "order_id")
                yield line, None, f"{row.value}\x00{where}: duplicate within its job", frac
                continue
            order_ids.add(model.order_id)
        valid += 1
        yield line, model.model_dump(exclude_none=True, exclude_defaults=True), "", frac


class _ListedPerJob:
    """Pass 1 of a contacts file: whether some future job would have all its contacts on the
    do-not-call list (checked in chunks, one round trip each). Jobs are cut in file order, so
    only the job being filled is tracked."""

    CHUNK = 10_000

    def __init__(self, producer: Any, per_job: int):
        self.suppression: Any = getattr(producer, "suppression", None)
        self.per_job = per_job
        self.pending: list[tuple[int, str]] = []
        self.valid = 0
        self.current: list[int] = []  # first line, last line, contacts, of them listed
        self.found: tuple[int, int, int] | None = None

    def add(self, line: int, phone: str) -> None:
        if self.suppression is None or self.found is not None:
            return
        self.pending.append((line, phone))
        if len(self.pending) >= self.CHUNK:
            self._check()

    def _check(self) -> None:
        flags = self.suppression.contains_many([p for _, p in self.pending])
        for (line, _), flag in zip(self.pending, flags, strict=True):
            if self.valid % self.per_job == 0:
                self._close()
                self.current = [line, line, 0, 0]
            self.current[1] = line
            self.current[2] += 1
            self.current[3] += int(flag)
            self.valid += 1
        self.pending.clear()

    def _close(self) -> None:
        c = self.current
        if c and self.found is None and c[3] == c[2]:
            self.found = (c[0], c[1], c[2])

    def empty_job(self, valid: int) -> tuple[int, int, int] | None:
        """(first line, last line, size) of a job all of whose contacts are listed, or None."""
        if self.suppression is None:
            return None
        if self.pending:
            self._check()
        self._close()
        return self.found


# ---- the two passes -------------------------------------------------------------


@dataclass
class BulkResult:
    rows: int = 0
    valid: int = 0
    rejects: Rejects = field(default_factory=Rejects)
    job_ids: list[str] = field(default_factory=list)
    enqueued: bool = False
    unknown_columns: list[str] = field(default_factory=list)


def submit_file(
    producer,
    kind: str,
    path: str,
    *,
    make_payload: Callable[[list[Any], int, int], dict[str, Any]],
    per_job: int,
    max_rejects: int | None,
    rejects_path: str | None,
    progress: Progress,
    on_job: Callable[[str], None] = lambda _id: None,
    warn: Callable[[str], None] = lambda _message: None,
) -> BulkResult:
    """Validate `path` (any format of nxjobs.bulk_files), then (if rejects <= max_rejects;
    None = any) enqueue its valid rows as jobs of `kind`.

    `make_payload(items, part, parts)` builds one job's payload from its rows (part counts from 1).
    `warn` is told once, after validation, of the columns the file has that we do not use.
    """
    rows_of = _number_rows if kind == "number-check" else _contact_rows
    reader = open_reader(path, kind)
    result = BulkResult(rejects=Rejects(path=rejects_path))
    listed = _ListedPerJob(producer, per_job) if kind != "number-check" else None
    try:
        for line, item, info, frac in rows_of(reader, per_job):
            result.rows += 1
            if item is None:
                value, _, reason = info.partition("\x00")
                result.rejects.add(line, value, reason)
            else:
                result.valid += 1
                if listed is not None and isinstance(item, dict):
                    listed.add(line, item["user_phone"])
            progress.show(
                "validating", frac, f"{result.rows:,} rows, {result.rejects.count:,} rejected"
            )
        progress.show(
            "validating",
            1.0,
            f"{result.rows:,} rows, {result.rejects.count:,} rejected",
            force=True,
        )
        progress.done()
    finally:
        result.rejects.close()
    result.unknown_columns = list(reader.unknown)
    if reader.unknown:
        more = " (and more)" if len(reader.unknown) >= MAX_UNKNOWN else ""
        warn(f"{path}: ignoring column(s) we do not use: {', '.join(reader.unknown)}{more}")
    if result.valid == 0:
        raise InvalidJob("file", f"{path}: no valid rows ({result.rejects.count} rejected)")
    if listed is not None:
        # Each job leaves its listed contacts out (Producer._screen); one left with none would be
        # refused mid-way, after the jobs before it: refuse the file now instead.
        empty = listed.empty_job(result.valid)
        if empty is not None:
            first, last, n = empty
            raise InvalidJob(
                "contacts",
                f"{path} lines {first}-{last}: all {n} contacts of one job are on the "
                "do-not-call list",
            )
    if max_rejects is not None and result.rejects.count > max_rejects:
        return result

    parts = -(-result.valid // per_job)
    chunk: list[Any] = []
    pending: list[dict[str, Any]] = []
    part = 0

    def flush() -> None:
        ids = producer.enqueue_many(kind, pending)
        pending.clear()
        for job_id in ids:
            result.job_ids.append(job_id)
            on_job(job_id)
        progress.show(
            "enqueuing", len(result.job_ids) / parts, f"{len(result.job_ids):,}/{parts:,} jobs"
        )

    # Number rows are trusted now (pass 1 rejected lines skipped); contacts are validated again,
    # deterministically, so the same rows are rejected.
    batch_jobs = max(1, ENQUEUE_BATCH_ROWS // per_job)
    for _line, item, _info, _frac in rows_of(reader, per_job, result.rejects.lines):
        if item is None:
            continue
        chunk.append(item)
        if len(chunk) == per_job:
            part += 1
            pending.append(make_payload(chunk, part, parts))
            chunk = []
            if len(pending) >= batch_jobs:
                flush()
    if chunk:
        part += 1
        pending.append(make_payload(chunk, part, parts))
    if pending:
        flush()
    progress.show("enqueuing", 1.0, f"{len(result.job_ids):,}/{parts:,} jobs", force=True)
    progress.done()
    result.enqueued = True
    return result


def number_check_payload(check_level: int | None, batch_no: str | None):
    def make(phones: list[str], part: int, parts: int) -> dict[str, Any]:
        payload: dict[str, Any] = {"phones": phones}
        if check_level is not None:
            payload["check_level"] = check_level
        if batch_no:
            # batchNo correlates callbacks to one job: each part gets its own.
            payload["batch_no"] = batch_no if parts == 1 else f"{batch_no}-{part}"
        return payload

    return make


def callbot_payload(base: dict[str, Any]):
    """Each part is its own Callbot task; with several, the task name says which:
    `renewals (2/10)`."""
    name = base["task_name"]

    def make(contacts: list[dict[str, Any]], part: int, parts: int) -> dict[str, Any]:
        task_name = name
        if parts > 1:
            suffix = f" ({part}/{parts})"
            task_name = name[: 128 - len(suffix)] + suffix
        return {**base, "task_name": task_name, "contacts": contacts}

    return make


MAX_PER_JOB = {"number-check": NUMBER_CHECK_MAX_PHONES, "callbot-list": CALLBOT_MAX_CONTACTS}
