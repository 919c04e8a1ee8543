"""A Sentinel failover in the middle of a run of jobs: how many were lost or sent twice, and how
long until Redis, the producer and the worker were back.

A master, a replica and three sentinels (workers.devstack.SentinelGroup), the sandbox, the
callback receiver, a reconciliation beat and one worker (prefork, -c 2) on 127.0.0.1. Half the
jobs (one-number Number Checks, each its own request: batchNo = job id) are enqueued, the master
is killed (`--mode crash`, SIGKILL once the replica has every write) or demoted (`--mode manual`,
SENTINEL FAILOVER while it runs), the other half is enqueued, and every job is waited on until
completed.

lost = a job missing or not completed at the end; duplicates = a batchNo the sandbox received
more than once; new master = until the sentinels named it and it took writes; first job after =
until the first job enqueued after the failover was submitted.

Usage: python bench/failover.py [--jobs 200] [--mode crash|manual] [--timeout 90]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workers.devstack import SentinelGroup, start_beat, start_callbacks, start_worker  # noqa: E402

MASTER = "mymaster"
ENV = {
    "NXJOBS_RETRY__BASE_S": "0.05",
    "NXJOBS_RETRY__CAP_S": "0.5",
    "NXJOBS_CALLBACKS__TOKEN": "bench-failover-token-0123456789",
    "NXJOBS_CALLBACKS__NUMBER_CHECK_DEADLINE_S": "1",
    "NXJOBS_CALLBACKS__RECONCILE_INTERVAL_S": "0.5",
}


def run(jobs: int, mode: str, timeout_s: float) -> dict[str, float]:
    from nxjobs.producers import EnqueueError, Producer, RedisUnavailable
    from nxjobs.redis_conn import RedisTarget
    from sandbox.accounts import sandbox_env
    from sandbox.control import SandboxControl
    from sandbox.server import start_in_thread

    with SentinelGroup(master_name=MASTER) as group, start_in_thread() as sandbox:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("NXJOBS_")}
        env = {**clean, **sandbox_env(sandbox.url), **ENV}
        env.update(NXJOBS_REDIS_URL=group.url, NXJOBS_REDIS_SENTINEL_MASTER=MASTER)
        control = SandboxControl(sandbox.url)
        control.configure(api2_rate=0, throttle_rate=0, error_rate=0, slow_rate=0,
                          callback_delay_s=0.05, callback_retry_s=0.2)  # fmt: skip
        receiver, url = start_callbacks(env)
        env["NXJOBS_CALLBACKS__PUBLIC_URL"] = url
        worker = start_worker(env, queues="api2", concurrency=2)
        beat = start_beat(env)
        producer = Producer(RedisTarget(group.url, sentinel_master=MASTER))
        ids: list[str] = []
        retries = 0

        def enqueue(i: int) -> None:
            nonlocal retries
            while True:
                try:
                    ids.append(producer.number_check(phones=[f"86138{i:06d}"], batch=False))
                    return
                except (EnqueueError, RedisUnavailable):
                    retries += 1
                    time.sleep(0.1)

        try:
            for i in range(jobs // 2):
                enqueue(i)
            started = time.monotonic()
            new_master_s = group.crash_master() if mode == "crash" else group.failover()
            first_after = len(ids)
            for i in range(jobs // 2, jobs):
                enqueue(i)
            first_after_s = None
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                records = producer.store.get_many(ids)
                if first_after_s is None:
                    rec = records[ids[first_after]]
                    if rec is not None and rec.state.value in ("submitted", "completed"):
                        first_after_s = time.monotonic() - started
                done = sum(
                    1 for r in records.values() if r is not None and r.state.value == "completed"
                )
                if done == len(ids):
                    break
                time.sleep(0.2)
            records = producer.store.get_many(ids)
            finals = list(records.values())
            sent = Counter(
                r["body"].get("batchNo")
                for r in control.requests(path="/api/number/check", limit=2000)
            )
            return {
                "jobs": len(ids),
                "lost": sum(1 for r in finals if r is None or r.state.value != "completed"),
                "duplicates": sum(1 for j in ids if sent[j] > 1),
                "reconciled": sum(
                    1
                    for r in finals
                    if r is not None and any(c["source"] == "reconcile" for c in r.callbacks)
                ),
                "new_master_s": round(new_master_s, 2),
                "first_job_after_s": round(first_after_s, 2) if first_after_s else -1,
                "producer_retries": retries,
            }
        finally:
            producer.close()
            beat.stop()
            worker.stop()
            receiver.stop()
            control.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--jobs", type=int, default=200)
    p.add_argument("--mode", choices=("crash", "manual"), default="crash")
    p.add_argument("--timeout", type=float, default=90)
    args = p.parse_args(argv)
    result = run(args.jobs, args.mode, args.timeout)
    print(f"mode={args.mode} " + " ".join(f"{k}={v}" for k, v in result.items()))
    return 1 if result["lost"] or result["duplicates"] else 0


if __name__ == "__main__":
    sys.exit(main())
