"""`nxjobs callbot pause|resume|complete|stop-contacts|update JOB_ID ...`: campaign control of a
submitted callbot list (nxjobs.campaign, docs/campaigns.md). Each command enqueues the operation,
waits for a callbot worker to record the provider's answer and prints it.

Exit codes: 0 done; 1 the provider refused it, it failed, or no answer within --timeout; 2 bad
input (nothing was enqueued); 3 Redis unreachable.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

# As nxjobs.cli's (it imports this module, so this one cannot import it).
EXIT_OK, EXIT_JOB, EXIT_INPUT, EXIT_REDIS = 0, 1, 2, 3


def _error(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nxjobs callbot", description="campaign control of a submitted callbot list"
    )
    sub = parser.add_subparsers(dest="op", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("job_id", metavar="JOB_ID")
        p.add_argument(
            "--timeout", type=float, default=60.0, help="seconds to wait for the answer (60)"
        )
        p.add_argument("--json", action="store_true", help="print the recorded operation as JSON")
        return p

    add("pause", "pause the list's task: it stops dialling")
    add("resume", "start the paused task again")
    p = add("complete", "end the task; the job completes when its task callback comes")
    p.add_argument(
        "--delete-undialled", action="store_true", help="drop the numbers not yet dialled"
    )
    p = add("stop-contacts", "stop these orders for good (irreversible)")
    p.add_argument("order_ids", nargs="+", metavar="ORDER_ID")
    p = add("update", "change task settings while paused")
    p.add_argument(
        "--settings",
        required=True,
        metavar="JSON",
        help="taskCreateSetting fields, e.g. '{\"maxCall\": 5}'",
    )
    return parser


def cmd_callbot(rest: list[str]) -> int:
    args = _parser().parse_args(rest)
    import redis

    from nxjobs.campaign import CampaignRefused, describe
    from nxjobs.producers import EnqueueError, Producer
    from nxjobs.redis_conn import RedisUnavailable

    try:
        with Producer() as producer:
            op_id = _enqueue(producer, args)
            entry = producer.wait_campaign(args.job_id, op_id, timeout_s=args.timeout)
    except CampaignRefused as exc:
        return _error(f"{exc} (nothing was enqueued)", EXIT_INPUT)
    except (RedisUnavailable, EnqueueError) as exc:
        return _error(str(exc), EXIT_REDIS)
    except redis.RedisError as exc:
        return _error(f"Redis error: {exc}", EXIT_REDIS)
    if entry is None:
        return _error(
            f"{args.op} of job {args.job_id} (operation {op_id}) not answered within "
            f"{args.timeout:g}s; it is still queued or waiting for its slot",
            EXIT_JOB,
        )
    print(json.dumps(entry, sort_keys=True) if args.json else describe(entry))
    return EXIT_OK if entry.get("outcome") == "done" else EXIT_JOB


def _enqueue(producer: Any, args: argparse.Namespace) -> str:
    from nxjobs.campaign import CampaignRefused

    if args.op == "pause":
        return str(producer.callbot_pause(args.job_id))
    if args.op == "resume":
        return str(producer.callbot_resume(args.job_id))
    if args.op == "complete":
        return str(producer.callbot_complete(args.job_id, delete_undialled=args.delete_undialled))
    if args.op == "stop-contacts":
        return str(producer.callbot_stop_contacts(args.job_id, args.order_ids))
    try:
        settings = json.loads(args.settings)
    except ValueError as exc:
        raise CampaignRefused("settings", f"not JSON: {exc}") from None
    return str(producer.callbot_update(args.job_id, settings))


if __name__ == "__main__":
    sys.exit(cmd_callbot(sys.argv[1:]))
