"""`python -m workers.web [--host H] [--port P] [--workers N]`: the callback receiver.

What `nxjobs callbacks` runs. Builds the receiver from settings (NXJOBS_REDIS_URL,
NXJOBS_CALLBACKS__*, NXJOBS_CALLBOT__UUID/SECRET_KEY/ALGORITHM) and serves it
with nxjobs.callbacks.http on uvloop; no access log (the URL of unsigned
callbacks holds the token). Exits 2 with one line when the token is missing or
too short.

`--workers N` binds the socket once and forks N processes that accept on it (the
kernel spreads connections); the parent restarts a process that dies and
passes SIGTERM / SIGINT on for a graceful stop.

The HTTP limits (NXJOBS_CALLBACKS__MAX_HEAD_BYTES, __MAX_CONNECTIONS, ...) apply
per process. The connection cap is kept below the descriptor limit: the soft
RLIMIT_NOFILE is raised (up to the hard one) to make room for it, and if that is
not enough the cap is lowered, with one warning line.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import resource
import signal
import socket
import sys
import time

DEFAULT_PORT = 8091
# Descriptors kept for what is not a client connection: the listening socket, logs, and slack
# (the Redis pool's connections are added to it).
FD_RESERVE = 32

log = logging.getLogger("nxjobs.callbacks")


def config_from_settings():
    from config.settings import load_settings
    from nxjobs.callbacks.app import ReceiverConfig
    from nxjobs.redis_conn import target

    s = load_settings()
    cb = s.callbacks
    return ReceiverConfig(
        redis=target(**s.store_redis()),
        token=cb.token.get_secret_value() if cb.token else "",
        callbot_uuid=s.callbot.uuid,
        callbot_secret_key=s.callbot.secret_key.get_secret_value()
        if s.callbot.secret_key
        else None,
        callbot_algorithm=s.callbot.algorithm,
        max_body_bytes=cb.max_body_bytes,
        tolerance_s=cb.signature_tolerance_s,
        unmatched_max=cb.unmatched_max,
        unmatched_max_bytes=cb.unmatched_max_bytes,
        unmatched_body_bytes=cb.unmatched_body_bytes,
    )


def limits_from_settings(redis_connections: int):
    """The HTTP limits from settings, the connection cap fitted to the descriptor limit."""
    from config.settings import load_settings
    from nxjobs.callbacks.http import HttpLimits

    cb = load_settings().callbacks
    return HttpLimits(
        max_head_bytes=cb.max_head_bytes,
        max_connections=fit_connection_cap(cb.max_connections, FD_RESERVE + redis_connections),
        write_buffer_bytes=cb.write_buffer_bytes,
        keep_alive_s=cb.keep_alive_s,
        head_timeout_s=cb.head_timeout_s,
        request_timeout_s=cb.request_timeout_s,
        max_requests_per_connection=cb.max_requests_per_connection,
        max_connection_age_s=cb.max_connection_age_s,
    )


def fit_connection_cap(wanted: int, reserve: int) -> int:
    """`wanted`, or less if the process may not open `wanted + reserve` descriptors.

    Raises the soft RLIMIT_NOFILE towards the hard one first (forked processes inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = wanted + reserve
    if soft == resource.RLIM_INFINITY or soft >= need:
        return wanted
    raised = need if hard == resource.RLIM_INFINITY else min(need, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
        soft = raised
    except (ValueError, OSError):
        pass
    if soft >= need:
        return wanted
    cap = max(1, soft - reserve)
    log.warning(
        "callbacks max_connections lowered from %d to %d: the descriptor limit is %d (hard %s), "
        "%d kept for Redis and the rest",
        wanted,
        cap,
        soft,
        "unlimited" if hard == resource.RLIM_INFINITY else hard,
        reserve,
    )
    return cap


def _new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # a platform without uvloop: slower, same behaviour
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def serve(sock: socket.socket, config, limits=None) -> int:
    """Serve on `sock` in this process until SIGTERM / SIGINT, then stop gracefully."""
    from nxjobs.callbacks.app import Receiver
    from nxjobs.callbacks.http import CallbackServer, HttpLimits

    async def run() -> None:
        receiver = Receiver(config)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await receiver.start()
        try:
            await CallbackServer(receiver, limits or HttpLimits()).serve(sock, stop)
        finally:
            await receiver.close()

    loop = _new_event_loop()
    try:
        loop.run_until_complete(run())
    finally:
        loop.close()
    return 0


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def _supervise(sock: socket.socket, config, limits, workers: int) -> int:
    """Fork `workers` serving processes and keep that many alive until told to stop."""
    children: dict[int, float] = {}
    stopping = False

    def spawn() -> None:
        pid = os.fork()
        if pid == 0:  # the child: default signal handling, then serve
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)
            code = 1
            try:
                code = serve(sock, config, limits)
            except BaseException:
                log.exception("callback receiver process failed")
            finally:
                os._exit(code)
        children[pid] = time.monotonic()

    def forward(signum, frame) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for _ in range(workers):
        spawn()
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        started = children.pop(pid, None)
        if started is None or stopping:
            continue
        log.error("callback receiver process %d exited (status %d); starting another", pid, status)
        if time.monotonic() - started < 1.0:
            time.sleep(
                1.0
            )  # a process that dies at once would otherwise be restarted in a tight loop
        spawn()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="nxjobs callbacks", description="Receive NXCloud callbacks into job records."
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 = pick a free port")
    p.add_argument("--workers", type=int, default=1, help="receiver processes (default 1)")
    p.add_argument("--log-level", default="info")
    args = p.parse_args(argv)

    from pydantic import ValidationError

    from nxjobs.callbacks.app import Receiver

    try:
        config = config_from_settings()
        Receiver(config)  # validates (the token) before anything listens
    except (ValidationError, ValueError) as exc:
        print(
            f"error: {exc}; set NXJOBS_CALLBACKS__TOKEN to a random string of 16+ characters",
            file=sys.stderr,
        )
        return 2

    from config.settings import load_settings
    from workers.logs import setup_logging

    # JSON lines with NXJOBS_LOG_FORMAT=json.
    setup_logging(load_settings().log_format, args.log_level.upper())
    limits = limits_from_settings(config.max_connections)
    sock = _bind(args.host, args.port)
    host, port = sock.getsockname()[:2]
    host = f"[{host}]" if ":" in host else host
    # Printed before serving; the socket already accepts, so callers may connect at once.
    suffix = f" ({args.workers} workers)" if args.workers > 1 else ""
    print(f"callbacks listening on http://{host}:{port}{suffix}", flush=True)
    if args.workers > 1:
        return _supervise(sock, config, limits, args.workers)
    return serve(sock, config, limits)


if __name__ == "__main__":
    sys.exit(main())
