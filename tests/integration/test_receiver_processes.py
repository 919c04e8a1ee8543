"""`python -m workers.web --workers N`: one socket, N serving processes, restarted when they die."""

from __future__ import annotations

import os
import signal
import time

import pytest
import requests

from workers.devstack import start_callbacks

pytestmark = pytest.mark.timeout(90)


def children_of(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        return [int(x) for x in fh.read().split()]


def wait_for(predicate, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    return predicate()


def test_workers_share_a_port_chosen_by_the_os_and_a_dead_one_is_replaced(callbacks_env, tmp_path):
    # Given the receiver with two processes on port 0
    proc, url = start_callbacks(callbacks_env, port=0, extra=("--workers", "2"), log_dir=str(tmp_path))
    try:
        # Then it prints the port it really listens on, and answers there
        assert not url.endswith(":0")
        assert requests.get(url + "/readyz", timeout=5).status_code == 200
        kids = wait_for(lambda: len(children_of(proc.proc.pid)) == 2 and children_of(proc.proc.pid), 10)
        assert kids and len(kids) == 2
        # When one serving process is killed
        os.kill(kids[0], signal.SIGKILL)
        # Then another takes its place, and the port keeps answering all along
        replaced = wait_for(lambda: (lambda now: len(now) == 2 and kids[0] not in now)(children_of(proc.proc.pid)), 10)
        assert replaced
        for _ in range(10):
            assert requests.get(url + "/readyz", timeout=5).status_code == 200
        # When the supervisor gets SIGTERM, every process stops, cleanly and soon
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(timeout=20) == 0
    finally:
        proc.stop()


def test_single_process_stops_on_sigterm(callbacks_env, tmp_path):
    proc, url = start_callbacks(callbacks_env, port=0, log_dir=str(tmp_path))
    try:
        assert requests.get(url + "/healthz", timeout=5).json()["ok"] is True
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(timeout=20) == 0
    finally:
        proc.stop()
