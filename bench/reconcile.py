"""Reconciliation capacity benchmark. Prints numbers; asserts nothing.

N one-number Number Check jobs, coalesced into 2 000-number requests by a real worker
against the sandbox (api2 quota Q requests/s, a fraction L of the DRs dropped), DRs into the
real receiver. Once every DR is delivered or dropped and the late jobs are due, reconciliation
runs of the api2 family (`tasks/reconcile.py` `run_once`, default settings but a 1 s deadline)
follow one another until no late job is left. Per run: late jobs settled, provider requests,
jobs settled per request, seconds, requests/s.

Then the calculation for the deployment target: C checks a day in batches of B, a fraction L
of the DRs lost, against the api2 quota, the beat interval and a run's request and time bounds
(NXJOBS_CALLBACKS__RECONCILE_*).

Usage: python bench/reconcile.py [--jobs 20000] [--loss 0.015] [--quota 10]
       [--per-day 10000000] [--batch 2000] [--calc-only]
Its own Redis, sandbox, receiver and worker, stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workers.devstack import (  # noqa: E402
    RedisServer,
    ServiceProcess,
    project_root,
    start_callbacks,
    start_sandbox,
    start_worker,
)

TOKEN = "bench-reconcile-token-0123456789abcdef"
ENQUEUE_CHUNK = 5000
DAY_S = 86_400


def calculation(
    per_day: int,
    batch: int,
    loss: float,
    quota: float,
    interval_s: float,
    max_requests: int,
    max_run_s: float,
    page: int,
    old_jobs_per_run: int = 50,
) -> dict:
    """Provider requests the target needs, and what the run bounds allow."""
    late = per_day * loss
    batches = per_day / batch
    # A batch is queried when at least one of its members is late.
    queried = batches * (1 - (1 - loss) ** batch)
    pages = math.ceil(batch / page)
    requests = queried * pages
    submit_per_s = batches / DAY_S
    need_per_s = requests / DAY_S
    # A run makes at most max_requests, and no more than the quota allows in max_run_s.
    per_run = min(max_requests, max_run_s * quota)
    capacity_per_s = per_run / interval_s
    return {
        "late_per_day": round(late),
        "request_ids_queried_per_day": round(queried),
        "pages_per_request_id": pages,
        "query_requests_per_day": round(requests),
        "query_requests_per_s": round(need_per_s, 2),
        "submit_requests_per_s": round(submit_per_s, 3),
        "quota_per_s": quota,
        "quota_share": round((need_per_s + submit_per_s) / quota, 3),
        "settled_per_request": round(late / requests, 2) if requests else 0.0,
        "late_per_run": round(late / (DAY_S / interval_s), 1),
        "requests_per_run_needed": round(requests / (DAY_S / interval_s), 1),
        "requests_per_run_allowed": per_run,
        "run_capacity_requests_per_s": round(capacity_per_s, 2),
        "headroom": round(capacity_per_s / need_per_s, 1) if need_per_s else None,
        f"old_cap_{old_jobs_per_run}_jobs_per_run_per_day": round(
            old_jobs_per_run * DAY_S / interval_s
        ),
    }


def _callbacks_settled(control, expected: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        cb = control.stats()["callbacks"]
        queued = cb.get("queued", 0)
        if queued >= expected and cb.get("delivered", 0) + cb.get("dropped", 0) >= queued:
            return
        time.sleep(0.5)
    raise SystemExit(f"DRs still in flight after {timeout_s}s: {control.stats()['callbacks']}")


def measure(jobs: int, loss: float, quota: int, timeout_s: float) -> dict:
    from nxjobs import keys
    from nxjobs.callbacks.reconcile import NUMBER_QUERY_PATH
    from nxjobs.producers import Producer
    from sandbox.accounts import sandbox_env
    from sandbox.control import SandboxControl

    procs: list[ServiceProcess] = []
    with RedisServer(appendonly=False) as redis_server:
        sandbox, sandbox_url = start_sandbox(
            "--api2-rate",
            str(quota),
            "--callback-delay",
            "0",
            "--callback-jitter",
            "0",
            "--callback-drop-rate",
            str(loss),
            "--seed",
            "1",
        )
        procs.append(sandbox)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("NXJOBS_")},
            **sandbox_env(sandbox_url),
            "NXJOBS_REDIS_URL": redis_server.url,
            "NXJOBS_API2__RATE_PER_S": str(quota),
            "NXJOBS_CALLBACKS__TOKEN": TOKEN,
            "NXJOBS_CALLBACKS__NUMBER_CHECK_DEADLINE_S": "1",
            "PYTHONPATH": project_root(),
        }
        try:
            proc, url = start_callbacks(env)
            procs.append(proc)
            env["NXJOBS_CALLBACKS__PUBLIC_URL"] = url
            procs.append(start_worker(env, queues="api2", concurrency=2, name="reconcile0"))
            phones = [str(6570000000 + i) for i in range(jobs)]
            with Producer(redis_server.url) as producer, SandboxControl(sandbox_url) as control:
                for start in range(0, jobs, ENQUEUE_CHUNK):
                    producer.enqueue_many(
                        "number-check",
                        [{"phones": [p]} for p in phones[start : start + ENQUEUE_CHUNK]],
                    )
                deadline = time.monotonic() + timeout_s
                waiting = keys.callbacks_waiting("api2")
                while producer.redis.zcard(keys.COALESCE_OPEN) or producer.redis.llen(
                    keys.coalesce_pending("nc1")
                ):
                    if time.monotonic() > deadline:
                        raise SystemExit("submissions not done in time")
                    time.sleep(0.5)
                _callbacks_settled(control, jobs, timeout_s)
                time.sleep(1.5)  # past the 1 s deadline
                late = producer.redis.zcard(waiting)
                submits = len(control.requests(path="/api/number/check", limit=2000))

                # The run in this process, with the worker's settings.
                os.environ.update({k: v for k, v in env.items() if k.startswith("NXJOBS_")})
                from config.settings import load_settings
                from tasks.reconcile import run_once
                from tasks.services import Services

                svc = Services(load_settings())
                runs = []
                while producer.redis.zcard(waiting) and time.monotonic() < deadline:
                    t0 = time.monotonic()
                    report = run_once(svc, "api2")
                    seconds = time.monotonic() - t0
                    requests = report.get("provider_requests", 0)
                    runs.append(
                        {
                            "settled": report.get("completed", 0) + report.get("failed", 0),
                            "provider_requests": requests,
                            "request_ids": report.get("request_ids", 0),
                            "settled_per_request": round(report.get("completed", 0) / requests, 2)
                            if requests
                            else 0.0,
                            "seconds": round(seconds, 2),
                            "requests_per_s": round(requests / seconds, 2) if seconds else 0.0,
                            "stopped_by_budget": report.get("stopped_by_budget", 0),
                            "stopped_by_rate_limit": report.get("stopped_by_rate_limit", 0),
                        }
                    )
                svc.transport.close()
                queries = len(control.requests(path=NUMBER_QUERY_PATH, limit=2000))
                left = producer.redis.zcard(waiting)
            return {
                "jobs": jobs,
                "loss": loss,
                "submit_requests": submits,
                "late": late,
                "runs": runs,
                "query_requests": queries,
                "late_left": left,
            }
        finally:
            for p in reversed(procs):
                p.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--jobs", type=int, default=20_000)
    p.add_argument("--loss", type=float, default=0.015, help="fraction of DRs dropped")
    p.add_argument("--quota", type=int, default=10, help="api2 requests/s (sandbox and ours)")
    p.add_argument("--per-day", type=int, default=10_000_000, help="checks a day (calculation)")
    p.add_argument("--batch", type=int, default=2000, help="numbers per request (calculation)")
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--calc-only", action="store_true", help="print the calculation only")
    args = p.parse_args(argv)
    from config.settings import CallbacksSettings
    from nxjobs.callbacks.reconcile import NUMBER_QUERY_PAGE

    cb = CallbacksSettings()
    if not args.calc_only:
        print(json.dumps(measure(args.jobs, args.loss, args.quota, args.timeout)), flush=True)
    calc = calculation(
        args.per_day,
        args.batch,
        args.loss,
        args.quota,
        cb.reconcile_interval_s,
        cb.reconcile_max_requests,
        cb.reconcile_max_run_s,
        NUMBER_QUERY_PAGE,
    )
    print(json.dumps({"calculation": calc}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
