"""Callback receiver benchmark: callbacks/s accepted by ONE receiver process, end to
end into the job records, and the p99 time from a callback to its record update.

    .venv/bin/python bench/callbacks.py [--seconds 8] [--connections 32] [--rate 1000]

Starts a private redis-server and the receiver (`python -m workers.web`, one
receiver process), creates submitted jobs straight in Redis (number checks of
10 numbers, callbot lists, calls), then drives real HTTP from this process
(asyncio, raw keep-alive sockets, prebuilt requests) with a mix of callback
types: 70 % Number Check DRs (token URL), 20 % signed Callbot call callbacks,
10 % Agent CDRs. Every callback is distinct (no duplicates), so each 2xx must
be one more entry in a job record; the script checks that the records hold
exactly as many callbacks as were accepted.

The receiver answers only after the Lua script stored the callback, so the
time from sending a callback to its 2xx is the time to the record update.

Phase 1 (throughput): closed loop on N connections for a bounded count/time.
Phase 2 (latency): open loop at a fixed rate, latency measured from each
request's scheduled send time (no coordinated omission); p50/p99/max.
Bounded: each phase stops after --seconds. Numbers depend on the machine
(the load generator, Redis and the receiver share its cores).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TOKEN = "bench-callback-token-0123456789abcdef"
NUMBERS_PER_CHECK = 10


def build_jobs(store, n_checks: int, n_lists: int, n_calls: int):
    """Submitted jobs in Redis, as the worker leaves them; returns their correlating ids."""
    from nxjobs import correlate
    from nxjobs.jobs import validate_payload
    from nxjobs.records import JobState

    checks, lists, calls = [], [], []
    phones = [str(6591000000 + i) for i in range(NUMBERS_PER_CHECK)]
    nc_payload = validate_payload("number-check", {"phones": phones})
    for _ in range(n_checks):
        job_id, request_id = uuid.uuid4().hex, uuid.uuid4().hex
        store.create(
            job_id,
            "number-check",
            {},
            expect=correlate.on_enqueue("number-check", job_id, nc_payload),
        )
        store.transition(job_id, JobState.RUNNING)
        store.transition(
            job_id,
            JobState.SUBMITTED,
            result={
                "requestId": request_id,
                "batchNo": job_id,
                "numbers": NUMBERS_PER_CHECK,
                "failNumber": [],
            },
        )
        checks.append((job_id, request_id))
    cb_payload = validate_payload(
        "callbot-list",
        {"scene_id": "s", "task_name": "t", "contacts": [{"user_phone": "8613900139000"}]},
    )
    for _ in range(n_lists):
        job_id = uuid.uuid4().hex
        store.create(
            job_id,
            "callbot-list",
            {},
            expect=correlate.on_enqueue("callbot-list", job_id, cb_payload),
        )
        store.transition(job_id, JobState.RUNNING)
        store.transition(job_id, JobState.SUBMITTED, result={"userTaskID": job_id, "taskID": "1"})
        lists.append(job_id)
    call_payload = validate_payload("call", {"phone": "8613800138000"})
    for _ in range(n_calls):
        job_id = uuid.uuid4().hex
        store.create(job_id, "call", {}, expect=correlate.on_enqueue("call", job_id, call_payload))
        store.transition(job_id, JobState.RUNNING)
        store.transition(
            job_id, JobState.SUBMITTED, result={"orderid": job_id, "sessionid": str(uuid.uuid4())}
        )
        calls.append(job_id)
    return checks, lists, calls


def build_requests(host: str, checks, lists, calls, count: int) -> list[bytes]:
    """`count` distinct raw HTTP requests: 70 % DRs, 20 % signed call callbacks, 10 % CDRs."""
    from nxjobs.client.signing import callbot_headers, serialize_body
    from sandbox import accounts

    out: list[bytes] = []
    now = int(time.time())
    dr_slots = [(job, rid, n) for job, rid in checks for n in range(1, NUMBERS_PER_CHECK + 1)]
    i_dr = i_call = i_cdr = 0

    def raw(path: str, body: dict, headers: dict[str, str] | None = None) -> bytes:
        text = serialize_body(body)
        head = [
            f"POST {path} HTTP/1.1",
            f"Host: {host}",
            "Content-Type: application/json",
            f"Content-Length: {len(text.encode())}",
        ]
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        return ("\r\n".join(head) + "\r\n\r\n").encode() + text.encode()

    while len(out) < count:
        slot = len(out) % 10
        if slot < 7 and i_dr < len(dr_slots):
            job, rid, n = dr_slots[i_dr]
            i_dr += 1
            body = {
                "requestId": f"{rid}-{n:06d}",
                "code": 0,
                "message": "success",
                "batchNo": job,
                "phone": f"65910000{n:02d}",
                "data": {"numberType": "mobile", "operator": "Bench Mobile", "country": "SG"},
                "cost": {"price": 0.005, "currency": "USD"},
            }
            out.append(raw(f"/callbacks/number-check/{TOKEN}", body))
        elif slot < 9:
            job = lists[i_call % len(lists)]
            i_call += 1
            body = {
                "callbackType": 3,
                "orderID": f"{job}-0",
                "userPhone": "8613900139000",
                "userName": "B",
                "sceneID": "s",
                "userTaskID": job,
                "taskID": "1",
                "finish": True,
                "other": "",
                "callInfoDetail": {
                    "callID": uuid.uuid4().hex,
                    "callStatus": 1,
                    "callDuration": 30,
                    "hangupCause": "NORMAL_CLEARING",
                },
            }
            text = serialize_body(body)
            headers = callbot_headers(
                secret_key=accounts.CALLBOT_SECRET_KEY,
                uuid=accounts.CALLBOT_UUID,
                request_id=uuid.uuid4().hex,
                create_ts_s=now,
                body_text=text,
            )
            out.append(raw("/callbacks/callbot/call", body, headers))
        else:
            job = calls[i_cdr % len(calls)]
            i_cdr += 1
            body = {
                "sessionid": str(uuid.uuid4()),
                "orderid": job,
                "phone": "8613800138000",
                "duration": 30,
                "direction": 1,
                "hangup_cause": "NORMAL_CLEARING",
                "start_time": str(now),
            }
            out.append(raw(f"/callbacks/agent/cdr/{TOKEN}", body))
    return out


class Conn:
    """One keep-alive HTTP/1.1 connection; `send` returns the status code."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    async def send(self, request: bytes) -> int:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if length:
            await self.reader.readexactly(length)
        return status


async def connect(host: str, port: int, n: int) -> list[Conn]:
    return [Conn(*await asyncio.open_connection(host, port)) for _ in range(n)]


async def closed_loop(host, port, reqs: list[bytes], connections: int, seconds: float):
    conns = await connect(host, port, connections)
    it = iter(reqs)
    lat: list[float] = []
    statuses: dict[int, int] = {}
    stop_at = time.perf_counter() + seconds

    async def worker(conn: Conn):
        for req in it:
            if time.perf_counter() > stop_at:
                return
            t0 = time.perf_counter()
            status = await conn.send(req)
            lat.append(time.perf_counter() - t0)
            statuses[status] = statuses.get(status, 0) + 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    elapsed = time.perf_counter() - started
    for c in conns:
        c.writer.close()
    return elapsed, lat, statuses


async def open_loop(host, port, reqs: list[bytes], connections: int, rate: float, seconds: float):
    conns = await connect(host, port, connections)
    free: asyncio.Queue[Conn] = asyncio.Queue()
    for c in conns:
        free.put_nowait(c)
    lat: list[float] = []
    statuses: dict[int, int] = {}
    n = min(len(reqs), int(rate * seconds))
    start = time.perf_counter() + 0.05

    async def one(i: int, req: bytes):
        scheduled = start + i / rate
        conn = await free.get()
        status = await conn.send(req)
        lat.append(time.perf_counter() - scheduled)  # from the scheduled send: queueing counts
        statuses[status] = statuses.get(status, 0) + 1
        free.put_nowait(conn)

    tasks = []
    for i in range(n):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, reqs[i])))
    await asyncio.gather(*tasks)
    for c in conns:
        c.writer.close()
    return n, lat, statuses


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))] * 1000


def stored_callbacks(client, job_ids: list[str]) -> int:
    from nxjobs.store import RecordStore

    records = RecordStore(client).get_many(job_ids).values()
    return sum(len(record.callbacks) for record in records if record is not None)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=8.0, help="time cap of each phase")
    p.add_argument(
        "--count", type=int, default=24_000, help="callbacks in the throughput phase (cap)"
    )
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--rate", type=float, default=1000.0, help="callbacks/s in the latency phase")
    args = p.parse_args()

    import redis

    from nxjobs.store import RecordStore
    from sandbox.accounts import sandbox_env
    from workers.devstack import RedisServer, start_callbacks

    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    latency_n = int(args.rate * args.seconds)
    total = args.count + latency_n
    n_checks = int(total * 0.7 / NUMBERS_PER_CHECK) + 2
    with RedisServer() as server:
        env = {
            **os.environ,
            **sandbox_env("http://127.0.0.1:9"),
            "NXJOBS_REDIS_URL": server.url,
            "NXJOBS_CALLBACKS__TOKEN": TOKEN,
        }
        receiver, url = start_callbacks(env, extra=("--log-level", "warning"))
        try:
            client = redis.Redis.from_url(server.url, decode_responses=True)
            store = RecordStore(client)
            t0 = time.perf_counter()
            checks, lists, calls = build_jobs(store, n_checks, 200, 200)
            host, port = url.removeprefix("http://").split(":")
            reqs = build_requests(f"{host}:{port}", checks, lists, calls, total)
            jobs = [j for j, _ in checks] + lists + calls
            print(
                f"setup: {len(jobs)} submitted jobs, {total} distinct callbacks prebuilt "
                f"({time.perf_counter() - t0:.1f}s); receiver {url} (1 process); "
                f"cpus={os.cpu_count()}"
            )

            before = stored_callbacks(client, jobs)
            elapsed, lat, statuses = asyncio.run(
                closed_loop(host, int(port), reqs[: args.count], args.connections, args.seconds)
            )
            accepted = sum(v for k, v in statuses.items() if 200 <= k < 300)
            stored = stored_callbacks(client, jobs) - before
            print(
                f"throughput: {accepted} callbacks accepted in {elapsed:.2f}s = "
                f"{accepted / elapsed:,.0f}/s "
                f"on {args.connections} connections; statuses {statuses}"
            )
            print(
                f"  stored in job records: {stored} "
                f"(must equal accepted: {'OK' if stored == accepted else 'MISMATCH'})"
            )
            print(
                f"  latency under saturation: p50 {pct(lat, 50):.1f} ms  p99 {pct(lat, 99):.1f} ms"
            )

            before = stored_callbacks(client, jobs)
            n, lat2, statuses2 = asyncio.run(
                open_loop(
                    host, int(port), reqs[args.count :], args.connections, args.rate, args.seconds
                )
            )
            accepted2 = sum(v for k, v in statuses2.items() if 200 <= k < 300)
            stored2 = stored_callbacks(client, jobs) - before
            print(
                f"latency at {args.rate:,.0f}/s (open loop, {n} callbacks): "
                f"callback -> record updated "
                f"p50 {pct(lat2, 50):.1f} ms  p99 {pct(lat2, 99):.1f} ms  "
                f"max {max(lat2) * 1000:.1f} ms "
                f"(mean {statistics.mean(lat2) * 1000:.1f} ms); "
                f"accepted {accepted2}, stored {stored2}"
            )
            completed = sum(
                1 for j in jobs if client.hget(f"nxjobs:job:{j}", "state") == "completed"
            )
            print(f"jobs completed by these callbacks: {completed} of {len(jobs)}")
            # Exit 1 if any accepted callback is missing from the records (or any was refused).
            ok = (
                stored == accepted
                and stored2 == accepted2
                and set(statuses) | set(statuses2) <= {200}
            )
            return 0 if ok else 1
        finally:
            receiver.stop()
            receiver.cleanup()


if __name__ == "__main__":
    sys.exit(main())
