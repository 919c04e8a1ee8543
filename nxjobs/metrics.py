"""Operations metrics kept in Redis, so every worker process, container and receiver adds
to one set of numbers and a single exporter (workers/exporter.py) serves them.

Writers call `record_attempt` (a worker, once per attempt) or `record_callback_delay`
(the receiver, once per completed job): each is one pipelined round trip of HINCRBYs.
Histograms store per-bucket (non-cumulative) counts; the exporter sums them up.

Labels never carry a secret or a phone number: a rate-limit credential is shown as its
family plus a short hash of its id (`api2:3f2a9c1d`), never the access key or uuid itself.
Imports nothing of the service packages.
"""

from __future__ import annotations

import hashlib
import time
from bisect import bisect_left
from typing import Iterable

from nxjobs import keys

# Seconds. An attempt spans rate-limit gate, HTTP request(s) and recording.
LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Seconds from the provider accepting a job to its final callback.
CALLBACK_DELAY_BUCKETS_S = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 86400.0)

HIST_LATENCY = "provider_latency"
HIST_CALLBACK_DELAY = "callback_delay"

# What `_log_attempt` says happened, reduced to a bounded label set.
OUTCOMES = ("submitted", "retry", "throttled", "failed")


def outcome_label(outcome: str) -> str:
    """'retry in 1.20s' -> 'retry'; 'throttled, cooldown 0.25s' -> 'throttled'."""
    word = outcome.split(maxsplit=1)[0].rstrip(",") if outcome else "unknown"
    return word if word in OUTCOMES else "other"


def credential_label(limit_name: str) -> str:
    """`api2:<accessKey>` -> `api2:<8 hex of sha256(accessKey)>`: tells credentials apart, reveals none."""
    family, _, ident = limit_name.partition(":")
    if not ident:
        return family
    return f"{family}:{hashlib.sha256(ident.encode()).hexdigest()[:8]}"


def bucket_le(value: float, buckets: tuple[float, ...]) -> str:
    """The `le` cell a value is counted in ('+Inf' past the last bound)."""
    i = bisect_left(buckets, value)
    return "+Inf" if i == len(buckets) else repr(float(buckets[i]))


def _observe(pipe, name: str, label: str, value: float, buckets: tuple[float, ...]) -> None:
    pipe.hincrby(keys.METRICS_HISTOGRAMS, f"{name}|{label}|{bucket_le(value, buckets)}", 1)
    pipe.hincrby(keys.METRICS_HISTOGRAMS, f"{name}|{label}|count", 1)
    pipe.hincrbyfloat(keys.METRICS_HISTOGRAMS, f"{name}|{label}|sum", value)


def record_attempt(client, *, kind: str, queue: str, outcome: str, code: str, latency_s: float,
                   credentials: Iterable[str] = (), now_s: float | None = None) -> None:
    """Count one finished attempt: outcome, provider code, latency, a throttle per credential if the
    provider said "too frequent"; remember the credentials (rate-limit names) and mark the queue consumed."""
    label = outcome_label(outcome)
    pipe = client.pipeline(transaction=False)
    pipe.hincrby(keys.METRICS_COUNTERS, f"attempt|{kind}|{label}", 1)
    pipe.hincrby(keys.METRICS_COUNTERS, f"response|{kind}|{code}", 1)
    for name in credentials:
        pipe.sadd(keys.METRICS_CREDENTIALS, name)
        if label == "throttled":
            pipe.hincrby(keys.METRICS_COUNTERS, f"throttle|{credential_label(name)}", 1)
    _observe(pipe, HIST_LATENCY, kind, latency_s, LATENCY_BUCKETS_S)
    pipe.hset(keys.METRICS_CONSUMED, queue, f"{time.time() if now_s is None else now_s:.3f}")
    pipe.execute()


async def record_callback_delay(client, *, kind: str, delay_s: float) -> None:
    """Observe submit -> final callback for a job the receiver just completed (asyncio client)."""
    pipe = client.pipeline(transaction=False)
    _observe(pipe, HIST_CALLBACK_DELAY, kind, max(delay_s, 0.0), CALLBACK_DELAY_BUCKETS_S)
    await pipe.execute()


def histogram_series(cells: dict[str, str], name: str,
                     buckets: tuple[float, ...]) -> dict[str, tuple[list[tuple[str, float]], float]]:
    """From the stored cells of histogram `name`: label -> (cumulative [(le, count)], sum)."""
    per_label: dict[str, dict[str, float]] = {}
    for field, value in cells.items():
        hist, _, rest = field.partition("|")
        if hist != name:
            continue
        label, _, cell = rest.rpartition("|")
        per_label.setdefault(label, {})[cell] = float(value)
    out = {}
    for label, row in per_label.items():
        running = 0.0
        cumulative = []
        for le in [repr(float(b)) for b in buckets] + ["+Inf"]:
            running += row.get(le, 0.0)
            cumulative.append((le, running))
        out[label] = (cumulative, row.get("sum", 0.0))
    return out
