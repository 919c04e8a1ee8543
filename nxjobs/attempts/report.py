"""The one place an attempt is reported: its log line and its metrics (nxjobs.metrics).

Metrics never change an attempt's outcome: every failure to record one is logged and dropped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("nxjobs.jobs")


@dataclass(frozen=True)
class AttemptReport:
    """A finished attempt's log line and metrics, measured when it was made (prepare_attempt)."""

    job_id: str
    kind: str
    attempt: int
    outcome: str
    code: str
    attempt_s: float
    requests_s: list[float]
    credentials: list[str]

    def log(self) -> None:
        """One log line (fields also as structured `extra`). Never a secret or a phone.
        `latency_ms` is the provider's part (this attempt's requests, summed), `attempt_ms` the
        whole attempt."""
        latency_ms, attempt_ms = round(sum(self.requests_s) * 1000), round(self.attempt_s * 1000)
        log.info(
            "job=%s kind=%s attempt=%d outcome=%s code=%s latency_ms=%d attempt_ms=%d",
            self.job_id,
            self.kind,
            self.attempt,
            self.outcome,
            self.code,
            latency_ms,
            attempt_ms,
            extra={
                "job_id": self.job_id,
                "kind": self.kind,
                "attempt": self.attempt,
                "outcome": self.outcome,
                "code": self.code,
                "latency_ms": latency_ms,
                "attempt_ms": attempt_ms,
            },
        )

    def queue_metrics(self, pipe: Any) -> None:
        """Queue its metrics on `pipe` (sent with the caller's own writes)."""
        from nxjobs import metrics  # kept local: the metric helpers below are the only users
        from nxjobs.jobs import KINDS

        try:
            metrics.queue_attempt(
                pipe,
                kind=self.kind,
                queue=KINDS[self.kind].queue if self.kind in KINDS else "unknown",
                outcome=self.outcome,
                code=self.code,
                attempt_s=self.attempt_s,
                request_latencies_s=self.requests_s,
                credentials=self.credentials,
            )
        except Exception as exc:  # metrics must never change a job's outcome
            log.warning("job=%s metrics not recorded: %s", self.job_id, type(exc).__name__)

    def record_metrics(self, client: Any) -> None:
        """Its metrics in one pipelined round trip of their own."""
        try:
            pipe = client.pipeline(transaction=False)
            self.queue_metrics(pipe)
            pipe.execute()
        except Exception as exc:  # metrics must never change a job's outcome
            log.warning("job=%s metrics not recorded: %s", self.job_id, type(exc).__name__)


def prepare_attempt(
    svc: Any,
    job_id: str,
    kind: str,
    attempt: int,
    outcome: str,
    code: str,
    started: float,
    credentials: Sequence[str] = (),
) -> AttemptReport:
    """The report of an attempt that ends now; `credentials`: the rate limits it went through."""
    attempt_s = time.monotonic() - started
    return AttemptReport(
        job_id,
        kind,
        attempt,
        outcome,
        code,
        attempt_s,
        take_request_latencies(svc),
        list(credentials),
    )


def log_attempt(svc: Any, *args: Any, **kwargs: Any) -> None:
    """prepare_attempt's report of an attempt that ends now, logged and its metrics sent in one
    pipelined round trip of their own (AttemptReport); the same arguments as prepare_attempt."""
    done = prepare_attempt(svc, *args, **kwargs)
    done.log()
    done.record_metrics(svc.redis)


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
