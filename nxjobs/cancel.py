"""Cancelling a job that has not been sent: one script (lua/job_cancel.lua) decides.

A job `scheduled`, `queued` (its message on the broker, or a coalesced member still in its
group's pending list) or `retrying` (its countdown message held by a worker) becomes `cancelled`
in the same atomic step that checks its state, so a worker's claim (`store_transition.lua`,
`coalesce_take.lua`) and a cancel never both win: a message of a cancelled job delivered later is
skipped by the claim, and a cancelled member is left out of its batch. Refused, with nothing
changed: a job being sent right now (`running`), one whose request may have reached the provider
(its in-flight marker is set), a coalesced member whose batch is built, and anything sent or
finished. `Producer.cancel` turns the answer into a `Cancelled`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nxjobs import keys, store
from nxjobs.records import JobState, utc_now_iso

# Reasons a cancel is refused (or why it did nothing), one wording each.
NOT_FOUND = "no such job (never enqueued, or its record expired)"
ALREADY_CANCELLED = "already cancelled"
BEING_SENT = "being sent; try again"
MAY_HAVE_REACHED = (
    "its last request may have reached the provider (in-flight marker set); a call cannot be "
    "taken back"
)
BATCH_BUILT = "being sent with its coalesced batch; try again"
ALREADY_SENT = "already sent to the provider; a call cannot be taken back"
CALLBOT_LIST_SUBMITTED = "submitted callbot list"


def finished(state: str) -> str:
    return f"already finished ({state})"


@dataclass(frozen=True)
class Cancelled:
    """The answer for one job: `cancelled` True when this call cancelled it; `previous` the state
    it was in (None: no record); `reason` why not, or what was cancelled."""

    job_id: str
    cancelled: bool
    previous: str | None
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "cancelled": self.cancelled,
            "previous": self.previous,
            "reason": self.reason,
        }


class Canceller:
    def __init__(self, client: Any, ttl_s: int):
        self.redis = client
        self.ttl_s = ttl_s
        self._cancel = store.register_script(client, "job_cancel")

    def try_cancel(self, job_id: str) -> tuple[int, str, str]:
        """(1 cancelled | 0 refused | -1 no record, state before, why) from the one script."""
        reply = self._cancel(
            keys=[
                keys.job(job_id),
                keys.SCHEDULE,
                keys.scheduled_message(job_id),
                keys.job_payload(job_id),
                keys.inflight(job_id),
            ],
            args=[job_id, utc_now_iso(), str(self.ttl_s)],
        )
        status, state = int(reply[0]), str(reply[1] or "")
        return status, state, str(reply[2]) if len(reply) > 2 else ""


def refusal(state: str, why: str) -> str:
    """The reason a job in `state` was not cancelled (the script's `why`, '' for its state)."""
    if why == "inflight":
        return MAY_HAVE_REACHED
    if why == "batch":
        return BATCH_BUILT
    if state == JobState.RUNNING.value:
        return BEING_SENT
    if state == JobState.CANCELLED.value:
        return ALREADY_CANCELLED
    if state == JobState.SUBMITTED.value:
        return ALREADY_SENT
    if state in (JobState.COMPLETED.value, JobState.FAILED.value):
        return finished(state)
    return f"cannot be cancelled from {state or 'missing'}"
