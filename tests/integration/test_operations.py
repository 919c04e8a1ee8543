"""Operations end to end, all real: Flower started against real workers, the metrics
exporter after a demo-sized run (real worker, receiver, sandbox callbacks), the stall
health check flipping when a worker stops, and bulk submission from files via the CLI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest
import requests

from nxjobs.records import JobState
from sandbox import accounts
from workers.devstack import (
    ServiceProcess,
    _wait_ready,
    free_port,
    project_root,
    start_exporter,
    start_worker,
)

pytestmark = pytest.mark.integration

WAIT_S = 20
SECRETS = (accounts.API2_ACCESS_SECRET, accounts.CALLBOT_SECRET_KEY, accounts.AGENT_SECRETKEY)


def poll(fn, timeout_s: float, interval_s: float = 0.2):
    """fn() until it returns something truthy; that value, or the last one after the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval_s)


# ---- Flower ---------------------------------------------------------------------------------

FLOWER_AUTH = ("ops", "flower-test-pass")


@pytest.fixture(scope="module")
def flower(worker_env, worker, redis_url, tmp_path_factory):
    """Flower 2.2 as compose runs it (basic auth from FLOWER_BASIC_AUTH, persistent), on the
    worker's Redis."""
    port = free_port()
    env = {**worker_env, "FLOWER_BASIC_AUTH": ":".join(FLOWER_AUTH)}
    log_dir = tmp_path_factory.mktemp("flower")
    proc = ServiceProcess(
        "flower",
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workers.celery_app",
            "flower",
            f"--port={port}",
            "--address=127.0.0.1",
            "--persistent=True",
            f"--db={log_dir / 'flower.db'}",
        ],
        env=env,
        log_dir=str(log_dir),
        cwd=project_root(),
    ).start()
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(proc, url + "/healthcheck", 30)
        # The web page answers before the event receiver listens: wait until a job shows up.
        from nxjobs.producers import Producer

        with Producer(redis_url) as producer:

            def receiving():
                probe = producer.wa_calling(business_phone="6581234567")
                return poll(
                    lambda: (
                        probe
                        in requests.get(f"{url}/api/tasks", auth=FLOWER_AUTH, timeout=5).json()
                    ),
                    2.0,
                    0.2,
                )

            assert poll(receiving, 30, 0), f"Flower shows no task events:\n{proc.log_tail()}"
        yield url
    finally:
        proc.stop()


def test_flower_lists_a_job_with_its_kind_id_and_masked_arguments(flower, producer, sandbox):
    auth = FLOWER_AUTH
    # Given Flower's API refuses anonymous callers
    assert requests.get(f"{flower}/api/tasks", timeout=5).status_code == 401
    # When a number check and a call run through the real worker
    phones = ["8613800138000", "6591234567"]
    nc_id = producer.number_check(phones=phones)
    call_id = producer.call(phone="8613900139000")
    records = producer.wait([nc_id, call_id], until="submitted", timeout_s=WAIT_S)
    assert all(r.state in (JobState.SUBMITTED, JobState.COMPLETED) for r in records.values()), (
        records
    )

    def listed():
        tasks = requests.get(f"{flower}/api/tasks", auth=auth, timeout=5).json()
        done = [tasks.get(i) for i in (nc_id, call_id)]
        return tasks if all(t and t.get("state") == "SUCCESS" for t in done) else None

    tasks = poll(listed, WAIT_S, 0.5)
    assert tasks, "Flower never showed both jobs as SUCCESS"
    # Then each is listed under its job id, with its task (kind) name and masked arguments
    nc, call = tasks[nc_id], tasks[call_id]
    assert (nc["name"], call["name"]) == ("nxjobs.number_check", "nxjobs.call")
    assert "'kind': 'number-check'" in nc["kwargs"] and f"'job_id': '{nc_id}'" in nc["kwargs"]
    # (also after a job went back to the queue to wait for its rate-limit slot: the worker's
    # re-publish gets the same repr, workers/celery_app.py)
    assert "861******8000" in nc["kwargs"] and "'kind': 'call'" in call["kwargs"]
    assert f"'job_id': '{call_id}'" in call["kwargs"] and "861******9000" in call["kwargs"]
    # And nowhere in Flower's view of them is a full phone number or a secret
    shown = json.dumps(tasks[nc_id]) + json.dumps(tasks[call_id])
    for phone in [*phones, "8613900139000"]:
        assert phone not in shown
    assert not any(secret in shown for secret in SECRETS)
    # And the single-task endpoint agrees
    one = requests.get(f"{flower}/api/task/info/{call_id}", auth=auth, timeout=5).json()
    assert "8613900139000" not in json.dumps(one) and "861******9000" in one["kwargs"]


# ---- metrics after a demo-sized run -----------------------------------------------------------

# (nxjobs_ratelimit_wait_seconds has samples only once a job waited for its slot:
# test_metrics_gaps.py)
METRICS = (
    "nxjobs_jobs",
    "nxjobs_jobs_finished_total",
    "nxjobs_attempts_total",
    "nxjobs_provider_responses_total",
    "nxjobs_provider_latency_seconds_bucket",
    "nxjobs_attempt_duration_seconds_bucket",
    "nxjobs_ratelimit_next_slot_seconds",
    "nxjobs_ratelimit_throttles_total",
    "nxjobs_callback_delay_seconds_bucket",
    "nxjobs_callbacks_total",
    "nxjobs_jobs_awaiting_callbacks",
    "nxjobs_dead_letters",
    "nxjobs_queue_depth",
    "nxjobs_workers_healthy",
)


def samples(text: str) -> dict[str, list[tuple[str, float]]]:
    out: dict[str, list[tuple[str, float]]] = {}
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$", line)
        if m:
            out.setdefault(m.group(1), []).append((m.group(2) or "", float(m.group(3))))
    return out


def test_metrics_endpoint_exposes_every_metric_after_a_demo_run(
    cb_producer, cb_sandbox, callbacks_worker, callbacks_env, tmp_path
):
    exporter, url = start_exporter(callbacks_env, str(tmp_path))
    try:
        # Given a job the provider throttles ("too frequent") until told to stop
        cb_sandbox.configure(throttle_rate=1.0)
        throttled = cb_producer.wa_calling(business_phone="6581234567")
        assert poll(lambda: (cb_producer.get(throttled).throttles or 0) >= 1, WAIT_S)
        cb_sandbox.configure(throttle_rate=0.0)
        # and one job of every other kind, completed through real callbacks
        ids = [
            cb_producer.number_check(phones=["8613800138000", "6591234567"]),
            cb_producer.call(phone="8613900139000"),
            cb_producer.callbot_list(
                scene_id="1", task_name="metrics", contacts=[{"user_phone": "8613700137000"}]
            ),
            cb_producer.ota_init(phone="8615800001795", user_ip="203.0.113.7"),
        ]
        records = cb_producer.wait([*ids, throttled], until="completed", timeout_s=2 * WAIT_S)
        assert all(r.state == JobState.COMPLETED for r in records.values()), {
            i: (r.state, r.error) for i, r in records.items()
        }
        # When Prometheus scrapes the exporter (after the receiver's next write of completion
        # times: it batches them, every DELAY_FLUSH_S)
        from nxjobs.callbacks.app import DELAY_FLUSH_S

        time.sleep(2 * DELAY_FLUSH_S)
        resp = requests.get(f"{url}/metrics", timeout=10)
        assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/plain")
        got = samples(resp.text)
        # Then every metric is there with samples
        missing = [name for name in METRICS if not got.get(name)]
        assert not missing, f"no samples for {missing}\n{resp.text}"

        def value(name: str, **labels) -> float:
            want = [f'{k}="{v}"' for k, v in labels.items()]
            return sum(v for lbl, v in got[name] if all(w in lbl for w in want))

        assert value("nxjobs_jobs_finished_total", kind="call", state="completed") >= 1
        assert value("nxjobs_attempts_total", kind="number-check", outcome="submitted") >= 1
        assert value("nxjobs_attempts_total", kind="wa-calling", outcome="throttled") >= 1
        assert value("nxjobs_provider_responses_total", kind="wa-calling", code="0") >= 1
        assert value("nxjobs_provider_responses_total", kind="wa-calling", code="2206") >= 1
        assert value("nxjobs_ratelimit_throttles_total") >= 1
        assert value("nxjobs_callbacks_total", outcome="recorded") >= 3
        assert value("nxjobs_provider_latency_seconds_count", kind="ota-init") >= 1
        assert value("nxjobs_attempt_duration_seconds_count", kind="ota-init") >= 1
        # Every job with callbacks is timed, also one whose callbacks all beat its submit result
        # (the worker times that one); ota-init and wa-calling, final at submit, never are
        assert value("nxjobs_callback_delay_seconds_count") >= 3
        assert value("nxjobs_callback_delay_seconds_count", kind="ota-init") == 0
        assert {lbl for lbl, _ in got["nxjobs_queue_depth"]} == {
            f'{{queue="{q}"}}' for q in ("agent", "callbot", "api2")
        }
        # And no label or value reveals a credential or a phone number
        for secret in (*SECRETS, accounts.API2_ACCESS_KEY, accounts.CALLBOT_UUID, "8613800138000"):
            assert secret not in resp.text
    finally:
        exporter.stop()


# ---- the stall health check -------------------------------------------------------------------


def test_health_fails_when_the_worker_stops_while_jobs_wait(
    worker_env, redis_url, sandbox, tmp_path
):
    # Given a worker, the exporter (stall after 1.5 s) and a producer on their own Redis db
    env = {
        **worker_env,
        "NXJOBS_REDIS_URL": redis_url.rsplit("/", 1)[0] + "/3",
        "NXJOBS_METRICS__STALL_S": "1.5",
    }
    from nxjobs.producers import Producer

    worker = start_worker(env, queues="api2", concurrency=1, log_dir=str(tmp_path / "w"))
    exporter, url = start_exporter(env, str(tmp_path / "e"))
    try:
        with Producer(env["NXJOBS_REDIS_URL"]) as producer:
            first = producer.ota_init(phone="8615800001795", user_ip="203.0.113.7")
            assert producer.wait([first], until="submitted", timeout_s=WAIT_S)[first].reached(
                JobState.SUBMITTED
            )
            health = requests.get(f"{url}/healthz", timeout=5)
            assert health.status_code == 200, health.text
            # When the worker stops and work keeps arriving
            worker.stop()
            producer.ota_init(phone="8615800001795", user_ip="203.0.113.7")
            # Then /healthz turns 503 once the queue has waited longer than the stall time
            assert requests.get(f"{url}/healthz", timeout=5).status_code == 200  # not yet
            flipped = poll(lambda: requests.get(f"{url}/healthz", timeout=5).status_code == 503, 10)
            assert flipped
            detail = requests.get(f"{url}/healthz", timeout=5).json()
            assert detail["queues"]["api2"]["stalled"] and detail["queues"]["api2"]["depth"] == 1
            assert "nxjobs_workers_healthy 0.0" in requests.get(f"{url}/metrics", timeout=5).text
    finally:
        worker.stop()
        exporter.stop()


# ---- bulk submission from files ---------------------------------------------------------------


def cli(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nxjobs.cli", *args],
        env=env,
        cwd=project_root(),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_number_check_file_is_validated_reported_split_and_waited_for(
    worker_env, worker, sandbox, tmp_path
):
    # Given a 12 001-row file with a header, two bad rows and a duplicate
    path = tmp_path / "numbers.csv"
    lines = ["phone"] + [f"86138{i:08d}" for i in range(12_000)]
    lines[5], lines[9] = "12 34", "86138000000001"  # line 6: bad; line 10: another valid number
    lines.append("8613800000002")  # duplicate of line 4
    path.write_text("\n".join(lines) + "\n")
    # When submitted without allowing rejects, Then nothing is enqueued and the report names the
    # lines
    strict = cli(worker_env, "submit", "number-check", "--file", str(path), "--no-progress")
    assert strict.returncode == 2, strict.stderr
    assert strict.stdout == "" and "nothing was enqueued" in strict.stderr
    report = (tmp_path / "numbers.csv.rejects.csv").read_text().splitlines()
    assert report[0] == "line,value,reason"
    assert [r.split(",")[0] for r in report[1:]] == ["6", "12002"]
    assert "duplicate phone" in report[2] and "8613800000002" not in "\n".join(report)
    # When allowed, Then the 11 999 valid rows go out as 3 jobs (5 000 + 5 000 + 1 999), with a
    # progress bar
    ok = cli(
        worker_env, "submit", "number-check", "--file", str(path), "--skip-invalid", "--progress"
    )
    assert ok.returncode == 0, ok.stderr
    job_ids = ok.stdout.split()
    assert len(job_ids) == 3 and "validating" in ok.stderr and "enqueuing" in ok.stderr
    assert "11,999 of 12,001 rows enqueued as 3 number-check job(s), 2 rejected" in ok.stderr
    # And `nxjobs wait` shows live progress for the set until all are submitted
    waited = cli(
        worker_env,
        "wait",
        "--ids-file",
        "-",
        "--progress",
        "--timeout",
        str(WAIT_S),
        stdin="\n".join(job_ids),
    )
    assert waited.returncode == 0, waited.stdout + waited.stderr
    assert "3/3 submitted or failed" in waited.stderr
    from nxjobs.producers import Producer

    with Producer(worker_env["NXJOBS_REDIS_URL"]) as producer:
        sizes = sorted(len(producer.get(j).input["phones"]) for j in job_ids)
    assert sizes == [1_999, 5_000, 5_000]


def test_callbot_contacts_file_bigger_than_a_job_becomes_named_parts(worker_env, tmp_path):
    # Given 7 contacts and at most 3 per job (the real limit is 100 000), one with a duplicate order
    # id
    path = tmp_path / "contacts.csv"
    path.write_text(
        "user_phone,order_id,user_name\n"
        + "".join(f"86139{i:08d},o{i % 6},name {i}\n" for i in range(7))
    )
    # When submitted
    res = cli(
        worker_env,
        "submit",
        "callbot-list",
        "--scene-id",
        "7",
        "--task-name",
        "renewals",
        "--contacts",
        str(path),
        "--per-job",
        "3",
        "--no-progress",
    )
    # Then they become 3 queued jobs named (1/3) .. (3/3); order ids only need to be unique within a
    # job (what the worker then does with a callbot-list job is covered by the end-to-end suites)
    assert res.returncode == 0, res.stderr
    job_ids = res.stdout.split()
    from nxjobs.producers import Producer

    with Producer(worker_env["NXJOBS_REDIS_URL"]) as producer:
        records = {j: producer.get(j) for j in job_ids}
    names = [records[j].input["task_name"] for j in job_ids]
    assert names == ["renewals (1/3)", "renewals (2/3)", "renewals (3/3)"]
    assert [len(records[j].input["contacts"]) for j in job_ids] == [3, 3, 1]
    assert [c["order_id"] for c in records[job_ids[2]].input["contacts"]] == ["o0"]
    assert "8613900000000" not in json.dumps([r.input for r in records.values()])


def _callbot_file(env: dict[str, str], path, *extra: str) -> subprocess.CompletedProcess:
    return cli(
        env,
        "submit",
        "callbot-list",
        "--scene-id",
        "7",
        "--task-name",
        "crm",
        "--contacts",
        str(path),
        "--no-progress",
        *extra,
    )


def test_a_crm_export_headed_by_name_submits_with_its_params_and_extra_columns_ignored(
    worker_env, tmp_path
):
    from nxjobs.producers import Producer

    # Given a CRM export: columns in its own order and spelling, a column we do not use, a param
    # column, and a bad phone on line 3
    path = tmp_path / "contacts.csv"
    rows = ["o1,86139000000001,Li,North,gold", "o2,12-34,Wu,South,", "o3,86139000000003,,East,"]
    path.write_text("orderID,userPhone,userName,Region,param.plan\n" + "\n".join(rows) + "\n")
    # When submitted strictly, Then nothing is enqueued and the error names file, line and column
    strict = _callbot_file(worker_env, path)
    assert strict.returncode == 2 and strict.stdout == "", strict.stderr
    assert f"rejected: {path} line 3: userPhone: must be 6-20 digits" in strict.stderr
    assert strict.stderr.count("Region") == 1 and "warning: " in strict.stderr
    # When the bad row is allowed, Then two contacts go out by name, params from param.plan
    ok = _callbot_file(worker_env, path, "--skip-invalid")
    assert ok.returncode == 0, ok.stderr
    (job_id,) = ok.stdout.split()
    with Producer(worker_env["NXJOBS_REDIS_URL"]) as producer:
        record = producer.get(job_id)
    contacts = record.input["contacts"]
    assert [c["order_id"] for c in contacts] == ["o1", "o3"]
    assert contacts[0]["user_name"] == "Li" and contacts[0]["params"] == [
        {"name": "plan", "value": "gold"}
    ]
    assert not contacts[1]["params"] and "North" not in json.dumps(contacts)


def test_a_jsonl_contacts_file_and_a_header_without_a_phone_column(worker_env, tmp_path):
    from nxjobs.producers import Producer

    # Given a JSON-lines file (phones as numbers, params as an object, a key we do not use)
    path = tmp_path / "contacts.jsonl"
    path.write_text(
        json.dumps({"userPhone": 86139000000011, "orderID": "j1", "params": {"plan": "gold"}})
        + "\n"
        + json.dumps({"phone": "+86139000000012", "name": "Wu", "crm_id": 9})
        + "\n"
    )
    # When submitted, Then one job holds both contacts, normalised
    ok = _callbot_file(worker_env, path)
    assert ok.returncode == 0, ok.stderr
    assert "crm_id" in ok.stderr
    (job_id,) = ok.stdout.split()
    with Producer(worker_env["NXJOBS_REDIS_URL"]) as producer:
        contacts = producer.get(job_id).input["contacts"]
    assert [c.get("order_id") for c in contacts] == ["j1", None]
    assert contacts[0]["params"] == [{"name": "plan", "value": "gold"}]
    assert contacts[1]["user_name"] == "Wu"
    # And a CSV whose header names no phone column is refused whole, naming the spellings
    bad = tmp_path / "nophone.csv"
    bad.write_text("orderID,userName\no1,Li\n")
    refused = _callbot_file(worker_env, bad)
    assert refused.returncode == 2 and refused.stdout == ""
    assert "no phone column; name it one of userPhone, user_phone, phone" in refused.stderr
    assert "nothing was enqueued" in refused.stderr


def test_a_json_array_number_file_submits_and_a_broken_one_enqueues_nothing(worker_env, tmp_path):
    from nxjobs.producers import Producer

    # Given a JSON array of bare phones and objects
    path = tmp_path / "numbers.json"
    path.write_text('[8613800000101,\n "+8613800000102",\n {"msisdn": "8613800000103"}]\n')
    ok = cli(worker_env, "submit", "number-check", "--file", str(path), "--no-progress")
    assert ok.returncode == 0, ok.stderr
    (job_id,) = ok.stdout.split()
    with Producer(worker_env["NXJOBS_REDIS_URL"]) as producer:
        assert len(producer.get(job_id).input["phones"]) == 3
    # And an array broken on line 3 is refused whole, naming file and line
    path.write_text('[8613800000101,\n "+8613800000102",\n {"msisdn": ]\n')
    bad = cli(worker_env, "submit", "number-check", "--file", str(path), "--no-progress")
    assert bad.returncode == 2 and bad.stdout == ""
    assert f"{path} line 3: not valid JSON" in bad.stderr and "nothing was enqueued" in bad.stderr


def test_a_million_rows_submit_within_the_memory_bound(tmp_path):
    # The benchmark script itself: 1 000 000 rows -> 200 jobs, peak RSS of the CLI process under the
    # bound.
    bound_mb = os.environ.get("NXJOBS_BULK_BOUND_MB", "200")
    proc = subprocess.run(
        [sys.executable, "bench/bulk_submit.py", "--rows", "1000000", "--bound-mb", bound_mb],
        cwd=project_root(),
        capture_output=True,
        text=True,
        timeout=110,
    )
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "200 jobs, 200 messages queued, 999,996 rows in them, 4 rejected" in proc.stdout
