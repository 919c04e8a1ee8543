"""Flower as compose starts it (`python -m workers.flower_guard`), on a real Redis: the API needs
the basic auth, and with it still refuses every task-control call (Flower's read-only mode)."""

from __future__ import annotations

import os
import sys
import uuid

import pytest
import requests

from workers.devstack import ServiceProcess, _wait_ready, free_port, project_root

pytestmark = pytest.mark.integration

AUTH = ("ops", "Zq8-vT3kLm2pRx9w")


@pytest.fixture(scope="module")
def guarded_flower(redis_url, tmp_path_factory):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWER_", "NXJOBS_"))}
    env.update(
        {
            "NXJOBS_REDIS_URL": redis_url.rsplit("/", 1)[0] + "/9",
            "FLOWER_BASIC_AUTH": ":".join(AUTH),
        }
    )
    log_dir = tmp_path_factory.mktemp("flower-guard")
    proc = ServiceProcess(
        "flower",
        [sys.executable, "-m", "workers.flower_guard", f"--port={port}", "--address=127.0.0.1"],
        env=env,
        log_dir=str(log_dir),
        cwd=project_root(),
    ).start()
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(proc, url + "/healthcheck", 30)
        yield url
    finally:
        proc.stop()


def test_the_api_needs_the_basic_auth(guarded_flower):
    assert requests.get(f"{guarded_flower}/api/tasks", timeout=5).status_code == 401
    assert (
        requests.get(
            f"{guarded_flower}/api/tasks", auth=(AUTH[0], "wrong-password-x"), timeout=5
        ).status_code
        == 401
    )
    assert requests.get(f"{guarded_flower}/api/tasks", auth=AUTH, timeout=5).status_code == 200
    assert requests.get(f"{guarded_flower}/", timeout=5).status_code == 401


@pytest.mark.parametrize(
    "path",
    [
        "/api/task/revoke/{id}?terminate=true",
        "/api/task/abort/{id}",
        "/api/task/apply/nxjobs.call",
        "/api/task/async-apply/nxjobs.call",
        "/api/task/send-task/nxjobs.call",
        "/api/task/rate-limit/nxjobs.call",
        "/api/task/timeout/nxjobs.call",
        "/api/worker/shutdown/celery@nowhere",
        "/api/worker/pool/restart/celery@nowhere",
    ],
)
def test_task_and_worker_control_is_refused_even_when_authenticated(guarded_flower, path):
    resp = requests.post(
        guarded_flower + path.format(id=uuid.uuid4()), auth=AUTH, json={}, timeout=5
    )
    assert resp.status_code == 403 and "Read only" in resp.text, (resp.status_code, resp.text)
    # and without the auth it is a 401 before anything else
    assert (
        requests.post(guarded_flower + path.format(id=uuid.uuid4()), json={}, timeout=5).status_code
        == 401
    )


def test_the_basic_auth_can_come_from_a_mounted_file(redis_url, tmp_path):
    # Given the user:password in a file (a Kubernetes Secret volume), none in the environment
    auth_file = tmp_path / "FLOWER_BASIC_AUTH"
    auth_file.write_text(":".join(AUTH) + "\n")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWER_", "NXJOBS_"))}
    env.update(
        {
            "NXJOBS_REDIS_URL": redis_url.rsplit("/", 1)[0] + "/9",
            "FLOWER_BASIC_AUTH_FILE": str(auth_file),
        }
    )
    proc = ServiceProcess(
        "flower-file",
        [sys.executable, "-m", "workers.flower_guard", f"--port={port}", "--address=127.0.0.1"],
        env=env,
        log_dir=str(tmp_path),
        cwd=project_root(),
    ).start()
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(proc, url + "/healthcheck", 30)
        # Then Flower demands exactly that user and password
        assert requests.get(f"{url}/api/tasks", timeout=5).status_code == 401
        assert requests.get(f"{url}/api/tasks", auth=AUTH, timeout=5).status_code == 200
    finally:
        proc.stop()
