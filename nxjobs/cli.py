"""`nxjobs` command line: worker, callbacks, dead, callbot, submit, status, wait.

Exit codes: 0 success; 1 a job failed, timed out or was not found; 2 bad input
(nothing was enqueued) or bad configuration; 3 Redis unreachable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from nxjobs.jobs import KINDS, InvalidJob
from nxjobs.records import JobRecord, JobState

EXIT_OK, EXIT_JOB, EXIT_INPUT, EXIT_REDIS = 0, 1, 2, 3
# States a job ends in without getting anywhere `wait` waits for.
_ENDED = frozenset({JobState.FAILED.value, JobState.CANCELLED.value})


class CliError(Exception):
    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def _error(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


# ---- worker ---------------------------------------------------------------


def cmd_worker(rest: list[str]) -> int:
    """Run `python -m workers worker ...` from wherever the service packages live."""
    env = dict(os.environ)
    if find_spec("workers") is None:
        # Editable checkout: the service packages sit next to the nxjobs package.
        root = Path(__file__).resolve().parent.parent
        if not (root / "workers" / "__main__.py").exists():
            return _error(
                "the service packages (workers/, tasks/, config/) are not importable here; "
                "run from the project root or the container workdir",
                EXIT_INPUT,
            )
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    argv = [sys.executable, "-m", "workers", "worker", *rest]
    os.execvpe(argv[0], argv, env)
    return EXIT_OK  # not reached


def _service_env() -> dict[str, str] | None:
    """The environment that makes the service packages importable, or None if they are not here."""
    env = dict(os.environ)
    if find_spec("workers") is None:
        root = Path(__file__).resolve().parent.parent
        if not (root / "workers" / "__main__.py").exists():
            return None
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    return env


def cmd_callbacks(rest: list[str]) -> int:
    """`nxjobs callbacks [--host --port --workers]` runs the receiver;
    `nxjobs callbacks unmatched` lists; `nxjobs callbacks JOB_ID` pages through a job's."""
    if rest and rest[0] == "unmatched":
        return cmd_unmatched(rest[1:])
    if rest and not rest[0].startswith("-"):
        return cmd_job_callbacks(rest)
    env = _service_env()
    if env is None:
        return _error(
            "the service packages (workers/, config/) are not importable here; "
            "run from the project root or the container workdir",
            EXIT_INPUT,
        )
    argv = [sys.executable, "-m", "workers.web", *rest]
    os.execvpe(argv[0], argv, env)
    return EXIT_OK  # not reached


def cmd_unmatched(rest: list[str]) -> int:
    """Print the newest callbacks that matched no job (phones masked, no secrets)."""
    p = argparse.ArgumentParser(
        prog="nxjobs callbacks unmatched",
        description="List callbacks that matched no job, newest first.",
    )
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(rest)
    import redis

    from nxjobs.callbacks.ledger import Ledger
    from nxjobs.producers import ProducerSettings
    from nxjobs.redis_conn import describe

    settings = ProducerSettings()
    url = settings.target(settings.redis_url, settings.redis_sentinel_master)
    try:
        client = url.connect()
        ledger = Ledger(client)
        rows = ledger.unmatched(args.limit)
        total = ledger.unmatched_count()
    except redis.RedisError as exc:
        return _error(f"cannot reach Redis at {describe(url)}: {exc}", EXIT_REDIS)
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return EXIT_OK
    print(f"{total} unmatched callback(s); newest {len(rows)}:")
    for row in rows:
        ids = " ".join(f"{k}={v}" for k, v in (row.get("ids") or {}).items() if v is not None)
        repeats = f"  (x{row['repeats']})" if row.get("repeats", 1) > 1 else ""
        print(
            f"{row.get('received_at')}  {row.get('type'):<14} {row.get('source'):<9} {ids}  "
            f"[{row.get('reason')}]{repeats}"
        )
    return EXIT_OK


def cmd_job_callbacks(rest: list[str]) -> int:
    """Print one page of a job's callbacks, oldest first, and the cursor of the next."""
    p = argparse.ArgumentParser(
        prog="nxjobs callbacks",
        description="Page through one job's callbacks, oldest first.",
    )
    p.add_argument("job_id")
    p.add_argument("--cursor", default="0", help="0 for the first page (default), then the next")
    p.add_argument("--limit", type=int, default=50, help="callbacks per page (1..1000, default 50)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(rest)
    import redis

    from nxjobs.correlate import callback_outcome
    from nxjobs.producers import Producer
    from nxjobs.redis_conn import RedisUnavailable
    from nxjobs.store import MAX_PAGE, InvalidCursor

    if not 1 <= args.limit <= MAX_PAGE:
        return _error(f"--limit must be 1..{MAX_PAGE}, not {args.limit}", EXIT_INPUT)
    try:
        with Producer() as producer:
            page = producer.callbacks(args.job_id, args.cursor, args.limit)
    except InvalidCursor as exc:
        return _error(str(exc), EXIT_INPUT)
    except RedisUnavailable as exc:
        return _error(str(exc), EXIT_REDIS)
    except redis.RedisError as exc:
        return _error(f"Redis error: {exc}", EXIT_REDIS)
    if page is None:
        return _error(f"job {args.job_id} not found", EXIT_JOB)
    if args.json:
        body = {
            "job_id": args.job_id,
            "total": page.total,
            "next_cursor": page.next_cursor,
            "callbacks": page.callbacks,
        }
        print(json.dumps(body, ensure_ascii=False, indent=2))
        return EXIT_OK
    for entry in page.callbacks:
        outcome = callback_outcome(str(entry.get("type") or ""), entry.get("data") or {})
        print(f"{entry.get('received_at')}  {entry.get('source'):<9} {outcome}")
    more = f"; next: --cursor {page.next_cursor}" if page.next_cursor else "; no more"
    print(f"{len(page.callbacks)} of {page.total} callback(s){more}")
    return EXIT_OK


# ---- submit ---------------------------------------------------------------


def _add_submit_parser(sub) -> None:
    p = sub.add_parser(
        "submit",
        help="validate and enqueue one job; prints its id",
        description="Kinds: " + ", ".join(KINDS) + ". Use --payload for raw JSON input.",
    )
    p.add_argument("kind", help="job kind: " + ", ".join(KINDS))
    p.add_argument(
        "--json", action="store_true", help="print the stored job record instead of the id"
    )
    p.add_argument(
        "--payload", help="the whole job input as a JSON object (overrides the options below)"
    )
    when = p.add_mutually_exclusive_group()
    when.add_argument(
        "--at",
        metavar="ISO8601",
        help="schedule: run at this time, with its time zone (e.g. 2026-12-24T09:00:00+08:00); "
        "a time already past runs now",
    )
    when.add_argument(
        "--in",
        dest="in_",
        metavar="DURATION",
        help="schedule: run this long from now (90s, 30m, 2h, 1d)",
    )
    p.add_argument(
        "--notify-url",
        metavar="URL",
        help="POST this job's end here too, signed (docs/notifications.md)",
    )
    p.add_argument(
        "--phone", action="append", help="phone with country code (repeat for number-check)"
    )
    p.add_argument("--order-id", help="call: 4-32 letters/digits (default: the job id)")
    p.add_argument("--show-phone", help="call: caller id to display")
    p.add_argument(
        "--calling-hours",
        metavar="HH:MM-HH:MM",
        help="call, callbot-list: the callee-local window, inside the configured calling hours",
    )
    p.add_argument("--check-level", type=int, help="number-check: 1 basic, 4 call, 5 HLR")
    p.add_argument("--batch-no", help="number-check: batch number (default: the job id)")
    p.add_argument(
        "--no-batch",
        dest="batch",
        action="store_false",
        help="number-check, callbot-contact: send a one-number check (one contact) in a request of "
        "its own at once, instead of sharing one with others "
        "(up to NXJOBS_COALESCE__LINGER_S later)",
    )
    p.add_argument("--user-ip", help="ota-init: IP address of the user's device")
    p.add_argument("--business-phone", help="wa-calling: WhatsApp business phone")
    p.add_argument("--scene-id", help="callbot-list: script template id")
    p.add_argument("--task-name", help="callbot-list: task name")
    p.add_argument(
        "--contact",
        action="append",
        metavar="PHONE[,ORDER_ID[,NAME]]",
        help="callbot-list: one contact (repeatable); callbot-contact: the contact (once; order id "
        "default: the job id)",
    )
    p.add_argument(
        "--user-task-id",
        help="callbot-contact: userTaskID of the existing Callbot task to add to "
        "(e.g. a callbot-list job's id)",
    )
    p.add_argument(
        "--contacts",
        metavar="FILE",
        help="callbot-list: contacts file: CSV with a header naming its columns (userPhone, "
        "orderID, userName, param.<name>; any order, other columns ignored) or without one "
        "(user_phone[,order_id[,user_name]]), or JSON lines / a JSON array of contact objects "
        "(any size: split into jobs of --per-job contacts)",
    )
    p.add_argument(
        "--file",
        metavar="FILE",
        help="number-check: CSV, one phone per row (first column, or the one a header names "
        "phone), or JSON lines / a JSON array (any size: split into jobs of 5 000)",
    )
    p.add_argument(
        "--per-job",
        type=int,
        metavar="N",
        help="file input: rows per job (default: the kind's maximum, "
        "5 000 phones or 100 000 contacts)",
    )
    p.add_argument(
        "--max-rejects",
        type=int,
        default=0,
        metavar="N",
        help="file input: enqueue nothing if more than N rows are rejected (default 0)",
    )
    p.add_argument(
        "--skip-invalid",
        action="store_true",
        help="file input: enqueue the valid rows however many are rejected",
    )
    p.add_argument(
        "--rejects",
        metavar="FILE",
        help="file input: write rejected rows (line,value,reason) here "
        "(default: FILE.rejects.csv next to the input, only if any)",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="file input: progress bar on stderr (default: when stderr is a terminal)",
    )
    p.add_argument("--strategy-name", help="callbot-list: dialling strategy name")
    for name in ("task", "order", "call"):
        p.add_argument(f"--{name}-callback-url", help=f"callbot-list: {name} callback URL")


def _payload_from_args(args: argparse.Namespace) -> dict[str, Any]:
    if args.payload is not None:
        try:
            payload = json.loads(args.payload)
        except json.JSONDecodeError as exc:
            raise InvalidJob(
                "payload", f"not valid JSON ({exc.msg} at position {exc.pos})"
            ) from None
        if not isinstance(payload, dict):
            raise InvalidJob("payload", "must be a JSON object")
        return payload
    kind = args.kind
    phones = args.phone or []
    out: dict[str, Any] = {}
    if kind == "call":
        out = {
            "phone": phones[0] if phones else None,
            "order_id": args.order_id,
            "show_phone": args.show_phone,
            "calling_hours": args.calling_hours,
        }
        _only_one(phones, "phone")
    elif kind == "number-check":
        out = {
            "phones": [p for arg in phones for p in arg.split(",") if p] or None,
            "check_level": args.check_level,
            "batch_no": args.batch_no,
        }
    elif kind == "ota-init":
        out = {"phone": phones[0] if phones else None, "user_ip": args.user_ip}
        _only_one(phones, "phone")
    elif kind == "wa-calling":
        out = {"business_phone": args.business_phone}
    elif kind == "callbot-list":
        contacts = [_contact(c.split(",")) for c in (args.contact or [])]
        out = {
            "scene_id": args.scene_id,
            "task_name": args.task_name,
            "contacts": contacts or None,
            "strategy_name": args.strategy_name,
            "task_callback_url": args.task_callback_url,
            "order_callback_url": args.order_callback_url,
            "call_callback_url": args.call_callback_url,
            "calling_hours": args.calling_hours,
        }
    elif kind == "callbot-contact":
        contacts = [_contact(c.split(",")) for c in (args.contact or [])]
        _only_one(args.contact or [], "contact")
        out = {"user_task_id": args.user_task_id, "contact": contacts[0] if contacts else None}
    return {k: v for k, v in out.items() if v is not None}


def _only_one(values: list[str], field: str) -> None:
    if len(values) > 1:
        raise InvalidJob(field, "give it once for this kind")


def _contact(cols: list[str]) -> dict[str, Any]:
    cols = [c.strip() for c in cols]
    contact: dict[str, Any] = {"user_phone": cols[0]}
    if len(cols) > 1 and cols[1]:
        contact["order_id"] = cols[1]
    if len(cols) > 2:
        contact["user_name"] = cols[2]
    return contact


def _submit_file(args: argparse.Namespace) -> int:
    """Bulk: stream-validate the whole file, report rejected rows, then enqueue its rows as jobs."""
    from nxjobs import bulk
    from nxjobs.producers import Producer

    kind = args.kind
    path = args.file if kind == "number-check" else args.contacts
    if kind == "number-check":
        if args.phone:
            raise InvalidJob("phone", "give phones with --phone or --file, not both")
        make = bulk.number_check_payload(args.check_level, args.batch_no)
    else:
        if args.contact:
            raise InvalidJob("contact", "give contacts with --contact or --contacts, not both")
        base = {
            k: v
            for k, v in {
                "scene_id": args.scene_id,
                "task_name": args.task_name,
                "strategy_name": args.strategy_name,
                "task_callback_url": args.task_callback_url,
                "order_callback_url": args.order_callback_url,
                "call_callback_url": args.call_callback_url,
                "calling_hours": args.calling_hours,
            }.items()
            if v is not None
        }
        for name in ("scene_id", "task_name"):
            if name not in base:
                raise InvalidJob(name, "required")
        make = bulk.callbot_payload(base)
        # Check the job-level fields once, before reading a million rows.
        from nxjobs.jobs import validate_payload

        validate_payload(kind, make([{"user_phone": "8613800138000"}], 1, 1))
    limit = bulk.MAX_PER_JOB[kind]
    per_job = args.per_job or limit
    if not 1 <= per_job <= limit:
        raise InvalidJob("per_job", f"must be 1..{limit}")
    rejects_path = args.rejects or f"{path}.rejects.csv"
    progress = bulk.Progress(sys.stderr.isatty() if args.progress is None else args.progress)
    with Producer() as producer:
        result = bulk.submit_file(
            producer,
            kind,
            path,
            make_payload=make,
            per_job=per_job,
            max_rejects=None if args.skip_invalid else args.max_rejects,
            rejects_path=rejects_path,
            progress=progress,
            on_job=lambda job_id: print(job_id, flush=True),
            warn=lambda message: print(f"warning: {message}", file=sys.stderr),
        )
    rej = result.rejects
    for line, value, reason in rej.first:
        shown = f" (value {value!r})" if value else ""
        print(f"rejected: {path} line {line}: {reason}{shown}", file=sys.stderr)
    if rej.count > len(rej.first):
        print(f"rejected: ... {rej.count - len(rej.first):,} more", file=sys.stderr)
    if rej.count:
        print(
            f"rejected rows: {rej_count_text(rej.count)} written to {rejects_path}", file=sys.stderr
        )
    if not result.enqueued:
        return _error(
            f"{path}: {rej.count:,} of {result.rows:,} rows rejected (more than --max-rejects "
            f"{args.max_rejects}); nothing was enqueued",
            EXIT_INPUT,
        )
    print(
        f"{path}: {result.valid:,} of {result.rows:,} rows enqueued as "
        f"{len(result.job_ids):,} {kind} job(s)"
        f"{f', {rej.count:,} rejected' if rej.count else ''}",
        file=sys.stderr,
    )
    return EXIT_OK


def rej_count_text(n: int) -> str:
    return f"{n:,} row{'s' if n != 1 else ''}"


def _when(args: argparse.Namespace) -> tuple[datetime | None, float | None]:
    """--at (ISO 8601 with a time zone) or --in (a duration), for Producer.enqueue."""
    from nxjobs.schedule import parse_duration

    if args.in_ is not None:
        return None, parse_duration(args.in_, "--in")
    if args.at is None:
        return None, None
    try:
        at = datetime.fromisoformat(args.at.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidJob("--at", f"{args.at!r} is not an ISO 8601 time") from None
    if at.tzinfo is None:
        raise InvalidJob("--at", "needs a time zone (e.g. 2026-12-24T09:00:00+08:00)")
    return at, None


def cmd_submit(args: argparse.Namespace) -> int:
    from nxjobs.jobs import get_kind
    from nxjobs.producers import Producer

    get_kind(args.kind)
    if (args.kind == "number-check" and args.file) or (
        args.kind == "callbot-list" and args.contacts
    ):
        if args.at is not None or args.in_ is not None:
            raise InvalidJob("--at", "file input is enqueued now: --at / --in are for one job")
        if args.notify_url is not None:
            raise InvalidJob("--notify-url", "is for one job; a file's jobs use NXJOBS_NOTIFY__URL")
        return _submit_file(args)
    if args.file or args.contacts:
        raise InvalidJob("file", "--file is for number-check, --contacts for callbot-list")
    at, delay_s = _when(args)
    payload = _payload_from_args(args)
    with Producer() as producer:
        job_id = producer.enqueue(
            args.kind,
            payload,
            batch=args.batch,
            at=at,
            delay_s=delay_s,
            notify_url=args.notify_url,
        )
        if args.json:
            _print_record(producer.get(job_id), as_json=True)
        else:
            print(job_id)
            if args.kind == "call" and producer.calling_hours is not None:
                _say_if_deferred(producer.get(job_id))
    return EXIT_OK


def _say_if_deferred(record: JobRecord | None) -> None:
    """On stderr (stdout stays the id): a call deferred to its calling hours' next opening."""
    note = record.schedule_note if record is not None else None
    if note and note.startswith("deferred: ") and record is not None:
        print(f"{note}; run_at={record.run_at}", file=sys.stderr)


# ---- status / wait --------------------------------------------------------


def _print_record(record: JobRecord | None, *, as_json: bool) -> None:
    if record is None:
        return
    if as_json:
        print(json.dumps(record.model_dump(mode="json"), ensure_ascii=False, indent=2))
        return
    line = f"{record.id}  {record.kind:<15} {record.state.value:<9} attempts={record.attempts}"
    if record.run_at:
        line += f"  run_at={record.run_at}"
    if record.cancelled_from:
        line += f"  cancelled_from={record.cancelled_from}"
    if record.error:
        line += f"  error={record.error.code}: {record.error.message}"
    elif record.result:
        ids = {
            k: v
            for k, v in record.result.items()
            if k
            in ("orderid", "sessionid", "requestId", "taskID", "batchNo", "userTaskID", "orderID")
        }
        line += "  " + " ".join(f"{k}={v}" for k, v in ids.items())
        tasks = record.result.get("tasks")
        if isinstance(tasks, list) and tasks:  # a callbot list split by time zone
            line += f" tasks={len(tasks)}"
    print(line)
    if record.schedule_note:
        print(f"  {record.schedule_note}")
    if record.callbacks_needed or record.callbacks_stored or record.callbacks_dropped:
        counts = " ".join(f"{k}={v}" for k, v in sorted(record.callbacks_summary.items()))
        dropped = f" dropped={record.callbacks_dropped}" if record.callbacks_dropped else ""
        paged = f"  (`nxjobs callbacks {record.id}` pages them)" if record.callbacks_paged else ""
        print(
            f"  callbacks {record.callbacks_done}/{record.callbacks_needed or 0} done, "
            f"{record.callbacks_stored} stored{dropped}  {counts}{paged}".rstrip()
        )
    if record.campaign:
        c = record.campaign
        last = (c.get("operations") or [{}])[-1]
        status = c.get("status") or "as started"  # only refused operations so far
        print(
            f"  campaign {status}  stopped_orders={c.get('stopped_orders', 0)}"
            f"  last: {last.get('op')} {last.get('outcome')} at {last.get('at')}"
        )


def cmd_status(args: argparse.Namespace) -> int:
    from nxjobs.producers import Producer

    with Producer() as producer:
        record = producer.get(args.job_id)
    if record is None:
        return _error(f"job {args.job_id} not found", EXIT_JOB)
    _print_record(record, as_json=args.json)
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    """Cancel each job not yet sent; 0 all cancelled, 1 some could not be (reason each), 2 bad
    input (nothing is cancelled then)."""
    from nxjobs.producers import Producer

    ids = list(args.job_ids)
    for job_id in ids:
        if not job_id or len(job_id) > 128 or not job_id.isprintable() or " " in job_id:
            raise InvalidJob("JOB_ID", f"not a job id: {job_id!r}")
    if len(set(ids)) != len(ids):
        ids = list(dict.fromkeys(ids))
    with Producer() as producer:
        answers = [producer.cancel(job_id, timeout_s=args.timeout) for job_id in ids]
    if args.json:
        print(json.dumps([a.as_dict() for a in answers], ensure_ascii=False, indent=2))
    else:
        for a in answers:
            mark = "cancelled" if a.cancelled else "not cancelled"
            print(f"{a.job_id}  {mark}: {a.reason}")
    return EXIT_OK if all(a.cancelled for a in answers) else EXIT_JOB


def cmd_coalesce_adopt(args: argparse.Namespace) -> int:
    from nxjobs.producers import Producer

    with Producer() as producer:
        groups = producer.coalesce.adopt_pending_lists()
    print(f"{len(groups)} group(s) with pending items: {' '.join(groups) or '-'}")
    return EXIT_OK


def cmd_wait(args: argparse.Namespace) -> int:
    from nxjobs.producers import Producer

    target = JobState(args.until)
    job_ids = _wait_ids(args)
    show = sys.stderr.isatty() if args.progress is None else args.progress
    with Producer() as producer:
        if show or len(job_ids) > _WAIT_FULL_MAX:
            states = _wait_live(producer, job_ids, target, args.timeout, show)
            if args.json or len(job_ids) <= _WAIT_FULL_MAX:
                records = producer.store.get_many(job_ids)
            else:
                return _wait_summary(states, target)
        else:
            records = producer.wait(job_ids, until=target, timeout_s=args.timeout)
    ok = True
    if args.json:
        print(
            json.dumps(
                {jid: (r.model_dump(mode="json") if r else None) for jid, r in records.items()},
                ensure_ascii=False,
                indent=2,
            )
        )
    for job_id, record in records.items():
        if record is None:
            print(f"error: job {job_id} not found", file=sys.stderr)
            ok = False
            continue
        if not args.json:
            _print_record(record, as_json=False)
        if not record.reached(target):
            ok = False
    return EXIT_OK if ok else EXIT_JOB


# More jobs than this: `wait` prints a summary (and the failed ones) instead of a line per job.
_WAIT_FULL_MAX = 100
_STATES = tuple(state.value for state in JobState)


def _wait_ids(args: argparse.Namespace) -> list[str]:
    ids = list(args.job_ids or [])
    if args.ids_file:
        try:
            fh = sys.stdin if args.ids_file == "-" else open(args.ids_file, encoding="utf-8")
            with fh:
                ids += [line.strip() for line in fh if line.strip()]
        except OSError as exc:
            raise InvalidJob("ids_file", f"cannot read {args.ids_file}: {exc.strerror}") from None
    if not ids:
        raise InvalidJob("job_ids", "give job ids as arguments or with --ids-file")
    return list(dict.fromkeys(ids))


def _wait_live(
    producer, job_ids: list[str], target: JobState, timeout_s: float, show: bool
) -> dict[str, tuple[str | None, int, int]]:
    """Poll (one pipelined HMGET per round, however many jobs) until all are done;
    redraw a progress line."""
    from nxjobs import keys
    from nxjobs.records import PROGRESS
    from nxjobs.store import member_counts

    started = time.monotonic()
    deadline = started + timeout_s
    while True:
        pipe = producer.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hmget(
                keys.job(job_id), "state", "callbacks_done", "callbacks_needed", "coalesce_batch"
            )
        states = {}
        for jid, (st, done, need, batch) in zip(job_ids, pipe.execute(), strict=True):
            done, need = member_counts(st, batch, done, need)
            states[jid] = (st, int(done), int(need))
        counts = {name: 0 for name in _STATES}
        missing = finished = cb_done = cb_need = 0
        for st, done, need in states.values():
            if st is None:
                missing += 1
                continue
            counts[st] = counts.get(st, 0) + 1
            cb_done, cb_need = cb_done + min(done, need), cb_need + need
            # A failed or cancelled job will not get further: done waiting (and bad, below).
            if st in _ENDED or PROGRESS.get(JobState(st), -1) >= PROGRESS[target]:
                finished += 1
        all_done = finished + missing == len(job_ids)
        if show:
            frac = finished / len(job_ids)
            parts = " ".join(f"{name} {counts[name]:,}" for name in _STATES if counts[name])
            cb = (
                f"  callbacks {cb_done:,}/{cb_need:,}"
                if target is JobState.COMPLETED and cb_need
                else ""
            )
            gone = f"  not found {missing:,}" if missing else ""
            sys.stderr.write(
                f"\r[{('=' * int(frac * 30)).ljust(30)}] "
                f"{finished:,}/{len(job_ids):,} {target.value}"
                f" or failed  ({parts}){cb}{gone}  {time.monotonic() - started:.0f}s\x1b[K"
            )
            sys.stderr.flush()
        if all_done or time.monotonic() >= deadline:
            if show:
                sys.stderr.write("\n")
            return states
        time.sleep(0.5 if len(job_ids) > 50 else 0.2)


def _wait_summary(states: dict[str, tuple[str | None, int, int]], target: JobState) -> int:
    """Many jobs: one line of counts, then each job that did not get there."""
    from nxjobs.records import PROGRESS

    counts: dict[str, int] = {}
    bad = []
    for job_id, (st, _done, _need) in states.items():
        counts[st or "not found"] = counts.get(st or "not found", 0) + 1
        if st is None or st in _ENDED or PROGRESS.get(JobState(st), -1) < PROGRESS[target]:
            bad.append((job_id, st or "not found"))
    print(f"{len(states):,} jobs: " + ", ".join(f"{n:,} {st}" for st, n in sorted(counts.items())))
    for job_id, st in bad:
        print(f"{job_id}  {st}")
    return EXIT_OK if not bad else EXIT_JOB


# ---- main -----------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nxjobs", description="NXCloud job workers on Celery + Redis"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "worker",
        help="start a Celery worker (events on); every celery worker option passes through "
        "(-Q, -c, -n, --pool, --autoscale, --max-tasks-per-child, ...; `worker --help`)",
        add_help=False,
    )
    sub.add_parser(
        "dead",
        help="dead letters: `dead list [--kind K] [--limit N] [--json]`, "
        "`dead replay JOB_ID | --all [--kind K]`, `dead purge [--kind K]`",
        add_help=False,
    )
    sub.add_parser(
        "suppress",
        help="the do-not-call list: `suppress add PHONE... | --file numbers.csv`, "
        "`suppress remove PHONE...`, `suppress check PHONE` (exit 0 listed, 1 not), "
        "`suppress count`",
        add_help=False,
    )
    sub.add_parser(
        "callbacks",
        help="run the callback receiver (--host, --port, --workers); "
        "`callbacks unmatched [--limit N] [--json]` lists callbacks matching no job; "
        "`callbacks JOB_ID [--cursor C] [--limit N] [--json]` pages through a job's callbacks",
        add_help=False,
    )
    sub.add_parser(
        "callbot",
        help="campaign control of a submitted callbot list: `callbot pause|resume JOB_ID`, "
        "`callbot complete JOB_ID [--delete-undialled]`, `callbot stop-contacts JOB_ID "
        "ORDER_ID...`, `callbot update JOB_ID --settings JSON` (docs/campaigns.md)",
        add_help=False,
    )
    _add_submit_parser(sub)
    sub.add_parser(
        "coalesce-adopt",
        help="once, after upgrading from a version without the coalesce groups set: "
        "add every group with pending items to it (one SCAN of the keyspace)",
    )
    p = sub.add_parser(
        "cancel",
        help="cancel jobs not yet sent (scheduled, queued, retrying) and submitted callbot lists "
        "(completed at the provider); exit 0 all cancelled, "
        "1 some could not be (each with its reason), 2 bad input",
    )
    p.add_argument("job_ids", nargs="+", metavar="JOB_ID")
    p.add_argument("--json", action="store_true", help="one JSON object per job")
    p.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds to wait for the provider to complete a submitted callbot list (default 60)",
    )
    p = sub.add_parser("status", help="print one job's record")
    p.add_argument("job_id")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser(
        "wait", help="wait until jobs reach a state; exit 0 only if all did without failing"
    )
    p.add_argument("job_ids", nargs="*", metavar="JOB_ID")
    p.add_argument(
        "--ids-file",
        metavar="FILE",
        help="also wait for the job ids in FILE, one a line ('-' = stdin), "
        "e.g. what `submit --file` printed",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="live progress line on stderr (default: when stderr is a terminal)",
    )
    p.add_argument(
        "--until",
        choices=[JobState.SUBMITTED.value, JobState.COMPLETED.value],
        default=JobState.SUBMITTED.value,
    )
    p.add_argument("--timeout", type=float, default=60.0, help="seconds (default 60)")
    p.add_argument("--json", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # worker owns its options; hand it everything after the name.
    if argv and argv[0] == "worker":
        return cmd_worker(argv[1:])
    if argv and argv[0] == "sandbox":
        # The fake NXCloud is not in the wheel (no producer should install a test double).
        return _error(
            "the sandbox is not part of the nxjobs package; "
            "run `python -m sandbox` from the repo root",
            EXIT_INPUT,
        )
    if argv and argv[0] == "callbacks":
        return cmd_callbacks(argv[1:])
    if argv and argv[0] == "suppress":
        from nxjobs.cli_suppress import cmd_suppress  # the do-not-call list commands live there

        return cmd_suppress(argv[1:])
    if argv and argv[0] == "callbot":
        from nxjobs.cli_campaign import cmd_callbot  # campaign control lives there

        return cmd_callbot(argv[1:])
    if argv and argv[0] == "dead":
        from nxjobs.cli_dead import cmd_dead  # the dead-letter commands live there

        return cmd_dead(argv[1:])
    args = build_parser().parse_args(argv)
    import redis

    from nxjobs.calling_hours import CallingHoursError
    from nxjobs.producers import EnqueueError
    from nxjobs.redis_conn import RedisUnavailable

    try:
        return {
            "submit": cmd_submit,
            "cancel": cmd_cancel,
            "status": cmd_status,
            "wait": cmd_wait,
            "coalesce-adopt": cmd_coalesce_adopt,
        }[args.command](args)
    except InvalidJob as exc:
        return _error(f"{exc.field}: {exc.message} (nothing was enqueued)", EXIT_INPUT)
    except CallingHoursError as exc:
        return _error(f"invalid setting {exc.field}: {exc.message}", EXIT_INPUT)
    except (RedisUnavailable, EnqueueError) as exc:
        return _error(str(exc), EXIT_REDIS)
    except redis.RedisError as exc:
        return _error(f"Redis error: {exc}", EXIT_REDIS)


if __name__ == "__main__":
    sys.exit(main())
