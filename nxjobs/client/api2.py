"""api2 open-platform client (Number Check, OTA, WhatsApp): signed JSON POSTs
(docs/provider.md §2)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from nxjobs.client.errors import ProviderError
from nxjobs.client.signing import Algorithm, api2_headers, serialize_body
from nxjobs.client.transport import Gate, Response, Transport, gated


class Api2Client:
    family = "api2"

    def __init__(
        self,
        transport: Transport,
        *,
        base_url: str,
        access_key: str,
        access_secret: str,
        algorithm: Algorithm = "md5",
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        gate: Gate | None = None,
    ):
        self.transport = transport
        self.base_url = base_url.rstrip("/")
        self.access_key = access_key
        self._access_secret = access_secret
        self.algorithm = algorithm
        self.clock_ms = clock_ms
        self.gate = gate

    def post(self, path: str, *, biz_type: int, action: str, body: dict[str, Any]) -> Response:
        """Sign and send `body`; return the response if its code is 0, else raise ProviderError."""
        with gated(self.gate, self.family, path, body):
            text = serialize_body(body)
            headers = api2_headers(
                access_key=self.access_key,
                access_secret=self._access_secret,
                action=action,
                biz_type=biz_type,
                ts_ms=self.clock_ms(),  # fresh on every attempt: the server allows only ±60 s
                body_text=text,
                algorithm=self.algorithm,
            )
            headers["Content-Type"] = "application/json; charset=utf-8"
            resp = self.transport.post(
                self.base_url + path, data=text.encode("utf-8"), headers=headers
            )
        code = resp.body.get("code")
        if code != 0 and str(code) != "0":
            # Current docs say `message`, legacy ones `msg` (docs/provider.md §5).
            message = resp.body.get("message") or resp.body.get("msg") or ""
            raise ProviderError(
                self.family, code if code is not None else "missing", str(message), endpoint=path
            )
        return resp
