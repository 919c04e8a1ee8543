"""Settings from files named like their variables (NXJOBS_SECRETS_DIR): how a Kubernetes Secret
mounted as a volume reaches config.settings without any credential in the environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from config import settings as settings_module
from config.settings import SecretsDirMissing, Settings, secrets_dir


@pytest.fixture()
def secret_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("NXJOBS_SECRETS_DIR", str(tmp_path))
    for name in list(os.environ):
        if name.startswith("NXJOBS_") and name != "NXJOBS_SECRETS_DIR":
            monkeypatch.delenv(name)
    return tmp_path


def test_nested_and_top_level_settings_come_from_files(secret_dir):
    # Given a Secret's keys as files, one value each, with the trailing newline editors add
    (secret_dir / "NXJOBS_REDIS_URL").write_text("redis://:pw@redis:6379/0\n")
    (secret_dir / "NXJOBS_API2__ACCESS_SECRET").write_text("s3cret-value\n")
    (secret_dir / "NXJOBS_CALLBACKS__TOKEN").write_text("a-random-token-of-32-characters")
    # When the settings are read
    s = Settings(_env_file=None)
    # Then each file fills its field, `__` nesting included, whitespace stripped
    assert s.redis_url == "redis://:pw@redis:6379/0"
    assert s.api2.access_secret is not None
    assert s.api2.access_secret.get_secret_value() == "s3cret-value"
    assert s.callbacks.token is not None
    assert s.callbacks.token.get_secret_value() == "a-random-token-of-32-characters"
    # And the other fields of a group keep their defaults
    assert s.api2.base_url == "https://api2.nxcloud.com"


def test_a_variable_merges_with_files_and_wins_over_the_same_name(secret_dir, monkeypatch):
    (secret_dir / "NXJOBS_API2__ACCESS_SECRET").write_text("from-file")
    (secret_dir / "NXJOBS_REDIS_URL").write_text("redis://file:6379/0")
    monkeypatch.setenv("NXJOBS_API2__ACCESS_KEY", "from-env")
    monkeypatch.setenv("NXJOBS_REDIS_URL", "redis://env:6379/0")
    s = Settings(_env_file=None)
    assert s.api2.access_key == "from-env"
    assert s.api2.access_secret is not None
    assert s.api2.access_secret.get_secret_value() == "from-file"
    assert s.redis_url == "redis://env:6379/0"


def test_kubernetes_volume_layout_other_files_and_empty_files_are_ignored(secret_dir):
    # Given the hidden entries a Secret volume has, a file of another program, an empty file
    (secret_dir / "..data").mkdir()
    (secret_dir / "..data" / "NXJOBS_REDIS_URL").write_text("redis://hidden:1/0")
    (secret_dir / "FLOWER_BASIC_AUTH").write_text("ops:password-of-flower")
    (secret_dir / "NXJOBS_AGENT__USERNAME").write_text("")
    # And a key mounted as Kubernetes does: a symlink into ..data
    (secret_dir / "..data" / "NXJOBS_AGENT__APPKEY").write_text("appkey-1")
    (secret_dir / "NXJOBS_AGENT__APPKEY").symlink_to("..data/NXJOBS_AGENT__APPKEY")
    s = Settings(_env_file=None)
    assert s.redis_url == "redis://localhost:6379/0"
    assert s.agent.appkey == "appkey-1"
    assert s.agent.username is None
    assert s.missing("agent") == ["NXJOBS_AGENT__SECRETKEY", "NXJOBS_AGENT__USERNAME"]


def test_a_bad_value_in_a_file_is_refused_naming_the_field(secret_dir):
    (secret_dir / "NXJOBS_TASK_TIME_LIMIT_S").write_text("soon")
    with pytest.raises(ValueError, match="task_time_limit_s"):
        Settings(_env_file=None)


def test_a_named_directory_that_is_missing_fails_instead_of_defaulting(tmp_path):
    with pytest.raises(SecretsDirMissing, match="NXJOBS_SECRETS_DIR"):
        secrets_dir({"NXJOBS_SECRETS_DIR": str(tmp_path / "not-mounted")})


def test_the_default_directory_is_used_only_when_it_exists(tmp_path, monkeypatch):
    monkeypatch.setattr(settings_module, "DEFAULT_SECRETS_DIR", tmp_path / "absent")
    assert secrets_dir({}) is None
    monkeypatch.setattr(settings_module, "DEFAULT_SECRETS_DIR", tmp_path)
    assert secrets_dir({}) == tmp_path
    assert secrets_dir({"NXJOBS_SECRETS_DIR": ""}) == tmp_path


def _worker(env_extra: dict[str, str], cwd) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).parents[2]), **env_extra}
    return subprocess.run(
        [sys.executable, "-m", "workers", "worker", "-Q", "agent"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_worker_reads_its_credentials_from_the_files(tmp_path):
    # Given two of the agent family's three credentials as files, none in the environment
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "NXJOBS_AGENT__APPKEY").write_text("appkey-1")
    (secrets / "NXJOBS_AGENT__SECRETKEY").write_text("secretkey-1")
    # When a worker for the agent queue starts
    proc = _worker({"NXJOBS_SECRETS_DIR": str(secrets)}, tmp_path)
    # Then it stops naming only the one still missing
    assert proc.returncode == 2
    assert "NXJOBS_AGENT__USERNAME" in proc.stderr
    assert "NXJOBS_AGENT__APPKEY" not in proc.stderr and "SECRETKEY" not in proc.stderr
    assert "secretkey-1" not in proc.stderr + proc.stdout


def test_a_worker_whose_settings_files_are_not_mounted_stops_with_one_line(tmp_path):
    proc = _worker({"NXJOBS_SECRETS_DIR": str(tmp_path / "not-mounted")}, tmp_path)
    assert proc.returncode == 2
    assert "NXJOBS_SECRETS_DIR" in proc.stderr and "not mounted" in proc.stderr
    assert "Traceback" not in proc.stderr
