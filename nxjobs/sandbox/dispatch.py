"""The sandbox's callback sender: a background thread that POSTs what the handlers queued.

Handlers only append to `state.stores.outbox` (they stay pure); this thread
takes the outbox, rolls the dice (drop, duplicate), schedules each delivery
`callback_delay_s` (+ up to `callback_jitter_s`, which reorders them) ahead,
and sends when due from a small pool. Callbot callbacks are signed like
NXCloud signs them (reference §4: requestID, uuid, createTs, sign over the raw
body), freshly on every attempt. Anything but a 2xx is tried again every
`callback_retry_s` until `callback_retry_window_s` after the first attempt
(NXCloud: every minute for up to an hour, §5.4), then given up.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import requests

from nxjobs.client.signing import callbot_headers, serialize_body
from nxjobs.sandbox import accounts
from nxjobs.sandbox.state import SandboxState

SEND_TIMEOUT_S = 5.0
SENDERS = 8
IDLE_WAIT_S = 0.02


@dataclass(order=True)
class _Delivery:
    due: float
    seq: int
    kind: str = field(compare=False)
    url: str = field(compare=False)
    text: str = field(compare=False)
    signed: bool = field(compare=False)
    epoch: int = field(compare=False)
    first_attempt: float | None = field(default=None, compare=False)
    attempts: int = field(default=0, compare=False)


class CallbackDispatcher:
    """Start with `start()`, stop with `stop()`; owned by the sandbox handle."""

    def __init__(self, state: SandboxState):
        self.state = state
        self._heap: list[_Delivery] = []
        self._seq = itertools.count()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(max_workers=SENDERS, thread_name_prefix="sandbox-callback")
        self._thread = threading.Thread(target=self._run, name="sandbox-callbacks", daemon=True)

    def start(self) -> "CallbackDispatcher":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def pending(self) -> int:
        with self._lock:
            return len(self._heap)

    # ---- the loop -------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._schedule(self.state.take_outbox())
            for delivery in self._due():
                self._pool.submit(self._send, delivery)
            self._stop.wait(IDLE_WAIT_S)

    def _schedule(self, items: list[dict[str, Any]]) -> None:
        if not items:
            return
        config = self.state.config
        now = time.monotonic()
        with self._lock:
            for item in items:
                if self.state.roll(config.callback_drop_rate):
                    self.state.callbacks["dropped"] += 1
                    continue
                copies = 2 if self.state.roll(config.callback_duplicate_rate) else 1
                if copies == 2:
                    self.state.callbacks["duplicated"] += 1
                text = serialize_body(item["body"])
                for _ in range(copies):
                    delay = config.callback_delay_s + self._jitter(config.callback_jitter_s)
                    heapq.heappush(self._heap, _Delivery(now + delay, next(self._seq), item["kind"], item["url"],
                                                         text, item["signed"], item["epoch"]))

    def _jitter(self, upto: float) -> float:
        if upto <= 0:
            return 0.0
        with self.state.lock:
            return self.state.rng.uniform(0, upto)

    def _due(self) -> list[_Delivery]:
        now = time.monotonic()
        out = []
        with self._lock:
            while self._heap and self._heap[0].due <= now:
                delivery = heapq.heappop(self._heap)
                if delivery.epoch == self.state.epoch:  # scheduled before a reset: forget it
                    out.append(delivery)
        return out

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def _send(self, d: _Delivery) -> None:
        if d.epoch != self.state.epoch:  # the sandbox was reset since this was scheduled
            return
        now = time.monotonic()
        if d.first_attempt is None:
            d.first_attempt = now
        d.attempts += 1
        headers = {"Content-Type": "application/json; charset=utf-8"}
        if d.signed:
            headers.update(callbot_headers(
                secret_key=accounts.CALLBOT_SECRET_KEY, uuid=accounts.CALLBOT_UUID, request_id=uuid.uuid4().hex,
                create_ts_s=int(time.time()), body_text=d.text, algorithm=accounts.CALLBOT_ALGORITHM))
        status: int | str
        try:
            resp = self._session().post(d.url, data=d.text.encode("utf-8"), headers=headers, timeout=SEND_TIMEOUT_S)
            status = resp.status_code
        except requests.RequestException as exc:
            status = type(exc).__name__
        ok = isinstance(status, int) and 200 <= status < 300
        state = self.state
        if d.epoch != state.epoch:  # reset while in flight: not part of the new run's counts
            return
        with state.lock:
            state.callbacks["attempts"] += 1
            state.callbacks["delivered" if ok else "failed_attempts"] += 1
        state.log_callback({"ts": time.time(), "kind": d.kind, "url": d.url, "status": status,
                            "attempt": d.attempts, "body": d.text})
        if ok:
            return
        config = state.config
        retry_at = now + config.callback_retry_s
        if retry_at - d.first_attempt > config.callback_retry_window_s:
            with state.lock:
                state.callbacks["expired"] += 1
            return
        d.due = retry_at
        with self._lock:
            heapq.heappush(self._heap, d)
