"""The one place an attempt is reported: its log line and its metrics (nxjobs.metrics).

Metrics never change an attempt's outcome: every failure to record one is logged and dropped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

log = logging.getLogger("nxjobs.jobs")


def log_attempt(
    svc: Any,
    job_id: str,
    kind: str,
    attempt: int,
    outcome: str,
    code: str,
    started: float,
    credentials: Sequence[str] = (),
) -> None:
    """One log line (fields also as structured `extra`) and one pipelined Redis call of metrics.
    Never a secret or a phone. `latency_ms` is the provider's part (this attempt's requests,
    summed), `attempt_ms` the whole attempt; `credentials`: the rate limits it went through."""
    attempt_s = time.monotonic() - started
    requests_s = take_request_latencies(svc)
    latency_ms, attempt_ms = round(sum(requests_s) * 1000), round(attempt_s * 1000)
    log.info(
        "job=%s kind=%s attempt=%d outcome=%s code=%s latency_ms=%d attempt_ms=%d",
        job_id,
        kind,
        attempt,
        outcome,
        code,
        latency_ms,
        attempt_ms,
        extra={
            "job_id": job_id,
            "kind": kind,
            "attempt": attempt,
            "outcome": outcome,
            "code": code,
            "latency_ms": latency_ms,
            "attempt_ms": attempt_ms,
        },
    )
    from nxjobs import metrics  # kept local: the metric helpers below are the only users
    from nxjobs.jobs import KINDS

    try:
        queue = KINDS[kind].queue if kind in KINDS else "unknown"
        metrics.record_attempt(
            svc.redis,
            kind=kind,
            queue=queue,
            outcome=outcome,
            code=code,
            attempt_s=attempt_s,
            request_latencies_s=requests_s,
            credentials=list(credentials),
        )
    except Exception as exc:  # metrics must never change a job's outcome
        log.warning("job=%s metrics not recorded: %s", job_id, type(exc).__name__)


def take_request_latencies(svc: Any) -> list[float]:
    """This thread's provider request durations since last taken. [] if this process has not
    built its Transport: building one only to ask would open a connection pool for nothing."""
    try:
        if "transport" not in svc.__dict__:
            return []
        return svc.transport.take_latencies()
    except Exception as exc:  # metrics must never change a job's outcome
        log.warning("provider latencies not read: %s", type(exc).__name__)
        return []


def record_rate_wait(svc: Any, job_id: str, wait_s: float, credentials: Sequence[str]) -> None:
    """The wait this job is sent back to serve, per credential it waits on (labels hashed)."""
    from nxjobs import metrics

    try:
        metrics.record_rate_wait(svc.redis, credentials=list(credentials), wait_s=wait_s)
    except Exception as exc:  # metrics must never change a job's outcome
        log.warning("job=%s rate-wait metric not recorded: %s", job_id, type(exc).__name__)


def observe_completed_at_submit(
    svc: Any, job_id: str, kind: str, result: dict[str, Any] | None
) -> None:
    """Every callback beat the submit result, so the receiver saw no completion to time: time it
    here.
    Kinds final at submit (ota-init, wa-calling) have no callbacks and no delay to time."""
    from nxjobs import correlate, metrics

    try:
        if correlate.on_submit(kind, result).needed:
            metrics.observe_completion(svc.redis, job_id)
    except Exception as exc:  # metrics must never change a job's outcome
        log.warning("job=%s completion metric not recorded: %s", job_id, type(exc).__name__)


def observe_completions(svc: Any, job_ids: list[str]) -> None:
    """Members of a batch whose every callback came before its fan-out."""
    if not job_ids:
        return
    try:
        from nxjobs import metrics

        for job_id in job_ids:
            metrics.observe_completion(svc.redis, job_id)
    except Exception as exc:  # metrics never change an outcome
        logging.getLogger("nxjobs.coalesce").warning(
            "completion metrics not recorded: %s", type(exc).__name__
        )
