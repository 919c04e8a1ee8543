"""Coalescing benchmark (issue 7). Prints numbers; asserts nothing.

N one-number Number Check jobs, enqueued by a producer against the sandbox with its
api2 quota at Q requests/s, run by real Celery workers, their result callbacks
delivered by the sandbox (no delay) to the real receiver:

  coalesced   the default: numbers gathered into shared requests (nxjobs.coalesce)
  single      the same jobs with batch=False: a request per number

For each row: numbers completed per second end to end (from the first enqueue to the
last job `completed`, i.e. submitted and its callback recorded), provider requests
used, peak RSS of the worker processes, and how long enqueueing took. The `single`
row runs a bounded slice (its rate is the quota, so N would take N/Q seconds).

Usage: python bench/coalesce.py [--jobs 100000] [--quota 10] [--single-jobs 300]
       [--workers 1] [--concurrency 2] [--receivers 1] [--rows coalesced,single] [--timeout 300]
       [--progress]
`cpu_s` in each row: CPU seconds of each process tree over the run (sandbox, receiver, workers,
redis-server, this producer). --progress prints the backlog every poll and Redis's busiest commands.
Every row has its own Redis, sandbox, receiver and workers, and stops by itself.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workers.devstack import (  # noqa: E402
    RedisServer,
    ServiceProcess,
    free_port,
    project_root,
    start_callbacks,
    start_sandbox,
    start_worker,
)

TOKEN = "bench-coalesce-token-0123456789abcdef"
ENQUEUE_CHUNK = 5000


def _tree_pids(pid: int) -> list[int]:
    """A process and its descendants (a prefork worker: main + pool; receiver: supervisor +
    workers)."""
    out, stack = [], [pid]
    while stack:
        p = stack.pop()
        out.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as fh:
                stack += [int(x) for x in fh.read().split()]
        except OSError:
            continue
    return out


def _read(path: str) -> str:
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return ""


def _tree_rss_mb(pid: int) -> float:
    kb = 0
    for p in _tree_pids(pid):
        kb += sum(
            int(line.split()[1])
            for line in _read(f"/proc/{p}/status").splitlines()
            if line.startswith("VmRSS:")
        )
    return kb / 1024


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process tree, reaped children included."""
    ticks = 0
    for p in _tree_pids(pid):
        stat = _read(f"/proc/{p}/stat")
        if stat:
            ticks += sum(int(x) for x in stat.rsplit(")", 1)[1].split()[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def run_row(
    mode: str,
    jobs: int,
    quota: int,
    workers: int,
    concurrency: int,
    receivers: int,
    timeout_s: float,
    progress: bool = False,
) -> dict:
    from nxjobs import keys
    from nxjobs.producers import Producer
    from sandbox.accounts import sandbox_env
    from sandbox.control import SandboxControl

    procs: list[ServiceProcess] = []
    with RedisServer(appendonly=False) as redis_server:
        sandbox, sandbox_url = start_sandbox(
            "--api2-rate",
            str(quota),
            "--number-check-big-rate",
            "1",
            "--callback-delay",
            "0",
            "--callback-jitter",
            "0",
        )
        procs.append(sandbox)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("NXJOBS_")},
            **sandbox_env(sandbox_url),
            "NXJOBS_REDIS_URL": redis_server.url,
            "NXJOBS_API2__RATE_PER_S": str(quota),
            "NXJOBS_CALLBACKS__TOKEN": TOKEN,
            "PYTHONPATH": project_root(),
        }
        try:
            # `--workers N`: N receiver processes accepting on one listening socket.
            extra = ("--workers", str(receivers)) if receivers > 1 else ()
            proc, url = start_callbacks(env, port=free_port() if receivers > 1 else 0, extra=extra)
            procs.append(proc)
            env["NXJOBS_CALLBACKS__PUBLIC_URL"] = url
            worker_procs = [
                start_worker(env, queues="api2", concurrency=concurrency, name=f"coalesce{i}")
                for i in range(workers)
            ]
            procs += worker_procs
            phones = [str(6580000000 + i) for i in range(jobs)]
            peak_rss = 0.0
            pids = {p.name: p.proc.pid for p in procs}
            pids["redis"] = redis_server.proc.pid
            cpu0 = {name: _cpu_s(pid) for name, pid in pids.items()}
            own0 = time.process_time()
            with Producer(redis_server.url) as producer, SandboxControl(sandbox_url) as control:
                t0 = time.time()
                for start in range(0, jobs, ENQUEUE_CHUNK):
                    producer.enqueue_many(
                        "number-check",
                        [{"phones": [p]} for p in phones[start : start + ENQUEUE_CHUNK]],
                        batch=(mode == "coalesced"),
                    )
                    peak_rss = max(peak_rss, sum(_tree_rss_mb(w.proc.pid) for w in worker_procs))
                enqueued_s = time.time() - t0
                deadline = t0 + timeout_s
                done_at = None
                while time.time() < deadline:
                    pipe = producer.redis.pipeline(transaction=False)
                    pipe.zcard(keys.callbacks_waiting("api2"))
                    pipe.zcard(keys.COALESCE_OPEN)
                    pipe.llen(keys.coalesce_pending("nc1"))
                    for q in ("api2", "api2\x06\x163", "api2\x06\x166", "api2\x06\x169"):
                        pipe.llen(q)
                    pipe.hlen("unacked")
                    counts = pipe.execute()
                    busy = sum(counts)
                    if progress:
                        print(
                            f"  {time.time() - t0:6.2f}s waiting={counts[0]} open={counts[1]} "
                            f"pending={counts[2]} "
                            f"queued={sum(counts[3:7])} unacked={counts[7]}",
                            file=sys.stderr,
                            flush=True,
                        )
                    peak_rss = max(peak_rss, sum(_tree_rss_mb(w.proc.pid) for w in worker_procs))
                    if busy == 0:
                        done_at = time.time()
                        break
                    time.sleep(0.1)
                elapsed = (done_at or time.time()) - t0
                cpu = {name: round(_cpu_s(pid) - cpu0[name], 1) for name, pid in pids.items()}
                cpu["producer"] = round(time.process_time() - own0, 1)
                # Verify outside the timing: every record, by state.
                states: dict[str, int] = {}
                ids = [
                    k
                    for k in producer.redis.scan_iter(match=keys.job("*"), count=5000, _type="HASH")
                ]
                for start in range(0, len(ids), 5000):
                    pipe = producer.redis.pipeline(transaction=False)
                    for k in ids[start : start + 5000]:
                        pipe.hget(k, "state")
                    for s in pipe.execute():
                        states[s] = states.get(s, 0) + 1
                stats = control.stats()
                if progress:
                    cs = producer.redis.info("commandstats")
                    top = sorted(cs.items(), key=lambda kv: -kv[1]["usec"])[:8]
                    print("  redis commandstats (usec total, calls, usec/call):", file=sys.stderr)
                    for name, st in top:
                        print(
                            f"    {name:<28} {st['usec']:>10} {st['calls']:>8} "
                            f"{st['usec_per_call']:>8}",
                            file=sys.stderr,
                        )
            completed = states.get("completed", 0)
            return {
                "mode": mode,
                "jobs": jobs,
                "finished": done_at is not None,
                "seconds": round(elapsed, 2),
                "numbers_per_s": round(completed / elapsed, 1) if elapsed else 0.0,
                "enqueue_s": round(enqueued_s, 2),
                "states": states,
                "provider_requests": stats["accepted"].get("number_check", 0),
                "too_frequent": sum(stats.get("throttled", {}).values())
                if isinstance(stats.get("throttled"), dict)
                else stats.get("throttled", 0),
                "peak_worker_rss_mb": round(peak_rss, 1),
                "cpu_s": cpu,
            }
        finally:
            for p in reversed(procs):
                p.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--jobs", type=int, default=100_000)
    p.add_argument(
        "--single-jobs",
        type=int,
        default=300,
        help="jobs of the batch=False row (it runs at the quota)",
    )
    p.add_argument("--quota", type=int, default=10, help="sandbox api2 requests/s")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument(
        "--receivers", type=int, default=1, help="receiver processes (workers.web --workers)"
    )
    p.add_argument("--rows", default="coalesced,single")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per row")
    p.add_argument("--progress", action="store_true", help="print the backlog every poll (stderr)")
    args = p.parse_args(argv)
    results = []
    for mode in args.rows.split(","):
        jobs = args.jobs if mode == "coalesced" else args.single_jobs
        row = run_row(
            mode,
            jobs,
            args.quota,
            args.workers,
            args.concurrency,
            args.receivers,
            args.timeout,
            args.progress,
        )
        results.append(row)
        print(row, flush=True)
    print()
    print(
        f"{'mode':<10} {'jobs':>7} {'numbers/s':>10} {'seconds':>8} {'requests':>9} {'2206':>5} "
        f"{'worker RSS MB':>13} {'enqueue s':>9}  states"
    )
    for r in results:
        print(
            f"{r['mode']:<10} {r['jobs']:>7} {r['numbers_per_s']:>10} {r['seconds']:>8} "
            f"{r['provider_requests']:>9} {r['too_frequent']:>5} {r['peak_worker_rss_mb']:>13} "
            f"{r['enqueue_s']:>9}  {r['states']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
