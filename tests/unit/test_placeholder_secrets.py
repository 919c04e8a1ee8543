"""Services refuse the example secrets the repo has shipped: the callback token (config/settings.py)
and Flower's basic auth (workers/flower_guard.py, the compose entrypoint of Flower)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from config.settings import Settings
from workers import flower_guard
from workers.flower_guard import UnsafeFlower, check

ROOT = Path(__file__).resolve().parents[2]
GOOD_PASSWORD = "Zq8-vT3kLm2pRx9w"


def env_value(path: Path, name: str) -> str:
    for line in path.read_text().splitlines():
        if line.startswith(f"{name}="):
            return line.split("=", 1)[1]
    raise AssertionError(f"{name} not in {path}")


# ---- the callback token ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    [
        "change-me-to-a-long-random-token",  # the old .env.example
        "sandbox-callbacks-token-not-a-secret",  # the old compose default
        "CHANGE-ME-to-a-long-random-token",  # case does not help
        "changeme",
        "change-me",
        "change_me_please_0123456789",
    ],
)
def test_a_placeholder_callback_token_is_refused_at_startup(monkeypatch, token):
    monkeypatch.setenv("NXJOBS_CALLBACKS__TOKEN", token)
    with pytest.raises(ValidationError, match="placeholder"):
        Settings(_env_file=None)
    # also together with a public URL (the deployment case)
    monkeypatch.setenv("NXJOBS_CALLBACKS__PUBLIC_URL", "https://cb.example.com")
    with pytest.raises(ValidationError, match="placeholder"):
        Settings(_env_file=None)


def test_a_random_callback_token_is_accepted_and_stays_secret(monkeypatch):
    import secrets

    token = secrets.token_urlsafe(32)
    monkeypatch.setenv("NXJOBS_CALLBACKS__PUBLIC_URL", "https://cb.example.com")
    monkeypatch.setenv("NXJOBS_CALLBACKS__TOKEN", token)
    settings = Settings(_env_file=None)
    assert settings.callbacks.token.get_secret_value() == token and token not in repr(settings)


def test_the_shipped_env_example_has_no_usable_secret():
    # .env.example leaves every secret empty: compose's ${VAR:?} stops a copy used as is
    example = ROOT / ".env.example"
    for name in ("REDIS_PASSWORD", "FLOWER_PASSWORD", "NXJOBS_CALLBACKS__TOKEN"):
        assert env_value(example, name) == "", name


# ---- Flower ---------------------------------------------------------------------------------


def auth(password: str, user: str = "ops") -> dict[str, str]:
    return {"FLOWER_BASIC_AUTH": f"{user}:{password}"}


@pytest.mark.parametrize(
    "password",
    [
        "change-me",
        "CHANGE-ME",
        "changeme",
        "change-me-please-now",
        "long-password",
        "admin",
        "password",
        "flower",
    ],
)
def test_flower_refuses_a_placeholder_password(tmp_path, password):
    with pytest.raises(UnsafeFlower, match="placeholder"):
        check(auth(password), [], tmp_path)


@pytest.mark.parametrize(
    "env, problem",
    [
        ({}, "not set"),
        ({"FLOWER_BASIC_AUTH": ""}, "not set"),
        (auth("short-pass"), "at least 12"),
        (auth("opsopsopsopsops", user="opsopsopsopsops"), "differ from the user"),
        ({"FLOWER_BASIC_AUTH": f":{GOOD_PASSWORD}"}, "user:password"),
        ({"FLOWER_BASIC_AUTH": "no-colon-at-all-here"}, "user:password"),
        # a comma makes Flower split the value: the fragment would be a credential of its own
        ({"FLOWER_BASIC_AUTH": f"ops:{GOOD_PASSWORD},tail"}, "user:password"),
        ({**auth(GOOD_PASSWORD), "FLOWER_UNAUTHENTICATED_API": "true"}, "UNAUTHENTICATED_API"),
        ({**auth(GOOD_PASSWORD), "FLOWER_UNAUTHENTICATED_API": "1"}, "UNAUTHENTICATED_API"),
    ],
)
def test_flower_refuses_missing_weak_or_bypassed_auth(tmp_path, env, problem):
    with pytest.raises(UnsafeFlower, match=problem):
        check(env, [], tmp_path)


@pytest.mark.parametrize(
    "arg",
    [
        "--basic_auth=ops:x",
        "--basic-auth=ops:x",
        "--read_only=False",
        "--auth=.*",
        "--conf=/tmp/other.py",
    ],
)
def test_flower_refuses_command_line_overrides_of_its_protection(tmp_path, arg):
    with pytest.raises(UnsafeFlower, match="flower_guard"):
        check(auth(GOOD_PASSWORD), ["--port=5555", arg], tmp_path)


def test_flower_refuses_a_config_file_that_could_override_it(tmp_path):
    (tmp_path / "flowerconfig.py").write_text("basic_auth = []\n")
    with pytest.raises(UnsafeFlower, match="flowerconfig.py"):
        check(auth(GOOD_PASSWORD), [], tmp_path)


def test_flower_accepts_a_strong_password_and_runs_read_only(tmp_path):
    check({**auth(GOOD_PASSWORD), "FLOWER_UNAUTHENTICATED_API": "false"}, ["--port=5555"], tmp_path)
    argv = flower_guard.flower_argv(["--port=5555"])
    assert argv[1:7] == ["-m", "celery", "-A", "workers.celery_app", "flower", "--read_only=True"]
    assert argv[-1] == "--port=5555"


@pytest.mark.parametrize(
    "env",
    [
        {"FLOWER_BASIC_AUTH": "admin:change-me"},  # the old compose default
        {},
        {"FLOWER_BASIC_AUTH": f"ops:{GOOD_PASSWORD}", "FLOWER_UNAUTHENTICATED_API": "true"},
    ],
)
def test_the_entrypoint_exits_before_starting_flower(env):
    # As compose runs it: `python -m workers.flower_guard --port=...`
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "workers.flower_guard", "--port=1"],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "refusing to start" in proc.stderr
    assert "Visit me at" not in proc.stdout + proc.stderr  # Flower's banner: it never started
    assert time.monotonic() - started < 20


def test_flower_auth_from_a_file_is_checked_like_the_variable(tmp_path):
    # Given the entries in a mounted file
    good = tmp_path / "auth"
    good.write_text("ops:Zq8-vT3kLm2pRx9w\n")
    env = flower_guard.basic_auth_from_file({"FLOWER_BASIC_AUTH_FILE": str(good), "A": "1"})
    # Then Flower gets them as its variable, the file's name is not passed on
    assert env == {"A": "1", "FLOWER_BASIC_AUTH": "ops:Zq8-vT3kLm2pRx9w"}
    check(env, [], tmp_path)
    # And a placeholder in the file is refused as one in the variable is
    weak = tmp_path / "weak"
    weak.write_text("ops:change-me")
    with pytest.raises(UnsafeFlower, match="placeholder"):
        check(
            flower_guard.basic_auth_from_file({"FLOWER_BASIC_AUTH_FILE": str(weak)}), [], tmp_path
        )
    # And a missing file, or both sources at once, stop it
    with pytest.raises(UnsafeFlower, match="cannot be read"):
        flower_guard.basic_auth_from_file({"FLOWER_BASIC_AUTH_FILE": str(tmp_path / "none")})
    with pytest.raises(UnsafeFlower, match="not both"):
        flower_guard.basic_auth_from_file(
            {"FLOWER_BASIC_AUTH_FILE": str(good), "FLOWER_BASIC_AUTH": "ops:Zq8-vT3kLm2pRx9w"}
        )
