"""Per-job overhead: nxjobs against the plain Celery task a user would write. Prints numbers;
asserts nothing.

Non-coalesced ota-init jobs (api2 family) against the sandbox with no quota (and nxjobs'
limiter off), one worker `-c 2` per round: nxjobs' own worker (`python -m workers worker`),
or the plain task of bench/plain_overhead_app.py (signed with our signing code, `requests`,
Celery's Redis result backend). Each round has its own Redis and sandbox; the N jobs are
enqueued before the worker starts, the clock runs from the first message taken to the N-th
job done (nxjobs: its `attempt|ota-init|submitted` counter, the record completed at submit;
plain: N results in the backend). Rounds alternate (nxjobs, plain, nxjobs, ...).

Redis round trips per job: `INFO commandstats` calls during the round (worker start
included, the bench's own polls taken out) / N, with the top commands (EVALSHA counted once a
call). Usage: python bench/overhead.py [--jobs 2000] [--rounds 3] [--timeout 300]
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workers.devstack import (  # noqa: E402
    RedisServer,
    ServiceProcess,
    project_root,
    start_sandbox,
    start_worker,
)

SANDBOX_QUOTAS = ("--api2-rate", "0", "--number-check-big-rate", "0")
PLAIN_TASK = "plain.ota_init"
BENCH_CLIENT = "overhead-bench"


def _commandstats(client) -> Counter:
    """Calls per command since the server started (INFO itself left out)."""
    stats = client.info("commandstats")
    return Counter(
        {
            name.removeprefix("cmdstat_"): int(value["calls"])
            for name, value in stats.items()
            if name != "cmdstat_info"
        }
    )


def _payloads(n: int) -> list[dict[str, str]]:
    return [{"phone": f"+8613{8000000000 + i}", "user_ip": "203.0.113.7"} for i in range(n)]


class Monitor:
    """Every command Redis runs, read in its own thread over a raw MONITOR connection (slows Redis
    down: rounds that count this way are not timed)."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=0.2)
        self.sock.sendall(b"MONITOR\r\n")
        self.data = bytearray()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                chunk = self.sock.recv(1 << 16)
            except TimeoutError:
                continue
            if not chunk:
                return
            self.data += chunk

    def stop(self) -> list[tuple[float, str, str]]:
        """(time, client address or "lua", command) of every command seen."""
        time.sleep(0.3)  # the last lines on their way
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
        seen = []
        for line in bytes(self.data).decode(errors="replace").split("\r\n"):
            m = _MONITOR_LINE.match(line)
            if m:
                seen.append((float(m["ts"]), m["client"], m["cmd"].lower()))
        return seen


_MONITOR_LINE = re.compile(r'^\+(?P<ts>[0-9.]+) \[\d+ (?P<client>[^\]]+)\] "(?P<cmd>[^"]+)"')
# Commands of one client closer than this belong to one write (a pipeline); a round trip of
# its own takes a reply, a parse and a send in Python, far longer.
PIPELINE_GAP_S = 30e-6


def _count_worker_commands(
    seen: list[tuple[float, str, str]], bench_clients: set[str]
) -> tuple[Counter, int]:
    """(commands by name, round trips) of everyone but the bench and the scripts' own calls."""
    commands: Counter = Counter()
    trips = 0
    last: tuple[str, float] | None = None
    for ts, client, cmd in seen:
        if client == "lua" or client in bench_clients or cmd == "monitor":
            continue
        commands[cmd] += 1
        if not (last and last[0] == client and ts - last[1] < PIPELINE_GAP_S):
            trips += 1
        last = (client, ts)
    return commands, trips


class Poller:
    """Counts, in its own thread, the moment the worker took its first message; every command it
    sends is tallied so the round's count can take them out."""

    def __init__(self, client, queue_keys: list[str], total: int):
        self.client = client
        self.queue_keys = queue_keys
        self.total = total
        self.started_at: float | None = None
        self.sent = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            pipe = self.client.pipeline(transaction=False)
            for key in self.queue_keys:
                pipe.llen(key)
            waiting = sum(pipe.execute())
            self.sent["llen"] += len(self.queue_keys)
            if waiting < self.total:
                self.started_at = time.monotonic()
                return
            time.sleep(0.002)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def _done(system: str, client, result_keys: list[str]) -> int:
    """Jobs done: nxjobs counts its submitted attempts (ota-init completes at submit), the plain
    task's results are in the backend."""
    if system == "nxjobs":
        from nxjobs import keys

        return int(client.hget(keys.METRICS_COUNTERS, "attempt|ota-init|submitted") or 0)
    return int(client.exists(*result_keys))


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(x) for x in fh.read().split()]
    except OSError:
        return []


def _cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of these processes (each its own, not its children's)."""
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                ticks += sum(int(x) for x in fh.read().rsplit(")", 1)[1].split()[11:13])
        except OSError:
            continue
    return ticks / os.sysconf("SC_CLK_TCK")


def run_round(system: str, jobs: int, timeout_s: float, *, monitor: bool = False) -> dict:
    import redis
    from celery import Celery

    from nxjobs.producers import Producer
    from nxjobs.records import JobState
    from sandbox.accounts import sandbox_env

    with RedisServer() as redis_server:
        sandbox, url = start_sandbox(*SANDBOX_QUOTAS)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("NXJOBS_")},
            **sandbox_env(url),
            "NXJOBS_REDIS_URL": redis_server.url,
            "NXJOBS_API2__RATE_PER_S": "0",
            "PYTHONPATH": project_root(),
        }
        worker: ServiceProcess | None = None
        client = redis.Redis.from_url(
            redis_server.url, decode_responses=True, client_name=BENCH_CLIENT
        )
        watch: Monitor | None = None
        try:
            payloads = _payloads(jobs)
            ids: list[str] = []
            if system == "nxjobs":
                with Producer(redis_server.url) as producer:
                    ids = producer.enqueue_many("ota-init", payloads)
            else:
                sender = Celery("plain-sender", broker=redis_server.url, set_as_current=False)
                with sender.connection_for_write() as conn:
                    for p in payloads:
                        result = sender.send_task(
                            PLAIN_TASK, kwargs=p, serializer="json", connection=conn
                        )
                        ids.append(result.id)
            queue_keys = [
                k for k in client.scan_iter(match="api2*" if system == "nxjobs" else "celery*")
            ]
            queue_keys = [k for k in queue_keys if client.type(k) == "list"]
            before = _commandstats(client)
            poller = Poller(client, queue_keys, jobs)
            if monitor:
                watch = Monitor(redis_server.port)
            poller.start()
            if system == "nxjobs":
                worker = start_worker(env, queues="api2", concurrency=2, name="overhead")
            else:
                worker = ServiceProcess(
                    "plain-overhead",
                    [
                        sys.executable,
                        "-m",
                        "celery",
                        "-A",
                        "bench.plain_overhead_app",
                        "worker",
                        "-c",
                        "2",
                        "-n",
                        "plain-overhead@%h",
                        "--without-mingle",
                        "--without-gossip",
                        "-l",
                        "INFO",
                    ],
                    env=env,
                    cwd=project_root(),
                ).start()
                worker.wait_for_log(" ready.", 60)
            result_keys = [f"celery-task-meta-{i}" for i in ids]
            # CPU from the worker's first ready moment; the jobs done by then are taken out.
            processes = {
                "worker main": [worker.proc.pid],
                "worker pool": _children(worker.proc.pid),
                "redis": [redis_server.pid],
                "sandbox": [sandbox.proc.pid],
            }
            cpu_before = {name: _cpu_s(pids) for name, pids in processes.items()}
            done_before = _done(system, client, result_keys)
            deadline = time.monotonic() + timeout_s
            polls = Counter({"hget" if system == "nxjobs" else "exists": 1})
            done = 0
            while time.monotonic() < deadline:
                done = _done(system, client, result_keys)
                polls["hget" if system == "nxjobs" else "exists"] += 1
                if done >= jobs:
                    break
                time.sleep(0.01)
            finished_at = time.monotonic()
            cpu_ms = {
                name: 1000 * (_cpu_s(pids) - cpu_before[name]) / max(jobs - done_before, 1)
                for name, pids in processes.items()
            }
            poller.stop()
            after = _commandstats(client)
            seen = watch.stop() if watch is not None else []
            bench_clients = {c["addr"] for c in client.client_list() if c["name"] == BENCH_CLIENT}
            if poller.started_at is None:
                raise RuntimeError(f"{system}: the worker never took a message")
            seconds = finished_at - poller.started_at
            calls = after - before - poller.sent - polls
            if system == "nxjobs":
                recs = Producer(redis_server.url).store.get_many(ids)
                completed = sum(1 for r in recs.values() if r and r.state == JobState.COMPLETED)
            else:
                completed = client.exists(*result_keys)
        finally:
            if worker is not None:
                worker.stop()
                if worker.proc is not None and worker.proc.returncode not in (0, None):
                    print(worker.log_tail(), file=sys.stderr)
                worker.cleanup()
            sandbox.stop()
            sandbox.cleanup()
    return {
        "system": system,
        "jobs": jobs,
        "completed": completed,
        "seconds": seconds,
        "rate": done / seconds if seconds > 0 else 0.0,
        "calls": calls,
        "cpu_ms": cpu_ms,
        "monitored": _count_worker_commands(seen, bench_clients) if monitor else None,
    }


def _top(calls: Counter, jobs: int, n: int = 8) -> str:
    return ", ".join(f"{name} {count / jobs:.2f}" for name, count in calls.most_common(n))


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--jobs", type=int, default=2000, help="ota-init jobs per timed round")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds per system (alternating)")
    ap.add_argument(
        "--count-jobs", type=int, default=300, help="jobs of the MONITOR round per system (0: none)"
    )
    ap.add_argument("--timeout", type=float, default=300, help="per-round cap, seconds")
    args = ap.parse_args()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=project_root()
    ).stdout.strip()
    print(
        f"{args.jobs} ota-init jobs a round, one worker -c 2, no quota; "
        f"commit {commit}, machine: {os.cpu_count()} cores"
    )
    rates: dict[str, list[float]] = {"nxjobs": [], "plain": []}
    stats: dict[str, list[float]] = {"nxjobs": [], "plain": []}
    for i in range(args.rounds):
        for system in ("nxjobs", "plain"):
            row = run_round(system, args.jobs, args.timeout)
            per_job = sum(row["calls"].values()) / args.jobs
            rates[system].append(row["rate"])
            stats[system].append(per_job)
            print(
                f"round {i + 1} {system:<6} {row['completed']:>6}/{row['jobs']} done "
                f"in {row['seconds']:6.2f} s = {row['rate']:7.1f} jobs/s; "
                f"commandstats calls/job {per_job:5.2f} (scripts' own calls included); "
                "CPU ms/job " + ", ".join(f"{name} {ms:.2f}" for name, ms in row["cpu_ms"].items()),
                flush=True,
            )
    if args.rounds:
        nx, plain = statistics.median(rates["nxjobs"]), statistics.median(rates["plain"])
        print(
            f"median nxjobs {nx:.1f} jobs/s ({statistics.median(stats['nxjobs']):.2f} calls/job), "
            f"plain {plain:.1f} jobs/s ({statistics.median(stats['plain']):.2f} calls/job), "
            f"ratio {nx / plain:.2f}x"
        )
    for system in ("nxjobs", "plain") if args.count_jobs else ():
        row = run_round(system, args.count_jobs, args.timeout, monitor=True)
        commands, trips = row["monitored"]
        n = args.count_jobs
        print(
            f"MONITOR {system:<6} {row['completed']}/{n} done: per job "
            f"{sum(commands.values()) / n:.2f} commands (a script call counted once), "
            f"~{trips / n:.2f} round trips; {_top(commands, n, 12)}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
