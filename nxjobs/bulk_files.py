"""What a bulk file (`--file`, `--contacts`) may hold, read as rows of named fields, streamed.

Formats, told apart by the extension (`.jsonl`/`.ndjson`, `.json`) and otherwise by the first
character that is not a space (`[` a JSON array, `{` JSON lines, anything else CSV):

- **CSV with a header**: the first row is a header when one of its cells is a known column
  name and none is a phone number. Columns are then found by name, in any order; names are
  matched ignoring case and `_`, `-` and spaces (`userPhone` = `user_phone` = `User Phone`).
  Columns of other names are ignored (`Reader.unknown`), but a header without a phone column
  refuses the file.
- **CSV without a header**: positional, as before: number checks the phone in the first
  column, contacts `user_phone[,order_id[,user_name]]`.
- **JSON lines**: one object per line, keys in the same spellings.
- **JSON array** of such objects, read one element at a time (an element may not exceed
  `MAX_ELEMENT_CHARS`), so the file is never held whole.

A contact's `param.<name>` columns (or keys) become its Callbot params, `{name: value}`,
empty ones left out; a JSON object may also carry `params` as an object `{name: value}` or
as the model's list of `{"name", "value"}`. UTF-8, a BOM is fine.

Rows come out as `Row`: the line number (of the element's start in a JSON array), the
model's field names with their values, and how the file spelled each field, so an error can
name the column the user wrote. Pure: no Redis, nothing of the service packages.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from nxjobs.jobs import InvalidJob, _phone

# Column (or key) names by the field they give, as normalised by `_norm`.
NUMBER_COLUMNS: dict[str, str] = {
    name: "phone"
    for name in ("phone", "phones", "number", "numbers", "msisdn", "mobile", "userphone")
}
CONTACT_COLUMNS: dict[str, str] = {
    "userphone": "user_phone",
    "phone": "user_phone",
    "orderid": "order_id",
    "username": "user_name",
    "name": "user_name",
}
PARAM_PREFIX = "param."
# How the docs and errors list the accepted spellings of the phone column.
PHONE_SPELLINGS = {
    "number-check": "phone, number, msisdn, mobile, userPhone, user_phone",
    "callbot-list": "userPhone, user_phone, phone",
}
# Contacts without a header: user_phone[,order_id[,user_name]].
POSITIONAL_CONTACT = ("user_phone", "order_id", "user_name")
_POSITIONAL_SPELLED = {f: f for f in POSITIONAL_CONTACT}
# The longest JSON array element read (characters); a contact with 64 params of 1 024
# characters is some 70 000.
MAX_ELEMENT_CHARS = 1 << 20
# How many distinct unknown JSON keys are remembered for the warning.
MAX_UNKNOWN = 20
_CHUNK = 1 << 16


def _norm(name: str) -> str:
    return "".join(c for c in name.strip().lower() if c not in "_- ")


@dataclass
class Row:
    line: int
    fields: dict[str, Any]  # model field -> value ("params": [{"name", "value"}, ...])
    spelled: dict[str, str]  # model field, or "params.<i>", -> the column or key as written
    frac: float  # of the file read so far
    error: str = ""  # the row cannot be read: "<column>: <reason>"
    value: str = ""  # the raw phone, for the rejects report (masked there)


@dataclass
class Reader:
    """One bulk file of `kind` (number-check or callbot-list); `rows()` streams it again on
    each call. `unknown` collects column names we do not use (from the header, or from the
    JSON objects read so far)."""

    path: str
    kind: str
    format: str  # csv, csv-header, jsonl, json
    header: list[tuple[str, str]] = field(default_factory=list)  # (field or "", as written)
    unknown: list[str] = field(default_factory=list)
    _spelled: dict[str, str] | None = None
    _columns_plan: list[tuple[str, str, str | None]] | None = None

    @property
    def columns(self) -> dict[str, str]:
        return NUMBER_COLUMNS if self.kind == "number-check" else CONTACT_COLUMNS

    def rows(self) -> Iterator[Row]:
        if self.format in ("csv", "csv-header"):
            yield from self._csv_rows()
        else:
            yield from self._json_rows()

    def phones(self) -> Iterator[tuple[int, Any, str, str, float]]:
        """Number checks: (line, phone value or None, its column as written, error, fraction)
        per row; the common CSV case without building a Row, a million rows being common."""
        if self.format not in ("csv", "csv-header"):
            for row in self.rows():
                phone = row.fields.get("phone")
                yield row.line, phone, row.spelled.get("phone", ""), row.error, row.frac
            return
        index, spelled = 0, "phone"
        if self.format == "csv-header":
            index = next(i for i, (target, _) in enumerate(self.header) if target == "phone")
            spelled = self.header[index][1]
        with _open(self.path) as (raw, text, size):
            reader = csv.reader(text)
            frac = 0.0
            header = self.format == "csv-header"
            try:
                for cells in reader:
                    if not any(cells):
                        continue
                    line = reader.line_num
                    if line & 4095 == 0:
                        frac = raw.tell() / size
                    cell = cells[index].strip() if index < len(cells) else ""
                    if not cell and not any(c.strip() for c in cells):
                        continue
                    if header:
                        header = False  # the first row that is not blank
                        continue
                    yield line, cell, spelled, f"{spelled}: empty" if not cell else "", frac
            except (csv.Error, UnicodeDecodeError) as exc:
                raise InvalidJob(
                    "file",
                    f"{self.path} line {reader.line_num + 1}: not readable as UTF-8 CSV ({exc})",
                ) from None

    # ---- CSV ---------------------------------------------------------------------------

    def _csv_rows(self) -> Iterator[Row]:
        with _open(self.path) as (raw, text, size):
            reader = csv.reader(text)
            frac = 0.0
            header = self.format == "csv-header"
            try:
                for cells in reader:
                    if not any(c.strip() for c in cells):
                        continue
                    line = reader.line_num
                    if line & 4095 == 0:
                        frac = raw.tell() / size
                    if header:
                        header = False  # the first row that is not blank
                        continue
                    if self.format == "csv-header":
                        yield self._headed(line, cells, frac)
                    else:
                        yield self._positional(line, cells, frac)
            except (csv.Error, UnicodeDecodeError) as exc:
                raise InvalidJob(
                    "file",
                    f"{self.path} line {reader.line_num + 1}: not readable as UTF-8 CSV ({exc})",
                ) from None

    def _positional(self, line: int, cells: list[str], frac: float) -> Row:
        if self.kind == "number-check":
            value = cells[0].strip()
            return Row(line, {"phone": value}, {"phone": "phone"}, frac, value=value)
        cells = [c.strip() for c in cells]
        row = Row(line, {}, _POSITIONAL_SPELLED, frac, value=cells[0])
        if len(cells) > len(POSITIONAL_CONTACT):
            row.error = (
                f"expected {','.join(POSITIONAL_CONTACT)} (or a header row), "
                f"got {len(cells)} columns"
            )
            return row
        for name, cell in zip(POSITIONAL_CONTACT, cells, strict=False):
            if cell:
                row.fields[name] = cell
        if not cells[0]:
            row.error = "user_phone: empty"
        return row

    def _headed(self, line: int, cells: list[str], frac: float) -> Row:
        # How the header spells each field: one dict for every row, copied only for params.
        spelled_by_field = self._spelled_by_field
        row = Row(line, {}, spelled_by_field, frac)
        extra = cells[len(self.header) :]
        if self.kind != "number-check" and any(c.strip() for c in extra):
            # A shifted row (an unquoted comma in a name?) would put values in the wrong fields.
            row.error = f"{len(cells)} columns, the header has {len(self.header)}"
        params: list[dict[str, str]] = []
        fields = row.fields
        for (target, spelled, param), cell in zip(self._plan, cells, strict=False):
            if not target:
                continue
            cell = cell.strip()
            if not cell:
                continue
            if param is None:
                fields[target] = cell
                continue
            if not params:
                row.spelled = dict(spelled_by_field)
            row.spelled[f"params.{len(params)}"] = spelled
            params.append({"name": param, "value": cell})
        if params:
            row.fields["params"] = params
        phone = "phone" if self.kind == "number-check" else "user_phone"
        row.value = row.fields.get(phone, "")
        if not row.error and not row.value:
            row.error = f"{spelled_by_field[phone]}: empty"
        return row

    @property
    def _spelled_by_field(self) -> dict[str, str]:
        if self._spelled is None:
            self._spelled = {t: s for t, s in self.header if t}
        return self._spelled

    @property
    def _plan(self) -> list[tuple[str, str, str | None]]:
        """Per header column: (field or "", as written, the param's name or None)."""
        if self._columns_plan is None:
            self._columns_plan = [
                (t, s, t[len(PARAM_PREFIX) :] if t.startswith(PARAM_PREFIX) else None)
                for t, s in self.header
            ]
        return self._columns_plan

    # ---- JSON --------------------------------------------------------------------------

    def _json_rows(self) -> Iterator[Row]:
        with _open(self.path) as (raw, text, size):
            read = _jsonl if self.format == "jsonl" else _array
            elements = read(text, self.path)
            frac = 0.0
            for n, (line, value, error) in enumerate(elements):
                if n & 1023 == 0:
                    frac = raw.tell() / size
                if error:
                    yield Row(line, {}, {}, frac, error=error)
                else:
                    yield self._object(line, value, frac)

    def _object(self, line: int, obj: Any, frac: float) -> Row:
        row = Row(line, {}, {}, frac)
        if self.kind == "number-check" and isinstance(obj, (str, int)):
            obj = {"phone": obj}  # a bare phone number is fine in a number-check file
        if not isinstance(obj, dict):
            row.error = f"expected a JSON object, got {_json_type(obj)}"
            return row
        params: list[dict[str, Any]] = []
        for key, value in obj.items():
            key = str(key)
            target = self.columns.get(_norm(key))
            if target is None and self.kind != "number-check":
                if key.strip().lower().startswith(PARAM_PREFIX):
                    name = key.strip()[len(PARAM_PREFIX) :]
                    params.append({"name": name, "value": value, "@": key})
                    continue
                if _norm(key) == "params":
                    if not self._params(row, key, value, params):
                        return row
                    continue
            if target is None:
                self._unknown(key)
                continue
            if target in row.fields:
                row.error = f"{key}: given twice (also as {row.spelled[target]})"
                return row
            row.fields[target] = _scalar(value)
            row.spelled[target] = key
        phone = row.fields.get("phone", row.fields.get("user_phone"))
        row.value = phone if isinstance(phone, str) else ""
        kept: list[dict[str, Any]] = []
        seen: dict[str, str] = {}
        for param in params:
            spelled = param.pop("@")
            name, value = param["name"], _scalar(param["value"])
            if value in ("", None):
                continue
            if name in seen:
                row.error = f"{spelled}: param {name!r} given twice (also as {seen[name]})"
                return row
            seen[name] = spelled
            row.spelled[f"params.{len(kept)}"] = spelled
            kept.append({"name": name, "value": value})
        if kept:
            row.fields["params"] = kept
        return row

    def _params(self, row: Row, key: str, value: Any, out: list[dict[str, Any]]) -> bool:
        if isinstance(value, dict):
            out += [{"name": str(k), "value": v, "@": f"{key}.{k}"} for k, v in value.items()]
            return True
        if isinstance(value, list) and all(
            isinstance(p, dict) and set(p) == {"name", "value"} for p in value
        ):
            out += [{**p, "@": f"{key}.{i}"} for i, p in enumerate(value)]
            return True
        row.error = f'{key}: expected an object {{name: value}} or a list of {{"name", "value"}}'
        return False

    def _unknown(self, key: str) -> None:
        if key not in self.unknown and len(self.unknown) < MAX_UNKNOWN:
            self.unknown.append(key)


def _scalar(value: Any) -> Any:
    """JSON numbers that CRM exports write for phones and ids, as the strings the model wants."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    return "a number" if not isinstance(value, bool) else "true/false"


class _open:
    """(raw binary file, UTF-8 text over it, size) of `path`, or InvalidJob naming it."""

    def __init__(self, path: str):
        try:
            self.size = os.path.getsize(path) or 1
            self.raw = open(path, "rb")
        except OSError as exc:
            raise InvalidJob("file", f"cannot read {path}: {exc.strerror}") from None
        self.text = io.TextIOWrapper(self.raw, encoding="utf-8-sig", newline="")

    def __enter__(self) -> tuple[IO[bytes], io.TextIOWrapper, int]:
        return self.raw, self.text, self.size

    def __exit__(self, *_exc: object) -> None:
        self.text.close()


def _jsonl(text: io.TextIOWrapper, path: str) -> Iterator[tuple[int, Any, str]]:
    line = 0
    try:
        for raw_line in text:
            line += 1
            if not raw_line.strip():
                continue
            try:
                yield line, json.loads(raw_line), ""
            except json.JSONDecodeError as exc:
                yield line, None, f"not valid JSON ({exc.msg} at column {exc.colno})"
    except UnicodeDecodeError as exc:
        raise InvalidJob("file", f"{path} line {line + 1}: not readable as UTF-8 ({exc})") from None


def _array(text: io.TextIOWrapper, path: str) -> Iterator[tuple[int, Any, str]]:
    """Each element of the JSON array in `text` as (line it starts on, value, ""), decoding one
    element at a time from a buffer refilled as needed."""
    decoder = json.JSONDecoder()
    buf, pos, line, eof = "", 0, 1, False

    def fail(message: str) -> InvalidJob:
        return InvalidJob("file", f"{path} line {line}: {message}")

    def fill() -> bool:
        nonlocal buf, pos, eof
        if eof:
            return False
        try:
            chunk = text.read(_CHUNK)
        except UnicodeDecodeError as exc:
            raise fail(f"not readable as UTF-8 ({exc})") from None
        if not chunk:
            eof = True
            return False
        buf, pos = buf[pos:] + chunk, 0
        return True

    def advance(to: int) -> None:
        nonlocal pos, line
        line += buf.count("\n", pos, to)
        pos = to

    def next_char() -> str:
        """The next character that is not a space ('' at the end), not consumed."""
        while True:
            end = len(buf)
            i = pos
            while i < end and buf[i] in " \t\r\n":
                i += 1
            advance(i)
            if pos < len(buf):
                return buf[pos]
            if not fill():
                return ""

    if next_char() != "[":
        raise fail("expected a JSON array of objects")
    advance(pos + 1)
    first = True
    while True:
        c = next_char()
        if c == "]" and first:
            advance(pos + 1)
            break
        if not c:
            raise fail("the array is not closed (']' missing)")
        while True:
            try:
                value, end = decoder.raw_decode(buf, pos)
            except json.JSONDecodeError as exc:
                if eof or len(buf) - pos > MAX_ELEMENT_CHARS:
                    advance(min(exc.pos, len(buf)))
                    raise fail(f"not valid JSON ({exc.msg})") from None
                fill()  # the element may go on in the next chunk
                continue
            # A number or word at the end of the buffer may go on in the next chunk too.
            if end < len(buf) or not fill():
                break
        start = line
        advance(end)
        yield start, value, ""
        first = False
        c = next_char()
        if c == ",":
            advance(pos + 1)
            continue
        if c == "]":
            advance(pos + 1)
            break
        raise fail(f"expected ',' or ']' after an element, got {c!r}" if c else "']' missing")
    if next_char():
        raise fail("more after the end of the array")


def _sniff(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext in (".jsonl", ".ndjson"):
        return "jsonl"
    with _open(path) as (_raw, text, _size):
        try:
            head = text.read(_CHUNK).lstrip()
        except UnicodeDecodeError as exc:
            raise InvalidJob("file", f"{path}: not readable as UTF-8 ({exc})") from None
    if head.startswith("[") or (ext == ".json" and not head.startswith("{")):
        return "json"
    if head.startswith("{"):
        return "jsonl"
    return "csv"


def open_reader(path: str, kind: str) -> Reader:
    """The reader of bulk file `path` for `kind`; InvalidJob (field `file`, naming the path)
    if it cannot be read or its header has no phone column, or gives a field twice."""
    reader = Reader(path, kind, _sniff(path))
    if reader.format != "csv":
        return reader
    first = _first_row(path)
    # Any name we know makes a header, in a number file too (a contacts export without a phone).
    if first is None or not _is_header(first, {**CONTACT_COLUMNS, **NUMBER_COLUMNS}, kind):
        return reader
    reader.format = "csv-header"
    given: dict[str, str] = {}
    for cell in first:
        spelled = cell.strip()
        target = reader.columns.get(_norm(spelled), "")
        if not target and kind != "number-check" and spelled.lower().startswith(PARAM_PREFIX):
            target = PARAM_PREFIX + spelled[len(PARAM_PREFIX) :].strip()
            if target == PARAM_PREFIX:
                raise InvalidJob("file", f"{path} line 1: column {spelled!r} names no param")
        if target and target in given:
            raise InvalidJob(
                "file", f"{path} line 1: columns {given[target]!r} and {spelled!r} give one field"
            )
        if target:
            given[target] = spelled
        elif spelled:
            reader.unknown.append(spelled)
        reader.header.append((target, spelled))
    phone = "phone" if kind == "number-check" else "user_phone"
    if phone not in given:
        raise InvalidJob(
            "file",
            f"{path} line 1: the header has no phone column; name it one of "
            f"{PHONE_SPELLINGS[kind]}",
        )
    return reader


def _first_row(path: str) -> list[str] | None:
    with _open(path) as (_raw, text, _size):
        try:
            for cells in csv.reader(text):
                if any(c.strip() for c in cells):
                    return cells
        except (csv.Error, UnicodeDecodeError):
            return None  # the rows themselves report it, with its line
    return None


def _is_header(cells: list[str], columns: dict[str, str], kind: str) -> bool:
    """A first row is a header when a cell is a known column name and none is a phone."""
    known = False
    for cell in cells:
        spelled = cell.strip()
        if _norm(spelled) in columns or (
            kind != "number-check" and spelled.lower().startswith(PARAM_PREFIX)
        ):
            known = True
        try:
            _phone(spelled)
            return False
        except ValueError:
            pass
    return known
