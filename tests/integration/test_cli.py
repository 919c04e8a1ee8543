"""The `nxjobs` command as a user types it: a real process against real Redis and a real worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import cli_runner

pytestmark = pytest.mark.integration


@pytest.fixture()
def nxjobs(redis_url, tmp_path):
    return cli_runner(redis_url, tmp_path)


def _queued(producer) -> dict[str, int]:
    return {q: producer.redis.llen(q) for q in ("agent", "callbot", "api2")}


@pytest.mark.parametrize(
    "args, field",
    [
        (["submit", "call", "--phone", "12-34"], "phone"),
        (
            ["submit", "number-check", "--phone", "8613800138000", "--check-level", "2"],
            "check_level",
        ),
        (["submit", "call", "--phone", "8613800138000", "--order-id", "x" * 33], "order_id"),
        (["submit", "teleport", "--phone", "8613800138000"], "kind"),
        (["submit", "call", "--payload", "{not json"], "payload"),
        (["submit", "ota-init", "--phone", "8613800138000", "--user-ip", "300.1.1.1"], "user_ip"),
        (
            ["submit", "callbot-list", "--scene-id", "s", "--task-name", "t", "--contact", "1"],
            "contacts.0.user_phone",
        ),
    ],
)
def test_bad_input_exits_2_naming_the_field_and_enqueues_nothing(nxjobs, producer, args, field):
    before = _queued(producer)
    proc = nxjobs(*args)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: {field}: ")
    assert "Traceback" not in proc.stderr
    assert _queued(producer) == before


def test_submit_status_and_wait(nxjobs, sandbox, worker):
    # Given a job submitted with --json
    proc = nxjobs("submit", "wa-calling", "--business-phone", "6581234567", "--json")
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    # (read back right after the enqueue: a quick worker may already have taken it)
    assert record["state"] in ("queued", "running", "completed") and record["kind"] == "wa-calling"
    assert record["input"]["business_phone"] == "658***4567"
    # When we wait for it
    waited = nxjobs("wait", record["id"], "--until", "submitted", "--timeout", "30")
    # Then wait exits 0 and status shows the provider's answer
    assert waited.returncode == 0, waited.stdout + waited.stderr
    status = json.loads(nxjobs("status", record["id"], "--json").stdout)
    # (a WhatsApp calling query has no callbacks, so it completes on submission)
    assert status["state"] == "completed" and status["result"]["traceId"]


def test_wait_exits_1_when_a_job_failed(nxjobs, sandbox, worker):
    sandbox.script("/api/ota/init", 9908, times=1, message="Insufficient account balance")
    job_id = nxjobs(
        "submit", "ota-init", "--phone", "8615800001795", "--user-ip", "203.0.113.7"
    ).stdout.strip()
    waited = nxjobs("wait", job_id, "--timeout", "30")
    assert waited.returncode == 1
    assert "failed" in waited.stdout and "9908" in waited.stdout


def test_status_of_an_unknown_job_exits_1(nxjobs):
    proc = nxjobs("status", "0" * 32)
    assert proc.returncode == 1 and "not found" in proc.stderr


def test_unreachable_redis_exits_3_with_a_clear_message(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("NXJOBS_")}
    env["NXJOBS_REDIS_URL"] = "redis://127.0.0.1:1/0"
    proc = subprocess.run(
        [sys.executable, "-m", "nxjobs.cli", "submit", "call", "--phone", "8613800138000"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 3
    assert "cannot reach Redis at redis://127.0.0.1:1/0" in proc.stderr


def test_sandbox_is_not_a_subcommand_and_the_error_names_the_repo_command(nxjobs):
    # The fake NXCloud is not in the installed package: the CLI points at the repo's entry point
    proc = nxjobs("sandbox", "--port", "0", timeout=20)
    assert proc.returncode == 2
    assert "python -m sandbox" in proc.stderr and "Traceback" not in proc.stderr


def test_submit_with_a_notify_url_stores_it_and_refuses_a_bad_one(nxjobs, producer):
    # Given one job submitted with its own notify URL
    proc = nxjobs(
        "submit",
        "wa-calling",
        "--business-phone",
        "6581234567",
        "--in",
        "1h",
        "--notify-url",
        "https://app.example/hooks/nxjobs",
    )
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip()
    # Then its record carries it
    assert producer.get(job_id).notify_url == "https://app.example/hooks/nxjobs"
    producer.cancel(job_id)
    # and a URL that is not http(s) is refused, naming the field, with nothing enqueued
    before = _queued(producer)
    bad = nxjobs(
        "submit", "wa-calling", "--business-phone", "6581234567", "--notify-url", "ftp://x"
    )
    assert bad.returncode == 2 and bad.stderr.startswith("error: notify_url: "), bad.stderr
    assert _queued(producer) == before
