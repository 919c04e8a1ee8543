"""Attacks on the callback receiver's HTTP server, on loopback: what each costs the receiver.

    .venv/bin/python bench/receiver_attacks.py [--short] [--only NAME ...]
        [--receiver-root DIR ...] [--nofile 1024] [--env KEY=VALUE ...]

Starts a private redis-server, then for each attack a fresh receiver (`python -m
workers.web`, one process, this venv's Python, run from --receiver-root: give
it twice, e.g. an old checkout and this tree, for a before/after table), with
its descriptor limit set to --nofile (soft and hard). Each attack runs at full
size (--short: a fraction), bounded in bytes, sockets and seconds, and reports:

- what the attacker saw (the answer it got, how much it could send);
- receiver RSS before / after / peak (sampled every 50 ms while it runs);
- open descriptors (/proc/<pid>/fd) before / after / peak;
- Redis used_memory before / after;
- whether a legitimate callback (a Number Check result with the right token,
  on a new connection) was answered while the attack held its ground, and after.

"After" is read once the attacker closed its sockets and the receiver had a
second to notice. To add an attack, write `def name(run: Run) -> str` (returns
what the attacker saw; calls `run.legit_during()` while the attack is in place)
and append it to ATTACKS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TOKEN = "bench-attack-token-0123456789abcdef"
MB = 1024 * 1024
LEGIT_TIMEOUT_S = 5.0


# ---- the receiver under attack -------------------------------------------------------------------


class Receiver:
    """`python -m workers.web` from `root`, its descriptor limit `nofile`; sampled while
    attacked."""

    def __init__(self, root: Path, redis_url: str, nofile: int, env: dict[str, str]):
        from sandbox.accounts import sandbox_env

        self.log = tempfile.NamedTemporaryFile(
            prefix="nxjobs-attack-receiver-", suffix=".log", delete=False
        )
        full_env = {
            **os.environ,
            **sandbox_env("http://127.0.0.1:9"),
            "NXJOBS_REDIS_URL": redis_url,
            "NXJOBS_CALLBACKS__TOKEN": TOKEN,
            **env,
        }

        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "workers.web", "--port", "0", "--log-level", "warning"],
            cwd=root,
            env=full_env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=limit,
        )
        self.pid = self.proc.pid
        self.port = self._wait_listening()
        self._wait_ready()
        self.peak_rss = self.peak_fds = 0
        self._sampling = False
        self._sampler: threading.Thread | None = None

    def _wait_listening(self, timeout_s: float = 30) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text = Path(self.log.name).read_text(errors="replace")
            if "callbacks listening on " in text:
                return int(text.split("callbacks listening on ", 1)[1].split()[0].rsplit(":", 1)[1])
            if self.proc.poll() is not None:
                raise RuntimeError(f"receiver exited {self.proc.returncode}:\n{text[-2000:]}")
            time.sleep(0.05)
        raise RuntimeError("receiver did not start")

    def _wait_ready(self, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    if s.recv(64).startswith(b"HTTP/1.1 200"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("receiver not ready")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss_mb(self) -> float:
        try:
            with open(f"/proc/{self.pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return float("nan")

    def fds(self) -> int:
        try:
            return len(os.listdir(f"/proc/{self.pid}/fd"))
        except OSError:
            return -1

    def start_sampling(self) -> None:
        self.peak_rss, self.peak_fds = self.rss_mb(), self.fds()
        self._sampling = True

        def sample() -> None:
            while self._sampling:
                self.peak_rss = max(self.peak_rss, self.rss_mb())
                self.peak_fds = max(self.peak_fds, self.fds())
                time.sleep(0.05)

        self._sampler = threading.Thread(target=sample, daemon=True)
        self._sampler.start()

    def stop_sampling(self) -> None:
        self._sampling = False
        if self._sampler is not None:
            self._sampler.join(2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
        os.unlink(self.log.name)


# ---- one attack's run ----------------------------------------------------------------------------


@dataclass
class Result:
    attack: str
    root: str
    saw: str = ""
    rss: tuple[float, float, float] = (0, 0, 0)  # before, after, peak (MB)
    fds: tuple[int, int, int] = (0, 0, 0)
    redis: tuple[int, int] = (0, 0)  # used_memory before, after (bytes)
    legit_during: str = "-"
    legit_after: str = "-"
    seconds: float = 0.0


@dataclass
class Run:
    receiver: Receiver
    short: bool
    nofile: int
    result: Result
    redis: object = None  # a client (decode_responses=True) of the receiver's Redis
    sockets: list[socket.socket] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.receiver.port

    def size(self, full: int, short: int) -> int:
        return short if self.short else full

    def connect(self, timeout: float = 5) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        self.sockets.append(s)
        return s

    def legit_during(self) -> None:
        self.result.legit_during = legit_callback(self.port)

    def close_all(self) -> None:
        for s in self.sockets:
            try:
                s.close()
            except OSError:
                pass
        self.sockets.clear()


def legit_callback(port: int) -> str:
    """A valid callback on a new connection: '200 in 3 ms', or why there was no answer."""
    body = json.dumps(
        {
            "requestId": uuid.uuid4().hex + "-000001",
            "code": 0,
            "phone": "6591000001",
            "batchNo": uuid.uuid4().hex,
        }
    ).encode()
    raw = (
        f"POST /callbacks/number-check/{TOKEN} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    t0 = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=LEGIT_TIMEOUT_S) as s:
            s.sendall(raw)
            data = b""
            while b"\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    return "closed, no answer"
                data += chunk
    except TimeoutError:
        return f"no answer in {LEGIT_TIMEOUT_S:.0f} s"
    except OSError as exc:
        return f"{type(exc).__name__}"
    return f"{data.split()[1].decode()} in {(time.monotonic() - t0) * 1000:.0f} ms"


def read_answer(s: socket.socket, timeout: float = 5) -> str:
    """The status line's code of the next answer on `s`, or what happened instead."""
    s.settimeout(timeout)
    data = b""
    try:
        while b"\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                return "closed, no answer"
            data += chunk
    except TimeoutError:
        return f"no answer in {timeout:.0f} s"
    except ConnectionResetError:
        return "reset, no answer"
    return data.split()[1].decode()


def send_until_stalled(
    s: socket.socket, data: bytes, *, stall_s: float = 3.0, max_s: float = 30.0
) -> int:
    """Non-blocking sends of `data`; stops when done, when nothing was taken for `stall_s`, or at
    `max_s`."""
    s.setblocking(False)
    view, sent = memoryview(data), 0
    t0 = progress = time.monotonic()
    try:
        while (
            sent < len(data)
            and time.monotonic() - t0 < max_s
            and time.monotonic() - progress < stall_s
        ):
            try:
                sent += s.send(view[sent : sent + 256 * 1024])
                progress = time.monotonic()
            except BlockingIOError:
                select.select([], [s], [], 0.05)
    except (BrokenPipeError, ConnectionResetError):
        pass
    s.setblocking(True)
    return sent


def _mb(n: int) -> str:
    return f"{n / MB:.1f} MB" if n >= MB else f"{n / 1024:.0f} KB"


# ---- the attacks ---------------------------------------------------------------------------------

CHUNKED = (
    b"POST /callbacks/number-check/" + TOKEN.encode() + b" HTTP/1.1\r\nHost: x\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)


def _flood(run: Run, payload: bytes) -> str:
    s = run.connect()
    sent = send_until_stalled(s, payload)
    answer = read_answer(s)
    run.legit_during()
    return f"{answer}; sent {_mb(sent)} of {_mb(len(payload))}"


def trailer_flood(run: Run) -> str:
    """Trailer fields after the last chunk, each of another name, 16 MB of them."""
    value = b"t" * 40
    count = run.size(16 * MB, 1 * MB) // (len(value) + 22)
    fields = b"".join(b"X-Trailer-%08d: %s\r\n" % (i, value) for i in range(count))
    return _flood(run, CHUNKED + b"0\r\n" + fields)


def trailer_value(run: Run) -> str:
    """One trailer field whose value never ends (16 MB)."""
    return _flood(run, CHUNKED + b"0\r\nX-Trailer: " + b"v" * run.size(16 * MB, 1 * MB))


def chunk_extension(run: Run) -> str:
    """One chunk extension that never ends (16 MB)."""
    return _flood(run, CHUNKED + b"1;ext=" + b"e" * run.size(16 * MB, 1 * MB))


def tiny_chunks(run: Run) -> str:
    """16 MB of one-byte chunks with extensions: framing, next to no body."""
    chunk = b"1;e=" + b"x" * 20 + b"\r\nx\r\n"
    return _flood(run, CHUNKED + chunk * (run.size(16 * MB, 1 * MB) // len(chunk)))


def pipelined_unread(run: Run) -> str:
    """300 000 pipelined requests on one connection whose answers are never read."""
    count = run.size(300_000, 30_000)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", run.port))
    run.sockets.append(s)
    burst = b"GET /nothing-here HTTP/1.1\r\nHost: x\r\n\r\n" * count
    sent = send_until_stalled(s, burst, stall_s=2.0)
    time.sleep(1.0)
    run.legit_during()
    return (
        f"sent {sent // (len(burst) // count):,} of {count:,} requests ({_mb(sent)}), read nothing"
    )


def idle_sockets(run: Run) -> str:
    """1 000 connections that never send a byte."""
    count, opened, failed = run.size(1000, 200), 0, ""
    for _ in range(count):
        try:
            run.connect()
            opened += 1
        except OSError as exc:
            failed = f", then {type(exc).__name__}"
            break
    time.sleep(0.5)
    run.legit_during()
    closed = sum(1 for s in run.sockets if _closed(s))
    return f"opened {opened}{failed}; {closed} closed by the receiver"


def idle_past_the_fd_limit(run: Run) -> str:
    """More idle connections than the receiver has descriptors (--nofile + 100)."""
    count, opened = run.nofile + 100, 0
    for _ in range(count):
        try:
            run.connect(timeout=2)
            opened += 1
        except OSError:
            break
    time.sleep(0.5)
    run.legit_during()
    closed = sum(1 for s in run.sockets if _closed(s))
    return f"opened {opened} of {count}; {closed} closed by the receiver"


def _closed(s: socket.socket) -> bool:
    try:
        s.setblocking(False)
        return s.recv(65536) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _trickle(run: Run, first: bytes, byte: bytes, count: int, seconds: float) -> str:
    opened = 0
    for _ in range(count):
        try:
            run.connect().sendall(first)
            opened += 1
        except OSError:
            break
    t0, legit_done, closed = time.monotonic(), False, set()
    while time.monotonic() - t0 < seconds:
        for i, s in enumerate(run.sockets):
            if i in closed:
                continue
            try:
                s.send(byte)
            except OSError:
                closed.add(i)
        if not legit_done and time.monotonic() - t0 > 2:
            run.legit_during()
            legit_done = True
        time.sleep(0.5)
    answers: dict[str, int] = {}
    for i, s in enumerate(run.sockets):
        s.setblocking(False)
        try:
            data = s.recv(65536)
            key = data.split()[1].decode() if data.startswith(b"HTTP/") else "closed"
        except BlockingIOError:
            key = "open" if i not in closed else "closed"
        except OSError:
            key = "closed"
        answers[key] = answers.get(key, 0) + 1
    return f"{opened} trickling {seconds:.0f} s: " + ", ".join(
        f"{v} {k}" for k, v in sorted(answers.items())
    )


def slowloris_heads(run: Run) -> str:
    """1 000 connections sending a head one byte every 0.5 s (longer than the default head
    timeout)."""
    return _trickle(
        run,
        b"POST /callbacks/number-check/" + TOKEN.encode() + b" HTTP/1.1\r\nHost: x\r\nX-Slow: ",
        b"a",
        run.size(1000, 100),
        run.size(13, 4),
    )


def slowloris_bodies(run: Run) -> str:
    """1 000 connections sending a body one byte every 0.5 s (longer than the default request
    timeout)."""
    head = (
        b"POST /callbacks/number-check/" + TOKEN.encode() + b" HTTP/1.1\r\nHost: x\r\n"
        b"Content-Length: 60000\r\n\r\n"
    )
    return _trickle(run, head, b"{", run.size(1000, 100), run.size(33, 4))


# ---- attacks by someone who holds the URL token (or replays a signed callback) -------------------
# Each works through real HTTP on the receiver; the job records they aim at are written with this
# tree's record store, as a worker would have left them.


def _session():
    import requests

    return requests.Session()


def _post(session, port: int, path: str, body: dict) -> int:
    return session.post(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        timeout=10,
        headers={"Content-Type": "application/json"},
    ).status_code


def _check_job(run: Run, phones: list[str]) -> tuple[str, str]:
    from nxjobs import correlate
    from nxjobs.jobs import validate_payload
    from nxjobs.records import JobState
    from nxjobs.store import RecordStore

    store = RecordStore(run.redis)
    job_id, request_id = uuid.uuid4().hex, uuid.uuid4().hex
    payload = validate_payload("number-check", {"phones": phones})
    store.create(
        job_id, "number-check", {}, expect=correlate.on_enqueue("number-check", job_id, payload)
    )
    store.transition(job_id, JobState.RUNNING)
    store.transition(
        job_id,
        JobState.SUBMITTED,
        result={
            "requestId": request_id,
            "batchNo": job_id,
            "numbers": len(phones),
            "failNumber": [],
        },
    )
    return job_id, request_id


def _dr(request_id: str, n: int, phone: str, batch_no: str, pad: int = 0) -> dict:
    body = {
        "requestId": f"{request_id}-{n:06d}",
        "code": 0,
        "message": "success",
        "batchNo": batch_no,
        "phone": phone,
        "data": {"numberType": "mobile", "country": "SG"},
    }
    if pad:
        body["pad"] = "x" * pad
    return body


NC = f"/callbacks/number-check/{TOKEN}"
PHONES = ["6591000001", "6591000002", "6591000003"]


def forged_completion(run: Run) -> str:
    """Three DRs with a job's batchNo and numbers, but request ids it never got."""
    job_id, _ = _check_job(run, PHONES)
    forged = uuid.uuid4().hex
    with _session() as s:
        codes = [_post(s, run.port, NC, _dr(forged, n, p, job_id)) for n, p in enumerate(PHONES, 1)]
    run.legit_during()
    return f"answers {sorted(set(codes))}; job {run.redis.hget(f'nxjobs:job:{job_id}', 'state')}"


def mixed_job_ids(run: Run) -> str:
    """A DR with job B's requestId and job A's batchNo: which job takes it?"""
    job_a, _ = _check_job(run, PHONES)
    job_b, request_b = _check_job(run, PHONES)
    with _session() as s:
        _post(s, run.port, NC, _dr(request_b, 1, PHONES[0], job_a))
    run.legit_during()
    done = [run.redis.hget(f"nxjobs:job:{j}", "callbacks_done") or "0" for j in (job_a, job_b)]
    return f"results taken: A {done[0]}, B {done[1]}"


def completed_job_growth(run: Run) -> str:
    """A completed 3-number check, then 200 more DRs with its ids (30 KB each)."""
    job_id, request_id = _check_job(run, PHONES)
    with _session() as s:
        for n, p in enumerate(PHONES, 1):
            _post(s, run.port, NC, _dr(request_id, n, p, job_id))
        size0 = run.redis.memory_usage(f"nxjobs:job:{job_id}")
        for n in range(10, 10 + run.size(200, 50)):
            _post(s, run.port, NC, _dr(request_id, n, PHONES[n % 3], job_id, pad=30_000))
    run.legit_during()
    return f"job hash {_mb(size0)} -> {_mb(run.redis.memory_usage(f'nxjobs:job:{job_id}'))}"


def forged_cdr_for_ambiguous_call(run: Run) -> str:
    """A CDR with the orderid of a call whose makecall answer was lost (failed `ambiguous`)."""
    from nxjobs import correlate, keys
    from nxjobs.jobs import validate_payload
    from nxjobs.records import JobError, JobState
    from nxjobs.store import RecordStore

    store = RecordStore(run.redis)
    job_id = uuid.uuid4().hex
    store.create(
        job_id,
        "call",
        {},
        expect=correlate.on_enqueue(
            "call", job_id, validate_payload("call", {"phone": "8613800138000"})
        ),
    )
    store.transition(job_id, JobState.RUNNING)
    store.transition(
        job_id,
        JobState.FAILED,
        error=JobError(code="ambiguous", message="answer lost", retryable=False).model_dump(),
    )
    run.redis.zadd(keys.RECONCILE, {job_id: time.time()})
    with _session() as s:
        _post(
            s,
            run.port,
            f"/callbacks/agent/cdr/{TOKEN}",
            {
                "sessionid": str(uuid.uuid4()),
                "orderid": job_id,
                "phone": "8613800138000",
                "duration": 30,
            },
        )
    run.legit_during()
    due = run.redis.zscore(keys.RECONCILE, job_id)
    lookup = (
        "no lookup"
        if due is None
        else "lookup due now"
        if due <= time.time()
        else "lookup not due yet"
    )
    return f"job {run.redis.hget(keys.job(job_id), 'state')}, {lookup}"


def _unmatched(run: Run) -> str:
    from nxjobs import keys

    kind = run.redis.type(keys.CALLBACKS_UNMATCHED)
    count = (
        run.redis.llen(keys.CALLBACKS_UNMATCHED)
        if kind == "list"
        else run.redis.zcard(keys.CALLBACKS_UNMATCHED)
    )
    return f"unmatched entries {count}"


def unmatched_flood(run: Run) -> str:
    """Unknown DRs of 64 KB each (just under the body limit), all distinct."""
    n = run.size(10_000, 500)
    with _session() as s:
        codes = {
            _post(
                s, run.port, NC, _dr(uuid.uuid4().hex, 1, PHONES[0], uuid.uuid4().hex, pad=63_000)
            )
            for _ in range(n)
        }
    run.legit_during()
    return f"{n} sent, answers {sorted(codes)}; {_unmatched(run)}"


def repeated_unknown(run: Run) -> str:
    """The same unknown callback 50 times."""
    body = _dr(uuid.uuid4().hex, 1, PHONES[0], uuid.uuid4().hex)
    with _session() as s:
        for _ in range(50):
            _post(s, run.port, NC, body)
    run.legit_during()
    return _unmatched(run)


def signed_replay(run: Run) -> str:
    """A signed Callbot task callback for an unknown task, the same request sent 20 times."""
    from nxjobs.client.signing import callbot_headers, serialize_body
    from sandbox import accounts

    text = serialize_body(
        {
            "callbackType": 1,
            "userTaskID": "unknown-" + uuid.uuid4().hex[:8],
            "taskID": "1",
            "taskStatus": 3,
            "taskStat": {"totalCall": 1},
        }
    )
    headers = {
        **callbot_headers(
            secret_key=accounts.CALLBOT_SECRET_KEY,
            uuid=accounts.CALLBOT_UUID,
            request_id=uuid.uuid4().hex,
            create_ts_s=int(time.time()),
            body_text=text,
        ),
        "Content-Type": "application/json",
    }
    with _session() as s:
        codes = {
            s.post(
                f"http://127.0.0.1:{run.port}/callbacks/callbot/task",
                data=text.encode(),
                headers=headers,
                timeout=10,
            ).status_code
            for _ in range(20)
        }
    run.legit_during()
    return f"answers {sorted(codes)}; {_unmatched(run)}"


ATTACKS: list[Callable[[Run], str]] = [
    trailer_flood,
    trailer_value,
    chunk_extension,
    tiny_chunks,
    pipelined_unread,
    idle_sockets,
    idle_past_the_fd_limit,
    slowloris_heads,
    slowloris_bodies,
    forged_completion,
    mixed_job_ids,
    completed_job_growth,
    forged_cdr_for_ambiguous_call,
    unmatched_flood,
    repeated_unknown,
    signed_replay,
]


# ---- running and reporting -----------------------------------------------------------------------


def redis_used_memory(client) -> int:
    return int(client.info("memory")["used_memory"])


def run_attack(attack: Callable[[Run], str], root: Path, redis_url: str, client, args) -> Result:
    import redis

    result = Result(attack.__name__, root.name or str(root))
    client.flushdb()  # each attack counts what it alone left in Redis
    receiver = Receiver(root, redis_url, args.nofile, dict(kv.split("=", 1) for kv in args.env))
    try:
        time.sleep(0.3)
        rss0, fds0, redis0 = receiver.rss_mb(), receiver.fds(), redis_used_memory(client)
        receiver.start_sampling()
        run = Run(
            receiver,
            args.short,
            args.nofile,
            result,
            redis.Redis.from_url(redis_url, decode_responses=True),
        )
        t0 = time.monotonic()
        try:
            result.saw = attack(run)
        except Exception as exc:  # an attack that breaks is reported, the others still run
            result.saw = f"attack failed: {type(exc).__name__}: {exc}"
        finally:
            run.close_all()
        result.seconds = time.monotonic() - t0
        time.sleep(1.0)
        receiver.stop_sampling()
        result.legit_after = legit_callback(receiver.port) if receiver.alive() else "receiver died"
        result.rss = (rss0, receiver.rss_mb(), receiver.peak_rss)
        result.fds = (fds0, receiver.fds(), receiver.peak_fds)
        result.redis = (redis0, redis_used_memory(client))
    finally:
        receiver.stop()
    return result


def print_results(results: list[Result]) -> None:
    headers = [
        "attack",
        "receiver",
        "attacker saw",
        "RSS MB before/after/peak",
        "fds before/after/peak",
        "Redis used_memory before/after",
        "legit during",
        "legit after",
        "s",
    ]
    rows = [
        [
            r.attack,
            r.root,
            r.saw,
            "{:.1f} / {:.1f} / {:.1f}".format(*r.rss),
            "{:d} / {:d} / {:d}".format(*r.fds),
            f"{_mb(r.redis[0])} / {_mb(r.redis[1])}",
            r.legit_during,
            r.legit_after,
            f"{r.seconds:.1f}",
        ]
        for r in results
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]

    def line(cells):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    print(line(headers))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(line(row))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--short", action="store_true", help="a fraction of each attack's size (a quick look)"
    )
    p.add_argument("--only", nargs="*", default=[], help="attack names to run (default: all)")
    p.add_argument(
        "--receiver-root",
        action="append",
        default=[],
        type=Path,
        help=(
            "a checkout to run `python -m workers.web` from (repeat to compare; default: this tree)"
        ),
    )
    p.add_argument(
        "--nofile", type=int, default=1024, help="the receiver's descriptor limit (soft and hard)"
    )
    p.add_argument(
        "--env", action="append", default=[], help="KEY=VALUE for the receiver (repeatable)"
    )
    args = p.parse_args()

    import redis

    from workers.devstack import RedisServer

    # The attacker needs more descriptors than the receiver is given.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    roots = [r.resolve() for r in args.receiver_root] or [ROOT]
    attacks = [a for a in ATTACKS if not args.only or a.__name__ in args.only]
    results: list[Result] = []
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        for attack in attacks:
            for root in roots:
                r = run_attack(attack, root, server.url, client, args)
                results.append(r)
                print(
                    f"{r.attack} [{r.root}]: {r.saw}; "
                    "RSS %.1f -> %.1f MB (peak %.1f); fds %d -> %d (peak %d); "
                    % (*r.rss, *r.fds)
                    + f"legit during: {r.legit_during}, after: {r.legit_after}",
                    flush=True,
                )
    print()
    print(
        f"{len(attacks)} attacks, {'short' if args.short else 'full'} sizes, "
        "receiver descriptor limit "
        f"{args.nofile}, cpus={os.cpu_count()}"
    )
    print_results(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
