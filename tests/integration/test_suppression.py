"""The do-not-call list on a real Redis, a real worker and the sandbox: refused at enqueue,
checked again right before the makecall, contacts left out and counted, the CLI import."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from nxjobs import keys
from nxjobs.client.agent import MAKECALL_PATH
from nxjobs.jobs import InvalidJob
from nxjobs.records import JobState
from sandbox.accounts import SUPPRESSION_SECRET

pytestmark = pytest.mark.integration

LISTED = "6591230001"
FREE = "6591230002"


@pytest.fixture()
def listing(redis_url, monkeypatch):
    """A producer with the workers' key, on an empty list."""
    from nxjobs.producers import Producer

    monkeypatch.setenv("NXJOBS_SUPPRESSION__SECRET", SUPPRESSION_SECRET)
    with Producer(redis_url) as p:
        p.redis.delete(keys.SUPPRESSION)
        yield p
        p.redis.delete(keys.SUPPRESSION)


def _snapshot(r) -> dict[str, object]:
    return {k: r.type(k) for k in r.scan_iter(count=1000)} | {
        q: r.llen(q) for q in ("agent", "callbot", "api2")
    }


def test_a_call_to_a_listed_number_is_refused_and_nothing_is_written(listing):
    # Given a listed number (written as "+65 ..." : normalised before hashing)
    assert listing.suppress(["+65 9123 0001"]).added == 1
    assert listing.is_suppressed(LISTED) and not listing.is_suppressed(FREE)
    before = _snapshot(listing.redis)
    # When a call to it is enqueued, alone or in a batch
    with pytest.raises(InvalidJob) as err:
        listing.call(phone=LISTED)
    assert err.value.field == "phone" and err.value.message.startswith("suppressed")
    with pytest.raises(InvalidJob) as err:
        listing.enqueue_many("call", [{"phone": FREE}, {"phone": LISTED}])
    assert err.value.field == "1.phone"
    with pytest.raises(InvalidJob) as err:
        listing.callbot_contact(user_task_id="task1", contact={"user_phone": LISTED})
    assert err.value.field == "contact.user_phone"
    # Then Redis is exactly as it was: no record, no message
    assert _snapshot(listing.redis) == before
    # ... and the list holds no plain number
    members = listing.redis.smembers(keys.SUPPRESSION)
    assert len(members) == 1 and not any(LISTED[2:] in m for m in members)
    # Number checks call nobody: not screened
    assert listing.number_check(phones=[LISTED], batch=False)


def test_a_number_listed_after_enqueue_is_never_called(listing, redis_url, sandbox, worker):
    from nxjobs.producers import Producer

    # Given a call enqueued by a producer whose list did not have the number (another key: its
    # digest does not match the workers'), then the number listed under the workers' key
    listing.suppress([LISTED])
    os.environ["NXJOBS_SUPPRESSION__SECRET"] = "another-key-0123456789"
    try:
        with Producer(redis_url) as other:
            job_id = other.call(phone=LISTED)
    finally:
        os.environ["NXJOBS_SUPPRESSION__SECRET"] = SUPPRESSION_SECRET
    # When the worker takes it
    record = listing.wait([job_id], until="submitted", timeout_s=30)[job_id]
    # Then it failed `suppressed`, the number not in the message, and no makecall left
    assert record is not None and record.state == JobState.FAILED
    assert record.error is not None and record.error.code == "suppressed"
    assert LISTED not in json.dumps(record.model_dump(mode="json"))
    sent = sandbox.requests(MAKECALL_PATH, limit=1000)
    assert not any(LISTED in json.dumps(r) for r in sent)
    # ... while a free number's call went out
    free = listing.call(phone=FREE)
    assert listing.wait([free], timeout_s=30)[free].state == JobState.SUBMITTED


def test_a_lists_listed_contacts_are_left_out_and_counted(listing):
    listing.suppress([LISTED, "6591230003"])
    contacts = [{"user_phone": p} for p in (LISTED, FREE, "6591230003", "6591230004")]
    job_id = listing.callbot_list(scene_id="1", task_name="t", contacts=contacts)
    record = listing.get(job_id)
    assert record is not None
    assert record.input["suppressed"] == 2
    assert len(record.input["contacts"]) == 2
    payload = json.loads(listing.redis.get(keys.job_payload(job_id)) or "{}")
    if payload:  # (a worker may have sent it already)
        assert [c["user_phone"] for c in payload["contacts"]] == [FREE, "6591230004"]
    # A list of only listed contacts is refused
    with pytest.raises(InvalidJob) as err:
        listing.callbot_list(scene_id="1", task_name="t", contacts=contacts[:1])
    assert err.value.field == "contacts" and "suppressed" in err.value.message


def test_no_key_and_a_non_empty_list_fails_closed(listing, redis_url, monkeypatch):
    from nxjobs.producers import Producer

    listing.suppress([LISTED])
    monkeypatch.delenv("NXJOBS_SUPPRESSION__SECRET")
    with Producer(redis_url) as keyless:
        with pytest.raises(InvalidJob) as err:
            keyless.call(phone=FREE)
        assert err.value.field == "suppression"
        assert "NXJOBS_SUPPRESSION__SECRET" in err.value.message
        # An empty list with no key: no list, calls go
        listing.redis.delete(keys.SUPPRESSION)
        assert keyless.call(phone=FREE)


def _cli(redis_url: str, cwd, *args: str, secret: str | None = SUPPRESSION_SECRET):
    env = {k: v for k, v in os.environ.items() if not k.startswith("NXJOBS_")}
    env["NXJOBS_REDIS_URL"] = redis_url
    if secret:
        env["NXJOBS_SUPPRESSION__SECRET"] = secret
    return subprocess.run(
        [sys.executable, "-m", "nxjobs.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_import_check_count_remove(listing, redis_url, tmp_path):
    cwd = os.getcwd()
    numbers = tmp_path / "numbers.csv"
    rows = ["phone"] + [f"65912{i:05d}" for i in range(25_000)] + ["6591200000", "12-34"]
    numbers.write_text("\n".join(rows) + "\n")
    # When a file is imported with a progress bar
    proc = _cli(redis_url, cwd, "suppress", "add", "--file", str(numbers), "--progress")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "added 25000, already listed 1, invalid 1"
    assert "suppress" in proc.stderr and "100.0%" in proc.stderr and "[====" in proc.stderr
    assert "6591200001" not in proc.stdout + proc.stderr
    # Then count and check see it; remove takes a number out
    assert _cli(redis_url, cwd, "suppress", "count").stdout.strip() == "25000"
    assert _cli(redis_url, cwd, "suppress", "check", "6591200007").returncode == 0
    assert _cli(redis_url, cwd, "suppress", "check", FREE).returncode == 1
    proc = _cli(redis_url, cwd, "suppress", "remove", "6591200007", FREE)
    assert proc.stdout.strip() == "removed 1, not listed 1, invalid 0"
    assert _cli(redis_url, cwd, "suppress", "check", "6591200007").returncode == 1
    # A call to a listed number: exit 2, the field named, nothing enqueued
    before = listing.redis.llen("agent")
    proc = _cli(redis_url, cwd, "submit", "call", "--phone", "6591200008")
    assert proc.returncode == 2 and proc.stderr.startswith("error: phone: suppressed")
    assert listing.redis.llen("agent") == before
    # Without the key, every suppress command refuses, naming the variable
    proc = _cli(redis_url, cwd, "suppress", "count", secret=None)
    assert proc.returncode == 2 and "NXJOBS_SUPPRESSION__SECRET" in proc.stderr


def test_cli_bad_calling_hours_setting_is_refused(redis_url, tmp_path):
    env_bad = {"NXJOBS_CALLING_HOURS__WINDOW": "10:00-10:00"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("NXJOBS_")}
    proc = subprocess.run(
        [sys.executable, "-m", "nxjobs.cli", "submit", "call", "--phone", FREE],
        env={**env, **env_bad, "NXJOBS_REDIS_URL": redis_url},
        cwd=os.getcwd(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "NXJOBS_CALLING_HOURS__WINDOW" in proc.stderr and "Traceback" not in proc.stderr


def test_a_contacts_file_with_a_job_of_only_listed_contacts_is_refused_whole(
    listing, redis_url, tmp_path
):
    # Given a file cut into jobs of 2 contacts, the second job's two contacts both listed
    listing.suppress(["6591230011", "6591230012"])
    contacts = tmp_path / "contacts.csv"
    phones = ["6591230010", "6591230013", "6591230011", "6591230012", "6591230014"]
    contacts.write_text("userPhone\n" + "\n".join(phones) + "\n")
    before = _snapshot(listing.redis)
    # When it is submitted
    proc = _cli(
        redis_url,
        os.getcwd(),
        "submit",
        "callbot-list",
        "--scene-id",
        "1",
        "--task-name",
        "t",
        "--contacts",
        str(contacts),
        "--per-job",
        "2",
    )
    # Then it is refused before anything is enqueued, naming the lines of that job
    assert proc.returncode == 2, proc.stderr
    assert "lines 4-5" in proc.stderr and "do-not-call" in proc.stderr, proc.stderr
    assert _snapshot(listing.redis) == before
    assert "6591230011" not in proc.stdout + proc.stderr
