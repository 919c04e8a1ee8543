"""The Redis cost of a state change: N jobs moved queued -> running -> failed through
store_transition.lua on a Redis of their own. Prints transitions/s, Redis's own microseconds
per script call (INFO commandstats, what the job-end event and the channel publish add to
set_state) and the memory the events stream takes. Asserts nothing.
Usage: python bench/set_state.py [--jobs 20000]; PYTHONPATH=<other checkout> to compare.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nxjobs import keys  # noqa: E402
from nxjobs.records import JobState  # noqa: E402
from nxjobs.redis_conn import connect  # noqa: E402
from nxjobs.store import RecordStore  # noqa: E402
from workers.devstack import RedisServer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--jobs", type=int, default=20000)
    n = ap.parse_args().jobs
    with RedisServer() as server:
        client = connect(server.url)
        store = RecordStore(client, retention_s={"completed": 86400, "failed": 604800})
        pipe = client.pipeline(transaction=False)
        for i in range(n):
            store.create(f"j{i}", "ota-init", {"p": 1}, pipe=pipe)
        pipe.execute()
        before = client.info("memory")["used_memory"]
        client.config_resetstat()
        error = {"code": "x", "message": "m", "retryable": 0}
        t0 = time.perf_counter()
        for i in range(n):
            store.transition(f"j{i}", JobState.RUNNING)
            store.transition(f"j{i}", JobState.FAILED, error=error)
        wall = time.perf_counter() - t0
        stats = client.info("commandstats")["cmdstat_evalsha"]
        stream = getattr(keys, "EVENTS", None)  # none before the events stream
        events = client.xlen(stream) if stream and client.exists(stream) else 0
        stream_b = client.memory_usage(stream) if events else 0
        print(
            f"{n} jobs, {2 * n} transitions: {2 * n / wall:.0f} transitions/s, "
            f"{stats['usec_per_call']:.1f} us of Redis per script call; events stream "
            f"{events} entries, {stream_b / max(events, 1):.0f} B each "
            f"(used_memory +{(client.info('memory')['used_memory'] - before) / 1e6:.2f} MB)"
        )


if __name__ == "__main__":
    main()
