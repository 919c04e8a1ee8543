"""Pure pieces of the operations work: metric labels and histograms, Flower reprs, JSON logs,
and the generated configuration table."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

from nxjobs import metrics
from nxjobs.redact import flower_repr
from workers.logs import JsonFormatter

ROOT = Path(__file__).resolve().parents[2]


def test_outcome_labels_are_a_bounded_set():
    # Given the outcome texts log_attempt writes, When reduced, Then only the four labels remain
    assert metrics.outcome_label("retry in 1.23s") == "retry"
    assert metrics.outcome_label("throttled, cooldown 0.25s") == "throttled"
    assert metrics.outcome_label("submitted") == "submitted"
    assert metrics.outcome_label("failed") == "failed"
    assert metrics.outcome_label("something new") == "other"


def test_credential_label_never_shows_the_id():
    label = metrics.credential_label("api2:sandbox-access-key")
    assert label.startswith("api2:") and "sandbox" not in label and len(label) == len("api2:") + 8
    assert metrics.credential_label("api2:other-key") != label


def test_histogram_cells_become_cumulative_buckets():
    # Given three observations stored as per-bucket cells
    buckets = (0.1, 1.0)
    cells = {}
    for value in (0.05, 0.5, 5.0):
        for f in (f"h|call|{metrics.bucket_le(value, buckets)}", "h|call|count"):
            cells[f] = str(int(cells.get(f, "0")) + 1)
        cells["h|call|sum"] = str(float(cells.get("h|call|sum", "0")) + value)
    # When read back, Then buckets are cumulative and end at +Inf with the count
    series = metrics.histogram_series(cells, "h", buckets)
    cumulative, total = series["call"]
    assert cumulative == [("0.1", 1.0), ("1.0", 2.0), ("+Inf", 3.0)]
    assert total == 5.55
    assert metrics.bucket_le(0.1, buckets) == "0.1"  # le is inclusive


def test_flower_repr_masks_phones_drops_secrets_and_stays_short():
    kwargs = {
        "job_id": "j1",
        "payload": {"phones": [f"86138{i:08d}" for i in range(5000)], "token": "s3cret"},
    }
    shown = flower_repr(kwargs, "number-check")
    assert shown.startswith("{'kind': 'number-check', 'job_id': 'j1'")
    assert "8613800000000" not in shown and "861******0000" in shown
    assert "s3cret" not in shown and "4995 more" in shown
    assert len(shown) < 400


def test_json_log_lines_carry_the_structured_fields():
    record = logging.LogRecord(
        "nxjobs.jobs", logging.INFO, __file__, 1, "job=%s done", ("j1",), None
    )
    record.kind, record.code, record.latency_ms = "call", "0", 12
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "job=j1 done" and line["level"] == "INFO"
    assert (line["kind"], line["code"], line["latency_ms"]) == ("call", "0", 12)


def test_json_log_lines_never_print_celerys_raw_task_arguments():
    # Given a Celery record carrying the raw kwargs as `data` (its failure/retry logs do)
    record = logging.LogRecord(
        "celery.app.trace", logging.ERROR, __file__, 1, "Task %s failed", ("x",), None
    )
    record.data = {"kwargs": {"payload": {"phone": "8613800138000"}}}
    # Then the JSON line leaves it out
    assert "8613800138000" not in JsonFormatter().format(record)


def test_readme_configuration_table_is_generated_from_the_settings_model():
    # Fails when config/settings.py changed without `python scripts/settings_table.py --write`.
    proc = subprocess.run(
        [sys.executable, "scripts/settings_table.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr


def test_number_file_rows_are_validated_deduplicated_and_trusted_on_the_second_pass(tmp_path):
    from nxjobs.bulk import _number_rows
    from nxjobs.bulk_files import open_reader

    # Given a header, a '+' number, a bad row, a duplicate and a blank line
    path = tmp_path / "n.csv"
    path.write_text("phone\n+8613800138000\nabc\n\n8613800138000\n6591234567\n")
    # When validated
    rows = [
        (line, phone, info.split("\x00")[-1])
        for line, phone, info, _ in _number_rows(open_reader(str(path), "number-check"), 5000)
    ]
    # Then line numbers are the file's, the '+' is dropped and the repeat is rejected
    assert rows == [
        (2, "8613800138000", ""),
        (3, None, rows[1][2]),
        (5, None, "duplicate phone"),
        (6, "6591234567", ""),
    ]
    assert "digits" in rows[1][2]
    # And the second pass, told which lines were rejected, yields exactly the valid rows
    reader = open_reader(str(path), "number-check")
    trusted = [(line, phone) for line, phone, _, _ in _number_rows(reader, 5000, {3, 5})]
    assert trusted == [(2, "8613800138000"), (6, "6591234567")]


def test_parts_of_a_big_file_get_their_own_task_names_and_batch_numbers():
    from nxjobs.bulk import callbot_payload, number_check_payload

    make = callbot_payload({"scene_id": "1", "task_name": "x" * 128})
    assert make([{"user_phone": "1"}], 1, 1)["task_name"] == "x" * 128
    named = make([{"user_phone": "1"}], 2, 10)["task_name"]
    assert named.endswith(" (2/10)") and len(named) == 128
    nc = number_check_payload(5, "B1")
    assert nc(["1"], 3, 200) == {"phones": ["1"], "check_level": 5, "batch_no": "B1-3"}
    assert nc(["1"], 1, 1)["batch_no"] == "B1"


# ---- the metrics gaps: rate-limit waits served, provider latency per request, completions ------


class _Pipe:
    """Records the commands queued on it; `execute` is one round trip of the fake client."""

    def __init__(self, client: _Client):
        self.client = client
        self.queued: list[tuple] = []

    def __getattr__(self, command: str):
        return lambda *args, **kw: self.queued.append((command, *args))

    def execute(self) -> list:
        self.client.trips += 1
        self.client.commands += self.queued
        return [None] * len(self.queued)


class _Client:
    def __init__(self):
        self.trips = 0
        self.commands: list[tuple] = []

    def pipeline(self, transaction: bool = True) -> _Pipe:
        return _Pipe(self)

    def fields(self, command: str) -> list[str]:
        return [c[2] for c in self.commands if c[0] == command]


def test_a_rate_wait_is_one_round_trip_labelled_by_the_hashed_credential():
    client = _Client()
    # When a job waits 1.2 s on two limits of one access key
    metrics.record_rate_wait(
        client, credentials=["api2:raw-access-key", "api2-big:raw-access-key"], wait_s=1.2
    )
    # Then one pipelined call observes it once per credential, under the hashed label only
    assert client.trips == 1
    api2 = metrics.credential_label("api2:raw-access-key")
    assert f"ratelimit_wait|{api2}|2.5" in client.fields("hincrby")
    assert f"ratelimit_wait|{api2}|count" in client.fields("hincrby")
    assert len([f for f in client.fields("hincrby") if f.endswith("|count")]) == 2
    assert not any(
        "raw-access-key" in f for f in client.fields("hincrby") + client.fields("hincrbyfloat")
    )
    # And nothing at all is written for a request without limits
    metrics.record_rate_wait(client, credentials=[], wait_s=1.0)
    assert client.trips == 1


def test_rate_wait_buckets_span_a_millisecond_to_the_longest_countdown():
    buckets = metrics.RATE_WAIT_BUCKETS_S
    assert metrics.bucket_le(0.0004, buckets) == "0.001"
    assert metrics.bucket_le(600.0, buckets) == "600.0"  # RateLimitSettings.max_wait_s
    assert metrics.bucket_le(600.5, buckets) == "+Inf"


def test_an_attempt_observes_each_request_and_the_whole_attempt_in_one_round_trip():
    client = _Client()
    metrics.record_attempt(
        client,
        kind="call",
        queue="agent",
        outcome="submitted",
        code="0",
        attempt_s=1.4,
        request_latencies_s=[0.03, 0.2],
        credentials=["makecall:user"],
    )
    assert client.trips == 1
    counted = [f for f in client.fields("hincrby") if f.endswith("|count")]
    assert sorted(counted) == [
        "attempt_duration|call|count",
        "provider_latency|call|count",
        "provider_latency|call|count",
    ]
    assert {
        "provider_latency|call|0.05",
        "provider_latency|call|0.25",
        "attempt_duration|call|2.5",
    } <= set(client.fields("hincrby"))


def test_a_completion_is_timed_once_and_only_for_a_submitted_job_that_waited_for_callbacks():
    now = 1_000.0
    # Given the HSETNX marker reply and HMGET kind, submitted_at, callbacks_needed
    assert metrics.completion_delay([1, ["call", "990.5", "1"]], now) == ("call", 9.5)
    assert metrics.completion_delay([1, ["number-check", "990", None]], now) == (
        "number-check",
        10.0,
    )
    assert metrics.completion_delay([1, ["call", "1001", "1"]], now) == (
        "call",
        0.0,
    )  # clocks apart
    # Then not a second time, not before submission, not a job final at submit, not a broken field
    assert metrics.completion_delay([0, ["call", "990", "1"]], now) is None
    assert metrics.completion_delay([1, ["call", None, "1"]], now) is None
    assert metrics.completion_delay([1, ["ota-init", "990", "0"]], now) is None
    assert metrics.completion_delay([1, [None, None, None]], now) is None
    assert metrics.completion_delay([1, ["call", "soon", "1"]], now) is None
