"""What an attempt decided, for the Celery task to carry out. Plain data: the attempt has
already recorded what it decided (record, dead letter, log line, metrics) when it returns one."""

from __future__ import annotations

from dataclasses import dataclass

from nxjobs.records import JobError


@dataclass(frozen=True)
class Submitted:
    """A job recorded submitted (or completed, when every callback came first)."""


@dataclass(frozen=True)
class Skipped:
    """A redelivery of a job already past submission: nothing sent, nothing recorded."""


@dataclass(frozen=True)
class Rescheduled:
    """Back in the schedule (recorded `scheduled`, its stored message written) until `run_at`:
    a call outside its calling hours. No message to re-publish: the schedule publishes it."""

    run_at: str
    reason: str


@dataclass(frozen=True)
class Failed:
    """Recorded failed for good and dead-lettered; `reason` is what Celery and Flower show."""

    error: JobError
    reason: str


@dataclass(frozen=True)
class Again:
    """Back on the queue after `countdown` s at broker `priority`; `reason` is what Celery and
    Flower show. `resumed` (a job): the next run counts no new attempt. `trigger` (a batch):
    the trigger its next flush runs with."""

    countdown: float
    priority: int
    reason: str
    resumed: bool = False
    trigger: str = ""


@dataclass(frozen=True)
class WaitForSlot(Again):
    """The rate-limit slot is not now: come back for it; `slot_at_us` is the slot reserved for
    the next run (None: nothing reserved, ask again)."""

    slot_at_us: int | None = None


@dataclass(frozen=True)
class RetryLater(Again):
    """Try again later: after `error` (recorded retrying), or, with no error, to wait out an
    earlier attempt that may still be in flight (or a batch's linger)."""

    error: JobError | None = None


@dataclass(frozen=True)
class CoolDown(Again):
    """The provider said "too frequent": every worker backs off the credential, this job too."""


# ---- a flush of coalesced jobs ---------------------------------------------------------------


@dataclass(frozen=True)
class BatchSubmitted:
    """The batch was sent (or found sent): each member recorded with its share; `rejected` of
    them failed on their own (the provider refused their item)."""

    members: int
    rejected: int


@dataclass(frozen=True)
class BatchFailed:
    """The batch failed for good: every member recorded failed and dead-lettered."""

    members: int
    code: str


@dataclass(frozen=True)
class Empty:
    """Nothing waiting to be sent."""


@dataclass(frozen=True)
class Deferred:
    """What is left waits for the flush already armed for its group."""


@dataclass(frozen=True)
class AlreadySent:
    """A late duplicate of a flush whose batch is done."""


Decision = (
    Submitted
    | Skipped
    | Rescheduled
    | Failed
    | WaitForSlot
    | RetryLater
    | CoolDown
    | BatchSubmitted
    | BatchFailed
    | Empty
    | Deferred
    | AlreadySent
)
