"""Global rate limiting benchmark (issue 3). Prints numbers; asserts nothing.

Against the sandbox with its api2 quota at Q requests/s, enough single-request
jobs (wa-calling) to keep a backlog for over 30 s, run by real Celery workers:
  - nxjobs (global Redis limiter) with 2 worker processes x concurrency 4
  - plain Celery `rate_limit="Q/s"` + retry on 2206, same workers and jobs
  - nxjobs with 4 worker processes x concurrency 4
For each: accepted rate over the busy window as a ratio to Q, and the share of
requests answered "too frequent". Usage: python bench/ratelimit.py [--quota 20]
[--seconds 35] [--rows nxjobs:2,plain:2,nxjobs:4] [--timeout 120]
BENCH_DEBUG=1 also prints accepted requests per second and, for any "too
frequent" answer, how full the sandbox's window was.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workers.devstack import RedisServer, ServiceProcess, project_root, start_sandbox, start_worker  # noqa: E402


def _iso_to_epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def run_row(system: str, workers: int, quota: int, jobs: int, timeout_s: float) -> dict:
    from nxjobs.producers import Producer
    from nxjobs.records import JobState
    from sandbox.accounts import sandbox_env
    from sandbox.control import SandboxControl

    with RedisServer() as redis_server:
        sandbox, url = start_sandbox("--api2-rate", str(quota))
        # Tuning knobs (NXJOBS_RATELIMIT__*) pass through; everything else comes from the sandbox.
        env = {
            **{
                k: v
                for k, v in os.environ.items()
                if not k.startswith("NXJOBS_") or k.startswith("NXJOBS_RATELIMIT__")
            },
            **sandbox_env(url),
            "NXJOBS_REDIS_URL": redis_server.url,
            "NXJOBS_API2__RATE_PER_S": str(quota),
            "BENCH_QUOTA": str(quota),
            "PYTHONPATH": project_root(),
        }
        procs: list[ServiceProcess] = []
        try:
            for i in range(workers):
                if system == "nxjobs":
                    procs.append(start_worker(env, queues="api2", concurrency=4, name=f"bench{i}"))
                else:
                    p = ServiceProcess(
                        f"plain{i}",
                        [
                            sys.executable,
                            "-m",
                            "celery",
                            "-A",
                            "bench.plain_celery_app",
                            "worker",
                            "-c",
                            "4",
                            "-n",
                            f"plain{i}@%h",
                            "--without-mingle",
                            "--without-gossip",
                            "-l",
                            "INFO",
                        ],
                        env=env,
                        cwd=project_root(),
                    ).start()
                    p.wait_for_log(" ready.", 60)
                    procs.append(p)
            phones = [str(6581000000 + i) for i in range(jobs)]
            t0 = time.time()
            with Producer(redis_server.url) as producer:
                if system == "nxjobs":
                    ids = [producer.wa_calling(business_phone=p) for p in phones]
                else:
                    from celery import Celery

                    sender = Celery("plain-sender", broker=redis_server.url, set_as_current=False)
                    for p in phones:
                        sender.send_task("plain.wa_calling", args=[p], serializer="json")
                enqueue_s = time.time() - t0
                deadline = t0 + timeout_s
                while time.time() < deadline:
                    if system == "nxjobs":
                        recs = producer.store.get_many(ids)
                        done = sum(
                            1
                            for r in recs.values()
                            if r and (r.reached(JobState.SUBMITTED) or r.state == JobState.FAILED)
                        )
                    else:
                        done = producer.redis.llen("bench:plain:accepted")
                    if done >= jobs:
                        break
                    time.sleep(0.5)
                if os.environ.get("DEBUG_LATENESS"):
                    lat = sorted(
                        float(x) / 1000 for x in producer.redis.lrange("debug:lateness", 0, -1)
                    )
                    if lat:
                        print(
                            f"lateness ms: p50 {lat[len(lat) // 2]:.1f} "
                            f"p90 {lat[int(len(lat) * 0.9)]:.1f} "
                            f"p99 {lat[int(len(lat) * 0.99)]:.1f} max {lat[-1]:.1f} n={len(lat):d}"
                        )
                if system == "nxjobs":
                    recs = producer.store.get_many(ids)
                    # wa-calling has no callbacks: it completes in the same step as it is submitted.
                    accepted = sorted(
                        _iso_to_epoch(r.updated_at)
                        for r in recs.values()
                        if r and r.reached(JobState.SUBMITTED)
                    )
                    failed = sum(1 for r in recs.values() if r and r.state.value == "failed")
                    waits = [r.waits for r in recs.values() if r]
                else:
                    accepted = sorted(
                        float(x) for x in producer.redis.lrange("bench:plain:accepted", 0, -1)
                    )
                    failed, waits = 0, [0]
            with SandboxControl(url) as control:
                responses = control.stats()["responses"].get("/api/wa/calling/get", {})
                if os.environ.get("BENCH_DEBUG"):
                    _explain_throttles(control, quota, t0)
        finally:
            for p in procs:
                p.stop()
                p.cleanup()
            sandbox.stop()
            sandbox.cleanup()

    if os.environ.get("BENCH_DEBUG") and accepted:
        counts = [0] * (int(accepted[-1] - accepted[0]) + 1)
        for t in accepted:
            counts[int(t - accepted[0])] += 1
        print("  accepted per second:", " ".join(map(str, counts)))
    total_requests = sum(responses.values())
    too_frequent = responses.get("2206", 0)
    drained = len(accepted) >= jobs
    window_end = accepted[-1] if drained and accepted else deadline
    window = max(window_end - accepted[0], 1e-9) if accepted else float("nan")
    rate = (len(accepted) - 1) / window if len(accepted) > 1 else 0.0
    return {
        "system": system,
        "workers": workers,
        "jobs": jobs,
        "accepted": len(accepted),
        "failed": failed,
        "drained": drained,
        "window_s": window,
        "rate": rate,
        "ratio": rate / quota,
        "requests": total_requests,
        "too_frequent": too_frequent,
        "throttled_share": too_frequent / total_requests if total_requests else 0.0,
        "waits_median": statistics.median(waits),
        "enqueue_s": enqueue_s,
    }


def _explain_throttles(control, quota: int, t0: float) -> None:
    """Replay the sandbox's sliding window over its own request log: when and why it said 2206."""
    from collections import deque

    times = sorted(r["ts"] for r in control.requests(path="/api/wa/calling/get", limit=2000))
    window: deque[float] = deque()
    for t in times:
        while window and t - window[0] >= 1.0:
            window.popleft()
        if len(window) >= quota:
            print(f"  2206 at +{t - t0:.3f}s: {quota} accepted in the last {t - window[0]:.3f}s")
            continue
        window.append(t)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quota", type=int, default=20, help="sandbox api2 quota, requests/s")
    ap.add_argument("--seconds", type=float, default=35, help="backlog length at the quota")
    ap.add_argument("--rows", default="nxjobs:2,plain:2,nxjobs:4", help="system:workers,...")
    ap.add_argument("--timeout", type=float, default=120, help="per-row cap, seconds")
    args = ap.parse_args()
    jobs = int(args.quota * args.seconds)
    print(
        f"quota Q={args.quota}/s, {jobs} single-request jobs per row, each worker process -c 4, "
        f"machine: {os.cpu_count()} cores"
    )
    header = (
        f"{'system':<8} {'workers':>7} {'accepted':>9} {'window_s':>9} {'rate/s':>8} {'ratio':>6} "
        f"{'requests':>9} {'2206':>6} {'2206 %':>7} {'drained':>8}"
    )
    print(header)
    for spec in args.rows.split(","):
        system, workers = spec.split(":")
        row = run_row(system, int(workers), args.quota, jobs, args.timeout)
        print(
            f"{row['system']:<8} {row['workers']:>7} {row['accepted']:>9} {row['window_s']:>9.1f} "
            f"{row['rate']:>8.2f} {row['ratio']:>6.3f} {row['requests']:>9} "
            f"{row['too_frequent']:>6} "
            f"{100 * row['throttled_share']:>6.2f}% {str(row['drained']):>8}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
