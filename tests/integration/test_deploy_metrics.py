"""Every metric and label the alert rules (deploy/prometheus/alerts.yml) and the dashboard
(deploy/grafana/nxjobs-dashboard.json) use is one the exporter really serves: the real exporter
process on a real Redis, holding the metrics workers and the receiver write, scraped over HTTP."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from nxjobs import keys, metrics
from nxjobs.redis_conn import connect
from tests import deploy_files as files
from tests.integration.test_operations import start_exporter

pytestmark = pytest.mark.integration

DB = 15
# The sample names each metric type adds to its family's name in the text format.
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gauge": ("",),
}


@pytest.fixture()
def db_url(redis_url) -> Iterator[str]:
    url = redis_url.rsplit("/", 1)[0] + f"/{DB}"
    client = connect(url)
    client.flushdb()
    # Given what workers and the receiver write while they run: an attempt of each outcome with
    # its provider code and latency, a rate-limit wait, finished jobs, callbacks and their
    # delay, a restored message, a dead letter
    for outcome, code in (("submitted", "0"), ("throttled, cooldown 0.25s", "2206")):
        metrics.record_attempt(
            client,
            kind="number-check",
            queue="api2",
            outcome=outcome,
            code=code,
            attempt_s=0.2,
            request_latencies_s=[0.1],
            credentials=["api2:access-key-1"],
        )
    metrics.record_rate_wait(client, credentials=["api2:access-key-1"], wait_s=1.5)
    client.hincrby(keys.METRICS_COUNTERS, keys.finished_count("call", "failed"), 3)
    client.hincrby(keys.METRICS_COUNTERS, keys.finished_count("call", "completed"), 5)
    pipe = client.pipeline(transaction=False)
    metrics.queue_callback_outcomes(pipe, {"recorded": 4, "refused:401:bad token": 1})
    pipe.execute()
    metrics.record_callback_delay(client, kind="call", delay_s=12.0)
    metrics.record_restored(client, {"api2": 1})
    client.zadd(keys.DEAD_INDEX, {"job-1": 1.0})
    try:
        yield url
    finally:
        client.flushdb()
        client.close()


def served(text: str) -> dict[str, set[str]]:
    """Sample name -> its label names, for every family of the scrape (one without samples
    still names its samples by its type)."""
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for suffix in SUFFIXES.get(family.type, ("",)):
            out.setdefault(family.name + suffix, set())
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


def test_every_metric_and_label_of_the_rules_and_dashboard_is_served(db_url, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("NXJOBS_")}
    env["NXJOBS_REDIS_URL"] = db_url
    proc, url = start_exporter(env, str(tmp_path))
    try:
        # When Prometheus would scrape it
        response = requests.get(f"{url}/metrics", timeout=10)
        assert response.status_code == 200
        series = served(response.text)
    finally:
        proc.stop()
    # Then the scrape carries what the rules page on, with samples (not only declared)
    for name in (
        "nxjobs_workers_healthy",
        "nxjobs_jobs_finished_total",
        "nxjobs_ratelimit_throttles_total",
        "nxjobs_callbacks_total",
        "nxjobs_jobs_awaiting_callbacks",
        "nxjobs_redis_memory_used_bytes",
        "nxjobs_redis_memory_max_bytes",
        "nxjobs_dead_letters",
        "nxjobs_queue_depth",
    ):
        assert name in series, name
    assert "credential" in series["nxjobs_ratelimit_throttles_total"]
    # And every name each expression uses is served, and every label it groups by or matches
    # on is a label of one of the series it reads
    exprs = files.all_exprs()
    assert len(exprs) >= 30
    for where, expr in exprs.items():
        names = files.metric_names(expr)
        assert names, f"{where} reads no nxjobs series: {expr}"
        unknown = names - set(series)
        assert not unknown, f"{where}: not served by the exporter: {sorted(unknown)}"
        labels = set().union(*(series[n] for n in names))
        missing = files.label_names(expr) - labels
        assert not missing, f"{where}: labels {sorted(missing)} on none of {sorted(names)}"
