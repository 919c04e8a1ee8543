"""The worker's consumer, sending Flower's task events in batches.

Celery buffers task events and publishes them at the event loop's next turn: at a few hundred
jobs a second that is a message and a PUBLISH for every event or two, about a third of the
worker main process's CPU. This consumer publishes what was buffered once EVENT_FLUSH_S after
the first event of a batch instead (Celery still flushes at once when 24 are waiting), so
Flower sees every event, a few milliseconds later, in `task.multi` messages it already reads.
"""

from __future__ import annotations

from celery.worker.consumer import Consumer

# Seconds an event may wait for others to share its message; far below what Flower shows.
EVENT_FLUSH_S = 0.02


class BatchingConsumer(Consumer):
    _flush_due = False

    def on_send_event_buffered(self) -> None:
        if self.hub and not self._flush_due:
            self._flush_due = True
            self.hub.call_later(EVENT_FLUSH_S, self._flush_batch)

    def _flush_batch(self) -> None:
        self._flush_due = False
        self._flush_events()

    def shutdown(self) -> None:
        self._flush_events()  # what the last batch held
        super().shutdown()
