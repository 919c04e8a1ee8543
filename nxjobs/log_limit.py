"""Log lines that a flood cannot multiply: at most one per reason per interval.

A receiver on the internet refuses whatever strangers send; one log line per
refusal would let them fill a disk. `LogLimiter.warning(reason, ...)` logs the
first occurrence of `reason`, then stays quiet for `interval_s`; the next line
it lets through says how many it held back. The reasons are a fixed vocabulary
chosen by our code (never text from a request), so the table stays small.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any


class LogLimiter:
    """Parameters: `logger`; `interval_s` seconds between two lines of one reason; `clock`
    monotonic seconds (tests pin it)."""

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.logger = logger
        self.interval_s = interval_s
        self.clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warning(self, reason: str, msg: str, *args: Any) -> bool:
        """Log `msg % args` at WARNING unless `reason` was logged less than `interval_s` ago;
        return whether it was logged."""
        now = self.clock()
        last = self._last.get(reason)
        if last is not None and now - last < self.interval_s:
            self._held[reason] = self._held.get(reason, 0) + 1
            return False
        self._last[reason] = now
        held = self._held.pop(reason, 0)
        if held:
            msg += " (%d more like it in the last %.0fs)"
            args = (*args, held, now - last if last is not None else 0.0)
        self.logger.warning(msg, *args)
        return True
