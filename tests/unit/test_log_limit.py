"""One log line per reason per interval, however many times it happens (nxjobs/log_limit.py)."""

from __future__ import annotations

import logging

from nxjobs.log_limit import LogLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_reason_is_logged_once_per_interval_then_says_how_many_it_held(caplog):
    clock = Clock()
    quiet = LogLimiter(logging.getLogger("test.quiet"), interval_s=60, clock=clock)
    with caplog.at_level(logging.WARNING, logger="test.quiet"):
        # Given 1 000 refusals of one reason and one of another within a minute
        logged = [quiet.warning("bad token", "refused %s", i) for i in range(1000)]
        assert quiet.warning("stale", "stale one")
        # Then only the first of each was written
        assert logged.count(True) == 1 and len(caplog.records) == 2
        # And a minute later the next line counts the 999 held back
        clock.now += 61
        assert quiet.warning("bad token", "refused %s", "again")
    assert "999 more like it" in caplog.records[-1].getMessage()
