"""The callback receiver's HTTP layer against well-kept servers: per-request server CPU,
protocol behaviour and a few bounded attacks, each server in ONE process, ONE worker.

    .venv/bin/python bench/http_servers.py [--requests 50000] [--runs 3] [--connections 32]
        [--only nxjobs,uvicorn-httptools,...] [--skip-attacks] [--idle-window 35]
        [--client auto|wrk|python] [--markdown PATH]

Candidates (a candidate whose package is missing is skipped with a line saying
`pip install -e '.[bench]'`; one that fails to start is reported, the rest go on):

  nxjobs             nxjobs.callbacks.http.CallbackServer on uvloop, a minimal Handler
  uvicorn-httptools  uvicorn --http httptools --loop uvloop, a raw ASGI callable
  uvicorn-h11        the same with --http h11
  granian-asgi       granian --interface asgi --loop uvloop --http 1, 1 worker, 1 runtime thread
  granian-rsgi       the same with --interface rsgi
  hypercorn          hypercorn -k uvloop -w 0 (serves in the process it starts)

Every app answers a fixed 200 `{"code":0,"message":"success"}` after reading the
whole body (not parsing it); no Redis. Each server runs as a subprocess on a free
127.0.0.1 port with its defaults (plus no access log), started anew for each run.

1. Per-request CPU: N POSTs of a ~350-byte Number Check callback over C keep-alive
   connections (wrk with a Lua script when installed, else an asyncio client in this
   process), after a warm-up. The number is the server's CPU (utime+stime of its
   process tree from /proc/<pid>/stat, threads included) divided by the responses
   served; runs are interleaved across candidates; median and every run are printed.
   The server's CPU share of one core during the run shows whether the client or the
   server was the bottleneck.
2. Protocol probes, one connection each: HTTP/1.1 without Host, HTTP/0.9, HEAD,
   Expect: 100-continue, a 32 KiB and a 1 MiB header, a declared 100 MB body, PUT (405 + Allow),
   1,100 requests on one connection.
3. Attacks, on a fresh server each, bounded in bytes and seconds: (a) a chunked POST
   with 16 MiB of trailer fields after the last chunk; (a2) one chunk-size line with a
   16 MiB chunk extension; (b) up to 300,000 pipelined small POSTs on one connection
   whose answers are never read (at most 10 s); (c) 1,000 idle connections, then one
   legitimate POST on a new connection, then how long the server keeps the idle ones,
   a partial head and a stalled body (at most --idle-window s); (c-cap) the same 1,000
   idle connections against the server's connection cap set to 500, where it has one.
   For each: server RSS (sum of VmRSS) and descriptors before / peak / after, whether
   the server answered, and a legitimate POST on a new connection afterwards.

Loopback only. Results depend on the machine; the load client and the server share
its cores, which is why the CPU number is the server's own CPU, not throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import resource
import select
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
INSTALL_HINT = "pip install -e '.[bench]'"
PATH = "/callbacks/number-check?token=bench-callback-token-0123456789abcdef"
ANSWER = b'{"code":0,"message":"success"}'

# A Number Check callback as NXCloud sends it (~350 bytes).
NC_BODY = json.dumps(
    {
        "requestId": "9f1c2e4b7a6d4c0e8b3f5a2d1e0c9b8a-000001",
        "code": 0,
        "message": "success",
        "batchNo": "b1",
        "phone": "8613800000000",
        "data": {
            "numberType": "mobile",
            "operator": "China Mobile Communications Corporation",
            "country": "CN",
            "region": "Guangdong",
            "city": "Shenzhen",
            "status": "active",
            "ported": False,
            "roaming": False,
        },
        "cost": {"price": 0.001, "currency": "USD"},
        "createTs": 1764626244000,
    },
    separators=(",", ":"),
).encode()


def nc_request(host: str = "127.0.0.1") -> bytes:
    return (
        f"POST {PATH} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(NC_BODY)}\r\n\r\n"
    ).encode() + NC_BODY


# ---- the candidates' apps (written to a temp dir) ------------------------------------------------

NXJOBS_SERVER = """
import asyncio, dataclasses, json, signal, socket, sys
sys.path.insert(0, {repo!r})
import uvloop
from nxjobs.callbacks.http import CallbackServer, HttpLimits

BODY = {answer!r}


class Reply:
    __slots__ = ("status", "body", "headers")

    def __init__(self, status, body, headers=()):
        self.status, self.body, self.headers = status, body, headers


OK = Reply(200, BODY)
NOT_ALLOWED = Reply(405, b'{{"error":"method not allowed"}}', (("allow", "POST"),))


class Handler:
    max_body_bytes = 64 * 1024

    def handle(self, method, path, headers, body, respond):
        respond(OK if method in ("POST", "GET", "HEAD") else NOT_ALLOWED)

    def refused(self, status, reason):
        pass


def main():
    port = int(sys.argv[1])
    wanted = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {{}}
    names = {{f.name for f in dataclasses.fields(HttpLimits)}}
    limits = HttpLimits(**{{k: v for k, v in wanted.items() if k in names}})
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(2048)
    sock.setblocking(False)

    async def run():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await CallbackServer(Handler(), limits).serve(sock, stop)

    loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(run())
    finally:
        loop.close()


main()
"""

ASGI_APP = """
BODY = {answer!r}
OK_HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY))]
NOT_ALLOWED = b'{{"error":"method not allowed"}}'
NA_HEADERS = [(b"content-type", b"application/json"), (b"allow", b"POST"),
              (b"content-length", b"%d" % len(NOT_ALLOWED))]


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({{"type": "lifespan.startup.complete"}})
            elif message["type"] == "lifespan.shutdown":
                await send({{"type": "lifespan.shutdown.complete"}})
                return
    if scope["type"] != "http":
        return
    more = True
    while more:  # the whole body, as the receiver needs it; not parsed
        message = await receive()
        if message["type"] != "http.request":
            return
        more = message.get("more_body", False)
    if scope["method"] in ("POST", "GET", "HEAD"):
        await send({{"type": "http.response.start", "status": 200, "headers": OK_HEADERS}})
        await send({{"type": "http.response.body", "body": BODY}})
    else:
        await send({{"type": "http.response.start", "status": 405, "headers": NA_HEADERS}})
        await send({{"type": "http.response.body", "body": NOT_ALLOWED}})
"""

RSGI_APP = """
BODY = {answer!r}
OK_HEADERS = [("content-type", "application/json")]
NA_HEADERS = [("content-type", "application/json"), ("allow", "POST")]


async def app(scope, protocol):
    await protocol()  # the whole body; not parsed
    if scope.method in ("POST", "GET", "HEAD"):
        protocol.response_bytes(200, OK_HEADERS, BODY)
    else:
        protocol.response_bytes(405, NA_HEADERS, b'{{"error":"method not allowed"}}')
"""


@dataclasses.dataclass
class Candidate:
    name: str
    needs: tuple[str, ...]
    # (port, app_dir, options) -> argv; options: {"cap": N} for the connection-cap variant.
    argv: callable
    cap_option: str | None  # how its connection cap is set, for the report; None: it has none
    note: str = ""


def _nx_argv(port, d, opts):
    wanted = dict(opts.get("limits", {}))
    if "cap" in opts:
        wanted["max_connections"] = opts["cap"]
    return [sys.executable, str(d / "nx_server.py"), str(port), json.dumps(wanted)]


def _uvicorn_argv(http):
    def argv(port, d, opts):
        extra = ["--limit-concurrency", str(opts["cap"])] if "cap" in opts else []
        return [
            sys.executable,
            "-m",
            "uvicorn",
            "asgi_app:app",
            "--app-dir",
            str(d),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--http",
            http,
            "--no-access-log",
            "--lifespan",
            "off",
            "--log-level",
            "warning",
            *extra,
        ]

    return argv


def _granian_argv(interface):
    def argv(port, d, opts):
        extra = ["--backpressure", str(opts["cap"])] if "cap" in opts else []
        module = "asgi_app:app" if interface == "asgi" else "rsgi_app:app"
        return [
            sys.executable,
            "-m",
            "granian",
            "--interface",
            interface,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--runtime-threads",
            "1",
            "--loop",
            "uvloop",
            "--http",
            "1",
            "--no-ws",
            "--log-level",
            "warning",
            "--working-dir",
            str(d),
            *extra,
            module,
        ]

    return argv


def _hypercorn_argv(port, d, opts):
    return [
        sys.executable,
        "-m",
        "hypercorn",
        "-k",
        "uvloop",
        "-w",
        "0",
        "-b",
        f"127.0.0.1:{port}",
        "--log-level",
        "warning",
        "asgi_app:app",
    ]


def nx_limit_names() -> set[str]:
    try:
        from nxjobs.callbacks.http import HttpLimits
    except Exception:
        return set()
    return {f.name for f in dataclasses.fields(HttpLimits)}


def nx_has_cap() -> str | None:
    return "HttpLimits(max_connections=N)" if "max_connections" in nx_limit_names() else None


CANDIDATES = [
    Candidate("nxjobs", ("httptools", "uvloop"), _nx_argv, nx_has_cap()),
    Candidate(
        "uvicorn-httptools",
        ("uvicorn", "httptools", "uvloop"),
        _uvicorn_argv("httptools"),
        "--limit-concurrency N",
    ),
    Candidate(
        "uvicorn-h11", ("uvicorn", "h11", "uvloop"), _uvicorn_argv("h11"), "--limit-concurrency N"
    ),
    Candidate("granian-asgi", ("granian", "uvloop"), _granian_argv("asgi"), "--backpressure N"),
    Candidate("granian-rsgi", ("granian", "uvloop"), _granian_argv("rsgi"), "--backpressure N"),
    Candidate("hypercorn", ("hypercorn", "uvloop"), _hypercorn_argv, None),
]


def missing(c: Candidate) -> list[str]:
    return [m for m in c.needs if importlib.util.find_spec(m) is None]


# ---- /proc ---------------------------------------------------------------------------------------


def tree_pids(root: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, ()))
    return out


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
        except (OSError, IndexError, ValueError):
            pass
    return total / CLK_TCK


def rss_fds(pids: list[int]) -> tuple[int, int]:
    """Sum of VmRSS (KiB) and of open descriptors over `pids`."""
    rss = fds = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
                        break
            fds += len(os.listdir(f"/proc/{pid}/fd"))
        except (OSError, ValueError):
            pass
    return rss, fds


class Monitor(threading.Thread):
    """Samples the server tree's RSS and descriptors every 50 ms; keeps the peaks."""

    def __init__(self, root: int):
        super().__init__(daemon=True)
        self.root = root
        self.pids = tree_pids(root)
        self.before = rss_fds(self.pids)
        self.peak_rss, self.peak_fds = self.before
        self._halt = threading.Event()

    def run(self) -> None:
        n = 0
        while not self._halt.wait(0.05):
            n += 1
            if n % 20 == 0:
                self.pids = tree_pids(self.root)
            rss, fds = rss_fds(self.pids)
            self.peak_rss, self.peak_fds = max(self.peak_rss, rss), max(self.peak_fds, fds)

    def stop(self) -> tuple[int, int]:
        self._halt.set()
        self.join()
        after = rss_fds(tree_pids(self.root))
        self.peak_rss, self.peak_fds = max(self.peak_rss, after[0]), max(self.peak_fds, after[1])
        return after


# ---- servers -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


HTTP_PY = REPO / "nxjobs/callbacks/http.py"
# sha256[:12] of nxjobs/callbacks/http.py -> (first, last) time an nxjobs server was started on it.
# Another engineer may be editing it while this runs: the report says which versions were measured.
NX_VERSIONS: dict[str, list[str]] = {}


def http_py_digest() -> str:
    try:
        return hashlib.sha256(HTTP_PY.read_bytes()).hexdigest()[:12]
    except OSError:
        return "missing"


def loadavg() -> str:
    try:
        return open("/proc/loadavg").read().split()[0]
    except OSError:
        return "?"


class Server:
    def __init__(self, cand: Candidate, appdir: Path, opts: dict | None = None):
        if cand.name == "nxjobs":
            stamp = f"{datetime.datetime.now(datetime.UTC):%H:%M:%S}"
            NX_VERSIONS.setdefault(http_py_digest(), [stamp, stamp])[1] = stamp
        self.cand, self.port = cand, free_port()
        self.log = appdir / f"{cand.name}-{self.port}.log"
        self.argv = cand.argv(self.port, appdir, opts or {})
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=appdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid = self.proc.pid

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"exited with {self.proc.returncode}: {self.tail()}")
            status, _, _ = legit_post(self.port, 1.0)
            if status == 200:
                time.sleep(0.3)  # let worker processes settle (granian's are spawned)
                return
            time.sleep(0.1)
        raise RuntimeError(f"not answering after {timeout:.0f} s: {self.tail()}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self) -> str:
        try:
            return " | ".join(self.log.read_text(errors="replace").strip().splitlines()[-3:])[-400:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(8)
            except subprocess.TimeoutExpired:
                pass
        # Whatever is left of the group this server started (its own pid is the group id).
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass


# ---- small HTTP client pieces --------------------------------------------------------------------


def read_response(
    sock: socket.socket, deadline: float, head_request: bool = False, buf: bytes = b""
) -> tuple[int | None, dict, bytes, bytes]:
    """One response: (status, headers, body, bytes after it); status None on timeout/close."""

    def fill() -> bool:
        nonlocal buf
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except (TimeoutError, OSError):
            return False
        if not data:
            return False
        buf += data
        return True

    while b"\r\n\r\n" not in buf:
        if not fill():
            return None, {}, b"", buf
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    try:
        status = int(parts[1])
    except (IndexError, ValueError):
        return None, {}, b"", buf
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if status < 200 or head_request or status in (204, 304):
        return status, headers, b"", rest
    length = int(headers.get("content-length", "0") or 0)
    buf = rest
    while len(buf) < length:
        if not fill():
            break
    return status, headers, buf[:length], buf[length:]


def legit_post(port: int, timeout: float) -> tuple[int | None, float | None, str]:
    """One Number Check POST on a new connection: (status, ms, error)."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            s.sendall(nc_request())
            status, _, _, _ = read_response(s, deadline)
    except OSError as exc:
        return None, None, type(exc).__name__
    ms = (time.monotonic() - t0) * 1000
    return (status, ms, "") if status else (None, None, f"no answer in {timeout:g} s")


def exchange(port: int, data: bytes, timeout: float = 2.0, head_request: bool = False):
    """Send `data` on a new connection, read one response; also whether the server then closed."""
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except OSError:  # the server refused before taking all of it: its answer may be there
            pass
        status, headers, body, extra = read_response(s, deadline, head_request)
        closed = False
        if status is not None:
            s.settimeout(0.3)
            try:
                more = s.recv(65536)
                extra += more
                closed = not more
            except TimeoutError:
                pass
            except OSError:
                closed = True
        return status, headers, body, extra, closed


# ---- load ----------------------------------------------------------------------------------------

WRK_LUA = """
wrk.method = "POST"
wrk.path = "%s"
wrk.body = %s
wrk.headers["Content-Type"] = "application/json"
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) bad = 0 end
function response(status, headers, body)
  if status ~= 200 then bad = bad + 1 end
end
function done(summary, latency, requests)
  local b = 0
  for _, t in ipairs(threads) do b = b + t:get("bad") end
  io.write(string.format("BENCH responses=%%d bad=%%d\\n", summary.requests, b))
end
"""


def lua_string(b: bytes) -> str:
    return (
        '"'
        + "".join(f"\\{c:03d}" if c < 32 or c in (34, 92) or c > 126 else chr(c) for c in b)
        + '"'
    )


def load_wrk(port: int, seconds: float, conns: int, workdir: Path) -> tuple[int, int, str]:
    """wrk runs for a duration (it cannot stop at a count): the caller sizes it from a warm-up's
    rate."""
    script = workdir / "post.lua"
    script.write_text(WRK_LUA % (PATH, lua_string(NC_BODY)))
    secs = max(1, round(seconds))
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{conns}",
            f"-d{secs}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        timeout=secs + 60,
    )
    m = re.search(r"BENCH responses=(\d+) bad=(\d+)", out.stdout)
    if not m:
        raise RuntimeError(f"wrk: {out.stdout[-300:]} {out.stderr[-300:]}")
    errs = re.search(r"Socket errors:[^\n]*", out.stdout)
    return int(m.group(1)), int(m.group(2)), errs.group(0) if errs else ""


def load_python(port: int, n: int, conns: int) -> tuple[int, int, str]:
    """Closed loop on `conns` keep-alive connections, one request in flight each."""
    req = nc_request()
    state = {"left": n, "done": 0, "bad": 0, "errors": 0}

    async def one() -> None:
        reader = writer = None
        while state["left"] > 0:
            if writer is None:
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    state["errors"] += 1
                    await asyncio.sleep(0.05)
                    continue
            state["left"] -= 1
            try:
                writer.write(req)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                if length:
                    await reader.readexactly(length)
                state["done"] += 1
                if head[9:12] != b"200":
                    state["bad"] += 1
                if b"connection: close" in head.lower():
                    writer.close()
                    writer = None
            except (TimeoutError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                state["errors"] += 1
                writer.close()
                writer = None
        if writer is not None:
            writer.close()

    async def main() -> None:
        await asyncio.gather(*(one() for _ in range(conns)))

    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    runner(main())
    return state["done"], state["bad"], f"errors {state['errors']}" if state["errors"] else ""


def measure_cpu(server: Server, n: int, conns: int, client: str, workdir: Path) -> dict:
    if client == "wrk":  # a 2 s warm-up, whose rate sizes the measured run to about n requests
        t = time.monotonic()
        warm, _, _ = load_wrk(server.port, 2, conns, workdir)
        rate = warm / (time.monotonic() - t)

        def load():
            return load_wrk(server.port, min(120.0, max(2.0, n / max(rate, 1.0))), conns, workdir)

    else:
        load_python(server.port, max(2000, n // 10), conns)

        def load():
            return load_python(server.port, n, conns)

    time.sleep(0.3)
    pids = tree_pids(server.pid)
    c0, t0 = cpu_seconds(pids), time.monotonic()
    served, bad, errs = load()
    time.sleep(0.3)  # in-flight requests the client abandoned at its count
    c1, t1 = cpu_seconds(tree_pids(server.pid)), time.monotonic()
    wall = t1 - t0 - 0.3
    return {
        "us": (c1 - c0) / max(1, served) * 1e6,
        "served": served,
        "bad": bad,
        "errs": errs,
        "cpu_share": (c1 - c0) / wall,
        "rps": served / wall,
        "procs": len(pids),
    }


# ---- probes --------------------------------------------------------------------------------------


def probes(port: int) -> dict[str, str]:
    out: dict[str, str] = {}

    def run(name, fn):
        try:
            out[name] = fn()
        except Exception as exc:  # a probe's failure is its result
            out[name] = f"error {type(exc).__name__}"

    def show(status, closed=False):
        return (
            "no answer" + (", closed" if closed else "")
            if status is None
            else f"{status}" + (", closed" if closed else "")
        )

    def no_host():
        st, _, _, _, closed = exchange(
            port, f"POST {PATH} HTTP/1.1\r\nContent-Length: 2\r\n\r\n{{}}".encode()
        )
        return show(st, closed)

    def http09():
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"GET /callbacks/number-check\r\n")
            s.settimeout(2)
            try:
                data = s.recv(200)
            except TimeoutError:
                return "no answer in 2 s, open"
            except OSError:
                return "reset"
        if not data:
            return "closed, no answer"
        first = data.split(b"\r\n", 1)[0].decode("latin-1")
        return first.split(" ")[1] if first.startswith("HTTP/") else f"answered {data[:20]!r}"

    def head():
        st, hd, _, extra, _ = exchange(
            port, f"HEAD {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode(), head_request=True
        )
        if st is None:
            return "no answer"
        return f"{st}, " + (f"{len(extra)} body bytes sent (wrong)" if extra else "no body")

    def expect():
        with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
            s.sendall(
                (
                    f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(NC_BODY)}\r\nExpect: 100-continue\r\n\r\n"
                ).encode()
            )
            t0 = time.monotonic()
            st, _, _, rest = read_response(s, t0 + 1.5)
            got100 = st == 100
            waited = time.monotonic() - t0
            s.sendall(NC_BODY)
            final, _, _, _ = read_response(s, time.monotonic() + 2, buf=rest if got100 else b"")
        return (
            f"100 in {waited * 1000:.0f} ms, then {show(final)}"
            if got100
            else f"no 100 within 1.5 s (client waits), then {show(st if st else final)}"
        )

    def big_header(size):
        def probe():
            try:
                st, _, _, _, closed = exchange(
                    port,
                    f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: {'a' * size}\r\n"
                    f"Content-Length: 2\r\n\r\n{{}}".encode(),
                    timeout=3.0,
                )
            except OSError as exc:  # refused while we were still sending
                return f"{type(exc).__name__} while sending"
            return show(st, closed)

        return probe

    def big_body():
        t0 = time.monotonic()
        st, _, _, _, closed = exchange(
            port,
            (
                f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 104857600\r\n\r\n"
            ).encode(),
            timeout=2.0,
        )
        return (
            "waits for the body (no answer in 2 s)"
            if st is None
            else f"{show(st, closed)} in {(time.monotonic() - t0) * 1000:.0f} ms"
        )

    def put():
        st, hd, _, _, _ = exchange(
            port,
            f"PUT {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{{}}".encode(),
        )
        return show(st) + (f", Allow: {hd['allow']}" if "allow" in hd else ", no Allow")

    def per_connection():
        req = nc_request()
        served = 0
        with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
            buf = b""
            for _ in range(1100):
                try:
                    s.sendall(req)
                except OSError:
                    break
                st, hd, _, buf = read_response(s, time.monotonic() + 3, buf=buf)
                if st is None:
                    break
                served += 1
                if hd.get("connection", "").lower() == "close":
                    break
        return "all 1100 served" if served == 1100 else f"closed after {served}"

    for name, fn in [
        ("HTTP/1.1 without Host", no_host),
        ("HTTP/0.9 request", http09),
        ("HEAD", head),
        ("Expect: 100-continue", expect),
        ("32 KiB header", big_header(32 * 1024)),
        ("1 MiB header", big_header(1024 * 1024)),
        ("declared 100 MB body", big_body),
        ("PUT", put),
        ("1,100 requests on one connection", per_connection),
    ]:
        run(name, fn)
    return out


# ---- attacks -------------------------------------------------------------------------------------


def pump(sock: socket.socket, data: bytes, seconds: float, after_s: float = 3.0) -> dict:
    """Send `data` while reading whatever comes back, for at most `seconds`; then read `after_s`
    more."""
    sock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
    view, sent, got, closed = memoryview(data), 0, b"", ""
    t0 = time.monotonic()
    deadline = t0 + seconds
    while time.monotonic() < deadline and not closed:
        if sent == len(data):
            sel.modify(sock, selectors.EVENT_READ)
            deadline = min(deadline, time.monotonic() + after_s)
            after_s = 1e9
        for _key, ev in sel.select(0.2):
            if ev & selectors.EVENT_READ:
                try:
                    chunk = sock.recv(65536)
                except BlockingIOError:
                    chunk = None
                except OSError as exc:
                    closed = type(exc).__name__
                    break
                if chunk == b"":
                    closed = "EOF"
                    break
                if chunk and len(got) < 4096:
                    got += chunk[:4096]
            if ev & selectors.EVENT_WRITE and sent < len(data):
                try:
                    k = sock.send(view[sent : sent + 262144])
                    sent += k
                except BlockingIOError:
                    pass
                except OSError as exc:
                    closed = type(exc).__name__
                    break
    sel.close()
    status = None
    if got.startswith(b"HTTP/"):
        try:
            status = int(got.split(b" ", 2)[1])
        except (IndexError, ValueError):
            pass
    return {
        "sent": sent,
        "total": len(data),
        "status": status,
        "closed": closed,
        "secs": time.monotonic() - t0,
    }


def mib(n: float) -> str:
    return f"{n / 1048576:.1f} MiB" if n >= 1048576 else f"{n / 1024:.0f} KiB"


def attack_trailers(port: int) -> str:
    head = (
        f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n"
    ).encode()
    line = "a" * 1000
    trailers = "".join(f"X-Trailer-{i:06d}: {line}\r\n" for i in range(16 * 1024 * 1024 // 1020))
    data = head + trailers.encode() + b"\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        r = pump(s, data, 10.0)
    return describe(r)


def attack_chunk_ext(port: int) -> str:
    data = (
        (
            f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n2;ext="
        ).encode()
        + b"a" * (16 * 1024 * 1024)
        + b"\r\n{}\r\n0\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        r = pump(s, data, 10.0)
    return describe(r)


def describe(r: dict) -> str:
    took = f"{mib(r['sent'])} of {mib(r['total'])} taken in {r['secs']:.1f} s"
    ans = f"answered {r['status']}" if r["status"] else "no answer"
    end = f", then {r['closed']}" if r["closed"] else ", connection still open"
    return f"{ans}; {took}{end}"


def attack_pipeline(port: int, count: int = 300_000, seconds: float = 10.0) -> tuple[str, tuple]:
    req = f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{{}}".encode()
    block = req * 1000
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # we never read: fill up fast
    s.connect(("127.0.0.1", port))
    s.setblocking(False)
    sent = 0
    total = len(req) * count
    t0 = time.monotonic()
    deadline, last_progress, closed = t0 + seconds, t0, ""
    while sent < total and time.monotonic() < deadline:
        try:
            k = s.send(
                block[sent % len(block) :] if total - sent >= len(block) else block[: total - sent]
            )
            sent += k
            last_progress = time.monotonic()
        except BlockingIOError:
            if time.monotonic() - last_progress > 3.0:
                break  # the server stopped reading
            select.select([], [s], [], 0.2)
        except OSError as exc:
            closed = type(exc).__name__
            break
    took = time.monotonic() - t0
    pushed = sent // len(req)
    stalled = sent < total and not closed and took < seconds - 0.1
    # The attack connection is still open and unread: is the server still serving others?
    legit = legit_post(port, 5.0)
    time.sleep(1.0)
    s.close()
    text = (
        f"{pushed:,} requests pushed in {took:.1f} s"
        + (" (server stopped reading)" if stalled else "")
        + (f", {closed}" if closed else "")
    )
    return text, legit


def open_idle(port: int, n: int, seconds: float = 10.0) -> list[socket.socket]:
    socks = []
    for i in range(n):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        socks.append(s)
        if i % 100 == 99:
            time.sleep(0.01)
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_WRITE)
    pending = len(socks)
    deadline = time.monotonic() + seconds
    while pending and time.monotonic() < deadline:
        for key, _ in sel.select(0.2):
            sel.unregister(key.fileobj)
            pending -= 1
    sel.close()
    return socks


def watch_closes(
    socks: dict[str, list[socket.socket]], t_open: dict[str, float], window: float
) -> dict:
    """For each group: when the server closed its sockets (seconds since they were opened)."""
    sel = selectors.DefaultSelector()
    for group, ss in socks.items():
        for s in ss:
            sel.register(s, selectors.EVENT_READ, group)
    closed: dict[str, list[float]] = {g: [] for g in socks}
    first: dict[str, bytes] = {}
    left = sum(len(v) for v in socks.values())
    deadline = time.monotonic() + window
    while left and time.monotonic() < deadline:
        for key, _ in sel.select(0.5):
            group = key.data
            try:
                data = key.fileobj.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                first.setdefault(group, data[:40])
                continue
            sel.unregister(key.fileobj)
            closed[group].append(time.monotonic() - t_open[group])
            left -= 1
    sel.close()
    out = {}
    for group, ss in socks.items():
        times = sorted(closed[group])
        answer = (
            f" (answered {first[group].split(b' ')[1].decode(errors='replace')})"
            if group in first and first[group].startswith(b"HTTP/")
            else ""
        )
        if not times:
            out[group] = f"none closed in {window:.0f} s{answer}"
        elif len(times) == len(ss):
            out[group] = (
                f"closed after {times[-1]:.1f} s"
                if len(ss) == 1
                else f"all closed by {times[-1]:.1f} s (first {times[0]:.1f} s)"
            ) + answer
        else:
            out[group] = f"{len(times)}/{len(ss)} closed by {times[-1]:.1f} s{answer}"
    return out


def attack_idle(port: int, window: float, n: int = 1000) -> tuple[str, tuple, dict]:
    t0 = time.monotonic()
    socks = open_idle(port, n)
    time.sleep(1.0)
    legit = legit_post(port, 5.0)
    # One partial head and one stalled body, for the head / request timeouts.
    partial = socket.create_connection(("127.0.0.1", port), timeout=2)
    partial.sendall(f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode())
    stalled = socket.create_connection(("127.0.0.1", port), timeout=2)
    stalled.sendall(
        f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n0123456789".encode()
    )
    t1 = time.monotonic()
    for s in (partial, stalled):
        s.setblocking(False)
    closes = (
        watch_closes(
            {"idle": socks, "partial head": [partial], "stalled body": [stalled]},
            {"idle": t0, "partial head": t1, "stalled body": t1},
            window,
        )
        if window > 0
        else {}
    )
    for s in socks + [partial, stalled]:
        s.close()
    return f"{n} idle", legit, closes


def attack_cap(port: int, n: int = 1000) -> tuple:
    socks = open_idle(port, n)
    time.sleep(1.0)
    legit = legit_post(port, 5.0)
    for s in socks:
        s.close()
    return legit


def show_legit(legit: tuple) -> str:
    status, ms, err = legit
    return f"{status} in {ms:.0f} ms" if status else f"NOT answered ({err})"


def run_attack(cand: Candidate, appdir: Path, name: str, fn, opts: dict | None = None) -> dict:
    row = {"candidate": cand.name, "attack": name}
    server = Server(cand, appdir, opts)
    try:
        server.wait_ready()
        mon = Monitor(server.pid)
        mon.start()
        try:
            result = fn(server.port)
        except Exception as exc:
            result = (f"client error {type(exc).__name__}: {exc}",)
        time.sleep(1.0)
        after = mon.stop()
        extra = {}
        if isinstance(result, tuple):
            if name.startswith("(b)"):
                result, legit = result
                extra["legit during"] = show_legit(legit)
            elif name.startswith("(c)"):
                _, legit, closes = result
                result = show_legit(legit)
                extra.update(closes)
            elif name.startswith("(c-cap"):
                result = show_legit(result)
            else:
                result = result[0]
        row.update(
            outcome=result,
            **extra,
            rss=(mon.before[0], mon.peak_rss, after[0]),
            fds=(mon.before[1], mon.peak_fds, after[1]),
            alive=server.alive(),
        )
        row["legit after"] = (
            show_legit(legit_post(server.port, 5.0)) if server.alive() else "server gone"
        )
    except Exception as exc:
        row.update(outcome=f"not run: {exc}")
    finally:
        server.stop()
    return row


# ---- report --------------------------------------------------------------------------------------


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]

    def line(cells):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return "\n".join(
        [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        + [line(r) for r in rows]
    )


def facts(args, client: str) -> list[str]:
    def ver(pkg):
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return "-"

    def git(*a):
        try:
            return subprocess.run(
                ["git", "-C", str(REPO), *a], capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return "?"

    try:
        digest = http_py_digest()
        mtime = datetime.datetime.fromtimestamp(HTTP_PY.stat().st_mtime, datetime.UTC)
    except OSError:
        digest, mtime = "?", None
    changed = git("diff", "--stat", "HEAD", "--", "nxjobs/callbacks/http.py")
    try:
        from nxjobs.callbacks.http import HttpLimits

        limits = ", ".join(f"{f.name}={f.default}" for f in dataclasses.fields(HttpLimits))
    except Exception as exc:
        limits = f"not importable ({type(exc).__name__})"
    return [
        f"date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M:%S} UTC; "
        f"nproc: {os.cpu_count()}; "
        f"load average {loadavg()} (the machine is shared: other processes run beside this); "
        f"HEAD {git('rev-parse', '--short', 'HEAD')}; python {sys.version.split()[0]}",
        f"nxjobs/callbacks/http.py: sha256 {digest}, mtime {mtime:%Y-%m-%d %H:%M:%S} UTC, "
        + (
            "modified vs HEAD (uncommitted work): " + changed.splitlines()[-1].strip()
            if changed
            else "as in HEAD"
        )
        if mtime
        else "nxjobs/callbacks/http.py: missing",
        f"HttpLimits defaults: {limits}",
        f"versions: uvicorn {ver('uvicorn')}, granian {ver('granian')}, "
        f"hypercorn {ver('hypercorn')}, "
        f"httptools {ver('httptools')}, uvloop {ver('uvloop')}, h11 {ver('h11')}",
        f"load: ~{args.requests:,} POSTs of {len(NC_BODY)} bytes "
        f"({len(nc_request())} on the wire) per run over "
        f"{args.connections} keep-alive connections, client {client}"
        + (
            f" {subprocess.run(['wrk', '-v'], capture_output=True, text=True).stdout.split()[1]}"
            if client == "wrk"
            else ""
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=50_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--only", default="", help="comma-separated candidate names")
    p.add_argument("--skip-cpu", action="store_true")
    p.add_argument("--skip-attacks", action="store_true")
    p.add_argument(
        "--idle-window",
        type=float,
        default=35.0,
        help="seconds to watch idle / partial / stalled connections in attack (c)",
    )
    p.add_argument("--client", choices=("auto", "wrk", "python"), default="auto")
    p.add_argument("--markdown", default="", help="also write the tables to this file")
    args = p.parse_args(argv)

    client = args.client
    if client == "auto":
        client = "wrk" if shutil.which("wrk") else "python"
    elif client == "wrk" and not shutil.which("wrk"):
        print("wrk not found (apt-get install -y wrk); using the Python client")
        client = "python"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < min(hard, 8192):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))

    wanted = [c for c in CANDIDATES if not args.only or c.name in args.only.split(",")]
    cands = []
    for c in wanted:
        gone = missing(c)
        if gone:
            print(f"skip {c.name}: {', '.join(gone)} not installed ({INSTALL_HINT})")
        else:
            cands.append(c)
    out: list[str] = []

    def emit(text: str = "") -> None:
        print(text, flush=True)
        out.append(text)

    emit("## Machine and setup\n")
    for f in facts(args, client):
        emit(f"- {f}")
    emit(f"- server soft RLIMIT_NOFILE: {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}")
    emit()

    appdir = Path(tempfile.mkdtemp(prefix="http_servers_"))
    try:
        fmt = dict(repo=str(REPO), answer=ANSWER)
        (appdir / "nx_server.py").write_text(NXJOBS_SERVER.format(**fmt))
        (appdir / "asgi_app.py").write_text(textwrap.dedent(ASGI_APP.format(**fmt)))
        (appdir / "rsgi_app.py").write_text(textwrap.dedent(RSGI_APP.format(**fmt)))

        # ---- 1. per-request CPU, interleaved runs ----
        if not args.skip_cpu:
            results: dict[str, list[dict]] = {c.name: [] for c in cands}
            failed: dict[str, str] = {}
            for run in range(args.runs):
                for c in cands:
                    if c.name in failed:
                        continue
                    server = Server(c, appdir)
                    try:
                        server.wait_ready()
                        r = measure_cpu(server, args.requests, args.connections, client, appdir)
                        results[c.name].append(r)
                        print(
                            f"  run {run + 1} {c.name}: load {loadavg()}, "
                            f"{r['us']:.1f} us/request, {r['served']:,} served, "
                            f"server CPU {r['cpu_share'] * 100:.0f} % of a core, "
                            f"{r['rps']:,.0f} req/s"
                            + (f", {r['bad']} non-200" if r["bad"] else "")
                            + (f", {r['errs']}" if r["errs"] else ""),
                            flush=True,
                        )
                    except Exception as exc:
                        failed[c.name] = str(exc)[:300]
                        print(f"  {c.name} failed: {failed[c.name]}", flush=True)
                    finally:
                        server.stop()
            emit("## Per-request server CPU (us of server CPU per request; lower is better)\n")
            rows = []
            for c in sorted(
                cands,
                key=lambda c: (
                    statistics.median([r["us"] for r in results[c.name]])
                    if results[c.name]
                    else 1e9
                ),
            ):
                rs = results[c.name]
                if not rs:
                    rows.append([c.name, "failed", failed.get(c.name, ""), "", "", "", ""])
                    continue
                rows.append(
                    [
                        c.name,
                        f"{statistics.median(r['us'] for r in rs):.1f}",
                        " / ".join(f"{r['us']:.1f}" for r in rs),
                        f"{min(r['served'] for r in rs):,}-{max(r['served'] for r in rs):,}",
                        f"{statistics.median(r['cpu_share'] for r in rs) * 100:.0f} %",
                        f"{statistics.median(r['rps'] for r in rs):,.0f}",
                        f"{rs[0]['procs']}; {sum(r['bad'] for r in rs)} non-200"
                        + (f"; {rs[-1]['errs']}" if rs[-1]["errs"] else ""),
                    ]
                )
            emit(
                table(
                    [
                        "candidate",
                        "median us/req",
                        "runs",
                        "requests per run",
                        "server CPU (1 core = 100 %)",
                        "req/s (client-bound, info)",
                        "processes; errors",
                    ],
                    rows,
                )
            )
            emit()

        if args.skip_attacks:
            return 0

        # ---- 2. protocol probes ----
        emit("## Protocol probes (one connection each)\n")
        probe_rows: dict[str, dict[str, str]] = {}
        for c in cands:
            server = Server(c, appdir)
            try:
                server.wait_ready()
                probe_rows[c.name] = probes(server.port)
            except Exception as exc:
                probe_rows[c.name] = {"error": str(exc)[:200]}
            finally:
                server.stop()
        names = list(dict.fromkeys(k for v in probe_rows.values() for k in v))
        emit(
            table(
                ["probe", *probe_rows],
                [[n, *(probe_rows[c].get(n, "") for c in probe_rows)] for n in names],
            )
        )
        emit()

        # ---- 3. attacks ----
        attacks = [
            ("(a) 16 MiB trailers", lambda port: (attack_trailers(port),)),
            ("(a2) 16 MiB chunk ext", lambda port: (attack_chunk_ext(port),)),
            ("(b) 300k pipelined, unread", attack_pipeline),
            ("(c) 1000 idle + 1 POST", lambda port: attack_idle(port, args.idle_window)),
        ]
        rows = []
        for c in cands:
            for name, fn in attacks:
                print(f"  {c.name} {name} ...", flush=True)
                rows.append(run_attack(c, appdir, name, fn))
            if c.name == "nxjobs" and "max_requests_per_connection" in nx_limit_names():
                # Its per-connection request cap (default 10,000) ends attack (b) early: without it,
                # the write-side flow control alone must bound what the server holds.
                name = "(b) same, max_requests_per_connection=10^7"
                print(f"  {c.name} {name} ...", flush=True)
                rows.append(
                    run_attack(
                        c,
                        appdir,
                        name,
                        attack_pipeline,
                        {"limits": {"max_requests_per_connection": 10_000_000}},
                    )
                )
            if c.cap_option:
                name = f"(c-cap500) {c.cap_option.replace('N', '500')}"
                print(f"  {c.name} {name} ...", flush=True)
                rows.append(run_attack(c, appdir, name, attack_cap, {"cap": 500}))
        emit("## Attacks (fresh server each; RSS = sum of VmRSS over the server's processes)\n")
        cols = [
            "candidate",
            "attack",
            "outcome",
            "RSS MiB before / peak / after",
            "fds before / peak / after",
            "server alive",
            "legit POST after",
        ]
        trows = []
        for r in rows:
            extra = "; ".join(
                f"{k}: {r[k]}"
                for k in ("legit during", "idle", "partial head", "stalled body")
                if k in r
            )
            rss = " / ".join(f"{x / 1024:.0f}" for x in r["rss"]) if "rss" in r else ""
            fds = " / ".join(str(x) for x in r["fds"]) if "fds" in r else ""
            trows.append(
                [
                    r["candidate"],
                    r["attack"],
                    r["outcome"] + (f"; {extra}" if extra else ""),
                    rss,
                    fds,
                    ("yes" if r.get("alive") else "NO") if "alive" in r else "",
                    r.get("legit after", ""),
                ]
            )
        emit(table(cols, trows))
        emit()
        emit(
            "(b) `legit during`: a POST on a new connection while the attack connection is open "
            "and unread. (c) outcome: the legitimate POST on a new connection after the 1,000 "
            "idle ones; `idle` / `partial head` / `stalled body`: when the server closed those "
            "connections (seconds since opened)."
        )
        return 0
    finally:
        if NX_VERSIONS:
            emit(
                "\nnxjobs/callbacks/http.py versions measured "
                "(sha256[:12]: first-last nxjobs start, UTC): "
                + "; ".join(f"{k}: {v[0]}-{v[1]}" for k, v in NX_VERSIONS.items())
            )
        if args.markdown:
            Path(args.markdown).write_text("\n".join(out) + "\n")
        shutil.rmtree(appdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
