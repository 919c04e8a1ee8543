"""Sandbox configuration, in-memory provider state, quotas, fault dice and counters.

No HTTP and no request parsing here (that is handlers.py / server.py). Every
mutable thing sits behind one re-entrant lock; the clock is injectable so tests
can move time instead of sleeping.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

REQUEST_LOG_SIZE = 2000
QUOTA_WINDOW_S = 1.0

# Families as the stats and the throttle signal see them.
FAMILIES = ("api2", "callbot", "agent")

CALLBACK_COUNTERS = (
    "queued",  # events that produced a callback
    "dropped",  # never sent (callback_drop_rate or a control drop)
    "duplicated",  # sent twice on purpose (callback_duplicate_rate)
    "attempts",  # HTTP POSTs made
    "delivered",  # answered 2xx
    "failed_attempts",  # non-2xx or no answer; retried after callback_retry_s
    "expired",  # still unacknowledged at the end of callback_retry_window_s
)

DUPLICATE_KINDS = (
    "makecall_orderid",  # the same makecall orderid accepted (a phone rang) twice
    "number_check_batchno",  # the same batchNo accepted twice
    "callbot_orderid",  # the same orderID added twice (impossible: duplicates go to errList)
    "callbot_usertaskid",  # the same userTaskID created twice (impossible: answered retCode 4)
)


@dataclass(frozen=True)
class SandboxConfig:
    """Quotas and faults. Rates are requests per second per credential; 0 = unlimited.

    Fault rates are fractions in [0, 1] of requests to known API paths.
    """

    api2_rate: int = 10
    # Number Check batches of more than 2 000 numbers (docs/provider.md §8, our choice).
    number_check_big_rate: int = 1
    callbot_rate: int = 10
    makecall_rate: int = 1
    cdr_rate: int = 1
    token_ttl_s: int = 1200
    throttle_rate: float = 0.0
    error_rate: float = 0.0
    slow_rate: float = 0.0
    slow_seconds: float = 5.0
    number_check_shape: str = "current"
    seed: int | None = None
    # Callbacks (sent by the dispatcher thread, docs/provider.md §5.4, §6.6, §7.3). Number Check and
    # Callbot callbacks go to the URLs the client sent; the Agent CDR has no per-request URL, so
    # it goes here ("" = no CDR callbacks), like the URL a customer registers with the vendor.
    cdr_callback_url: str = ""
    # Seconds from the event to the first delivery attempt, plus a uniform extra up to
    # callback_jitter_s (> 0 delivers out of order).
    callback_delay_s: float = 1.0
    callback_jitter_s: float = 0.0
    # Fraction of callbacks delivered twice (NXCloud may repeat), and never delivered at all.
    callback_duplicate_rate: float = 0.0
    callback_drop_rate: float = 0.0
    # Not acknowledged with a 2xx: try again every callback_retry_s for callback_retry_window_s
    # (NXCloud: every minute for up to 60 minutes), then give up.
    callback_retry_s: float = 60.0
    callback_retry_window_s: float = 3600.0
    # A running Callbot task dials its next number every this many seconds, the first at once
    # (0: all at once, when started or added). Dialling advances when the task is next asked
    # about (any request naming its userTaskID), so tests see a list part-dialled.
    callbot_dial_interval_s: float = 0.0

    def updated(self, **changes: Any) -> SandboxConfig:
        """A copy with `changes` applied after type coercion and range checks (ValueError)."""
        types = {f.name: f.type for f in fields(self)}
        clean: dict[str, Any] = {}
        for name, value in changes.items():
            if name not in types:
                raise ValueError(f"unknown config key {name!r}; known: {sorted(types)}")
            clean[name] = _coerce(name, value)
        return replace(self, **clean)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _coerce(name: str, value: Any) -> Any:
    if name == "seed":
        return None if value is None else int(value)
    if name == "number_check_shape":
        if value not in ("current", "legacy"):
            raise ValueError("number_check_shape must be 'current' or 'legacy'")
        return value
    if name == "cdr_callback_url":
        value = str(value or "")
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("cdr_callback_url must be an http(s) URL or empty")
        return value
    if name in (
        "throttle_rate",
        "error_rate",
        "slow_rate",
        "callback_duplicate_rate",
        "callback_drop_rate",
    ):
        value = float(value)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be within [0, 1]")
        return value
    if name in (
        "slow_seconds",
        "callback_delay_s",
        "callback_jitter_s",
        "callback_retry_s",
        "callback_retry_window_s",
        "callbot_dial_interval_s",
    ):
        value = float(value)
    else:
        value = int(value)
    if value < 0:
        raise ValueError(f"{name} must be >= 0")
    return value


@dataclass
class Script:
    """A canned answer for the next `times_left` verified requests to one path."""

    code: int | str
    times_left: int
    http_status: int = 200
    message: str | None = None


@dataclass
class _Stores:
    """Provider-side records; handlers read and write these under SandboxState.lock."""

    # Number Check submissions (async and sync), oldest first.
    nc_submissions: list[dict[str, Any]] = field(default_factory=list)
    nc_batchnos: set[str] = field(default_factory=set)
    # Callbot v3.
    cb_tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    cb_orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    # userTaskID -> its scheduled start (startupAt, unix s) while it has not come.
    cb_scheduled: dict[str, float] = field(default_factory=dict)
    # Agent API: token -> {"appkey", "expires_at"}; accepted makecalls, oldest first.
    tokens: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[dict[str, Any]] = field(default_factory=list)
    called_orderids: set[str] = field(default_factory=set)
    # Callbacks the handlers decided to send, not yet taken by the dispatcher thread.
    outbox: list[dict[str, Any]] = field(default_factory=list)


class SandboxState:
    """Everything the sandbox remembers. Thread-safe through `lock` (re-entrant).

    Parameters
    ----------
    config:
        initial quotas and faults.
    clock:
        returns epoch **seconds** as a float; defaults to `time.time`.
    """

    def __init__(
        self, config: SandboxConfig | None = None, clock: Callable[[], float] | None = None
    ):
        self.lock = threading.RLock()
        self.clock = clock or time.time
        self.config = config or SandboxConfig()
        self.rng = random.Random(self.config.seed)
        self._clear()

    def _clear(self) -> None:
        self.stores = _Stores()
        self.scripts: dict[str, deque[Script]] = {}
        self.windows: dict[tuple[str, str], deque[float]] = {}
        self.request_log: deque[dict[str, Any]] = deque(maxlen=REQUEST_LOG_SIZE)
        self.requests: Counter[str] = Counter()
        self.responses: dict[str, Counter] = {}
        self.throttled = Counter({f: 0 for f in FAMILIES})
        self.faults = Counter({k: 0 for k in ("error", "slow", "throttle", "scripted")})
        self.duplicates = Counter({k: 0 for k in DUPLICATE_KINDS})
        # Retries the sandbox refused as "already exists" (no side effect): the healthy case.
        self.duplicate_rejections = Counter({k: 0 for k in DUPLICATE_KINDS})
        self.accepted: Counter[str] = Counter()
        self.callbacks = Counter({k: 0 for k in CALLBACK_COUNTERS})
        self.callback_log: deque[dict[str, Any]] = deque(maxlen=REQUEST_LOG_SIZE)
        # Bumped by reset(): the dispatcher discards deliveries scheduled before it.
        self.epoch = getattr(self, "epoch", 0) + 1

    def now(self) -> float:
        return self.clock()

    # -- configuration -------------------------------------------------------------

    def configure(self, **changes: Any) -> SandboxConfig:
        """Apply a partial config update; `seed` re-seeds the fault dice."""
        with self.lock:
            self.config = self.config.updated(**changes)
            if "seed" in changes:
                self.rng.seed(self.config.seed)
            return self.config

    def reset(self, config: bool = False) -> None:
        """Forget all provider state, counters, scripts and windows; config too if asked."""
        with self.lock:
            self._clear()
            if config:
                self.config = SandboxConfig()
                self.rng.seed(None)

    # -- faults, scripts, quotas -----------------------------------------------------

    def roll(self, rate: float) -> bool:
        """True with probability `rate`; draws nothing when the rate is 0 (keeps seeded
        runs stable)."""
        if rate <= 0:
            return False
        with self.lock:
            return self.rng.random() < rate

    def add_script(
        self,
        path: str,
        code: int | str,
        times: int = 1,
        http_status: int = 200,
        message: str | None = None,
    ) -> None:
        if times < 1:
            raise ValueError("times must be >= 1")
        with self.lock:
            self.scripts.setdefault(path, deque()).append(
                Script(code, int(times), int(http_status), message)
            )

    def pop_script(self, path: str) -> Script | None:
        with self.lock:
            queue = self.scripts.get(path)
            if not queue:
                return None
            script = queue[0]
            script.times_left -= 1
            if script.times_left <= 0:
                queue.popleft()
            return script

    def acquire(self, quotas: list[tuple[str, str, int]], now: float) -> bool:
        """Take one slot in every (family, credential, limit) window, or none at all.

        Exact sliding window over the last QUOTA_WINDOW_S: a refused request does
        not occupy a slot, so a client that backs off is not punished further.
        """
        with self.lock:
            live = []
            for family, credential, limit in quotas:
                if limit <= 0:
                    continue
                window = self.windows.setdefault((family, credential), deque())
                while window and window[0] <= now - QUOTA_WINDOW_S:
                    window.popleft()
                if len(window) >= limit:
                    return False
                live.append(window)
            for window in live:
                window.append(now)
            return True

    def queue_callback(
        self, kind: str, url: str | None, body: dict[str, Any], *, signed: bool
    ) -> None:
        """Ask the dispatcher to POST `body` to `url` (no-op without a URL). Called by handlers."""
        if not url:
            return
        with self.lock:
            self.callbacks["queued"] += 1
            self.stores.outbox.append(
                {"kind": kind, "url": url, "body": body, "signed": signed, "epoch": self.epoch}
            )

    def take_outbox(self) -> list[dict[str, Any]]:
        with self.lock:
            out, self.stores.outbox = self.stores.outbox, []
            return out

    def log_callback(self, entry: dict[str, Any]) -> None:
        with self.lock:
            self.callback_log.append(entry)

    def recent_callbacks(self, kind: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The last `limit` delivery attempts (optionally of one callback kind), oldest first."""
        with self.lock:
            rows = [r for r in self.callback_log if kind is None or r["kind"] == kind]
        return rows[-limit:] if limit > 0 else []

    def expire_tokens(self) -> int:
        """Make every issued Agent token expired as of now; returns how many."""
        with self.lock:
            now = self.now()
            for token in self.stores.tokens.values():
                token["expires_at"] = min(token["expires_at"], now)
            return len(self.stores.tokens)

    # -- counters and the request log -----------------------------------------------

    def log_request(
        self, method: str, path: str, headers: dict[str, str], body: Any, now: float
    ) -> None:
        with self.lock:
            self.requests[path] += 1
            self.request_log.append(
                {"ts": now, "method": method, "path": path, "headers": headers, "body": body}
            )

    def count_response(self, path: str, code: Any) -> None:
        with self.lock:
            self.responses.setdefault(path, Counter())[str(code)] += 1

    def recent_requests(self, path: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The last `limit` logged requests (optionally for one path), oldest first."""
        with self.lock:
            rows = [r for r in self.request_log if path is None or r["path"] == path]
        return rows[-limit:] if limit > 0 else []

    def stats(self) -> dict[str, Any]:
        with self.lock:
            s = self.stores
            return {
                "requests": dict(self.requests),
                "responses": {p: dict(c) for p, c in self.responses.items()},
                "throttled": dict(self.throttled),
                "faults": dict(self.faults),
                "duplicates": dict(self.duplicates),
                "duplicate_rejections": dict(self.duplicate_rejections),
                "accepted": dict(self.accepted),
                "callbacks": dict(self.callbacks),
                "objects": {
                    "number_check_submissions": len(s.nc_submissions),
                    "callbot_tasks": len(s.cb_tasks),
                    "callbot_orders": len(s.cb_orders),
                    "agent_tokens": len(s.tokens),
                    "agent_calls": len(s.calls),
                },
                "pending_scripts": {
                    p: sum(x.times_left for x in q) for p, q in self.scripts.items() if q
                },
                "config": self.config.to_dict(),
            }
