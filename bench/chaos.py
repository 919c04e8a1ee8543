"""Fault suite: no job lost, no side effect twice, under worker kills, a Redis
restart, a misbehaving provider and a rolling restart. Prints a table; exit 1
if any scenario lost a job or the sandbox counted a duplicate side effect.

Each scenario gets a private redis-server (AOF, noeviction, as shipped), a
sandbox process, the callback receiver, a reconciliation beat and 2 workers
(prefork, -c 3), all on 127.0.0.1, and runs a few hundred mixed jobs to the end
(`completed`, or `failed` with a reason) while the fault happens:

  kill     kill -9 of every worker process (main and pool) mid-run, then fresh workers
  redis    Redis stopped mid-run for 2 s and started again (same AOF)
  faults   the sandbox answers 30 % "too frequent", 10 % HTTP 503 and 5 % slow past
           the client's read timeout (the side effect applied first), for the whole run
  sigterm  SIGTERM to every worker's main process (a rollout), then a fresh set
  kill-held  calls only, under a makecall quota so they wait for rate-limit slots (countdowns
           held in the worker's timer); kill -9 of one whole worker of two (main and pool)
           while it holds such messages, no fresh worker started; prints the time from the
           kill until every job it held left queued/running/retrying (nxjobs/held.py puts
           them back; the visibility timeout is an hour, as shipped)

lost = a job whose record is missing, or still queued/running/retrying when the
run ends; duplicates = the sandbox's own count of an orderid / batchNo / orderID /
userTaskID accepted twice. Every run is bounded (`--timeout`) and stops itself.

Usage: python bench/chaos.py [--jobs 300] [--scenarios kill,redis,faults,sigterm,kill-held]
       [--timeout 180] [--kill-mode group|children]
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nxjobs.broker import unacked_key  # noqa: E402
from workers.devstack import (  # noqa: E402
    RedisServer,
    ServiceProcess,
    project_root,
    start_beat,
    start_callbacks,
    start_sandbox,
    start_worker,
)

SCENARIOS = ("kill", "redis", "faults", "sigterm", "kill-held")
FAULTS = dict(throttle_rate=0.3, error_rate=0.1, slow_rate=0.05, slow_seconds=2.5)
# Our quotas are the sandbox's (relaxed so a run takes seconds, not minutes); the
# faults above are injected regardless of quotas.
SANDBOX_QUOTAS = dict(
    api2_rate=0, number_check_big_rate=0, callbot_rate=0, makecall_rate=0, cdr_rate=0
)
# Worker timings scaled down so a run takes a minute; the startup check
# (workers/delivery.py) still holds: visibility 50 > time limit 10 + 30 (callbot
# maintenance backoff) + 5. The read timeout (1 s) is below slow_seconds (2.5 s).
WORKER_ENV = {
    "NXJOBS_RETRY__BASE_S": "0.05",
    "NXJOBS_RETRY__CAP_S": "0.5",
    "NXJOBS_HTTP__READ_TIMEOUT_S": "1.0",
    "NXJOBS_HTTP__CONNECT_TIMEOUT_S": "1.0",
    "NXJOBS_RATELIMIT__COOLDOWN_BASE_S": "0.05",
    "NXJOBS_RATELIMIT__COOLDOWN_CAP_S": "0.5",
    "NXJOBS_RATELIMIT__HORIZON_S": "2",
    "NXJOBS_RATELIMIT__MAX_WAIT_S": "5",
    "NXJOBS_TASK_TIME_LIMIT_S": "10",
    "NXJOBS_TASK_SOFT_TIME_LIMIT_S": "8",
    "NXJOBS_BROKER_VISIBILITY_TIMEOUT_S": "50",
    "NXJOBS_AGENT__RATE_PER_S": "0",
    "NXJOBS_AGENT__CDR_RATE_PER_S": "0",
    "NXJOBS_API2__RATE_PER_S": "0",
    "NXJOBS_CALLBOT__RATE_PER_S": "0",
    # Ambiguous makecalls are looked up 1 s later; late callbacks reconciled after 5 s.
    "NXJOBS_CALLBACKS__AMBIGUOUS_LOOKUP_AFTER_S": "1",
    "NXJOBS_CALLBACKS__RECONCILE_INTERVAL_S": "1",
    "NXJOBS_CALLBACKS__NUMBER_CHECK_DEADLINE_S": "5",
    "NXJOBS_CALLBACKS__CALL_DEADLINE_S": "5",
    "NXJOBS_CALLBACKS__CALLBOT_DEADLINE_S": "5",
    "NXJOBS_CALLBACKS__RECHECK_S": "2",
    # Lost broker messages (kombu pops before it records unacked) re-sent after 2 x 8 s.
    "NXJOBS_RECOVER__INTERVAL_S": "2",
    "NXJOBS_RECOVER__CONFIRM_S": "8",
}
KIND_MIX = (
    ("call", 35),
    ("number-check", 25),
    ("callbot-list", 10),
    ("ota-init", 15),
    ("wa-calling", 15),
)
UNFINISHED = ("queued", "running", "retrying")
# kill-held: the makecall quota (ours and the sandbox's) that makes calls wait for slots, and the
# broker's visibility timeout as shipped, so only the held-messages restore can bring the dead
# worker's messages back in time.
HELD_MAKECALL_RATE = 2
HELD_ENV = {
    "NXJOBS_AGENT__RATE_PER_S": str(HELD_MAKECALL_RATE),
    "NXJOBS_BROKER_VISIBILITY_TIMEOUT_S": "3600",
}


@dataclass
class Result:
    scenario: str
    submitted: int = 0
    completed: int = 0
    awaiting_callbacks: int = 0  # submitted, callbacks still on their way when the run ended
    failed: Counter = field(default_factory=Counter)
    lost: int = 0
    lost_ids: list = field(default_factory=list)
    failed_detail: list = field(
        default_factory=list
    )  # (job id, kind, error, endpoints sent, attempts, throttles)
    duplicates: int = 0
    duplicate_kinds: dict = field(default_factory=dict)
    producer_errors: int = 0  # enqueue raised a clear error (Redis down); retried by the harness
    faults: dict = field(default_factory=dict)  # what the sandbox injected (stats()["faults"])
    retried: int = 0  # jobs that needed more than one attempt (evidence the fault hit jobs)
    seconds: float = 0.0
    # kill-held: messages the killed worker listed, the jobs they were, seconds from the kill
    # until each of those jobs left queued/running/retrying (None: not all did), and how many
    # messages were put back (metrics counter restored|<queue>).
    held_tags: int = 0
    held_jobs: int = 0
    held_settled_s: float | None = None
    first_restore_s: float | None = None  # seconds from the kill until the first put back
    restored: int = 0

    def row(self) -> str:
        failed = sum(self.failed.values())
        reasons = ", ".join(f"{k} {v}" for k, v in self.failed.most_common()) or "-"
        return (
            f"| {self.scenario} | {self.submitted} | {self.completed} | "
            f"{self.awaiting_callbacks} | "
            f"{failed} ({reasons}) | {self.lost} | {self.duplicates} | {self.producer_errors} | "
            f"{self.seconds:.0f} s |"
        )


HEADER = (
    "| scenario | submitted | completed | submitted, callbacks pending | failed (reasons) | lost | "
    "duplicate side effects | producer errors (retried) | time |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


def _payload(kind: str, rng: random.Random) -> dict:
    def phone() -> str:
        return f"86138{rng.randrange(10**6, 10**7)}"

    if kind == "call":
        return {"phone": phone()}
    if kind == "number-check":
        return {"phones": [phone(), phone()], "check_level": 1}
    if kind == "callbot-list":
        return {
            "scene_id": "chaos",
            "task_name": "chaos",
            "contacts": [{"user_phone": phone(), "user_name": f"c{i}"} for i in range(3)],
        }
    if kind == "ota-init":
        return {"phone": phone(), "user_ip": "203.0.113.7"}
    return {"business_phone": f"6581{rng.randrange(10**6, 10**7)}"}


class Stack:
    """Redis + sandbox + receiver + beat + workers for one scenario; stop() ends all of it."""

    def __init__(self, workers: int, concurrency: int, extra_env: dict[str, str] | None = None):
        from sandbox.accounts import sandbox_env

        self.n_workers, self.concurrency = workers, concurrency
        self.redis = RedisServer(appendonly=True).start()
        self.procs: list[ServiceProcess] = []
        self.workers: list[ServiceProcess] = []
        self.sandbox, self.sandbox_url = start_sandbox(
            "--callback-delay",
            "0.2",
            "--callback-jitter",
            "0.5",
            "--callback-retry",
            "1",
            "--callback-retry-window",
            "600",
        )
        self.procs.append(self.sandbox)
        token = secrets.token_urlsafe(24)
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("NXJOBS_")},
            **sandbox_env(self.sandbox_url),
            **WORKER_ENV,
            **(extra_env or {}),
            "NXJOBS_REDIS_URL": self.redis.url,
            "NXJOBS_CALLBACKS__TOKEN": token,
            "PYTHONPATH": project_root(),
        }
        receiver, self.receiver_url = start_callbacks(self.env)
        self.procs.append(receiver)
        self.env["NXJOBS_CALLBACKS__PUBLIC_URL"] = self.receiver_url
        self.cdr_url = f"{self.receiver_url}/callbacks/agent/cdr/{token}"
        self.procs.append(start_beat(self.env))
        self.start_workers()

    def start_workers(self) -> None:
        for _ in range(self.n_workers):
            w = start_worker(self.env, concurrency=self.concurrency)
            self.workers.append(w)
            self.procs.append(w)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            try:
                proc.stop(timeout_s=15)
                proc.cleanup()
            except Exception:  # noqa: BLE001 - keep stopping the rest
                pass
        self.redis.stop()


def _pool_children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(x) for x in fh.read().split()]
    except OSError:
        return []


def _held_by(client, node: str) -> tuple[float, list[str]]:
    """(when, tags) of a worker's list of held messages (nxjobs/held.py); (0, []) if none."""
    import json

    from nxjobs import keys

    raw = client.hget(keys.WORKERS_HELD, node)
    if not raw:
        return 0.0, []
    entry = json.loads(raw)
    return float(entry["at"]), list(entry["tags"])


def kill_holding(stack: Stack, result: Result, timeout_s: float = 30.0) -> tuple[float, set[str]]:
    """kill -9 the whole group of the first worker once its list of held messages names more
    than it can run at once (so countdowns waiting for a slot too), or any by `timeout_s`.

    What it held: every message unacked at the kill that is still unacked once the surviving
    worker has listed its own after the kill, minus those it lists (nothing is put back that
    soon: the grace is 3 intervals). Returns the kill's monotonic time and their job ids."""
    import json

    from nxjobs.redis_conn import connect

    client = connect(stack.redis.url)
    victim, survivor = stack.workers[0], stack.workers[1]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and len(_held_by(client, victim.node_name)[1]) <= (
        stack.concurrency
    ):
        time.sleep(0.2)
    victim.signal(signal.SIGKILL)  # main and pool, no goodbye
    killed_at, killed_wall = time.monotonic(), time.time()
    result.held_tags = len(_held_by(client, victim.node_name)[1])
    at_kill = dict(client.hgetall(unacked_key()))  # a bench-sized hash
    victim.proc.wait(10)
    stack.workers.remove(victim)
    deadline = time.monotonic() + 15
    at, survivor_tags = _held_by(client, survivor.node_name)
    while time.monotonic() < deadline and at <= killed_wall:
        time.sleep(0.1)
        at, survivor_tags = _held_by(client, survivor.node_name)
    tags = [t for t in at_kill if t not in set(survivor_tags)]
    still = client.hmget(unacked_key(), tags) if tags else []
    jobs = {
        json.loads(at_kill[t])[0]["headers"]["id"]
        for t, now in zip(tags, still, strict=True)
        if now is not None
    }
    result.held_jobs = len(jobs)
    client.close()
    return killed_at, jobs


def inject(name: str, stack: Stack, kill_mode: str) -> None:
    if name == "kill":
        if kill_mode == "children":
            # Only the pool processes running jobs: the main process sees them lost and
            # (reject_on_worker_lost) requeues their jobs at once; it forks replacements.
            for w in stack.workers:
                for child in _pool_children(w.proc.pid):
                    os.kill(child, signal.SIGKILL)
            return
        for w in stack.workers:
            w.signal(signal.SIGKILL)  # the whole process group: main and pool, no goodbye
            w.proc.wait(10)
        stack.workers.clear()
        time.sleep(1.0)
        stack.start_workers()
    elif name == "redis":
        stack.redis._terminate()  # SIGTERM: Redis flushes the AOF and exits
        time.sleep(2.0)
        stack.redis.start()
    elif name == "sigterm":
        old = list(stack.workers)
        stack.workers.clear()
        for w in old:
            os.kill(w.proc.pid, signal.SIGTERM)  # what a container rollout sends to PID 1
        for w in old:
            try:
                w.proc.wait(30)  # warm shutdown: running jobs finish, held ones go back
            except Exception:  # noqa: BLE001
                w.signal(signal.SIGKILL)
        stack.start_workers()


def run_scenario(
    name: str,
    jobs: int = 300,
    timeout_s: float = 180.0,
    *,
    workers: int = 2,
    concurrency: int = 3,
    submit_s: float = 8.0,
    kill_mode: str = "group",
    seed: int = 7,
) -> Result:
    """Run one scenario to the end (or `timeout_s`) and return its counts."""
    from nxjobs.producers import EnqueueError, Producer
    from nxjobs.redis_conn import RedisUnavailable
    from sandbox.control import SandboxControl

    rng = random.Random(seed)
    held = name == "kill-held"
    kinds = ["call"] if held else [k for k, w in KIND_MIX for _ in range(w)]
    result = Result(name)
    started = time.monotonic()
    stack = Stack(workers, concurrency, HELD_ENV if held else None)
    held_jobs: set[str] = set()
    killed_at = 0.0
    try:
        control = SandboxControl(stack.sandbox_url)
        control.configure(cdr_callback_url=stack.cdr_url, **SANDBOX_QUOTAS)
        if name == "faults":
            control.configure(**FAULTS)
        if held:
            control.configure(makecall_rate=HELD_MAKECALL_RATE)
        ids: list[str] = []
        # Calling hours off for this producer too, as for the workers (sandbox_env): its calls are
        # sent whatever the hour, not deferred to the schedule.
        os.environ.setdefault("NXJOBS_CALLING_HOURS__ENABLED", "false")
        producer = Producer(stack.redis.url)

        def submit() -> None:
            # Paced over submit_s; an enqueue that raises is retried (bounded), as an application
            # would.
            for _job in range(jobs):
                kind = rng.choice(kinds)
                payload = _payload(kind, rng)
                for _ in range(30):
                    try:
                        ids.append(producer.enqueue(kind, payload))
                        break
                    except (RedisUnavailable, EnqueueError):
                        result.producer_errors += 1
                        time.sleep(0.5)
                time.sleep(submit_s / jobs)

        submitter = threading.Thread(target=submit, daemon=True)
        submitter.start()
        time.sleep(submit_s * 0.4)
        if held:
            killed_at, held_jobs = kill_holding(stack, result)
        else:
            inject(name, stack, kill_mode)
        submitter.join(submit_s + 60)
        result.submitted = len(ids)
        if held_jobs:
            # The killed worker held beat's tasks too (reconcile, sweeps): count only jobs.
            held_jobs = held_jobs & set(ids)
            result.held_jobs = len(held_jobs)
        if name == "faults":
            # Let the retries run into a healthy provider at the end, so "failed" means retries
            # exhausted.
            deadline = time.monotonic() + min(30.0, timeout_s / 3)
            while time.monotonic() < deadline and _unfinished(producer, ids):
                time.sleep(0.5)
        deadline = started + timeout_s
        while time.monotonic() < deadline:
            records = producer.store.get_many(ids)
            if held_jobs and result.held_settled_s is None:
                if not any(
                    records.get(j) is None or records[j].state.value in UNFINISHED
                    for j in held_jobs
                ):
                    result.held_settled_s = time.monotonic() - killed_at
            if held_jobs and result.first_restore_s is None and _restored(producer.redis):
                result.first_restore_s = time.monotonic() - killed_at
            pending = [
                r
                for r in records.values()
                if r is None
                or r.state.value in UNFINISHED
                or r.state.value == "submitted"
                or (r.error is not None and r.error.code == "ambiguous")
            ]
            if not pending:
                break
            time.sleep(0.5)
        records = producer.store.get_many(ids)
        for job_id, r in records.items():
            if r is None or r.state.value in UNFINISHED:
                result.lost += 1
                result.lost_ids.append((job_id, r.state.value if r else "missing"))
            elif r.state.value == "completed":
                result.completed += 1
            elif r.state.value == "submitted":
                result.awaiting_callbacks += 1
            else:
                result.failed[r.error.code if r.error else "?"] += 1
                result.failed_detail.append(
                    (
                        job_id,
                        r.kind,
                        r.error.model_dump() if r.error else None,
                        [q.get("endpoint") for q in r.request],
                        r.attempts,
                        r.throttles,
                    )
                )
        stats = control.stats()
        result.faults = stats["faults"]
        result.retried = sum(1 for r in records.values() if r is not None and r.attempts > 1)
        dup = stats["duplicates"]
        result.duplicates = sum(dup.values())
        result.duplicate_kinds = {k: v for k, v in dup.items() if v}
        result.restored = _restored(producer.redis)
        producer.close()
        control.close()
    finally:
        stack.stop()
    result.seconds = time.monotonic() - started
    return result


def _restored(client) -> int:
    from nxjobs import keys

    counters = client.hgetall(keys.METRICS_COUNTERS)
    return sum(int(v) for f, v in counters.items() if f.startswith("restored|"))


def _unfinished(producer, ids) -> bool:
    return any(
        r is None or r.state.value in UNFINISHED for r in producer.store.get_many(ids).values()
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=300)
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument(
        "--timeout", type=float, default=180.0, help="seconds per scenario (default 180)"
    )
    p.add_argument("--kill-mode", choices=("group", "children"), default="group")
    args = p.parse_args(argv)
    results = []
    for name in args.scenarios.split(","):
        if name not in SCENARIOS:
            p.error(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
        r = run_scenario(
            name,
            args.jobs,
            args.timeout,
            kill_mode=args.kill_mode,
            concurrency=4 if name == "kill-held" else 3,
        )
        results.append(r)
        print(f"{name}: {r.row()}", flush=True)
        if name == "kill-held":
            settled = "not all" if r.held_settled_s is None else f"{r.held_settled_s:.1f} s"
            first = "never" if r.first_restore_s is None else f"{r.first_restore_s:.1f} s"
            print(
                f"  killed worker listed {r.held_tags} message(s), held {r.held_jobs} job(s); "
                f"first put back {first} and all settled {settled} after the kill; "
                f"put back {r.restored}; "
                f"lost {r.lost}; duplicates {r.duplicates}",
                flush=True,
            )
        if r.lost_ids:
            print(f"  lost: {r.lost_ids[:10]}", flush=True)
        if r.duplicate_kinds:
            print(f"  duplicates: {r.duplicate_kinds}", flush=True)
        for detail in r.failed_detail[:10]:
            print(f"  failed: {detail}", flush=True)
    print("\n" + HEADER)
    for r in results:
        print(r.row())
    return 0 if all(r.lost == 0 and r.duplicates == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
