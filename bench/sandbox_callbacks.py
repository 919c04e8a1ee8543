"""Sandbox callback sender benchmark: Number Check DRs/s the sandbox's CallbackDispatcher
delivers to a receiver, end to end, and the sender's CPU per 1,000 callbacks.

    .venv/bin/python bench/sandbox_callbacks.py [--count 30000] [--runs 3]
        [--baseline /tmp/dispatch_old.py] [--receiver real|sink] [--receiver-workers 1]

Starts a private redis-server and the receiver (`python -m workers.web`, one
process unless --receiver-workers), creates submitted number-check jobs straight in
Redis (bench/callbacks.py's build_jobs: 10 numbers each), queues one DR per number
through `SandboxState.queue_callback` (exactly what the Number Check handler does,
bodies from the handler's own builders, to the token URL), then starts a
CallbackDispatcher on that state in this process and times it until every DR was
acknowledged. Each 2xx must be one more entry in a job record: the script checks
that the records hold exactly as many callbacks as the dispatcher counted delivered.

`--receiver sink` replaces the receiver (and Redis) with a minimal asyncio server that
answers 200 to everything: what the dispatcher can do when the receiver costs nothing.

Sender CPU is this process's user+sys time over the delivery (the dispatcher's
threads; the main thread only polls a counter). Receiver and Redis CPU come from
/proc. `--baseline FILE` loads another dispatch.py (e.g. `git show
HEAD:sandbox/dispatch.py > /tmp/dispatch_old.py`) and runs it alternately with
the current one against the same receiver, baseline first, so both see the same
machine noise; medians are printed at the end.

Bounded: --count callbacks per run, and every run stops after --seconds (120) even
if not all were delivered (then reported as such, exit 1).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import resource
import statistics
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.callbacks import NUMBERS_PER_CHECK, TOKEN, build_jobs, stored_callbacks  # noqa: E402

HARD_STOP_S = 120.0
SINK_MAX_S = 1800.0
_TICKS = os.sysconf("SC_CLK_TCK")


# ---- an idle receiver: answers 200 to every request, counts them ---------------------------------


def serve_sink(max_seconds: float) -> None:
    """Subprocess entry: print the port, serve until killed or `max_seconds` pass."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    count = [0]
    ok = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 31\r\n\r\n"
        b'{"code":0,"message":"success"}\n'
    )

    class Sink(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport, self.buf = transport, b""

        def data_received(self, data):
            buf = self.buf + data
            out = []
            while True:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    break
                head = buf[:end].lower() + b"\r\n"
                at = head.find(b"\r\ncontent-length:")
                length = int(head[at + 17 : head.find(b"\r\n", at + 2)]) if at >= 0 else 0
                if len(buf) < end + 4 + length:
                    break
                if head.startswith(b"get /count"):
                    text = str(count[0]).encode()
                    out.append(
                        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(text), text)
                    )
                else:
                    count[0] += 1
                    out.append(ok)
                buf = buf[end + 4 + length :]
            self.buf = buf
            if out:
                self.transport.write(b"".join(out))

    async def main():
        server = await asyncio.get_running_loop().create_server(Sink, "127.0.0.1", 0, backlog=1024)
        print(
            f"sink listening on http://127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True
        )
        await asyncio.sleep(max_seconds)

    asyncio.run(main())


def sink_count(url: str) -> int:
    import urllib.request

    with urllib.request.urlopen(url + "/count", timeout=5) as resp:
        return int(resp.read())


# ---- CPU accounting ------------------------------------------------------------------------------


def self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def group_cpu(session_id: int) -> float:
    """user+sys seconds of every live process in a session (workers.web --workers children too)."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session_id:  # field 6 (session) counted after the ")"
            total += (int(fields[11]) + int(fields[12])) / _TICKS
    return total


def pid_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


# ---- one run -------------------------------------------------------------------------------------


def load_dispatch(path: str | None):
    if path is None:
        from sandbox import dispatch

        return dispatch
    spec = importlib.util.spec_from_file_location(f"dispatch_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def queue_drs(state, url: str, checks: list[tuple[str, str]], count: int) -> int:
    """One DR per number, built and queued exactly like the Number Check handler does."""
    from sandbox.endpoints_api2 import _nc_dr, _nc_row

    now = time.time()
    queued = 0
    for job_id, request_id in checks:
        for n in range(1, NUMBERS_PER_CHECK + 1):
            if queued == count:
                return queued
            row = _nc_row(f"{request_id}-{n:06d}", job_id, f"659100{n:04d}", 1, now)
            state.queue_callback("number-check", url, _nc_dr(state, row), signed=False)
            queued += 1
    return queued


def one_run(
    module,
    *,
    dr_url: str,
    checks,
    count: int,
    seconds: float,
    connections: int | None,
    receiver_sid: int | None,
    redis_pid: int | None,
) -> dict:
    from sandbox.state import SandboxConfig, SandboxState

    # Every DR due at once; a failed attempt is retried after 1 s so a hiccup shows, not hides.
    state = SandboxState(
        SandboxConfig(
            callback_delay_s=0.0,
            callback_jitter_s=0.0,
            callback_retry_s=1.0,
            callback_retry_window_s=60.0,
        )
    )
    queued = queue_drs(state, dr_url, checks, count)
    if connections and hasattr(module, "CONNECTIONS_PER_ORIGIN"):
        module.CONNECTIONS_PER_ORIGIN = connections
    threads_before = set(threading.enumerate())
    dispatcher = module.CallbackDispatcher(state)
    rcv0 = group_cpu(receiver_sid) if receiver_sid else 0.0
    red0 = pid_cpu(redis_pid) if redis_pid else 0.0
    cpu0, t0 = self_cpu(), time.perf_counter()
    dispatcher.start()
    deadline = t0 + seconds
    cb = state.callbacks
    while cb["delivered"] + cb["expired"] < queued and time.perf_counter() < deadline:
        time.sleep(0.005)
    elapsed, cpu = time.perf_counter() - t0, self_cpu() - cpu0
    rcv = group_cpu(receiver_sid) - rcv0 if receiver_sid else 0.0
    red = pid_cpu(redis_pid) - red0 if redis_pid else 0.0
    t_stop = time.perf_counter()
    dispatcher.stop()
    stop_s = time.perf_counter() - t_stop
    time.sleep(0.05)
    leaked = [t.name for t in threading.enumerate() if t not in threads_before and t.is_alive()]
    stats = dict(state.callbacks)
    delivered = stats["delivered"]
    return {
        "queued": queued,
        "delivered": delivered,
        "elapsed": elapsed,
        "rate": delivered / elapsed,
        "cpu_per_k": cpu / max(delivered, 1) * 1000,
        "receiver_cpu_per_k": rcv / max(delivered, 1) * 1000,
        "redis_cpu_per_k": red / max(delivered, 1) * 1000,
        "stats": stats,
        "stop_s": stop_s,
        "leaked": leaked,
        "complete": delivered == queued,
    }


def fmt(name: str, r: dict) -> str:
    s = r["stats"]
    extra = (
        f"; receiver {r['receiver_cpu_per_k']:.3f}s, redis {r['redis_cpu_per_k']:.3f}s CPU/1k"
        if r["receiver_cpu_per_k"]
        else ""
    )
    return (
        f"  {name:9s} {r['delivered']:>7,} delivered in {r['elapsed']:6.2f}s = "
        f"{r['rate']:>7,.0f}/s; sender CPU {r['cpu_per_k']:.3f}s/1k{extra}; "
        f"attempts {s['attempts']} failed {s['failed_attempts']}"
        f"{'' if r['complete'] else '  INCOMPLETE'}; stop {r['stop_s'] * 1000:.0f} ms"
        f"{'; leaked threads ' + str(r['leaked']) if r['leaked'] else ''}"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=30_000, help="callbacks per run")
    p.add_argument("--runs", type=int, default=1)
    p.add_argument(
        "--seconds",
        type=float,
        default=HARD_STOP_S,
        help=f"time cap of each run (<= {HARD_STOP_S:.0f})",
    )
    p.add_argument(
        "--baseline", help="another dispatch.py to run alternately with the current one (first)"
    )
    p.add_argument("--only-baseline", action="store_true", help="run only --baseline")
    p.add_argument("--receiver", choices=("real", "sink"), default="real")
    p.add_argument(
        "--receiver-workers", type=int, default=1, help="receiver processes (workers.web --workers)"
    )
    p.add_argument(
        "--connections",
        type=int,
        default=None,
        help="override CONNECTIONS_PER_ORIGIN if the dispatcher has it",
    )
    p.add_argument("--serve-sink", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_sink:
        serve_sink(SINK_MAX_S)
        return 0
    seconds = min(args.seconds, HARD_STOP_S)

    import redis

    from nxjobs.store import RecordStore
    from sandbox.accounts import sandbox_env
    from workers.devstack import (
        RedisServer,
        ServiceProcess,
        free_port,
        project_root,
        start_callbacks,
    )

    contenders = []
    if args.baseline:
        contenders.append(("baseline", load_dispatch(args.baseline)))
    if not args.only_baseline:
        contenders.append(("current", load_dispatch(None)))
    results: dict[str, list[dict]] = {name: [] for name, _ in contenders}
    n_checks = -(-args.count // NUMBERS_PER_CHECK)

    if args.receiver == "sink":
        sink = ServiceProcess(
            "sink",
            [sys.executable, str(Path(__file__).resolve()), "--serve-sink"],
            cwd=project_root(),
        ).start()
        try:
            url = (
                sink.wait_for_log("sink listening on ", 20)
                .split("sink listening on ", 1)[1]
                .strip()
            )
            print(f"receiver: idle sink {url} (no Redis); cpus={os.cpu_count()}")
            for _run in range(args.runs):
                for name, module in contenders:
                    before = sink_count(url)
                    checks = [(uuid.uuid4().hex, uuid.uuid4().hex) for _ in range(n_checks)]
                    r = one_run(
                        module,
                        dr_url=f"{url}/dr/{TOKEN}",
                        checks=checks,
                        count=args.count,
                        seconds=seconds,
                        connections=args.connections,
                        receiver_sid=sink.proc.pid,
                        redis_pid=None,
                    )
                    received = sink_count(url) - before
                    r["verified"] = received == r["stats"]["attempts"] and r["complete"]
                    results[name].append(r)
                    print(fmt(name, r) + f"; sink received {received}")
        finally:
            sink.stop()
            sink.cleanup()
    else:
        with RedisServer() as server:
            env = {
                **os.environ,
                **sandbox_env("http://127.0.0.1:9"),
                "NXJOBS_REDIS_URL": server.url,
                "NXJOBS_CALLBACKS__TOKEN": TOKEN,
            }
            extra = ("--log-level", "warning")
            port = 0
            if args.receiver_workers > 1:
                # With --workers, workers.web prints the port it was given, so give it a real one.
                extra += ("--workers", str(args.receiver_workers))
                port = free_port()
            receiver, url = start_callbacks(env, port=port, extra=extra)
            try:
                client = redis.Redis.from_url(server.url, decode_responses=True)
                store = RecordStore(client)
                print(
                    f"receiver: {url} ({args.receiver_workers} process(es), "
                    f"pid {receiver.proc.pid}), "
                    f"redis pid {server.pid}; cpus={os.cpu_count()}",
                    flush=True,
                )
                for _run in range(args.runs):
                    for name, module in contenders:
                        t = time.perf_counter()
                        checks, _, _ = build_jobs(store, n_checks, 0, 0)
                        setup_s = time.perf_counter() - t
                        jobs = [j for j, _ in checks]
                        before = stored_callbacks(client, jobs)
                        r = one_run(
                            module,
                            dr_url=f"{url}/callbacks/number-check/{TOKEN}",
                            checks=checks,
                            count=args.count,
                            seconds=seconds,
                            connections=args.connections,
                            receiver_sid=receiver.proc.pid,
                            redis_pid=server.pid,
                        )
                        stored = stored_callbacks(client, jobs) - before
                        r["verified"] = stored == r["delivered"] and r["complete"]
                        results[name].append(r)
                        print(
                            fmt(name, r) + f"; stored {stored} "
                            f"({'OK' if stored == r['delivered'] else 'MISMATCH'}); "
                            f"setup {setup_s:.1f}s"
                        )
                if args.receiver_workers == 1:  # (with several, /healthz answers for one of them)
                    with urllib.request.urlopen(url + "/healthz", timeout=5) as resp:
                        counts = json.loads(resp.read())["counts"]
                    print(
                        f"receiver: {counts.get('callbacks_applied', 0):,} callbacks in "
                        f"{counts.get('redis_calls', 0):,} Redis calls",
                        flush=True,
                    )
            finally:
                receiver.stop()
                receiver.cleanup()

    print(
        f"medians of {args.runs} run(s), {args.count:,} callbacks each, receiver={args.receiver}"
        f"{'' if args.receiver == 'sink' else f' x{args.receiver_workers}'}:"
    )
    ok = True
    for name, rs in results.items():
        ok &= all(r["verified"] and not r["leaked"] for r in rs)
        line = (
            f"  {name:9s} {statistics.median(r['rate'] for r in rs):>7,.0f} callbacks/s, "
            "sender CPU "
            f"{statistics.median(r['cpu_per_k'] for r in rs):.3f}s per 1,000"
        )
        if args.receiver == "real":
            line += (
                f", receiver CPU "
                f"{statistics.median(r['receiver_cpu_per_k'] for r in rs):.3f}s per 1,000"
            )
        runs = ", ".join(f"{r['rate']:,.0f}" for r in rs)
        print(line + f"  (runs: {runs})")
    print(
        "verified: every run complete, counts match, no leaked threads"
        if ok
        else "VERIFICATION FAILED"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
