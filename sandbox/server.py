"""HTTP plumbing for the sandbox: threaded keep-alive server, in-thread handle, CLI `run`.

All request logic is in handlers.py (and the endpoints_*.py it routes to); this
module only moves bytes, headers and the clock between the socket and
`handlers.handle` / `handlers.handle_control`.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import parse_qsl, urlsplit

from sandbox.dispatch import CallbackDispatcher
from sandbox.handlers import CONTROL_PREFIX, Reply, handle, handle_control
from sandbox.state import SandboxConfig, SandboxState

DEFAULT_PORT = 8090


class SandboxServer(ThreadingHTTPServer):
    """One thread per connection; connections are keep-alive (HTTP/1.1)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], state: SandboxState):
        self.state = state
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        # Without this, Nagle + delayed ACK stall every keep-alive request by ~40 ms.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up (e.g. timed out on a slow reply) is expected; anything else is a
        # bug.
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: SandboxServer
    server_version = "nxjobs-sandbox"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _serve(self, method: str) -> None:
        state = self.server.state
        url = urlsplit(self.path)
        body = self._read_body()
        try:
            if url.path.startswith(CONTROL_PREFIX):
                reply = handle_control(state, method, url.path, dict(parse_qsl(url.query)), body)
            else:
                headers = {k.lower(): v for k, v in self.headers.items()}
                reply = handle(state, url.path, headers, body, state.now(), method=method)
        except Exception:
            traceback.print_exc()
            reply = Reply(500, {"code": 500, "message": "sandbox internal error"})
        if reply.delay_s > 0:
            time.sleep(reply.delay_s)
        self._send(reply)

    def _send(self, reply: Reply) -> None:
        data = json.dumps(reply.body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@dataclass
class SandboxHandle:
    """A sandbox serving on a background thread; `stop()` (or leaving the `with`) shuts it down."""

    server: SandboxServer
    thread: threading.Thread
    state: SandboxState
    dispatcher: CallbackDispatcher | None = None

    @property
    def host(self) -> str:
        return cast(str, self.server.server_address[0])  # bound: getsockname() gives a str host

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        if self.dispatcher is not None:
            self.dispatcher.stop()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def __enter__(self) -> SandboxHandle:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def start_in_thread(
    host: str = "127.0.0.1",
    port: int = 0,
    config: SandboxConfig | None = None,
    clock: Callable[[], float] | None = None,
) -> SandboxHandle:
    """Bind now (port 0 = any free port) and serve on a daemon thread.

    `clock` returns epoch seconds; tests pass a fake one to move time without sleeping.
    """
    state = SandboxState(config, clock=clock)
    server = SandboxServer((host, port), state)
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.1},
        daemon=True,
        name=f"nxjobs-sandbox-{server.server_address[1]}",
    )
    thread.start()
    # Sends the callbacks handlers queue (to the URLs clients gave, and cdr_callback_url).
    dispatcher = CallbackDispatcher(state).start()
    return SandboxHandle(server, thread, state, dispatcher)


def _parser() -> argparse.ArgumentParser:
    d = SandboxConfig()
    p = argparse.ArgumentParser(
        prog="python -m sandbox", description="Fake NXCloud HTTP APIs for tests and demos."
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 = pick a free port")
    p.add_argument(
        "--api2-rate", type=int, default=d.api2_rate, help="req/s per accessKey, 0 = unlimited"
    )
    p.add_argument(
        "--number-check-big-rate",
        type=int,
        default=d.number_check_big_rate,
        help="req/s per accessKey for Number Check batches > 2000 numbers",
    )
    p.add_argument("--callbot-rate", type=int, default=d.callbot_rate, help="req/s per uuid")
    p.add_argument("--makecall-rate", type=int, default=d.makecall_rate, help="req/s per username")
    p.add_argument(
        "--cdr-rate", type=int, default=d.cdr_rate, help="CDR-by-orderid req/s per appkey"
    )
    p.add_argument(
        "--token-ttl", type=int, default=d.token_ttl_s, help="Agent token lifetime, seconds"
    )
    p.add_argument(
        "--throttle-rate",
        type=float,
        default=d.throttle_rate,
        help="fraction answered 'too frequent'",
    )
    p.add_argument(
        "--error-rate", type=float, default=d.error_rate, help="fraction answered HTTP 503"
    )
    p.add_argument(
        "--slow-rate",
        type=float,
        default=d.slow_rate,
        help="fraction answered late (after the effect)",
    )
    p.add_argument("--slow-seconds", type=float, default=d.slow_seconds)
    p.add_argument(
        "--number-check-shape", choices=("current", "legacy"), default=d.number_check_shape
    )
    p.add_argument("--seed", type=int, default=None, help="seed for the fault dice")
    p.add_argument(
        "--cdr-callback-url",
        default=d.cdr_callback_url,
        help="where Agent CDR callbacks go (the URL registered with the vendor); empty = none",
    )
    p.add_argument(
        "--callback-delay", type=float, default=d.callback_delay_s, help="seconds before a callback"
    )
    p.add_argument(
        "--callback-jitter",
        type=float,
        default=d.callback_jitter_s,
        help="extra random delay up to this many seconds (reorders callbacks)",
    )
    p.add_argument(
        "--callback-duplicate-rate",
        type=float,
        default=d.callback_duplicate_rate,
        help="fraction of callbacks sent twice",
    )
    p.add_argument(
        "--callback-drop-rate",
        type=float,
        default=d.callback_drop_rate,
        help="fraction of callbacks never sent",
    )
    p.add_argument(
        "--callback-retry",
        type=float,
        default=d.callback_retry_s,
        help="seconds between attempts of an unacknowledged callback (NXCloud: 60)",
    )
    p.add_argument(
        "--callback-retry-window",
        type=float,
        default=d.callback_retry_window_s,
        help="give a callback up this long after its first attempt (NXCloud: 3600)",
    )
    p.add_argument(
        "--callbot-dial-interval",
        type=float,
        default=d.callbot_dial_interval_s,
        help="seconds between the numbers a running Callbot task dials (0: all at once)",
    )
    return p


def run(argv: list[str] | None = None) -> int:
    """CLI entry: serve until SIGTERM/SIGINT, then exit 0."""
    args = _parser().parse_args(argv)
    try:
        config = SandboxConfig().updated(
            api2_rate=args.api2_rate,
            number_check_big_rate=args.number_check_big_rate,
            callbot_rate=args.callbot_rate,
            makecall_rate=args.makecall_rate,
            cdr_rate=args.cdr_rate,
            token_ttl_s=args.token_ttl,
            throttle_rate=args.throttle_rate,
            error_rate=args.error_rate,
            slow_rate=args.slow_rate,
            slow_seconds=args.slow_seconds,
            number_check_shape=args.number_check_shape,
            seed=args.seed,
            cdr_callback_url=args.cdr_callback_url,
            callback_delay_s=args.callback_delay,
            callback_jitter_s=args.callback_jitter,
            callback_duplicate_rate=args.callback_duplicate_rate,
            callback_drop_rate=args.callback_drop_rate,
            callback_retry_s=args.callback_retry,
            callback_retry_window_s=args.callback_retry_window,
            callbot_dial_interval_s=args.callbot_dial_interval,
        )
        handle_ = start_in_thread(args.host, args.port, config)
    except (ValueError, OSError) as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        print(f"sandbox listening on {handle_.url}", flush=True)
        stop.wait()
    finally:
        handle_.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


if __name__ == "__main__":
    sys.exit(run())
