"""A short run of the coalescing benchmark (bench/coalesce.py), so CI guards the script and what
it measures: every one-number job completed through two receiver processes, in numbers / 2 000
provider requests, none refused as "too frequent"."""

from __future__ import annotations

import pytest

from bench.coalesce import run_row

pytestmark = pytest.mark.timeout(180)


def test_short_coalescing_run_completes_every_job_in_shared_requests():
    row = run_row("coalesced", 4000, quota=10, workers=1, concurrency=2, receivers=2, timeout_s=120)
    assert row["finished"] and row["states"] == {"completed": 4000}, row
    assert (row["provider_requests"], row["too_frequent"]) == (2, 0), row
    assert row["numbers_per_s"] > 0 and set(row["cpu_s"]) >= {
        "sandbox",
        "callbacks",
        "redis",
        "producer",
    }
