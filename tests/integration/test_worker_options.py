"""`nxjobs worker` passes Celery's worker options through: a real worker started with a node
name, a child recycling limit and no heartbeat runs with them (Celery's remote control says so)
and does a job; an option Celery rejects gets Celery's own error and a non-zero exit."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from workers.devstack import ServiceProcess, project_root

pytestmark = pytest.mark.integration


def nxjobs_worker(env: dict[str, str], *args: str, timeout: float = 60):
    return subprocess.run(
        [sys.executable, "-m", "nxjobs.cli", "worker", *args],
        env=env,
        cwd=project_root(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_celerys_worker_options_reach_the_worker(worker_env, redis_server, sandbox, tmp_path):
    from celery import Celery

    from nxjobs.producers import Producer

    # A database of its own, so this worker alone consumes the job below.
    url = redis_server.url.rsplit("/", 1)[0] + "/9"
    env = {**worker_env, "NXJOBS_REDIS_URL": url}
    # Given `nxjobs worker` with the options operators tune
    proc = ServiceProcess(
        "worker-custom",
        [
            sys.executable,
            "-m",
            "nxjobs.cli",
            "worker",
            "-Q",
            "api2",
            "-c",
            "1",
            "-n",
            "custom@%h",
            "--max-tasks-per-child",
            "5",
            "--without-heartbeat",
            "--without-mingle",
            "--without-gossip",
        ],
        env=env,
        log_dir=str(tmp_path),
        cwd=project_root(),
    ).start()
    node = f"custom@{socket.gethostname()}"
    app = Celery("options-reader", broker=url, set_as_current=False)
    events: list[dict] = []
    listening = threading.Event()
    try:
        proc.wait_for_log(" ready.", 60)
        # Then it answers under that name, with that recycling limit, on its queue, events on
        inspect = app.control.inspect(destination=[node], timeout=5)
        assert node in app.control.ping(destination=[node], timeout=5)[0], proc.log_tail()
        assert inspect.stats()[node]["pool"]["max-tasks-per-child"] == 5
        assert [q["name"] for q in inspect.active_queues()[node]] == ["api2"]
        assert "task events: ON" in proc.log_text()
        # And `nxjobs worker` became that worker (exec), with the options as given
        argv = Path(f"/proc/{proc.proc.pid}/cmdline").read_bytes().split(b"\0")
        assert argv[argv.index(b"-n") + 1] == b"custom@%h" and b"--without-heartbeat" in argv
        # And it does a job, sending its task events but no worker heartbeats (Celery sends one
        # every 2 s otherwise)
        with app.connection_for_read() as conn:
            receiver = app.events.Receiver(
                conn, handlers={"*": lambda e: events.append(e) if e.get("hostname") == node else 0}
            )
            receiver.on_consume_ready = lambda *args, **kwargs: listening.set()
            reader = threading.Thread(target=receiver.capture, kwargs={"limit": None}, daemon=True)
            reader.start()
            assert listening.wait(10)
            started = time.monotonic()
            with Producer(url) as producer:
                job_id = producer.wa_calling(business_phone="6581234567")
                record = producer.wait([job_id], timeout_s=30)[job_id]
            assert record is not None and record.state.value == "completed", proc.log_tail()
            while time.monotonic() - started < 4.5 or not any(
                e["type"] == "task-succeeded" for e in events
            ):
                assert time.monotonic() - started < 30, events
                time.sleep(0.1)
            receiver.should_stop = True
            reader.join(5)
        kinds = {e["type"] for e in events}
        assert "task-succeeded" in kinds and "worker-heartbeat" not in kinds, kinds
    finally:
        proc.stop()


@pytest.mark.parametrize(
    "args, says",
    [
        (["--max-tasks-per-child", "many"], "Invalid value for '--max-tasks-per-child'"),
        (["--no-such-option"], "No such option '--no-such-option'"),
        (["--autoscale", "x"], "Invalid value for '--autoscale'"),
    ],
)
def test_an_option_celery_rejects_gets_celerys_error_and_a_non_zero_exit(worker_env, args, says):
    res = nxjobs_worker(worker_env, "-Q", "api2", *args)
    assert res.returncode == 2, res.stdout + res.stderr
    assert says in res.stderr and "Usage:" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize(
    "args, says",
    [
        (["--detach"], "--detach is not supported"),
        (["-Q", "api2,teleport"], "unknown queue(s) teleport"),
        (["-X", "agent,callbot,api2"], "-X excludes every queue"),
    ],
)
def test_what_would_break_us_is_refused_before_celery_starts(worker_env, args, says):
    res = nxjobs_worker(worker_env, *args)
    assert res.returncode == 2 and says in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


def test_missing_credentials_of_a_consumed_family_are_named(worker_env):
    env = {k: v for k, v in worker_env.items() if not k.startswith("NXJOBS_AGENT__")}
    # Excluding the family that lacks them passes the check (then Celery parses, and refuses)
    res = nxjobs_worker(env, "-X", "agent", "-n", "x@%h", "--bogus")
    assert res.returncode == 2 and "No such option '--bogus'" in res.stderr, res.stderr
    res = nxjobs_worker(env, "-n", "x@%h")
    assert res.returncode == 2 and "NXJOBS_AGENT__" in res.stderr and "agent" in res.stderr
