"""`nxjobs suppress add | remove | check | count`: the do-not-call list (nxjobs.suppression).

Kept apart from nxjobs/cli.py, which only dispatches `suppress` here. Exit codes: `check` 0 when the
number is listed, 1 when not; otherwise 0 ok; 2 bad usage, an invalid number, or no
NXJOBS_SUPPRESSION__SECRET; 3 Redis unreachable. Numbers are never printed back.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator

EXIT_OK, EXIT_NO, EXIT_INPUT, EXIT_REDIS = 0, 1, 2, 3


def _error(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nxjobs suppress",
        description="The do-not-call list: listed numbers are never called (docs/suppression.md).",
    )
    sub = p.add_subparsers(dest="action", required=True)
    add = sub.add_parser("add", help="add numbers, or every number of a CSV file (first column)")
    add.add_argument("phones", nargs="*", metavar="PHONE")
    add.add_argument(
        "--file", help="a numbers file as `submit number-check --file` takes (CSV, JSON lines)"
    )
    add.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )
    rm = sub.add_parser("remove", help="remove numbers")
    rm.add_argument("phones", nargs="+", metavar="PHONE")
    ck = sub.add_parser("check", help="exit 0 if the number is listed, 1 if not")
    ck.add_argument("phone", metavar="PHONE")
    sub.add_parser("count", help="how many numbers are listed")
    return p


def _file_numbers(path: str, progress: object) -> Iterator[str]:
    """The phone of each row, read as `submit number-check --file` reads its file (a phone column
    by name, or the first column; CSV, JSON lines or a JSON array: nxjobs.bulk_files)."""
    from nxjobs import bulk, bulk_files

    assert isinstance(progress, bulk.Progress)
    for line, phone, _spelled, _error, frac in bulk_files.open_reader(
        path, "number-check"
    ).phones():
        progress.show("suppress", frac, f"line {line:,}")
        yield "" if phone is None else str(phone)


def cmd_suppress(argv: list[str]) -> int:
    import redis

    from nxjobs import bulk
    from nxjobs.jobs import InvalidJob
    from nxjobs.producers import Producer
    from nxjobs.redis_conn import RedisUnavailable
    from nxjobs.suppression import InvalidNumber, SuppressionUnavailable

    args = _parser().parse_args(argv)
    try:
        with Producer() as producer:
            listed = producer.suppression
            if not listed.configured:
                raise SuppressionUnavailable(
                    "the do-not-call list needs NXJOBS_SUPPRESSION__SECRET (a random string of "
                    "at least 16 characters, the same for producers and workers)"
                )
            if args.action == "count":
                print(producer.suppressed_count())
                return EXIT_OK
            if args.action == "check":
                return EXIT_OK if producer.is_suppressed(args.phone) else EXIT_NO
            if args.action == "remove":
                result = listed.remove(args.phones)
                print(
                    f"removed {result.added}, not listed {result.already}, invalid {result.invalid}"
                )
                return EXIT_INPUT if result.invalid else EXIT_OK
            if bool(args.file) == bool(args.phones):
                raise InvalidJob("file", "give numbers, or --file numbers.csv (one of them)")
            progress = bulk.Progress(
                sys.stderr.isatty() if args.progress is None else args.progress
            )
            numbers = _file_numbers(args.file, progress) if args.file else iter(args.phones)
            result = listed.add(numbers)
            progress.show("suppress", 1.0, "done", force=True)
            progress.done()
            print(
                f"added {result.added}, already listed {result.already}, invalid {result.invalid}"
            )
            return EXIT_INPUT if result.invalid and not args.file else EXIT_OK
    except InvalidNumber as exc:
        return _error(f"phone: {exc}", EXIT_INPUT)
    except InvalidJob as exc:
        return _error(f"{exc.field}: {exc.message}", EXIT_INPUT)
    except SuppressionUnavailable as exc:
        return _error(str(exc), EXIT_INPUT)
    except RedisUnavailable as exc:
        return _error(str(exc), EXIT_REDIS)
    except redis.RedisError as exc:
        return _error(f"Redis error: {exc}", EXIT_REDIS)
