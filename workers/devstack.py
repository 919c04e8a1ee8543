"""Process helpers for local runs and tests: throwaway Redis servers (and,
below, sandbox/worker helpers).

Standard library only, and deliberately independent of ``config``, ``tasks``
and ``nxjobs`` so tests and ``workers.demo`` can start infrastructure before
any settings are loaded.

``find_redis_server`` mirrors ``scripts/ensure-redis.sh`` minus the install
step; ``RedisServer`` is a context manager around a private ``redis-server``
bound to 127.0.0.1 on a free port, in its own temp dir, configured like the
shipped one: AOF persistence (fsync every second) and ``noeviction``, so a
restart keeps the queue and a full Redis refuses writes instead of dropping.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "find_redis_server",
    "free_port",
    "make_tls_files",
    "RedisServer",
    "SentinelGroup",
    "TlsFiles",
]

_FALLBACK_PATHS = ("/usr/bin/redis-server", "/usr/sbin/redis-server")


def _is_exe(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def find_redis_server() -> str:
    """Absolute path of a ``redis-server`` binary; never installs anything.

    Order: ``$NXJOBS_REDIS_SERVER``, ``PATH``, ``/usr/bin``, ``/usr/sbin``.
    Symlinks are kept as-is (Debian's redis-server picks its role from argv[0]).
    """
    candidates = [
        os.environ.get("NXJOBS_REDIS_SERVER") or None,
        shutil.which("redis-server"),
        *_FALLBACK_PATHS,
    ]
    for cand in candidates:
        if cand and _is_exe(cand):
            return os.path.abspath(cand)
    raise RuntimeError(
        "redis-server not found (checked $NXJOBS_REDIS_SERVER, PATH, "
        "/usr/bin, /usr/sbin): run `make install` (it runs "
        "scripts/ensure-redis.sh), `apt-get install redis-server`, or set "
        "NXJOBS_REDIS_SERVER=/path/to/redis-server"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _open(port: int, timeout: float, tls: TlsFiles | None):
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    if tls is None:
        return sock
    ctx = ssl.create_default_context(cafile=tls.ca_file)
    ctx.check_hostname = False
    return ctx.wrap_socket(sock)


def _ping(port: int, timeout: float = 1.0, tls: TlsFiles | None = None) -> bool:
    """Raw-socket ``PING`` -> ``+PONG`` (no redis-py needed)."""
    try:
        with _open(port, timeout, tls) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _server_pid(port: int, timeout: float = 1.0, tls: TlsFiles | None = None) -> int | None:
    """``process_id`` from ``INFO server``, to be sure we reached *our* server."""
    try:
        with _open(port, timeout, tls) as s:
            s.sendall(b"INFO server\r\n")
            data = b""
            while b"process_id:" not in data or not data.endswith(b"\r\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    for line in data.decode(errors="replace").splitlines():
        if line.startswith("process_id:"):
            return int(line.split(":", 1)[1])
    return None


@dataclass(frozen=True)
class TlsFiles:
    """A server certificate, its key and the CA that signed it (PEM files)."""

    cert_file: str
    key_file: str
    ca_file: str


def make_tls_files(directory: str | Path, hostname: str = "127.0.0.1") -> TlsFiles:
    """A throwaway CA and a server certificate it signed for `hostname` (an IP address or a
    name, in the subjectAltName), made with the ``openssl`` command line."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (d / n for n in ("ca.key", "ca.crt", "r.key", "r.csr", "r.crt"))
    san = d / "san.cnf"
    kind = "IP" if hostname.replace(".", "").isdigit() else "DNS"
    san.write_text(f"subjectAltName={kind}:{hostname}\n")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    new_key = ["-newkey", "rsa:2048", "-nodes"]
    run("req", "-x509", *new_key, "-days", "2", "-subj", "/CN=nxjobs test CA",
        "-keyout", str(ca_key), "-out", str(ca))  # fmt: skip
    run("req", *new_key, "-subj", f"/CN={hostname}", "-keyout", str(key), "-out", str(csr))
    sign = ["-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-days", "2"]
    run("x509", "-req", "-in", str(csr), *sign, "-extfile", str(san), "-out", str(cert))
    return TlsFiles(cert_file=str(cert), key_file=str(key), ca_file=str(ca))


class RedisServer:
    """A private ``redis-server`` on 127.0.0.1 (context manager).

    >>> with RedisServer() as r:
    ...     r.url  # 'redis://127.0.0.1:PORT/0'

    `args`: more redis-server options (``--replicaof``...); `tls`: serve
    TLS only (``--port 0 --tls-port``), its URL is then ``rediss://``.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        appendonly: bool = True,
        executable: str | None = None,
        start_timeout: float = 10.0,
        debug_command: bool = False,
        args: list[str] | tuple[str, ...] = (),
        tls: TlsFiles | None = None,
    ):
        self.args = list(args)
        self.tls = tls
        self.executable = executable or find_redis_server()
        self._port = port or free_port()
        self.appendonly = appendonly
        # Benches and tests only (DEBUG POPULATE fills millions of keys in one call); Redis 7
        # refuses DEBUG unless enabled, and a shipped Redis never enables it.
        self.debug_command = debug_command
        self.start_timeout = start_timeout
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.dir: Path | None = None
        self.proc: subprocess.Popen | None = None

    # -- properties ---------------------------------------------------------
    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://127.0.0.1:{self._port}/0"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def logfile(self) -> Path:
        assert self.dir is not None, "server was never started"
        return self.dir / "redis.log"

    # -- lifecycle ----------------------------------------------------------
    def start(self) -> RedisServer:
        if self.proc and self.proc.poll() is None:
            return self
        if self.dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="nxjobs-redis-")
            self.dir = Path(self._tmp.name)
        if self.tls:
            ports = ["--port", "0", "--tls-port", str(self._port)]
            ports += ["--tls-cert-file", self.tls.cert_file, "--tls-key-file", self.tls.key_file]
            ports += ["--tls-ca-cert-file", self.tls.ca_file, "--tls-auth-clients", "no"]
        else:
            ports = ["--port", str(self._port)]
        cmd = [
            self.executable,
            "--bind",
            "127.0.0.1",
            *ports,
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "everysec",
            "--maxmemory-policy",
            "noeviction",
            # As shipped (docker-compose.yml): records stay listpacks (docs/operations.md).
            "--hash-max-listpack-value",
            "1024",
            "--daemonize",
            "no",
            "--logfile",
            str(self.logfile),
        ]
        if self.debug_command:
            cmd += ["--enable-debug-command", "local"]
        cmd += self.args
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with code {self.proc.returncode} "
                    f"on port {self._port}; log tail:\n{self._log_tail()}"
                )
            if _ping(self._port, timeout=0.5, tls=self.tls):
                if _server_pid(self._port, tls=self.tls) == self.proc.pid:
                    return self
                # Something else owns the port; ours will exit shortly.
            time.sleep(0.05)
        self._terminate()
        raise RuntimeError(
            f"redis-server did not answer PING on port {self._port} within "
            f"{self.start_timeout:.0f}s; log tail:\n{self._log_tail()}"
        )

    def stop(self) -> None:
        """Stop the server and remove its temp dir."""
        self._terminate()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
            self.dir = None

    def restart(self) -> RedisServer:
        """Stop and start again on the same port and dir (data survives only
        if ``appendonly=True``)."""
        self.halt()
        return self.start()

    def halt(self) -> None:
        """Stop the server but keep its dir: `start()` brings it back on the same port."""
        self._terminate()

    def _terminate(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> RedisServer:
        try:
            return self.start()
        except BaseException:
            self.stop()  # don't leak the temp dir when startup fails
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"RedisServer(url={self.url!r}, pid={self.pid})"


def _command(port: int, *words: str, timeout: float = 2.0) -> str:
    """One inline command to 127.0.0.1:port, its raw reply (no redis-py needed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall((" ".join(words) + "\r\n").encode())
        data = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            chunk = s.recv(65536)
            data += chunk
            if not chunk or _complete(data):
                break
        return data.decode(errors="replace")


def _complete(data: bytes) -> bool:
    if data[:1] in (b"+", b"-", b":"):
        return data.endswith(b"\r\n")
    if data[:1] == b"$":
        head, _, rest = data.partition(b"\r\n")
        return int(head[1:]) < 0 or len(rest) >= int(head[1:]) + 2
    return data.endswith(b"\r\n")  # arrays: good enough for the short replies read here


class SentinelGroup:
    """A master, a replica and `sentinels` redis-sentinel processes watching it as `master_name`
    (quorum: a majority), all on 127.0.0.1 free ports (context manager), for failover tests.

    `url` is the kombu-style ``sentinel://h:p1;sentinel://h:p2/0``; `failover()` asks a sentinel
    to promote the replica (after waiting until it has every write) and waits for the switch.
    """

    def __init__(self, *, master_name: str = "mymaster", sentinels: int = 3):
        self.master_name = master_name
        self.master = RedisServer()
        self.replica = RedisServer(args=["--replicaof", "127.0.0.1", str(self.master.port)])
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.sentinels: list[subprocess.Popen] = []
        self._tmp: tempfile.TemporaryDirectory | None = None

    @property
    def url(self) -> str:
        return ";".join(f"sentinel://127.0.0.1:{p}" for p in self.sentinel_ports) + "/0"

    def master_port(self) -> int:
        reply = _command(
            self.sentinel_ports[0], "SENTINEL", "get-master-addr-by-name", self.master_name
        )
        return int(reply.split("\r\n")[4])

    def start(self) -> SentinelGroup:
        self.master.start()
        self.replica.start()
        self.wait_in_sync()
        self._tmp = tempfile.TemporaryDirectory(prefix="nxjobs-sentinel-")
        quorum = len(self.sentinel_ports) // 2 + 1
        sentinel = shutil.which("redis-sentinel") or "/usr/bin/redis-sentinel"
        for port in self.sentinel_ports:
            conf = Path(self._tmp.name) / f"sentinel-{port}.conf"
            conf.write_text(
                f"bind 127.0.0.1\nport {port}\ndir {self._tmp.name}\n"
                f"sentinel monitor {self.master_name} 127.0.0.1 {self.master.port} {quorum}\n"
                f"sentinel down-after-milliseconds {self.master_name} 1000\n"
                f"sentinel failover-timeout {self.master_name} 10000\n"
            )
            log = Path(self._tmp.name) / f"sentinel-{port}.log"
            self.sentinels.append(
                subprocess.Popen(
                    [sentinel, str(conf), "--logfile", str(log)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.STDOUT,
                )
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                # Every sentinel knows the master and its replica: a failover can pick it.
                if all(
                    "num-slaves" in (r := _command(p, "SENTINEL", "master", self.master_name))
                    and "\r\n1\r\n" in r.split("num-slaves", 1)[1][:12]
                    for p in self.sentinel_ports
                ):
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("sentinels did not see the master and its replica within 15 s")

    def wait_in_sync(self, timeout_s: float = 10.0) -> None:
        """Until the replica's link is up and it has acknowledged every write the master took
        (WAIT 1): a failover then loses nothing."""
        deadline = time.monotonic() + timeout_s
        port = self.master_port() if self.sentinels else self.master.port
        while time.monotonic() < deadline:
            try:
                if _command(port, "WAIT", "1", "500").startswith(":1"):
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"the replica of 127.0.0.1:{port} did not catch up in {timeout_s} s")

    def failover(self, timeout_s: float = 20.0) -> float:
        """Promote the replica with SENTINEL FAILOVER (the master stays up); return seconds until
        the sentinels name the new master, it accepts writes and the old master is its replica.
        Writes clients send to the old master between the promotion and its demotion are dropped
        by Redis (docs/operations.md § Redis that survives a node)."""
        old = self.master_port()
        self.wait_in_sync()
        started = time.monotonic()
        reply = _command(self.sentinel_ports[0], "SENTINEL", "FAILOVER", self.master_name)
        if not reply.startswith("+OK"):
            raise RuntimeError(f"SENTINEL FAILOVER refused: {reply.strip()}")
        return self._wait_new_master(old, started, timeout_s, demoted=True)

    def crash_master(self, timeout_s: float = 30.0) -> float:
        """Kill the master (SIGKILL) once the replica has every write; return seconds until the
        sentinels have promoted the replica and it accepts writes."""
        old = self.master_port()
        self.wait_in_sync()
        started = time.monotonic()
        node = self.master if self.master.port == old else self.replica
        if node.proc is not None:
            node.proc.kill()
            node.proc.wait()
            node.proc = None
        return self._wait_new_master(old, started, timeout_s, demoted=False)

    def _wait_new_master(self, old: int, started: float, timeout_s: float, *, demoted: bool):
        while time.monotonic() - started < timeout_s:
            try:
                new = self.master_port()
                if (
                    new != old
                    and "role:master" in _command(new, "INFO", "replication")
                    and (not demoted or "role:slave" in _command(old, "INFO", "replication"))
                ):
                    return time.monotonic() - started
            except (OSError, ValueError, IndexError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"no new master within {timeout_s} s")

    def stop(self) -> None:
        for proc in self.sentinels:
            proc.terminate()
        for proc in self.sentinels:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.sentinels = []
        self.replica.stop()
        self.master.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> SentinelGroup:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


# ---------------------------------------------------------------------------
# Sandbox / worker process helpers go below this line (other engineers).
# ---------------------------------------------------------------------------


class ServiceProcess:
    """A child process whose output goes to a log file, started in its own
    session so stop() also ends its children (Celery's prefork pool)."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        log_dir: str | None = None,
        cwd: str | None = None,
    ):
        self.name = name
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self._own_dir = log_dir is None
        self.log_dir = Path(log_dir or tempfile.mkdtemp(prefix=f"nxjobs-{name}-"))
        self.logfile = self.log_dir / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        # Celery node name of a worker (set by start_worker), for remote control.
        self.node_name: str | None = None

    def start(self) -> ServiceProcess:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.logfile, "ab")
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        finally:
            log.close()
        return self

    def log_text(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_for_log(self, needle: str, timeout_s: float = 30.0) -> str:
        """Block until `needle` appears in the log; return the matching line."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in self.log_text().splitlines():
                if needle in line:
                    return line
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode} before "
                    f"printing {needle!r}:\n{self.log_tail()}"
                )
            time.sleep(0.05)
        raise RuntimeError(
            f"{self.name} did not print {needle!r} within {timeout_s}s:\n{self.log_tail()}"
        )

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM (a warm shutdown for Celery), then SIGKILL the whole group after `timeout_s`."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait(5)
        try:  # stray pool children left in the group
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return self.proc.returncode

    def cleanup(self) -> None:
        if self._own_dir:
            shutil.rmtree(self.log_dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _python() -> str:
    import sys

    return sys.executable


def project_root() -> str:
    return str(Path(__file__).resolve().parent.parent)


def start_sandbox(
    *args: str,
    log_dir: str | None = None,
    env: dict[str, str] | None = None,
    timeout_s: float = 20.0,
) -> tuple[ServiceProcess, str]:
    """`python -m sandbox --port 0 ARGS` from the repo root; returns the process and
    its base URL."""
    proc = ServiceProcess(
        "sandbox",
        [_python(), "-m", "sandbox", "--port", "0", *args],
        env=env,
        log_dir=log_dir,
        cwd=project_root(),
    ).start()
    line = proc.wait_for_log("sandbox listening on ", timeout_s)
    return proc, line.split("sandbox listening on ", 1)[1].strip()


def start_worker(
    env: dict[str, str],
    *,
    queues: str = "agent,callbot,api2",
    concurrency: int = 2,
    pool: str = "prefork",
    name: str | None = None,
    log_dir: str | None = None,
    extra: tuple[str, ...] = (),
    timeout_s: float = 60.0,
) -> ServiceProcess:
    """`python -m workers worker ...` (what `nxjobs worker` runs), waited on until ready."""
    node = name or f"w{free_port()}"
    argv = [
        _python(),
        "-m",
        "workers",
        "worker",
        "-Q",
        queues,
        "-c",
        str(concurrency),
        "--pool",
        pool,
        "-n",
        f"{node}@%h",
        "--without-mingle",
        "--without-gossip",
        *extra,
    ]
    proc = ServiceProcess(
        f"worker-{node}", argv, env=env, log_dir=log_dir, cwd=project_root()
    ).start()
    proc.node_name = f"{node}@{socket.gethostname()}"  # for Celery remote control
    proc.wait_for_log(" ready.", timeout_s)
    return proc


def start_callbacks(
    env: dict[str, str],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    log_dir: str | None = None,
    extra: tuple[str, ...] = (),
    timeout_s: float = 30.0,
) -> tuple[ServiceProcess, str]:
    """`python -m workers.web` (what `nxjobs callbacks` runs); returns the process and its base URL.

    `env` needs NXJOBS_REDIS_URL and NXJOBS_CALLBACKS__TOKEN (and the Callbot uuid/secret to
    accept signed callbacks)."""
    proc = ServiceProcess(
        "callbacks",
        [_python(), "-m", "workers.web", "--host", host, "--port", str(port), *extra],
        env=env,
        log_dir=log_dir,
        cwd=project_root(),
    ).start()
    try:
        line = proc.wait_for_log("callbacks listening on ", timeout_s)
        url = line.split("callbacks listening on ", 1)[1].split()[0].strip()
        _wait_ready(proc, url + "/readyz", timeout_s)
    except BaseException:
        proc.stop()  # never leave a half-started receiver behind
        raise
    return proc, url


def _wait_ready(proc: ServiceProcess, url: str, timeout_s: float) -> None:
    """Poll `url` until it answers 200 (the app started and reached Redis)."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.proc is not None and proc.proc.poll() is not None:
            raise RuntimeError(
                f"{proc.name} exited with {proc.proc.returncode}:\n{proc.log_tail()}"
            )
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{proc.name} not ready at {url} within {timeout_s}s:\n{proc.log_tail()}")


def start_beat(
    env: dict[str, str], *, log_dir: str | None = None, timeout_s: float = 30.0
) -> ServiceProcess:
    """`celery -A workers.celery_app beat` with its schedule file in the log dir
    (reconciliation)."""
    proc = ServiceProcess(
        "beat",
        [_python(), "-m", "celery", "-A", "workers.celery_app", "beat", "--loglevel", "INFO"],
        env=env,
        log_dir=log_dir,
        cwd=project_root(),
    )
    proc.argv += ["--schedule", str(proc.log_dir / "celerybeat-schedule")]
    proc.start()
    try:
        proc.wait_for_log("beat: Starting", timeout_s)
    except BaseException:
        proc.stop()
        raise
    return proc


def start_exporter(
    env: dict[str, str],
    log_dir: str | None = None,
    *args: str,
    timeout_s: float = 20.0,
) -> tuple[ServiceProcess, str]:
    """`python -m workers.exporter --port 0 ARGS` (what `nxjobs exporter` runs); returns the
    process and its base URL once /livez answers."""
    proc = ServiceProcess(
        "exporter",
        [_python(), "-m", "workers.exporter", "--port", "0", *args],
        env=env,
        log_dir=log_dir,
        cwd=project_root(),
    ).start()
    try:
        line = proc.wait_for_log("exporter listening on ", timeout_s)
        url = line.split("exporter listening on ", 1)[1].strip()
        _wait_ready(proc, url + "/livez", timeout_s)
    except BaseException:
        proc.stop()
        raise
    return proc, url
