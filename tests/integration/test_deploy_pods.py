"""The rendered pods' commands, run as Kubernetes would run them: only the ConfigMaps' variables
in the environment, the credentials as files in the Secret's mount (NXJOBS_SECRETS_DIR), a real
Redis. Each process starts, and its probes (HTTP paths, or the worker's exec command) pass."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests import deploy_files as files
from workers.devstack import ServiceProcess, _wait_ready, free_port

pytestmark = pytest.mark.integration

# Fake but well-formed credentials: the processes start; nothing here calls NXCloud.
PROVIDER_FILES = {
    "NXJOBS_API2__ACCESS_KEY": "deploy-test-access-key",
    "NXJOBS_API2__ACCESS_SECRET": "deploy-test-access-secret",
    "NXJOBS_API2__APPKEY": "deploy-test-appkey",
    "NXJOBS_CALLBOT__UUID": "deploy-test-uuid",
    "NXJOBS_CALLBOT__SECRET_KEY": "deploy-test-callbot-secret",
    "NXJOBS_AGENT__APPKEY": "deploy-test-agent-appkey",
    "NXJOBS_AGENT__SECRETKEY": "deploy-test-agent-secret",
    "NXJOBS_AGENT__USERNAME": "deploy-test-agent",
}


@pytest.fixture(scope="module")
def base() -> dict[str, dict]:
    objects = files.kustomize("base")
    return {f"{o['kind']}/{o['metadata']['name']}": o for o in objects}


def pod(base: dict[str, dict], name: str, redis_url: str, tmp_path: Path, port: int):
    """(argv, env, container) for Deployment `name`: the container's command with its listen
    address moved to 127.0.0.1:port, its ConfigMaps' variables, its Secrets as files."""
    spec = base[f"Deployment/{name}"]["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    # The image's PATH starts with its virtualenv (celery, nxjobs): here, this one's
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "/usr/bin")])
    env = {"PATH": path, "PYTHONPATH": str(files.ROOT)}
    for ref in container["envFrom"]:
        env.update(base[f"ConfigMap/{ref['configMapRef']['name']}"]["data"])
    # The Secret volume: its sources, each key a file, where NXJOBS_SECRETS_DIR points
    mount = tmp_path / "secrets"
    mount.mkdir()
    volumes = {v["name"]: v for v in spec["volumes"]}
    for source in volumes["secrets"]["projected"]["sources"]:
        secret = source["secret"]["name"]
        if secret == "nxjobs-redis":
            (mount / "NXJOBS_REDIS_URL").write_text(redis_url + "\n")
        elif secret == "nxjobs-provider":
            for key, value in PROVIDER_FILES.items():
                (mount / key).write_text(value)
            (mount / "NXJOBS_CALLBACKS__TOKEN").write_text(secrets.token_urlsafe(32))
    assert env["NXJOBS_SECRETS_DIR"] == "/run/secrets/nxjobs"
    env["NXJOBS_SECRETS_DIR"] = str(mount)
    argv = list(container["command"])
    for flag, value in (("--host", "127.0.0.1"), ("--port", str(port))):
        if flag in argv:
            argv[argv.index(flag) + 1] = value
    if argv[0] == "nxjobs":  # the image's console script, from this checkout
        code = "import sys; from nxjobs.cli import main; sys.exit(main(sys.argv[1:]))"
        argv = [sys.executable, "-c", code, *argv[1:]]
    elif argv[0] == "python":
        argv[0] = sys.executable
    return argv, env, container


@pytest.mark.parametrize("name", ["callbacks", "exporter"])
def test_http_pods_start_from_config_maps_and_secret_files_and_pass_their_probes(
    base, name, redis_url, tmp_path
):
    port = free_port()
    argv, env, container = pod(base, name, redis_url, tmp_path, port)
    # No credential reached the process's environment
    assert not {"NXJOBS_REDIS_URL", "NXJOBS_CALLBACKS__TOKEN"} & set(env)
    proc = ServiceProcess(name, argv, env=env, log_dir=str(tmp_path), cwd=str(files.ROOT)).start()
    try:
        for probe in ("readinessProbe", "livenessProbe"):
            path = container[probe]["httpGet"]["path"]
            _wait_ready(proc, f"http://127.0.0.1:{port}{path}", 30)
            assert requests.get(f"http://127.0.0.1:{port}{path}", timeout=5).status_code == 200
    finally:
        proc.stop()


def test_a_worker_pod_starts_from_secret_files_and_passes_its_exec_probe(base, redis_url, tmp_path):
    argv, env, container = pod(base, "worker-api2", redis_url, tmp_path, 0)
    # One child process is enough to answer the ping (the last -c: the first is python's own)
    argv[len(argv) - argv[::-1].index("-c")] = "1"
    proc = ServiceProcess(
        "worker-api2", argv, env=env, log_dir=str(tmp_path), cwd=str(files.ROOT)
    ).start()
    try:
        proc.wait_for_log("ready", 60)
        # The pod's liveness command, with HOSTNAME as Kubernetes sets it (the pod's name)
        probe_env = {**env, "HOSTNAME": socket.gethostname()}
        command = container["livenessProbe"]["exec"]["command"]
        deadline = time.monotonic() + 30
        while True:
            done = subprocess.run(
                command,
                env=probe_env,
                cwd=files.ROOT,
                capture_output=True,
                text=True,
                timeout=container["livenessProbe"]["timeoutSeconds"] + 10,
            )
            if done.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert done.returncode == 0, done.stderr + proc.log_tail()
    finally:
        proc.stop()
    # And once the worker is gone the same probe fails (the kubelet would restart the pod)
    gone = subprocess.run(command, env=probe_env, cwd=files.ROOT, capture_output=True, timeout=40)
    assert gone.returncode != 0
