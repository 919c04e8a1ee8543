"""`nxjobs` command line: worker, sandbox, callbacks, submit, status, wait.

Exit codes: 0 success; 1 a job failed, timed out or was not found; 2 bad input
(nothing was enqueued) or bad configuration; 3 Redis unreachable.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from nxjobs.jobs import KINDS, InvalidJob
from nxjobs.records import JobRecord, JobState

EXIT_OK, EXIT_JOB, EXIT_INPUT, EXIT_REDIS = 0, 1, 2, 3


class CliError(Exception):
    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def _error(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


# ---- worker / sandbox -----------------------------------------------------

def cmd_worker(rest: list[str]) -> int:
    """Run `python -m workers worker ...` from wherever the service packages live."""
    env = dict(os.environ)
    if find_spec("workers") is None:
        # Editable checkout: the service packages sit next to the nxjobs package.
        root = Path(__file__).resolve().parent.parent
        if not (root / "workers" / "__main__.py").exists():
            return _error("the service packages (workers/, tasks/, config/) are not importable here; "
                          "run from the project root or the container workdir", EXIT_INPUT)
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
    """`nxjobs callbacks [--host --port --workers]` runs the receiver; `nxjobs callbacks unmatched` lists."""
    if rest and rest[0] == "unmatched":
        return cmd_unmatched(rest[1:])
    env = _service_env()
    if env is None:
        return _error("the service packages (workers/, config/) are not importable here; "
                      "run from the project root or the container workdir", EXIT_INPUT)
    argv = [sys.executable, "-m", "workers.web", *rest]
    os.execvpe(argv[0], argv, env)
    return EXIT_OK  # not reached


def cmd_unmatched(rest: list[str]) -> int:
    """Print the newest callbacks that matched no job (phones masked, no secrets)."""
    p = argparse.ArgumentParser(prog="nxjobs callbacks unmatched",
                                description="List callbacks that matched no job, newest first.")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(rest)
    import redis

    from nxjobs import keys
    from nxjobs.callbacks.ledger import Ledger
    from nxjobs.producers import ProducerSettings
    from nxjobs.redis_conn import connect, describe

    url = ProducerSettings().redis_url
    try:
        client = connect(url)
        rows = Ledger(client).unmatched(args.limit)
        total = client.llen(keys.CALLBACKS_UNMATCHED)
    except redis.RedisError as exc:
        return _error(f"cannot reach Redis at {describe(url)}: {exc}", EXIT_REDIS)
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return EXIT_OK
    print(f"{total} unmatched callback(s); newest {len(rows)}:")
    for row in rows:
        ids = " ".join(f"{k}={v}" for k, v in (row.get("ids") or {}).items() if v is not None)
        print(f"{row.get('received_at')}  {row.get('type'):<14} {row.get('source'):<9} {ids}")
    return EXIT_OK


def cmd_sandbox(rest: list[str]) -> int:
    from nxjobs.sandbox.server import run

    return run(rest)


# ---- submit ---------------------------------------------------------------

def _add_submit_parser(sub) -> None:
    p = sub.add_parser("submit", help="validate and enqueue one job; prints its id",
                       description="Kinds: " + ", ".join(KINDS) + ". Use --payload for raw JSON input.")
    p.add_argument("kind", help="job kind: " + ", ".join(KINDS))
    p.add_argument("--json", action="store_true", help="print the stored job record instead of the id")
    p.add_argument("--payload", help="the whole job input as a JSON object (overrides the options below)")
    p.add_argument("--phone", action="append", help="phone with country code (repeat for number-check)")
    p.add_argument("--order-id", help="call: 4-32 letters/digits (default: the job id)")
    p.add_argument("--show-phone", help="call: caller id to display")
    p.add_argument("--check-level", type=int, help="number-check: 1 basic, 4 call, 5 HLR")
    p.add_argument("--batch-no", help="number-check: batch number (default: the job id)")
    p.add_argument("--user-ip", help="ota-init: IP address of the user's device")
    p.add_argument("--business-phone", help="wa-calling: WhatsApp business phone")
    p.add_argument("--scene-id", help="callbot-list: script template id")
    p.add_argument("--task-name", help="callbot-list: task name")
    p.add_argument("--contact", action="append", metavar="PHONE[,ORDER_ID[,NAME]]",
                   help="callbot-list: one contact (repeatable)")
    p.add_argument("--contacts", metavar="FILE", help="callbot-list: CSV with user_phone[,order_id,user_name]")
    p.add_argument("--strategy-name", help="callbot-list: dialling strategy name")
    for name in ("task", "order", "call"):
        p.add_argument(f"--{name}-callback-url", help=f"callbot-list: {name} callback URL")


def _payload_from_args(args: argparse.Namespace) -> dict[str, Any]:
    if args.payload is not None:
        try:
            payload = json.loads(args.payload)
        except ValueError as exc:
            raise InvalidJob("payload", f"not valid JSON ({exc.msg} at position {exc.pos})") from None
        if not isinstance(payload, dict):
            raise InvalidJob("payload", "must be a JSON object")
        return payload
    kind = args.kind
    phones = args.phone or []
    out: dict[str, Any] = {}
    if kind == "call":
        out = {"phone": phones[0] if phones else None, "order_id": args.order_id, "show_phone": args.show_phone}
        _only_one(phones, "phone")
    elif kind == "number-check":
        out = {"phones": [p for arg in phones for p in arg.split(",") if p] or None,
               "check_level": args.check_level, "batch_no": args.batch_no}
    elif kind == "ota-init":
        out = {"phone": phones[0] if phones else None, "user_ip": args.user_ip}
        _only_one(phones, "phone")
    elif kind == "wa-calling":
        out = {"business_phone": args.business_phone}
    elif kind == "callbot-list":
        contacts = [_contact(c.split(",")) for c in (args.contact or [])]
        if args.contacts:
            contacts += _contacts_file(args.contacts)
        out = {"scene_id": args.scene_id, "task_name": args.task_name, "contacts": contacts or None,
               "strategy_name": args.strategy_name, "task_callback_url": args.task_callback_url,
               "order_callback_url": args.order_callback_url, "call_callback_url": args.call_callback_url}
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


def _contacts_file(path: str) -> list[dict[str, Any]]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.reader(fh) if r and any(c.strip() for c in r)]
    except OSError as exc:
        raise InvalidJob("contacts", f"cannot read {path}: {exc.strerror}") from None
    if rows and rows[0] and rows[0][0].strip().lower() in ("user_phone", "phone", "userphone"):
        rows = rows[1:]
    return [_contact(r) for r in rows]


def cmd_submit(args: argparse.Namespace) -> int:
    from nxjobs.jobs import get_kind
    from nxjobs.producers import Producer

    get_kind(args.kind)
    payload = _payload_from_args(args)
    with Producer() as producer:
        job_id = producer.enqueue(args.kind, payload)
        if args.json:
            _print_record(producer.get(job_id), as_json=True)
        else:
            print(job_id)
    return EXIT_OK


# ---- status / wait --------------------------------------------------------

def _print_record(record: JobRecord | None, *, as_json: bool) -> None:
    if record is None:
        return
    if as_json:
        print(json.dumps(record.model_dump(mode="json"), ensure_ascii=False, indent=2))
        return
    line = f"{record.id}  {record.kind:<13} {record.state.value:<9} attempts={record.attempts}"
    if record.error:
        line += f"  error={record.error.code}: {record.error.message}"
    elif record.result:
        ids = {k: v for k, v in record.result.items() if k in ("orderid", "sessionid", "requestId", "taskID",
                                                              "batchNo", "userTaskID")}
        line += "  " + " ".join(f"{k}={v}" for k, v in ids.items())
    print(line)


def cmd_status(args: argparse.Namespace) -> int:
    from nxjobs.producers import Producer

    with Producer() as producer:
        record = producer.get(args.job_id)
    if record is None:
        return _error(f"job {args.job_id} not found", EXIT_JOB)
    _print_record(record, as_json=args.json)
    return EXIT_OK


def cmd_wait(args: argparse.Namespace) -> int:
    from nxjobs.producers import Producer

    target = JobState(args.until)
    with Producer() as producer:
        records = producer.wait(args.job_ids, until=target, timeout_s=args.timeout)
    ok = True
    if args.json:
        print(json.dumps({jid: (r.model_dump(mode="json") if r else None) for jid, r in records.items()},
                         ensure_ascii=False, indent=2))
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


# ---- main -----------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nxjobs", description="NXCloud job workers on Celery + Redis")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("worker", help="start a Celery worker (events on); options pass through: -Q, -c, --pool",
                   add_help=False)
    sub.add_parser("sandbox", help="run the local NXCloud sandbox (--host, --port, fault options)", add_help=False)
    sub.add_parser("callbacks", help="run the callback receiver (--host, --port, --workers); "
                                     "`callbacks unmatched [--limit N] [--json]` lists callbacks matching no job",
                   add_help=False)
    _add_submit_parser(sub)
    p = sub.add_parser("status", help="print one job's record")
    p.add_argument("job_id")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("wait", help="wait until jobs reach a state; exit 0 only if all did without failing")
    p.add_argument("job_ids", nargs="+", metavar="JOB_ID")
    p.add_argument("--until", choices=[JobState.SUBMITTED.value, JobState.COMPLETED.value],
                   default=JobState.SUBMITTED.value)
    p.add_argument("--timeout", type=float, default=60.0, help="seconds (default 60)")
    p.add_argument("--json", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # worker and sandbox own their options; hand them everything after the name.
    if argv and argv[0] == "worker":
        return cmd_worker(argv[1:])
    if argv and argv[0] == "sandbox":
        return cmd_sandbox(argv[1:])
    if argv and argv[0] == "callbacks":
        return cmd_callbacks(argv[1:])
    args = build_parser().parse_args(argv)
    from nxjobs.producers import EnqueueError
    from nxjobs.redis_conn import RedisUnavailable
    import redis

    try:
        return {"submit": cmd_submit, "status": cmd_status, "wait": cmd_wait}[args.command](args)
    except InvalidJob as exc:
        return _error(f"{exc.field}: {exc.message} (nothing was enqueued)", EXIT_INPUT)
    except (RedisUnavailable, EnqueueError) as exc:
        return _error(str(exc), EXIT_REDIS)
    except redis.RedisError as exc:
        return _error(f"Redis error: {exc}", EXIT_REDIS)


if __name__ == "__main__":
    sys.exit(main())
