"""Settings names, and the one clear error for a missing credential."""

import subprocess
import sys

import pytest

from config.settings import MissingSetting, Settings
from workers.__main__ import _queues_from


def test_nested_env_names(monkeypatch):
    monkeypatch.setenv("NXJOBS_API2__ACCESS_KEY", "ak")
    monkeypatch.setenv("NXJOBS_CALLBOT__ALGORITHM", "sha256")
    monkeypatch.setenv("NXJOBS_REDIS_URL", "redis://example:1/2")
    s = Settings(_env_file=None)
    assert (s.api2.access_key, s.callbot.algorithm, s.redis_url) == (
        "ak",
        "sha256",
        "redis://example:1/2",
    )


def test_defaults_point_at_real_hosts():
    s = Settings(_env_file=None)
    assert s.api2.base_url == "https://api2.nxcloud.com"
    assert s.callbot.base_url == "https://nxbot.nxcloud.com"
    assert s.agent.base_url == "https://as01.nxcloud.com"


def test_missing_credentials_are_named_per_family(monkeypatch):
    monkeypatch.setenv("NXJOBS_AGENT__APPKEY", "a")
    s = Settings(_env_file=None)
    with pytest.raises(MissingSetting) as caught:
        s.require("agent")
    assert caught.value.variables == ["NXJOBS_AGENT__SECRETKEY", "NXJOBS_AGENT__USERNAME"]


def test_secrets_do_not_show_in_repr(monkeypatch):
    monkeypatch.setenv("NXJOBS_API2__ACCESS_SECRET", "topsecretvalue")
    assert "topsecretvalue" not in repr(Settings(_env_file=None))


def test_empty_env_values_count_as_unset(monkeypatch):
    monkeypatch.setenv("NXJOBS_CALLBOT__ALGORITHM", "")
    assert Settings(_env_file=None).callbot.algorithm == "md5"


@pytest.mark.parametrize(
    "argv, queues",
    [
        (["worker"], ["agent", "callbot", "api2"]),
        (["worker", "-Q", "api2"], ["api2"]),
        (["worker", "-Qagent,api2"], ["agent", "api2"]),
        (["worker", "--queues=callbot"], ["callbot"]),
        # as Celery (click) reads them: the last -Q counts; -X takes families out
        (["worker", "-Q", "agent", "-n", "q@%h", "--queues", "api2"], ["api2"]),
        (["worker", "-X", "agent", "-c", "2"], ["callbot", "api2"]),
        (["worker", "-Q", "agent,api2", "--exclude-queues=api2"], ["agent"]),
    ],
)
def test_worker_queue_parsing(argv, queues):
    assert _queues_from(argv) == queues


def test_worker_without_credentials_exits_2_naming_the_variables(tmp_path):
    # Given an environment with no NXJOBS_ credentials (and no .env in the cwd)
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(__import__("pathlib").Path(__file__).parents[2]),
    }
    # When a worker for the agent queue starts
    proc = subprocess.run(
        [sys.executable, "-m", "workers", "worker", "-Q", "agent"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Then it stops at once with one line naming what is missing, not a traceback
    assert proc.returncode == 2
    assert "NXJOBS_AGENT__APPKEY" in proc.stderr and "NXJOBS_AGENT__USERNAME" in proc.stderr
    assert "Traceback" not in proc.stderr
