"""Operations metrics kept in Redis, so every worker process, container and receiver adds
to one set of numbers and a single exporter (workers/exporter.py) serves them.

Writers call `record_attempt` (a worker, once per attempt; `queue_attempt` when it rides with
the submit), `record_rate_wait` (a worker, once per re-queue for a rate-limit slot), and time
each job's completion once: the callback script hands `submitted_at` back with the callback
that completed a job (the receiver batches those, reconciliation records them), and
`observe_completion` covers a job completed at its submit step because every callback came
first. Each write is one pipelined round trip.
Histograms store per-bucket (non-cumulative) counts; the exporter sums them up.

Labels never carry a secret or a phone number: a rate-limit credential is shown as its
family plus a short hash of its id (`api2:3f2a9c1d`), never the access key or uuid itself.
Imports nothing of the service packages.
"""

from __future__ import annotations

import hashlib
import logging
import time
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from typing import Any

from nxjobs import keys

log = logging.getLogger("nxjobs.metrics")

# Seconds of one provider HTTP request. Only bounds added below 0.05 since the first
# release, so cells stored under the older bounds still add up.
LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Seconds. An attempt spans rate-limit gate, HTTP request(s) and recording (a submitted one up
# to its submit, which its metrics are sent with).
ATTEMPT_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Seconds a job was sent back to wait for its slot: a few ms when nearly due, up to
# RateLimitSettings.max_wait_s (600 s) for a backlog beyond the reservation horizon.
RATE_WAIT_BUCKETS_S = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)
# Seconds from the provider accepting a job to its final callback.
CALLBACK_DELAY_BUCKETS_S = (
    1.0,
    5.0,
    15.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
    7200.0,
    86400.0,
)

HIST_LATENCY = "provider_latency"
HIST_ATTEMPT = "attempt_duration"
HIST_RATE_WAIT = "ratelimit_wait"
HIST_CALLBACK_DELAY = "callback_delay"
# Set on a job record by the first observation of its completion, so it is counted once
# however many processes see it complete (a late callback re-reports "completed").
COMPLETION_MARKER = keys.COMPLETION_MARKER

# What `log_attempt` says happened, reduced to a bounded label set.
OUTCOMES = ("submitted", "retry", "throttled", "failed")


def outcome_label(outcome: str) -> str:
    """'retry in 1.20s' -> 'retry'; 'throttled, cooldown 0.25s' -> 'throttled'."""
    word = outcome.split(maxsplit=1)[0].rstrip(",") if outcome else "unknown"
    return word if word in OUTCOMES else "other"


def credential_label(limit_name: str) -> str:
    """`api2:<accessKey>` -> `api2:<8 hex of sha256(accessKey)>`: tells credentials apart,
    reveals none."""
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


def record_attempt(client, **attempt: Any) -> None:
    """Count one finished attempt (queue_attempt's fields) in one pipelined round trip of its own:
    outcome, provider code, its duration, each provider request's duration, a throttle per
    credential if the provider said "too frequent"; remember the credentials (rate-limit names)
    and mark the queue consumed."""
    pipe = client.pipeline(transaction=False)
    queue_attempt(pipe, **attempt)
    pipe.execute()


def queue_attempt(
    pipe,
    *,
    kind: str,
    queue: str,
    outcome: str,
    code: str,
    attempt_s: float,
    request_latencies_s: Iterable[float] = (),
    credentials: Iterable[str] = (),
    now_s: float | None = None,
) -> None:
    """Queue one finished attempt's writes (record_attempt) on `pipe`, for a caller sending them
    with its own."""
    label = outcome_label(outcome)
    pipe.hincrby(keys.METRICS_COUNTERS, f"attempt|{kind}|{label}", 1)
    pipe.hincrby(keys.METRICS_COUNTERS, f"response|{kind}|{code}", 1)
    for name in credentials:
        pipe.sadd(keys.METRICS_CREDENTIALS, name)
        if label == "throttled":
            pipe.hincrby(keys.METRICS_COUNTERS, f"throttle|{credential_label(name)}", 1)
    for latency_s in request_latencies_s:
        _observe(pipe, HIST_LATENCY, kind, latency_s, LATENCY_BUCKETS_S)
    _observe(pipe, HIST_ATTEMPT, kind, attempt_s, ATTEMPT_BUCKETS_S)
    pipe.hset(keys.METRICS_CONSUMED, queue, f"{time.time() if now_s is None else now_s:.3f}")


def record_rate_wait(client, *, credentials: Iterable[str], wait_s: float) -> None:
    """Observe a wait a job was sent back to serve for its rate-limit slot, once per credential
    it waits on. `credentials` are rate-limit names (`api2:<accessKey>`): labelled hashed here,
    and remembered so the exporter's per-credential gauges include them."""
    names = list(credentials)
    if not names:
        return
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.sadd(keys.METRICS_CREDENTIALS, name)
        _observe(
            pipe, HIST_RATE_WAIT, credential_label(name), max(wait_s, 0.0), RATE_WAIT_BUCKETS_S
        )
    pipe.execute()


def queue_completion_check(pipe, job_id: str) -> None:
    """Queue the once-per-job marker and the fields `completion_delay` decides from."""
    job_key = keys.job(job_id)
    pipe.hsetnx(job_key, COMPLETION_MARKER, "1")
    pipe.hmget(job_key, "kind", "submitted_at", "callbacks_needed")


def completion_delay(replies: list, now_s: float) -> tuple[str, float] | None:
    """(kind, seconds since submission) if this completion is to be observed, from the replies of
    `queue_completion_check`: only the first observation of a job that was submitted and had
    callbacks to wait for (ota-init and wa-calling complete at submit by nature: nothing to
    time)."""
    first, (kind, submitted_at, needed) = replies[-2], replies[-1]
    if not (first and kind and submitted_at) or needed == "0":
        return None
    try:
        return kind, max(now_s - float(submitted_at), 0.0)
    except ValueError:
        return None


def observe_completion(client, job_id: str, *, now_s: float | None = None) -> None:
    """Observe submit -> completion of `job_id` into callback_delay, once per job (sync client).
    Call it wherever a job is seen to complete; never raises."""
    try:
        pipe = client.pipeline(transaction=False)
        queue_completion_check(pipe, job_id)
        replies = pipe.execute()
        if replies[-2] and not replies[-1][0]:
            # The record is gone: drop the marker HSETNX just made, or it lingers without a TTL.
            client.hdel(keys.job(job_id), COMPLETION_MARKER)
        decided = completion_delay(replies, time.time() if now_s is None else now_s)
        if decided:
            pipe = client.pipeline(transaction=False)
            _observe(pipe, HIST_CALLBACK_DELAY, decided[0], decided[1], CALLBACK_DELAY_BUCKETS_S)
            pipe.execute()
    except Exception as exc:  # a metric must never change what the caller does next
        log.warning("completion metric not recorded: %s", type(exc).__name__)


def callback_delay_s(submitted_at: str, now_s: float) -> float | None:
    """Seconds from submission (the `submitted_at` a completing callback hands back) to now."""
    try:
        return max(now_s - float(submitted_at), 0.0)
    except ValueError:
        return None


def queue_callback_delays(pipe, observations: Iterable[tuple[str, float]]) -> None:
    """Queue submit -> final callback observations (kind, seconds) on a pipeline, sync or asyncio.

    Summed here first: the receiver hands over thousands per flush, and one HINCRBY per
    bucket cell costs far less than three commands per observation."""
    cells: dict[str, float] = {}
    for kind, delay_s in observations:
        delay_s = max(delay_s, 0.0)
        base = f"{HIST_CALLBACK_DELAY}|{kind}|"
        bucket = base + bucket_le(delay_s, CALLBACK_DELAY_BUCKETS_S)
        cells[bucket] = cells.get(bucket, 0) + 1
        cells[base + "count"] = cells.get(base + "count", 0) + 1
        cells[base + "sum"] = cells.get(base + "sum", 0.0) + delay_s
    for cell, value in cells.items():
        if cell.endswith("|sum"):
            pipe.hincrbyfloat(keys.METRICS_HISTOGRAMS, cell, value)
        else:
            pipe.hincrby(keys.METRICS_HISTOGRAMS, cell, int(value))


def queue_callback_outcomes(pipe, counts: dict[str, int]) -> None:
    """Queue the receiver's per-outcome counts (`recorded`, `unmatched`,
    `refused:401:bad token`...): a bounded vocabulary of our own words, so the counters hash
    stays small whatever is sent."""
    for outcome, n in counts.items():
        pipe.hincrby(keys.METRICS_COUNTERS, f"callback|{outcome}", n)


def record_callback_delay(client, *, kind: str, delay_s: float) -> None:
    """Observe one completion a sync caller saw (reconciliation); never raises."""
    record_callback_delays(client, [(kind, delay_s)])


def record_callback_delays(client, observations: Iterable[tuple[str, float]]) -> None:
    """Observe completions (kind, seconds) a sync caller saw, in one round trip; never raises."""
    try:
        pipe = client.pipeline(transaction=False)
        queue_callback_delays(pipe, observations)
        pipe.execute()
    except Exception as exc:  # a metric must never change what the caller does next
        log.warning("completion metric not recorded: %s", type(exc).__name__)


def histogram_series(
    cells: dict[str, str], name: str, buckets: tuple[float, ...]
) -> dict[str, tuple[list[tuple[str, float]], float]]:
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


def record_restored(client, by_queue: Mapping[str, int]) -> None:
    """Count messages put back on their queue because no live worker held them (nxjobs.held):
    `restored|<queue>`."""
    if not by_queue:
        return
    pipe = client.pipeline(transaction=False)
    for queue, n in by_queue.items():
        pipe.hincrby(keys.METRICS_COUNTERS, f"restored|{queue}", n)
    pipe.execute()


NOTIFY_OUTCOMES = ("delivered", "retry", "gave_up")


def queue_notify(pipe, outcome: str) -> None:
    """Count one webhook POST's outcome (nxjobs.webhooks.deliver) on `pipe`: `notify|<outcome>`,
    one of NOTIFY_OUTCOMES (`gave_up`: a delivery dropped past its max age)."""
    pipe.hincrby(keys.METRICS_COUNTERS, f"notify|{outcome}", 1)
