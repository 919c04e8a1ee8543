"""The idle cost of a deployment does not grow with unrelated keys: with beat, a worker, the
receiver and the exporter running over 200 000 filler keys, and every periodic task run at least
once while the exporter is scraped, no SCAN and no KEYS ran on Redis (INFO commandstats). The
short version of bench/scale.py's idle window (its figures are in bench/README.md)."""

from __future__ import annotations

import pytest

from bench.scale import idle_window, populate, running_stack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

FILLER = 200_000
# Short beat intervals so every periodic task runs within a few seconds.
INTERVALS = {
    "NXJOBS_RECOVER__INTERVAL_S": 2.0,
    "NXJOBS_CALLBACKS__RECONCILE_INTERVAL_S": 2.0,
    "NXJOBS_COALESCE__SWEEP_INTERVAL_S": 1.0,
}


def test_periodic_tasks_and_scrapes_run_no_scan_or_keys_over_filler_keys():
    with running_stack(INTERVALS) as stack:
        populate(stack, FILLER)
        window = idle_window(stack, min_s=5.0, scrape_s=1.0, max_s=25.0, watch_scans=True)

    # The window covered what it must: the filler, scrapes, and every beat entry run to success.
    assert window["dbsize"] >= FILLER, window
    assert window["scrapes"] >= 4, window
    assert window["every_periodic_ran"], window["periodic"]
    assert set(window["periodic"]) >= {
        "recover-lost-messages-api2",
        "reconcile-callbacks-api2",
        "coalesce-sweep-api2",
    }, window["periodic"]
    # Then: nothing walked the keyspace.
    assert (window["scan_calls"], window["keys_calls"]) == (0, 0), (
        f"SCAN ran {window['scan_calls']} times and KEYS {window['keys_calls']} times "
        f"in {window['wall_s']:.1f}s over {window['dbsize']} keys; by pattern: "
        f"{window['scans_by_pattern']}"
    )
