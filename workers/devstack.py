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
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["find_redis_server", "free_port", "RedisServer"]

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


def _ping(port: int, timeout: float = 1.0) -> bool:
    """Raw-socket ``PING`` -> ``+PONG`` (no redis-py needed)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _server_pid(port: int, timeout: float = 1.0) -> int | None:
    """``process_id`` from ``INFO server``, to be sure we reached *our* server."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
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


class RedisServer:
    """A private ``redis-server`` on 127.0.0.1 (context manager).

    >>> with RedisServer() as r:
    ...     r.url  # 'redis://127.0.0.1:PORT/0'
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        appendonly: bool = True,
        executable: str | None = None,
        start_timeout: float = 10.0,
        debug_command: bool = False,
    ):
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
        return f"redis://127.0.0.1:{self._port}/0"

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
        cmd = [
            self.executable,
            "--bind",
            "127.0.0.1",
            "--port",
            str(self._port),
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
            if _ping(self._port, timeout=0.5):
                if _server_pid(self._port) == self.proc.pid:
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
