"""`python -m workers worker [celery worker options...]` (what `nxjobs worker` runs).

Every option of `celery worker` passes through unchanged (`-n/--hostname`, `-c`, `--pool`,
`--autoscale`, `--max-tasks-per-child`, `--without-heartbeat`, `--loglevel`, ...); Celery
parses them, and an option it rejects gets its own usage error and exit code 2. We own only:

- the app (`workers.celery_app`), so `-A`/`--app` and the other global `celery` options are
  not worker options and Celery refuses them as such;
- `-E` (task events), always on: Flower shows jobs by their events;
- the queues: `-Q` names any of the API families (default: all of them, minus `-X`); an
  unknown one is refused here, and the credentials of every family consumed are checked at
  startup, with one line naming what is missing, instead of failing mid-job;
- `--loglevel` defaults to INFO;
- `-D/--detach` is refused: Celery detaches by starting `python -m celery worker` with the
  same options, i.e. without this app, its checks or its defaults.
"""

from __future__ import annotations

import sys

from nxjobs.jobs import QUEUES, WORKER_QUEUES

USAGE = (
    "usage: python -m workers worker [-Q agent,callbot,api2,notify] [-c N] [-n NAME@%h] "
    "[other celery worker options; --help lists them]"
)


def _option(argv: list[str], short: str, long: str) -> str | None:
    """The value of the last `-Sv`, `-S v`, `--long v` or `--long=v` in argv (the one click
    keeps), or None."""
    value = None
    for i, arg in enumerate(argv):
        if arg in (short, long):
            value = argv[i + 1] if i + 1 < len(argv) else ""
        elif arg.startswith(long + "="):
            value = arg.split("=", 1)[1]
        elif arg.startswith(short) and not arg.startswith("--") and len(arg) > 2:
            value = arg[2:]
    return value


def _names(value: str | None) -> list[str]:
    return [q.strip() for q in (value or "").split(",") if q.strip()]


def _queues_from(argv: list[str]) -> list[str]:
    given = _names(_option(argv, "-Q", "--queues")) or list(QUEUES)
    excluded = set(_names(_option(argv, "-X", "--exclude-queues")))
    return [q for q in given if q not in excluded]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "worker":
        print(USAGE, file=sys.stderr)
        return 2
    args = argv[1:]
    if any(a in ("-D", "--detach") for a in args):
        print(
            "error: --detach is not supported: Celery would restart the worker as "
            "`celery worker`, without this app; run `nxjobs worker` under a supervisor "
            "(systemd, compose) instead",
            file=sys.stderr,
        )
        return 2
    if any(a in ("-h", "--help") for a in args):
        return _celery(args)  # Celery's own help of its worker options

    from pydantic import ValidationError

    from config.settings import MissingSetting, SecretsDirMissing, load_settings
    from nxjobs.calling_hours import CallingHoursError, Policy

    queues = _queues_from(args)
    unknown = [q for q in queues if q not in WORKER_QUEUES]
    if unknown:
        print(
            f"error: unknown queue(s) {', '.join(unknown)}; "
            f"expected any of {', '.join(WORKER_QUEUES)}",
            file=sys.stderr,
        )
        return 2
    if not queues:
        print("error: -X excludes every queue; nothing to consume", file=sys.stderr)
        return 2
    try:
        settings = load_settings()
        settings.require(*queues)
        Policy.from_settings(settings.calling_hours)
    except CallingHoursError as exc:
        print(f"error: invalid setting {exc.field}: {exc.message}", file=sys.stderr)
        return 2
    except MissingSetting as exc:
        print(
            f"error: {exc} (needed by queue(s) {', '.join(queues)}); "
            "set them in the environment, .env or as files in NXJOBS_SECRETS_DIR",
            file=sys.stderr,
        )
        return 2
    except SecretsDirMissing as exc:
        print(f"error: {exc} (the settings files are not mounted)", file=sys.stderr)
        return 2
    except ValidationError as exc:
        print(f"error: invalid settings: {exc}", file=sys.stderr)
        return 2

    if _option(args, "-Q", "--queues") is None:
        args = ["-Q", ",".join(queues), *args]
    if _option(args, "-l", "--loglevel") is None:
        args += ["--loglevel", "INFO"]
    # -E: task events on, so Flower sees every state change.
    return _celery(["-E", *args])


def _celery(args: list[str]) -> int:
    """`celery -A workers.celery_app worker ARGS`: Celery parses the options; a usage error is
    shown as Celery shows it (exit 2), and the worker's own exit code is ours."""
    import click

    from workers.celery_app import app

    try:
        code = app.start(["worker", *args])
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        return 1
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
