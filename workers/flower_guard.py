"""`python -m workers.flower_guard [flower options...]`: Flower, refusing to start unprotected.

Checks the environment, then replaces itself with
`python -m celery -A workers.celery_app flower --read_only=True [flower options...]`
(same process, so signals reach Flower directly). It exits with status 2, starting nothing, when

- FLOWER_BASIC_AUTH is unset or empty, or any of its comma-separated `user:password` entries
  has no user, a password shorter than MIN_PASSWORD or equal to the user, or a known
  placeholder as its password (the ones .env.example and the docs have shown: "change-me", ...);
- FLOWER_UNAUTHENTICATED_API is set to anything but false: Flower's API then answers anyone;
- the command line sets what this wrapper owns (--basic_auth, --auth, --auth_provider,
  --read_only, --conf), or a flowerconfig.py in the working directory could override it.

--read_only=True is Flower 2.2's read-only mode: every task and worker control call of its API
(task apply/async-apply/send-task/abort/revoke/timeout/rate-limit, worker shutdown/pool/queue
changes) answers 403, and the dashboard hides those buttons. Reading stays behind the basic
auth; /healthcheck and Flower's own /metrics stay unauthenticated (compose publishes the port
on 127.0.0.1 only).

FLOWER_BASIC_AUTH_FILE names a file holding the `user:password` entries instead (a Kubernetes
Secret mounted as a volume): the wrapper reads it and hands the value to Flower in its own
environment, so it is never in the pod's or container's declared environment. Setting both is
refused.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

MIN_PASSWORD = 12
# Passwords shipped as examples (.env.example, README, the old compose default) or common
# stand-ins, compared case-insensitively; anything starting with a "change me" prefix too.
PLACEHOLDER_PASSWORDS = frozenset(
    {
        "change-me",
        "changeme",
        "change_me",
        "change-me-please",
        "long-password",
        "admin",
        "password",
        "flower",
        "secret",
        "letmein",
        "example",
        "placeholder",
    }
)
PLACEHOLDER_PREFIXES = ("change-me", "changeme", "change_me", "replace-me", "replaceme")
# Options this wrapper sets or checks; the command line may not change them.
OWNED_OPTIONS = frozenset({"basic_auth", "auth", "auth_provider", "read_only", "conf"})
_FALSE = {"", "0", "false", "no", "off", "n", "f"}


class UnsafeFlower(ValueError):
    """Flower's configuration would leave it unprotected: the reason, for the operator."""


def is_placeholder(password: str) -> bool:
    folded = password.strip().lower()
    return folded in PLACEHOLDER_PASSWORDS or folded.startswith(PLACEHOLDER_PREFIXES)


def basic_auth_from_file(env: dict[str, str] | os._Environ) -> dict[str, str]:
    """`env` with FLOWER_BASIC_AUTH read from FLOWER_BASIC_AUTH_FILE when that is set."""
    path = (env.get("FLOWER_BASIC_AUTH_FILE") or "").strip()
    if not path:
        return dict(env)
    if (env.get("FLOWER_BASIC_AUTH") or "").strip():
        raise UnsafeFlower("set FLOWER_BASIC_AUTH or FLOWER_BASIC_AUTH_FILE, not both")
    try:
        value = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise UnsafeFlower(
            f"FLOWER_BASIC_AUTH_FILE={path} cannot be read: {type(exc).__name__}"
        ) from None
    out = {k: v for k, v in env.items() if k != "FLOWER_BASIC_AUTH_FILE"}
    out["FLOWER_BASIC_AUTH"] = value
    return out


def check(env: dict[str, str] | os._Environ, argv: list[str], cwd: Path) -> None:
    """Raise UnsafeFlower naming the first problem; return quietly when Flower may start."""
    if (env.get("FLOWER_UNAUTHENTICATED_API") or "").strip().lower() not in _FALSE:
        raise UnsafeFlower(
            "FLOWER_UNAUTHENTICATED_API is set: Flower's API would answer without authentication; "
            "unset it"
        )
    basic = env.get("FLOWER_BASIC_AUTH") or ""
    if not basic.strip():
        raise UnsafeFlower(
            "FLOWER_BASIC_AUTH is not set: set FLOWER_USER and FLOWER_PASSWORD (compose builds "
            "FLOWER_BASIC_AUTH=user:password from them)"
        )
    for entry in basic.split(","):  # Flower's own format: user:password[,user2:password2]
        user, sep, password = entry.partition(":")
        if not sep or not user:
            raise UnsafeFlower(
                "FLOWER_BASIC_AUTH entries must be user:password (commas separate entries, "
                "so a password cannot contain one)"
            )
        if is_placeholder(password):
            raise UnsafeFlower(
                f"the Flower password of {user!r} is a placeholder from the examples: "
                "set FLOWER_PASSWORD to a random one"
            )
        if len(password) < MIN_PASSWORD or password == user:
            raise UnsafeFlower(
                f"the Flower password of {user!r} must be at least {MIN_PASSWORD} characters and "
                "differ from the user: "
                'python -c "import secrets; print(secrets.token_urlsafe(24))"'
            )
    for arg in argv:
        name = arg.lstrip("-").partition("=")[0].replace("-", "_")
        if arg.startswith("-") and name in OWNED_OPTIONS:
            raise UnsafeFlower(
                f"{arg.partition('=')[0]} is set by workers.flower_guard (basic auth from "
                "FLOWER_BASIC_AUTH, read-only mode, no config file): remove it"
            )
    if (cwd / "flowerconfig.py").exists():
        raise UnsafeFlower(
            f"{cwd / 'flowerconfig.py'} would override the basic auth and read-only mode: remove it"
        )


def flower_argv(argv: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.celery_app",
        "flower",
        "--read_only=True",
        *argv,
    ]


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        env = basic_auth_from_file(os.environ)
        check(env, args, Path.cwd())
    except UnsafeFlower as exc:
        print(f"flower: refusing to start: {exc}", file=sys.stderr, flush=True)
        return 2
    command = flower_argv(args)
    os.execve(command[0], command, env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
