"""The job record: what a producer reads back about one job. Pure data; storage,
and the transitions allowed between states, live in store.py.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field


class JobState(StrEnum):
    SCHEDULED = "scheduled"  # waiting for its run_at (nxjobs/schedule.py); no message yet
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUBMITTED = "submitted"  # the provider accepted the request
    COMPLETED = "completed"  # its final callbacks arrived
    FAILED = "failed"
    # Never sent (nxjobs/cancel.py), or a submitted callbot list completed at the provider
    # by its producer, keeping what was dialled so far (docs/campaigns.md).
    CANCELLED = "cancelled"


TERMINAL_STATES = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED})

# Order used by `wait --until`: reaching a later state implies the earlier one.
PROGRESS = {
    JobState.SCHEDULED: -1,
    JobState.QUEUED: 0,
    JobState.RUNNING: 1,
    JobState.RETRYING: 1,
    JobState.SUBMITTED: 2,
    JobState.COMPLETED: 3,
}


class JobError(BaseModel):
    code: str
    message: str
    retryable: bool


class JobRecord(BaseModel):
    id: str
    kind: str
    state: JobState
    attempts: int = 0
    # "Too frequent" answers, counted apart from failures: they never use up error retries.
    throttles: int = 0
    # Times the job went back to the queue to wait for its rate-limit slot.
    waits: int = 0
    # Times an operator replayed it from the dead letters (`nxjobs dead replay`).
    replays: int = 0
    # A scheduled job's due time (ISO, UTC), and what happened to its schedule when that is worth
    # saying (an `at` already past: it ran at once).
    run_at: str | None = None
    schedule_note: str | None = None
    # The state a cancelled job was cancelled from.
    cancelled_from: str | None = None
    created_at: str
    updated_at: str
    input: dict[str, Any] = Field(default_factory=dict, description="producer input, phones masked")
    request: list[dict[str, Any]] = Field(
        default_factory=list, description="provider requests sent, secrets removed"
    )
    result: dict[str, Any] | None = None
    error: JobError | None = None
    progress: dict[str, Any] | None = Field(
        default=None, description="steps done, for multi-request jobs"
    )
    callbacks: list[dict[str, Any]] = Field(
        default_factory=list,
        description="webhooks received, oldest first: all of a small job's, the first "
        "RECORD_CALLBACKS of a paged one (callbacks_paged; the rest by RecordStore.callbacks)",
    )
    # The callbacks stored, counted by outcome (nxjobs.correlate.callback_outcome: a DR's code, a
    # call's callStatus, a CDR's hangup_cause...).
    callbacks_summary: dict[str, int] = Field(default_factory=dict)
    # Callback entries stored, and whether they are paged (a job that can have many keeps them
    # apart from its record: `callbacks` shows only the first few).
    callbacks_stored: int = 0
    callbacks_paged: bool = False
    # Completion units the job waits for (numbers checked, 1 CDR, 1 finished task) and how many
    # came.
    callbacks_needed: int | None = None
    callbacks_done: int = 0
    # Distinct callbacks past what the job can have (more results than numbers...): counted, not
    # kept.
    callbacks_dropped: int = 0
    campaign: dict[str, Any] | None = Field(
        default=None,
        description="a callbot list's campaign control: status, its times, the operations "
        "asked and what the provider answered (docs/campaigns.md)",
    )

    def reached(self, state: JobState) -> bool:
        """True if this job has got as far as `state` (and has not failed or been cancelled)."""
        if self.state in (JobState.FAILED, JobState.CANCELLED):
            return state == self.state
        return PROGRESS.get(self.state, -1) >= PROGRESS[state]


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
