"""`nxjobs dead list | replay | purge`: the dead letters (nxjobs.deadletters).

Kept apart from nxjobs/cli.py, which only dispatches `dead` here. Exit codes as
the rest of the CLI: 0 ok; 1 no such dead letter; 2 bad usage; 3 Redis unreachable.
"""

from __future__ import annotations

import argparse
import json
import sys

from nxjobs.jobs import KINDS

EXIT_OK, EXIT_JOB, EXIT_INPUT, EXIT_REDIS = 0, 1, 2, 3


def _error(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nxjobs dead",
        description=(
            "Jobs that failed for good (retries exhausted, permanent error, or a makecall whose "
            "outcome is unknown or proven not placed). A replay re-enqueues the same job id and "
            "payload through the normal task, so the in-flight marker, the record state machine "
            "and the rate limiter all apply."
        ),
    )
    sub = p.add_subparsers(dest="action", required=True)
    ls = sub.add_parser("list", help="newest first")
    ls.add_argument("--kind", choices=list(KINDS))
    ls.add_argument("--limit", type=int, default=50)
    ls.add_argument("--json", action="store_true")
    rp = sub.add_parser("replay", help="re-enqueue one job, or every one (of a kind)")
    rp.add_argument("job_id", nargs="?", metavar="JOB_ID")
    rp.add_argument("--all", action="store_true")
    rp.add_argument("--kind", choices=list(KINDS))
    pg = sub.add_parser("purge", help="drop dead letters (of a kind); nothing is sent")
    pg.add_argument("--kind", choices=list(KINDS))
    return p


def cmd_dead(rest: list[str]) -> int:
    p = _parser()
    args = p.parse_args(rest)
    import redis

    from nxjobs.producers import EnqueueError, Producer
    from nxjobs.redis_conn import RedisUnavailable

    if args.action == "replay" and bool(args.job_id) == bool(args.all):
        p.error("replay takes a JOB_ID or --all, not both")
    if args.action == "replay" and args.job_id and args.kind:
        p.error("--kind goes with --all")
    try:
        with Producer() as producer:
            dead = producer.dead_letters
            if args.action == "list":
                rows = dead.list(kind=args.kind, limit=args.limit)
                if args.json:
                    # The payload holds unmasked phones (a replay needs them): never printed.
                    print(
                        json.dumps(
                            [{k: v for k, v in r.items() if k != "payload"} for r in rows],
                            ensure_ascii=False,
                            indent=2,
                        )
                    )
                    return EXIT_OK
                print(f"{dead.count()} dead letter(s); newest {len(rows)}:")
                for r in rows:
                    reason = r.get("reason") or {}
                    print(
                        f"{r['failed_at']}  {r['job_id']}  {r['kind']:<13} now={r['state']:<9} "
                        f"{reason.get('code')}: {reason.get('message')}"
                    )
                return EXIT_OK
            if args.action == "purge":
                print(f"purged {dead.purge(kind=args.kind)} dead letter(s)")
                return EXIT_OK
            ids = [args.job_id] if args.job_id else [r["job_id"] for r in dead.list(kind=args.kind)]
            counts = {"replayed": 0, "stale": 0}
            for job_id in ids:
                try:
                    outcome = producer.replay_dead(job_id)
                except KeyError:
                    return _error(f"job {job_id} is not in the dead letters", EXIT_JOB)
                counts[outcome] += 1
                if args.job_id:
                    print(f"{job_id} {outcome}")
            if not args.job_id:
                print(f"replayed {counts['replayed']}, skipped {counts['stale']} no longer failed")
            return EXIT_OK
    except (RedisUnavailable, EnqueueError) as exc:
        return _error(str(exc), EXIT_REDIS)
    except redis.RedisError as exc:
        return _error(f"Redis error: {exc}", EXIT_REDIS)
