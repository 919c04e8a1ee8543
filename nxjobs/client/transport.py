"""Sends one HTTP request and turns every way it can go wrong into a TransportError.

Retries here cover connect failures only (the request never left us); anything
after the bytes were sent is the caller's decision, because a resend may ring a
phone twice. Business errors are not decided here: a parsed body is returned.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from nxjobs.client.errors import BOUNDED, RETRY, TransportError, classify_http_status

# Called as gate(family, endpoint, body) before a request is signed and sent;
# may raise to stop it (the rate limiter's SlotNotReady). What it returns, if
# anything, is called once the answer or an error is back.
Gate = Callable[[str, str, Any], Callable[[], None] | None]


@contextmanager
def gated(gate: Gate | None, family: str, endpoint: str, body: Any) -> Iterator[None]:
    """Pass `gate` before the request, and tell it when the answer (or an error) is back."""
    answered = gate(family, endpoint, body) if gate is not None else None
    try:
        yield
    finally:
        if answered is not None:
            answered()


# Request durations kept per thread until taken. A thread whose caller never takes them
# (e.g. reconciliation) keeps only the newest, so memory stays bounded.
MAX_KEPT_LATENCIES = 1024


@dataclass(frozen=True)
class Response:
    status: int
    body: Any
    latency_s: float


class Transport:
    def __init__(self, *, connect_timeout_s: float, read_timeout_s: float, pool_size: int = 10):
        self.timeout = (connect_timeout_s, read_timeout_s)
        self.session = requests.Session()
        adapter = HTTPAdapter(
            pool_connections=4,
            pool_maxsize=pool_size,
            # connect=2 only: urllib3 never re-sends once a request may have been read.
            max_retries=Retry(
                total=2, connect=2, read=0, status=0, other=0, redirect=0, backoff_factor=0.05
            ),
        )
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        # What requests reads from the environment on every request (proxies, CA bundle, .netrc)
        # is read once per origin instead: it costs ~0.1 ms of CPU a request, and a worker's
        # environment does not change under it.
        self._env_session = requests.Session()
        self.session.trust_env = False
        self._env_settings: dict[tuple[str, str], dict[str, Any]] = {}
        self._local = threading.local()

    def post(self, url: str, *, data: bytes | dict[str, str], headers: dict[str, str]) -> Response:
        """POST and parse a JSON answer. `data` bytes are sent exactly as given."""
        started = time.monotonic()
        try:
            resp = self._send(url, data, headers)
        finally:
            # Also when it failed: time spent waiting on the provider is time spent.
            latency = time.monotonic() - started
            self._kept_latencies().append(latency)
        if not 200 <= resp.status_code < 300:
            raise TransportError(
                f"HTTP {resp.status_code} from {_origin(url)}",
                code=f"http_{resp.status_code}",
                classification=classify_http_status(resp.status_code),
                may_have_reached=False,
            )
        try:
            body = json.loads(resp.content)
        except ValueError as exc:
            raise TransportError(
                f"invalid JSON from {_origin(url)}",
                code="invalid_json",
                classification=BOUNDED,
                may_have_reached=True,
            ) from exc
        if not isinstance(body, dict):
            raise TransportError(
                f"unexpected JSON shape from {_origin(url)}",
                code="invalid_json",
                classification=BOUNDED,
                may_have_reached=True,
            )
        return Response(resp.status_code, body, latency)

    def take_latencies(self) -> list[float]:
        """Seconds of each request this thread sent since the last call, oldest first;
        clears them."""
        kept = self._kept_latencies()
        taken = list(kept)
        kept.clear()
        return taken

    def _kept_latencies(self) -> deque[float]:
        kept: deque[float] | None = getattr(self._local, "latencies", None)
        if kept is None:
            kept = self._local.latencies = deque(maxlen=MAX_KEPT_LATENCIES)
        return kept

    def _send(
        self, url: str, data: bytes | dict[str, str], headers: dict[str, str]
    ) -> requests.Response:
        try:
            return self.session.post(
                url,
                data=data,
                headers=headers,
                timeout=self.timeout,
                allow_redirects=False,
                **self._from_environment(url),
            )
        except requests.ConnectTimeout as exc:
            raise TransportError(
                f"connect timeout to {_origin(url)}",
                code="connect_timeout",
                classification=RETRY,
                may_have_reached=False,
            ) from exc
        except requests.ReadTimeout as exc:
            raise TransportError(
                f"no answer from {_origin(url)} within {self.timeout[1]}s",
                code="read_timeout",
                classification=RETRY,
                may_have_reached=True,
            ) from exc
        except requests.ConnectionError as exc:
            reached = not _is_connect_failure(exc)
            raise TransportError(
                f"connection error to {_origin(url)}: {type(exc).__name__}",
                code="connection_error",
                classification=RETRY,
                may_have_reached=reached,
            ) from exc
        except requests.RequestException as exc:
            raise TransportError(
                f"request to {_origin(url)} failed: {type(exc).__name__}",
                code="request_error",
                classification=RETRY,
                may_have_reached=True,
            ) from exc

    def _from_environment(self, url: str) -> dict[str, Any]:
        """The proxies, CA bundle and .netrc credentials requests would take from the environment
        for `url`'s origin (what `trust_env` does), read on the origin's first request."""
        parts = urlsplit(url)
        origin = (parts.scheme, parts.netloc)
        found = self._env_settings.get(origin)
        if found is None:
            env = self._env_session.merge_environment_settings(url, {}, None, None, None)
            found = {"proxies": env["proxies"], "verify": env["verify"], "cert": env["cert"]}
            auth = requests.utils.get_netrc_auth(url)
            if auth:
                found["auth"] = auth
            self._env_settings[origin] = found
        return found

    def close(self) -> None:
        self.session.close()
        self._env_session.close()


def _origin(url: str) -> str:
    # Only scheme://host/path: never echo query strings (they may carry tokens).
    return url.split("?", 1)[0]


def _is_connect_failure(exc: requests.ConnectionError) -> bool:
    """True if the connection was never established (nothing can have reached the server)."""
    from urllib3.exceptions import MaxRetryError, NewConnectionError

    reason = exc.args[0] if exc.args else None
    if isinstance(reason, MaxRetryError):
        reason = reason.reason
    return isinstance(reason, NewConnectionError)
