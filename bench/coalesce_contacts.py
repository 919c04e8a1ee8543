"""Contact coalescing benchmark (issue 7). Prints numbers; asserts nothing.

N `callbot-contact` jobs (one contact each) for one existing Callbot task, enqueued by a producer
against the sandbox with its Callbot quota at Q requests/s, run by a real Celery worker on the
callbot queue; every contact's call and order callbacks are delivered by the sandbox (no delay)
to the real receiver:

  coalesced   the default: contacts gathered into shared addBatchCall requests (nxjobs.coalesce)
  single      the same jobs with batch=False: an addBatchCall per contact

For each row: contacts completed per second end to end (from the first enqueue to the last job
`completed`, i.e. added and its order callback recorded), provider requests used (addBatchCall),
"too frequent" answers, contacts the provider refused as repeats or added twice, peak RSS of the
worker processes, and how long enqueueing took. The `single` row runs a bounded slice (its rate
is the quota).

Usage: python bench/coalesce_contacts.py [--jobs 5000] [--quota 10] [--single-jobs 200]
       [--concurrency 2] [--rows coalesced,single] [--runs 1] [--timeout 300]
Every row has its own Redis, sandbox, receiver and worker, and stops by itself.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.coalesce import _cpu_s, _tree_rss_mb  # noqa: E402
from workers.devstack import (  # noqa: E402
    RedisServer,
    ServiceProcess,
    project_root,
    start_callbacks,
    start_sandbox,
    start_worker,
)

TOKEN = "bench-contacts-token-0123456789abcdef"
ENQUEUE_CHUNK = 1000
ADD_PATH = "/callcentre/api/v3/addBatchCall"


def _states(producer, job_ids: list[str]) -> dict[str, int]:
    from nxjobs import keys

    out: dict[str, int] = {}
    for start in range(0, len(job_ids), 5000):
        pipe = producer.redis.pipeline(transaction=False)
        for job_id in job_ids[start : start + 5000]:
            pipe.hget(keys.job(job_id), "state")
        for state in pipe.execute():
            out[state] = out.get(state, 0) + 1
    return out


def run_row(mode: str, jobs: int, quota: int, concurrency: int, timeout_s: float) -> dict:
    from nxjobs.producers import Producer
    from sandbox.accounts import sandbox_env
    from sandbox.control import SandboxControl

    procs: list[ServiceProcess] = []
    with RedisServer(appendonly=False) as redis_server:
        sandbox, sandbox_url = start_sandbox(
            "--callbot-rate", str(quota), "--callback-delay", "0", "--callback-jitter", "0"
        )
        procs.append(sandbox)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("NXJOBS_")},
            **sandbox_env(sandbox_url),
            "NXJOBS_REDIS_URL": redis_server.url,
            "NXJOBS_CALLBOT__RATE_PER_S": str(quota),
            "NXJOBS_CALLBACKS__TOKEN": TOKEN,
            "PYTHONPATH": project_root(),
        }
        try:
            proc, url = start_callbacks(env)
            procs.append(proc)
            env["NXJOBS_CALLBACKS__PUBLIC_URL"] = url
            worker = start_worker(env, queues="callbot", concurrency=concurrency, name="contacts")
            procs.append(worker)
            with Producer(redis_server.url) as producer, SandboxControl(sandbox_url) as control:
                # The existing task the contacts are added to (a callbot-list job; not timed).
                task_id = producer.callbot_list(
                    scene_id="scene-1",
                    task_name="bench",
                    contacts=[{"user_phone": "8613900139000"}],
                )
                producer.wait([task_id], until="completed", timeout_s=60)
                before = control.stats()
                payloads = [
                    {"user_task_id": task_id, "contact": {"user_phone": str(8613800000000 + i)}}
                    for i in range(jobs)
                ]
                cpu0 = {p.name: _cpu_s(p.proc.pid) for p in procs}
                peak_rss = 0.0
                t0 = time.time()
                job_ids: list[str] = []
                for start in range(0, jobs, ENQUEUE_CHUNK):
                    job_ids += producer.enqueue_many(
                        "callbot-contact",
                        payloads[start : start + ENQUEUE_CHUNK],
                        batch=(mode == "coalesced"),
                    )
                enqueued_s = time.time() - t0
                done_at = None
                states: dict[str, int] = {}
                while time.time() < t0 + timeout_s:
                    states = _states(producer, job_ids)
                    peak_rss = max(peak_rss, _tree_rss_mb(worker.proc.pid))
                    if states.get("completed", 0) + states.get("failed", 0) == jobs:
                        done_at = time.time()
                        break
                    time.sleep(0.2)
                elapsed = (done_at or time.time()) - t0
                cpu = {p.name: round(_cpu_s(p.proc.pid) - cpu0[p.name], 1) for p in procs}
                stats = control.stats()

            def delta(section: str, key: str) -> int:
                return int(stats[section].get(key, 0)) - int(before[section].get(key, 0))

            completed = states.get("completed", 0)
            return {
                "mode": mode,
                "jobs": jobs,
                "finished": done_at is not None,
                "seconds": round(elapsed, 2),
                "contacts_per_s": round(completed / elapsed, 1) if elapsed else 0.0,
                "enqueue_s": round(enqueued_s, 2),
                "states": states,
                "provider_requests": sum(stats["responses"].get(ADD_PATH, {}).values())
                - sum(before["responses"].get(ADD_PATH, {}).values()),
                "orders_added": delta("accepted", "callbot_orders"),
                "repeats_refused": delta("duplicate_rejections", "callbot_orderid"),
                "added_twice": delta("duplicates", "callbot_orderid"),
                "too_frequent": sum(stats["throttled"].values())
                - sum(before["throttled"].values()),
                "peak_worker_rss_mb": round(peak_rss, 1),
                "cpu_s": cpu,
            }
        finally:
            for service in procs[::-1]:
                service.stop()


# (option, type, default, help)
OPTIONS = (
    ("--jobs", int, 5000, "contact jobs of the coalesced row"),
    ("--single-jobs", int, 200, "jobs of the batch=False row (it runs at the quota)"),
    ("--quota", int, 10, "sandbox Callbot requests/s (and the workers' limiter)"),
    ("--concurrency", int, 2, "worker pool processes"),
    ("--rows", str, "coalesced,single", "rows to run"),
    ("--runs", int, 1, "runs per row; the table shows the median run"),
    ("--timeout", float, 300.0, "seconds per run"),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for option, kind, default, text in OPTIONS:
        parser.add_argument(option, type=kind, default=default, help=text)
    args = parser.parse_args(argv)
    results = []
    for mode in args.rows.split(","):
        jobs = args.jobs if mode == "coalesced" else args.single_jobs
        runs = []
        for _ in range(args.runs):
            row = run_row(mode, jobs, args.quota, args.concurrency, args.timeout)
            print(row, flush=True)
            runs.append(row)
        median = statistics.median(r["contacts_per_s"] for r in runs)
        row = min(runs, key=lambda r: abs(r["contacts_per_s"] - median))
        row["all_runs_per_s"] = [r["contacts_per_s"] for r in runs]
        results.append(row)
    print()
    print(
        f"{'mode':<10} {'jobs':>6} {'contacts/s':>10} {'seconds':>8} {'requests':>9} {'added':>6} "
        f"{'twice':>5} {'retCode 7':>9} {'worker RSS MB':>13} {'enqueue s':>9}  "
        "runs (contacts/s)  states"
    )
    for r in results:
        print(
            f"{r['mode']:<10} {r['jobs']:>6} {r['contacts_per_s']:>10} {r['seconds']:>8} "
            f"{r['provider_requests']:>9} {r['orders_added']:>6} {r['added_twice']:>5} "
            f"{r['too_frequent']:>9} {r['peak_worker_rss_mb']:>13} "
            f"{r['enqueue_s']:>9}  {r['all_runs_per_s']}  {r['states']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
