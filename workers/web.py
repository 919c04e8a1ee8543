"""`python -m workers.web [--host H] [--port P] [--workers N]`: the callback receiver on uvicorn.

What `nxjobs callbacks` runs. Builds the app from settings (NXJOBS_REDIS_URL,
NXJOBS_CALLBACKS__*, NXJOBS_CALLBOT__UUID/SECRET_KEY/ALGORITHM) and serves it
with uvloop + httptools, access log off (the URL of unsigned callbacks holds
the token). Exits 2 with one line when the token is missing or too short.
"""

from __future__ import annotations

import argparse
import socket
import sys

DEFAULT_PORT = 8091


def app_from_settings():
    """ASGI app factory (also used by uvicorn's --workers mode)."""
    from config.settings import load_settings
    from nxjobs.callbacks.app import ReceiverConfig, create_app

    s = load_settings()
    cb = s.callbacks
    return create_app(ReceiverConfig(
        redis_url=s.redis_url,
        token=cb.token.get_secret_value() if cb.token else "",
        callbot_uuid=s.callbot.uuid,
        callbot_secret_key=s.callbot.secret_key.get_secret_value() if s.callbot.secret_key else None,
        callbot_algorithm=s.callbot.algorithm,
        max_body_bytes=cb.max_body_bytes,
        tolerance_s=cb.signature_tolerance_s,
        unmatched_max=cb.unmatched_max,
    ))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="nxjobs callbacks", description="Receive NXCloud callbacks into job records.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 = pick a free port")
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default 1)")
    p.add_argument("--log-level", default="info")
    args = p.parse_args(argv)

    from pydantic import ValidationError

    try:
        app = app_from_settings()
    except (ValidationError, ValueError) as exc:
        print(f"error: {exc}; set NXJOBS_CALLBACKS__TOKEN to a random string of 16+ characters",
              file=sys.stderr)
        return 2

    import uvicorn

    from config.settings import load_settings
    from workers.logs import setup_logging

    # JSON lines with NXJOBS_LOG_FORMAT=json; uvicorn's own loggers go through the same handler.
    setup_logging(load_settings().log_format, args.log_level)
    common = dict(loop="uvloop", http="httptools", lifespan="on", access_log=False, log_level=args.log_level,
                  log_config=None,
                  # NXCloud keeps connections open between callbacks; a short idle timeout frees them.
                  timeout_keep_alive=15, server_header=False,
                  # Nothing here uses the client address; skip the X-Forwarded-* rewriting per request.
                  proxy_headers=False)
    if args.workers > 1:
        print(f"callbacks listening on http://{args.host}:{args.port} ({args.workers} workers)", flush=True)
        uvicorn.run("workers.web:app_from_settings", factory=True, host=args.host, port=args.port,
                    workers=args.workers, **common)
        return 0
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(2048)
    host, port = sock.getsockname()[:2]
    server = uvicorn.Server(uvicorn.Config(app, backlog=2048, **common))
    # Printed before serving; the socket already accepts, so callers may connect at once.
    print(f"callbacks listening on http://{host}:{port}", flush=True)
    server.run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
