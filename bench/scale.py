"""Idle Redis cost as unrelated keys pile up, and Redis memory per completed job. Prints numbers;
asserts nothing.

Everything real and on 127.0.0.1: a private redis-server (AOF, as shipped, with DEBUG enabled for
the filler), the sandbox, the callback receiver, one worker (`-c 2`, every queue), the metrics
exporter and beat.

1. Memory per job (`--kinds`, `--jobs` N each): N jobs of a kind are enqueued (one-number checks
   coalesced), run to `completed` with their callbacks from the sandbox, and once the queues, the
   unacked hash and the sandbox's callback sender are idle, (used_memory after - before) / N and
   (DBSIZE after - before) / N are printed, with the keys the jobs left (a SCAN of the whole,
   small, database before and after; ids folded into `<id>`, `<n>`), their TYPE, MEMORY USAGE
   and whether they expire. A callbot-contact run first creates the callbot-list whose task the
   contacts join (outside the measurement).
2. Idle cost (`--filler`, `--window-s`, `--scrape-s`): for each filler count, in ascending order,
   `DEBUG POPULATE <count> filler:` (one call; keys already there are kept) and then an idle
   window: the exporter's /metrics scraped every `--scrape-s`, Redis's own CPU (INFO cpu,
   used_cpu_sys + used_cpu_user) before and after divided by the wall seconds, the slowest
   scrape, and INFO commandstats calls of SCAN and KEYS during the window. The window lasts at
   least `--window-s` and goes on until every beat entry was sent in it and its task succeeded
   on the worker (beat's and the worker's logs), at most `--max-window-s`. Beat intervals are the
   shipped ones, each shortened to the window if longer.

The job records of part 1 stay in Redis for part 2 (a live deployment has records too). 20 M
filler keys take about 2 GB of Redis memory and a minute to populate.

Usage: python bench/scale.py [--filler 0,2000000] [--window-s 60] [--scrape-s 15]
       [--jobs 200] [--kinds call,number-check,...] [--max-window-s S] [--watch-scans]
`--watch-scans` also counts SCAN and KEYS by pattern (through MONITOR, which costs Redis CPU).
The issue's figures, to compare: 0.011 CPU s/s with 22 k keys, 0.669 with 2 M more; slowest
scrape 0.11 s, 1.85 s; 2 978 B per completed coalesced one-number check, 2 482 B per completed
call with its CDR. Targets: at most 2x and under 0.05 CPU s/s with 2 M and 20 M filler keys;
<= 700 B per number check, <= 1 500 B per call.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workers.devstack import (  # noqa: E402
    RedisServer,
    ServiceProcess,
    project_root,
    start_beat,
    start_callbacks,
    start_exporter,
    start_sandbox,
    start_worker,
)

TOKEN = "bench-scale-token-0123456789abcdef"
FILLER_PREFIX = "filler"
# The shipped beat intervals (config/settings.py): recover 60 s, reconcile 30 s, coalesce sweep 5 s.
SHIPPED_INTERVALS = {
    "NXJOBS_RECOVER__INTERVAL_S": 60.0,
    "NXJOBS_CALLBACKS__RECONCILE_INTERVAL_S": 30.0,
    "NXJOBS_COALESCE__SWEEP_INTERVAL_S": 5.0,
}
# The issue's figures and targets, printed next to ours.
ISSUE_BYTES = {"number-check": (2978, 700), "call": (2482, 1500)}
ISSUE_IDLE = "issue: 0.011 CPU s/s (22 k keys) -> 0.669 (+2 M); slowest scrape 0.11 -> 1.85 s"
# Jobs of each kind run (and not counted) before its measured N.
WARM_UP_JOBS = 10
KIND_ORDER = ("call", "number-check", "callbot-list", "callbot-contact", "ota-init", "wa-calling")
# Provider quotas off (sandbox and our limiter) so N jobs take seconds; no job keeps a key per
# quota, so memory per job does not depend on them.
SANDBOX_ARGS = (
    "--api2-rate",
    "0",
    "--number-check-big-rate",
    "0",
    "--callbot-rate",
    "0",
    "--makecall-rate",
    "0",
    "--cdr-rate",
    "0",
    "--callback-delay",
    "0",
    "--callback-jitter",
    "0",
)
UNLIMITED_ENV = {
    "NXJOBS_API2__RATE_PER_S": "0",
    "NXJOBS_API2__BIG_BATCH_RATE_PER_S": "0",
    "NXJOBS_CALLBOT__RATE_PER_S": "0",
    "NXJOBS_AGENT__RATE_PER_S": "0",
    "NXJOBS_AGENT__CDR_RATE_PER_S": "0",
}


# ---- the stack ----------------------------------------------------------------------------------


@dataclass
class Stack:
    redis_server: RedisServer
    env: dict[str, str]
    sandbox_url: str
    exporter_url: str
    worker: ServiceProcess
    beat: ServiceProcess
    procs: list[ServiceProcess]
    # Beat entry name -> task name, read from the Celery app with this stack's settings.
    schedule: dict[str, str] = field(default_factory=dict)

    def client(self, timeout_s: float | None = 10.0):
        import redis

        return redis.Redis.from_url(
            self.redis_server.url, decode_responses=True, socket_timeout=timeout_s
        )


def beat_schedule(env: dict[str, str]) -> dict[str, str]:
    """Beat entry -> task name, as `workers.celery_app` builds them with these settings."""
    code = (
        "import json; from workers.celery_app import app; "
        "print(json.dumps({k: v['task'] for k, v in app.conf.beat_schedule.items()}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=project_root(),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@contextmanager
def running_stack(intervals: dict[str, float], extra_env: dict[str, str] | None = None):
    """Redis (DEBUG enabled), sandbox, receiver, one worker, exporter and beat; stops them all."""
    from sandbox.accounts import sandbox_env

    procs: list[ServiceProcess] = []
    log_root = tempfile.mkdtemp(prefix="nxjobs-scale-")
    with RedisServer(debug_command=True) as redis_server:
        try:
            sandbox, sandbox_url = start_sandbox(*SANDBOX_ARGS, log_dir=f"{log_root}/sandbox")
            procs.append(sandbox)
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("NXJOBS_")},
                **sandbox_env(sandbox_url),
                **UNLIMITED_ENV,
                **{k: f"{v:g}" for k, v in intervals.items()},
                **(extra_env or {}),
                "NXJOBS_REDIS_URL": redis_server.url,
                "NXJOBS_CALLBACKS__TOKEN": TOKEN,
                "PYTHONPATH": project_root(),
            }
            receiver, receiver_url = start_callbacks(env, log_dir=f"{log_root}/callbacks")
            procs.append(receiver)
            env["NXJOBS_CALLBACKS__PUBLIC_URL"] = receiver_url
            worker = start_worker(env, concurrency=2, name="scale", log_dir=f"{log_root}/worker")
            procs.append(worker)
            exporter, exporter_url = start_exporter(env, f"{log_root}/exporter")
            procs.append(exporter)
            beat = start_beat(env, log_dir=f"{log_root}/beat")
            procs.append(beat)
            from sandbox.control import SandboxControl

            with SandboxControl(sandbox_url) as control:
                control.configure(cdr_callback_url=f"{receiver_url}/callbacks/agent/cdr/{TOKEN}")
            yield Stack(
                redis_server,
                env,
                sandbox_url,
                exporter_url,
                worker,
                beat,
                procs,
                schedule=beat_schedule(env),
            )
        finally:
            for proc in reversed(procs):
                proc.stop()
            shutil.rmtree(log_root, ignore_errors=True)


def populate(stack: Stack, count: int) -> float:
    """Filler keys `filler:0` .. `filler:<count-1>` in one DEBUG POPULATE; returns seconds taken."""
    client = stack.client(timeout_s=None)  # 20 M keys take longer than any socket timeout
    try:
        started = time.monotonic()
        client.execute_command("DEBUG", "POPULATE", count, FILLER_PREFIX)
        return time.monotonic() - started
    finally:
        client.close()


# ---- the idle window ----------------------------------------------------------------------------

_SENT = re.compile(r"Sending due task (\S+) \(")
_SUCCEEDED = re.compile(r"Task (\S+)\[[^\]]+\] succeeded in")


def _redis_cpu_s(client) -> float:
    cpu = client.info("cpu")
    return float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])


def command_calls(client, *names: str) -> dict[str, int]:
    """INFO commandstats calls of each command (0 if it never ran)."""
    stats = client.info("commandstats")
    return {
        name: int(stats.get(f"cmdstat_{name}", stats.get(name, {})).get("calls", 0))
        for name in names
    }


def _scrape(url: str) -> float:
    started = time.monotonic()
    with urllib.request.urlopen(url + "/metrics", timeout=60) as resp:
        resp.read()
        if resp.status != 200:
            raise RuntimeError(f"/metrics answered {resp.status}")
    return time.monotonic() - started


def periodic_runs(stack: Stack, beat_from: int, worker_from: int) -> dict[str, tuple[int, int]]:
    """Beat entry -> (times beat sent it, times its task succeeded on the worker) in the logs
    after the given offsets (a task's successes are shared by its entries)."""
    beat_log = stack.beat.log_text()[beat_from:]
    worker_log = stack.worker.log_text()[worker_from:]
    sent: dict[str, int] = {}
    for entry in _SENT.findall(beat_log):
        sent[entry] = sent.get(entry, 0) + 1
    done: dict[str, int] = {}
    for task in _SUCCEEDED.findall(worker_log):
        done[task] = done.get(task, 0) + 1
    return {
        entry: (sent.get(entry, 0), done.get(task, 0)) for entry, task in stack.schedule.items()
    }


def all_ran(stack: Stack, runs: dict[str, tuple[int, int]]) -> bool:
    """Every entry sent at least once, and each task succeeded at least once per entry."""
    per_task: dict[str, int] = {}
    for task in stack.schedule.values():
        per_task[task] = per_task.get(task, 0) + 1
    return all(sent >= 1 for sent, _ in runs.values()) and all(
        runs[entry][1] >= per_task[task] for entry, task in stack.schedule.items()
    )


_SCAN_LINE = re.compile(r'"(scan|keys)"((?: "(?:[^"\\]|\\.)*")*)', re.IGNORECASE)
_ARG = re.compile(r'"((?:[^"\\]|\\.)*)"')


class ScanWatch:
    """Counts SCAN and KEYS by their pattern (SCAN's MATCH, KEYS's argument) from MONITOR, on a
    thread of its own: says who walked the keyspace. MONITOR costs Redis CPU, so a window that
    measures CPU runs without it."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.sendall(b"MONITOR\r\n")
        self.sock.settimeout(None)
        self.by_pattern: dict[str, int] = {}
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        buf = b""
        try:
            while chunk := self.sock.recv(65536):
                buf += chunk
                *lines, buf = buf.split(b"\r\n")
                for line in lines:
                    m = _SCAN_LINE.search(line.decode(errors="replace"))
                    if m:
                        self._count(m.group(1).upper(), _ARG.findall(m.group(2)))
        except OSError:
            pass  # closed by stop()

    def _count(self, command: str, args: list[str]) -> None:
        if command == "KEYS":
            pattern = args[0] if args else ""
        else:
            lowered = [a.lower() for a in args]
            pattern = args[lowered.index("match") + 1] if "match" in lowered[:-1] else "*"
        name = f"{command} {pattern}"
        self.by_pattern[name] = self.by_pattern.get(name, 0) + 1

    def stop(self) -> dict[str, int]:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._thread.join(5)
        self.sock.close()
        return dict(self.by_pattern)


def idle_window(
    stack: Stack,
    *,
    min_s: float,
    scrape_s: float,
    max_s: float,
    watch_scans: bool = False,
) -> dict[str, Any]:
    """One idle window (see the module docstring); the figures as a dict. `watch_scans`: also
    SCAN and KEYS calls by pattern (`scans_by_pattern`), through MONITOR."""
    client = stack.client()
    watch = ScanWatch(stack.redis_server.port) if watch_scans else None
    try:
        beat_from = len(stack.beat.log_text())
        worker_from = len(stack.worker.log_text())
        calls0 = command_calls(client, "scan", "keys")
        cpu0, t0 = _redis_cpu_s(client), time.monotonic()
        scrapes: list[float] = []
        next_scrape = t0
        runs: dict[str, tuple[int, int]] = {}
        while True:
            now = time.monotonic()
            if now >= next_scrape:
                scrapes.append(_scrape(stack.exporter_url))
                next_scrape += scrape_s
            runs = periodic_runs(stack, beat_from, worker_from)
            elapsed = time.monotonic() - t0
            if (elapsed >= min_s and all_ran(stack, runs)) or elapsed >= max_s:
                break
            time.sleep(min(0.2, max(0.0, next_scrape - time.monotonic())))
        cpu1, t1 = _redis_cpu_s(client), time.monotonic()
        calls1 = command_calls(client, "scan", "keys")
        dbsize = client.dbsize()
    finally:
        scans = watch.stop() if watch else None
        client.close()
    return {
        "scans_by_pattern": scans,
        "wall_s": t1 - t0,
        "cpu_s_per_s": (cpu1 - cpu0) / (t1 - t0),
        "scrapes": len(scrapes),
        "slowest_scrape_s": max(scrapes),
        "scan_calls": calls1["scan"] - calls0["scan"],
        "keys_calls": calls1["keys"] - calls0["keys"],
        "dbsize": dbsize,
        "periodic": runs,
        "every_periodic_ran": all_ran(stack, runs),
    }


# ---- memory per job -----------------------------------------------------------------------------

_ID = re.compile(r"[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}|[0-9a-fA-F]{16,}")
_NUMBER = re.compile(r"\d{5,}")


def key_pattern(key: str) -> str:
    """A key with its ids folded: one row per kind of key."""
    return _NUMBER.sub("<n>", _ID.sub("<id>", key))


def _all_keys(client) -> set[str]:
    return set(client.scan_iter(count=5000))


def _quiet(stack: Stack, client, timeout_s: float) -> bool:
    """Until no message is queued or unacked and the sandbox sent every callback it queued."""
    from nxjobs.broker import queue_lists, unacked_key
    from nxjobs.jobs import QUEUES
    from sandbox.control import SandboxControl

    deadline = time.monotonic() + timeout_s
    with SandboxControl(stack.sandbox_url) as control:
        while time.monotonic() < deadline:
            pipe = client.pipeline(transaction=False)
            for q in QUEUES:
                for key in queue_lists(q):
                    pipe.llen(key)
            pipe.hlen(unacked_key())
            backlog = sum(pipe.execute())
            c = control.stats()["callbacks"]
            sent = c["delivered"] + c["expired"] >= c["queued"] - c["dropped"] + c["duplicated"]
            if backlog == 0 and sent:
                return True
            time.sleep(0.2)
    return False


def _payloads(kind: str, n: int, seq: Iterator[int], task_id: str | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for _ in range(n):
        i = next(seq)
        phone = str(8613800000000 + i)
        if kind == "call":
            out.append({"phone": phone})
        elif kind == "number-check":
            out.append({"phones": [str(6580000000 + i)], "check_level": 1})
        elif kind == "callbot-list":
            out.append(
                {
                    "scene_id": "scale-scene",
                    "task_name": f"scale {i}",
                    "contacts": [{"user_phone": phone, "user_name": f"Scale {i}"}],
                }
            )
        elif kind == "callbot-contact":
            contact = {"user_phone": phone, "user_name": f"Scale {i}"}
            out.append({"user_task_id": task_id, "contact": contact})
        elif kind == "ota-init":
            out.append({"phone": str(8615800000000 + i), "user_ip": "203.0.113.7"})
        elif kind == "wa-calling":
            out.append({"business_phone": str(6581000000 + i)})
        else:
            raise ValueError(f"no payloads for kind {kind!r}")
    return out


def memory_per_job(stack: Stack, kind: str, n: int, seq: Iterator[int], timeout_s: float) -> dict:
    """N completed jobs of `kind`: bytes and keys per job, and the keys they left."""
    from nxjobs import keys
    from nxjobs.producers import Producer

    client = stack.client()
    try:
        with Producer(stack.redis_server.url) as producer:
            task_id = None
            if kind == "callbot-contact":  # the task the contacts join, outside the measurement
                (task_id,) = producer.enqueue_many(
                    "callbot-list", _payloads("callbot-list", 1, seq, None)
                )
                producer.wait([task_id], until="completed", timeout_s=timeout_s)
            # A few first: what the kind's first job creates once (queue bindings, counters, a
            # token, a script cached) is not a cost per job.
            warm = producer.enqueue_many(kind, _payloads(kind, WARM_UP_JOBS, seq, task_id))
            producer.wait(warm, until="completed", timeout_s=timeout_s)
            _quiet(stack, client, timeout_s)
            time.sleep(0.5)
            keys0, mem0 = _all_keys(client), client.info("memory")["used_memory"]
            size0 = client.dbsize()
            events0 = client.memory_usage(keys.EVENTS, samples=0) or 0
            started = time.monotonic()
            ids = producer.enqueue_many(kind, _payloads(kind, n, seq, task_id))
            records = producer.wait(ids, until="completed", timeout_s=timeout_s)
            run_s = time.monotonic() - started
            quiet = _quiet(stack, client, timeout_s)
            time.sleep(0.5)
            mem1, size1 = client.info("memory")["used_memory"], client.dbsize()
            events1 = client.memory_usage(keys.EVENTS, samples=0) or 0
            new_keys = sorted(_all_keys(client) - keys0)
    finally:
        client.close()
    states: dict[str, int] = {}
    for record in records.values():
        state = record.state.value if record else "missing"
        states[state] = states.get(state, 0) + 1
    client = stack.client()
    try:
        groups: dict[str, dict[str, Any]] = {}
        for key in new_keys:
            g = groups.setdefault(
                key_pattern(key), {"count": 0, "bytes": 0, "type": "", "expires": False}
            )
            g["count"] += 1
            g["bytes"] += client.memory_usage(key, samples=0) or 0
            if not g["type"]:
                g["type"] = client.type(key)
                g["expires"] = client.ttl(key) >= 0
    finally:
        client.close()
    return {
        "kind": kind,
        "jobs": n,
        "states": states,
        "run_s": run_s,
        "quiet": quiet,
        "bytes_per_job": (mem1 - mem0) / n,
        # The job-end events stream is capped (XADD MAXLEN ~, NXJOBS_NOTIFY__EVENTS_MAXLEN): once
        # full, each new entry evicts an old one, so it is no cost per job as records pile up.
        "events_bytes_per_job": (events1 - events0) / n,
        "keys_per_job": (size1 - size0) / n,
        "key_bytes_per_job": sum(g["bytes"] for g in groups.values()) / n,
        "keys": groups,
    }


# ---- the report ---------------------------------------------------------------------------------


def _print_memory(rows: list[dict]) -> None:
    print("\n== Redis memory per completed job")
    print(
        f"{'kind':<16} {'jobs':>5} {'bytes/job':>10} {'less stream':>11} {'in its keys':>11} "
        f"{'keys/job':>9}  issue / target   states"
    )
    for r in rows:
        issue = ISSUE_BYTES.get(r["kind"])
        ref = f"{issue[0]:>5} / <= {issue[1]:<5}" if issue else f"{'-':>5} / {'-':<8}"
        states = ",".join(f"{k}={v}" for k, v in sorted(r["states"].items()))
        note = "" if r["quiet"] else " (not quiet at the end)"
        print(
            f"{r['kind']:<16} {r['jobs']:>5} {r['bytes_per_job']:>10.0f} "
            f"{r['bytes_per_job'] - r['events_bytes_per_job']:>11.0f} "
            f"{r['key_bytes_per_job']:>11.0f} {r['keys_per_job']:>9.2f}  {ref}  {states} "
            f"in {r['run_s']:.1f}s{note}"
        )
    print(
        "   less stream: without the job-end events stream's growth, a capped stream (MAXLEN ~)"
        " that costs nothing per job once full"
    )
    for r in rows:
        print(f"\n-- keys {r['kind']} jobs left ({r['jobs']} jobs)")
        print(f"   {'key':<58} {'type':<6} {'per job':>8} {'bytes each':>10} expires")
        for pattern, g in sorted(r["keys"].items(), key=lambda kv: -kv[1]["bytes"]):
            print(
                f"   {pattern:<58} {g['type']:<6} {g['count'] / r['jobs']:>8.2f} "
                f"{g['bytes'] / g['count']:>10.0f} {'yes' if g['expires'] else 'no'}"
            )


def _print_idle(rows: list[dict]) -> None:
    print("\n== Idle Redis cost (beat + 1 worker + receiver + exporter)")
    print(f"   {ISSUE_IDLE}; target <= 2x and < 0.05 CPU s/s")
    print(
        f"{'filler':>10} {'dbsize':>10} {'window s':>9} {'CPU s/s':>8} {'scrapes':>8} "
        f"{'slowest s':>10} {'SCAN':>7} {'KEYS':>5} every periodic task ran"
    )
    for r in rows:
        print(
            f"{r['filler']:>10} {r['dbsize']:>10} {r['wall_s']:>9.1f} {r['cpu_s_per_s']:>8.3f} "
            f"{r['scrapes']:>8} {r['slowest_scrape_s']:>10.3f} {r['scan_calls']:>7} "
            f"{r['keys_calls']:>5} {'yes' if r['every_periodic_ran'] else 'NO'}"
        )
    for r in rows:
        runs = " ".join(f"{e}={s}/{d}" for e, (s, d) in sorted(r["periodic"].items()))
        print(f"   filler {r['filler']}: beat entry=sent/task succeeded: {runs}")
        if r["scans_by_pattern"] is not None:
            print(f"   filler {r['filler']}: SCAN/KEYS by pattern: {r['scans_by_pattern']}")


def _counts(text: str) -> list[int]:
    return sorted({int(float(x)) for x in text.split(",") if x.strip()})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Idle Redis CPU and /metrics scrape time as filler keys pile up, and Redis "
        "memory per completed job of each kind (see the module docstring).",
    )
    ap.add_argument(
        "--filler",
        default="0,2000000",
        help="comma-separated filler key counts, measured in ascending order, e.g. "
        "0,2000000,20000000 (20 M take ~2 GB); empty: no idle windows (default %(default)s)",
    )
    ap.add_argument(
        "--window-s",
        type=float,
        default=60.0,
        help="shortest idle window, seconds; beat intervals longer than it are cut to it "
        "(default %(default)s)",
    )
    ap.add_argument(
        "--max-window-s",
        type=float,
        default=None,
        help="longest idle window while waiting for every periodic task to run "
        "(default: 2 x window + 60 s)",
    )
    ap.add_argument(
        "--scrape-s",
        type=float,
        default=15.0,
        help="seconds between /metrics scrapes in a window (default %(default)s)",
    )
    ap.add_argument(
        "--jobs", type=int, default=200, help="jobs per kind for the memory figures (default 200)"
    )
    ap.add_argument(
        "--kinds",
        default=",".join(KIND_ORDER),
        help="comma-separated job kinds for the memory figures; empty: none (default: all)",
    )
    ap.add_argument(
        "--watch-scans",
        action="store_true",
        help="also count SCAN and KEYS by pattern in each window, through MONITOR (which costs "
        "Redis CPU: the CPU figures are then not comparable)",
    )
    args = ap.parse_args(argv)
    fillers = _counts(args.filler)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KIND_ORDER]
    if unknown:
        ap.error(f"unknown kind(s) {', '.join(unknown)}; expected any of {', '.join(KIND_ORDER)}")
    max_window_s = args.max_window_s or 2 * args.window_s + 60
    intervals = {k: min(v, args.window_s) for k, v in SHIPPED_INTERVALS.items()}
    print(
        "beat intervals: "
        + ", ".join(f"{k.removeprefix('NXJOBS_')}={v:g}s" for k, v in intervals.items())
    )

    mem_rows: list[dict] = []
    idle_rows: list[dict] = []
    with running_stack(intervals) as stack:
        seq = iter(range(10**7))
        for kind in kinds:
            row = memory_per_job(stack, kind, args.jobs, seq, timeout_s=120 + args.jobs * 0.5)
            mem_rows.append(row)
            print(
                f"memory {kind}: {row['bytes_per_job']:.0f} B/job, {row['keys_per_job']:.2f} "
                f"keys/job ({row['states']})",
                flush=True,
            )
        for count in fillers:
            took = populate(stack, count) if count else 0.0
            print(f"filler {count}: populated in {took:.1f}s; idle window...", flush=True)
            row = idle_window(
                stack,
                min_s=args.window_s,
                scrape_s=args.scrape_s,
                max_s=max_window_s,
                watch_scans=args.watch_scans,
            )
            row["filler"] = count
            idle_rows.append(row)
            print(
                f"  {row['cpu_s_per_s']:.3f} CPU s/s over {row['wall_s']:.0f}s, slowest scrape "
                f"{row['slowest_scrape_s']:.3f}s, "
                f"SCAN {row['scan_calls']}, KEYS {row['keys_calls']}",
                flush=True,
            )
    if mem_rows:
        _print_memory(mem_rows)
    if idle_rows:
        _print_idle(idle_rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
