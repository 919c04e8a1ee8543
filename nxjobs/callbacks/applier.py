"""Apply the callbacks of many concurrent requests in one Redis call.

The receiver's hot path. While one call is in flight, newly arrived callbacks
wait and leave together in the next: under light load a batch is one callback
(no added latency); under a burst of thousands per second it is dozens.

A batch is ONE EVALSHA whose single argument is the JSON list of each
callback's (keys, args), and whose script runs the ledger's per-callback
script (nxjobs/lua/callbacks_apply.lua, unchanged) once per entry. Unlike a
pipeline of one EVALSHA per callback, it skips redis-py's per-argument command
packing and Redis's per-command overhead (bench/README.md). Each callback is
still applied atomically and on its own: one that raises a Lua error fails
only its own request (pcall), never its neighbours. The script derives keys
from arguments, as the ledger's already does from the job id: a single Redis,
not a cluster.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from nxjobs import compact_json, store
from nxjobs.callbacks.events import Event
from nxjobs.callbacks.ledger import Applied, Ledger, _applied

log = logging.getLogger("nxjobs.callbacks")


def _tell(done: Callable[[Applied | Exception], None], result: Applied | Exception) -> None:
    try:
        done(result)
    except Exception:  # one caller's bug must not keep the others of its batch waiting
        log.exception("callback completion handler failed")


class CallbackApplyError(Exception):
    """The ledger script raised for this one callback (it was not, or not wholly, recorded)."""


class BatchApplier:
    """Parameters: `ledger` built on a `redis.asyncio.Redis` (decode_responses=True);
    `max_batch` callbacks per Redis call."""

    def __init__(self, ledger: Ledger, *, max_batch: int = 256):
        self.ledger = ledger
        self.max_batch = max_batch
        self._pending: list[tuple[list[str], list[str], Callable[[Applied | Exception], None]]] = []
        self._flusher: asyncio.Future | None = None
        # nxjobs/lua/callbacks_apply_batch.lua: loaded on first use, again after NOSCRIPT.
        self._script = store.async_script("callbacks_apply_batch")
        self._now_ms = -1
        self._now_iso = ""
        # Redis calls made and callbacks they carried (/healthz shows both).
        self.calls = 0
        self.applied = 0

    def submit(
        self, event: Event, done: Callable[[Applied | Exception], None], *, source: str = "callback"
    ) -> None:
        """Queue `event`; `done` is called (on the event loop) with its Applied, or the exception
        that kept it from being recorded. The receiver's hot path: no task or future per
        callback."""
        keys_, args = self.ledger._call(event, source, self._received_at())
        self._pending.append((keys_, args, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    async def apply(self, event: Event, *, source: str = "callback") -> Applied:
        """`submit`, awaited."""
        future = asyncio.get_running_loop().create_future()

        def done(result: Applied | Exception) -> None:
            if future.done():
                return
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

        self.submit(event, done, source=source)
        return await future

    def _received_at(self) -> str:
        # Formatting a timestamp per callback is measurable at thousands a second; it changes per
        # ms.
        now = time.time()
        ms = int(now * 1000)
        if ms != self._now_ms:
            self._now_ms = ms
            # As nxjobs.records.utc_now_iso writes it.
            self._now_iso = (
                time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{ms % 1000:03d}Z"
            )
        return self._now_iso

    async def _flush(self) -> None:
        client = self.ledger.redis
        while self._pending:
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            payload = compact_json.dumps([(k, a) for k, a, _ in batch])
            self.calls += 1
            self.applied += len(batch)
            try:
                replies = await self._call(client, payload)
            except Exception as exc:  # the whole call failed: every waiting request gets the error
                for _, _, done in batch:
                    _tell(done, exc)
                continue
            for (_, _, done), reply in zip(batch, replies, strict=True):
                _tell(
                    done,
                    CallbackApplyError(str(reply[1])) if int(reply[0]) == -1 else _applied(reply),
                )

    async def _call(self, client: Any, payload: str) -> list:
        return await self._script(client, args=[payload])
