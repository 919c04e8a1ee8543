"""`python -m workers worker [-Q queues] [-c N] [--pool P] [celery options...]`

Checks that the credentials of every API family the worker will consume are
configured, and fails at startup with one line naming the missing variables,
instead of failing mid-job.
"""

from __future__ import annotations

import sys

from nxjobs.jobs import QUEUES


def _queues_from(argv: list[str]) -> list[str]:
    for i, arg in enumerate(argv):
        if arg in ("-Q", "--queues") and i + 1 < len(argv):
            return [q.strip() for q in argv[i + 1].split(",") if q.strip()]
        if arg.startswith("--queues="):
            return [q.strip() for q in arg.split("=", 1)[1].split(",") if q.strip()]
        if arg.startswith("-Q") and len(arg) > 2:
            return [q.strip() for q in arg[2:].split(",") if q.strip()]
    return list(QUEUES)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "worker":
        print(
            "usage: python -m workers worker [-Q agent,callbot,api2] [-c N] "
            "[--pool prefork|threads|solo]",
            file=sys.stderr,
        )
        return 2
    from pydantic import ValidationError

    from config.settings import MissingSetting, load_settings
    from nxjobs.calling_hours import CallingHoursError, Policy

    queues = _queues_from(argv)
    unknown = [q for q in queues if q not in QUEUES]
    if unknown:
        print(
            f"error: unknown queue(s) {', '.join(unknown)}; expected any of {', '.join(QUEUES)}",
            file=sys.stderr,
        )
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
            "set them in the environment or .env",
            file=sys.stderr,
        )
        return 2
    except ValidationError as exc:
        print(f"error: invalid settings: {exc}", file=sys.stderr)
        return 2

    from workers.celery_app import app

    args = argv[1:]
    if not any(a in ("-Q", "--queues") or a.startswith(("-Q", "--queues=")) for a in args):
        args = ["-Q", ",".join(queues), *args]
    if not any(a.startswith(("-l", "--loglevel")) for a in args):
        args += ["--loglevel", "INFO"]
    # -E: task events on, so Flower sees every state change.
    app.worker_main(["worker", "-E", *args])
    return 0


if __name__ == "__main__":
    sys.exit(main())
