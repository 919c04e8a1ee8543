"""Callbot v3 client: signed JSON POSTs under /callcentre/api/v3/ (docs/provider.md §3, §6)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from nxjobs.client.errors import ProviderError
from nxjobs.client.signing import Algorithm, callbot_headers, serialize_body
from nxjobs.client.transport import Gate, Response, Transport, gated

API_PREFIX = "/callcentre/api/v3/"


class CallbotClient:
    family = "callbot"

    def __init__(
        self,
        transport: Transport,
        *,
        base_url: str,
        uuid: str,
        secret_key: str,
        algorithm: Algorithm = "md5",
        clock_s: Callable[[], float] = time.time,
        new_request_id: Callable[[], str] = lambda: uuid.uuid4().hex,
        gate: Gate | None = None,
    ):
        self.transport = transport
        self.base_url = base_url.rstrip("/")
        self.uuid = uuid
        self._secret_key = secret_key
        self.algorithm = algorithm
        self.clock_s = clock_s
        self.new_request_id = new_request_id
        self.gate = gate

    def post(self, endpoint: str, body: dict[str, Any]) -> Response:
        """Sign and send; return the response if retCode is 0, else raise ProviderError."""
        with gated(self.gate, self.family, endpoint, body):
            text = serialize_body({"productID": "callbot", **body})
            headers = callbot_headers(
                secret_key=self._secret_key,
                uuid=self.uuid,
                request_id=self.new_request_id(),  # fresh per attempt, like createTs
                create_ts_s=int(self.clock_s()),
                body_text=text,
                algorithm=self.algorithm,
            )
            headers["Content-Type"] = "application/json; charset=utf-8"
            resp = self.transport.post(
                self.base_url + API_PREFIX + endpoint, data=text.encode("utf-8"), headers=headers
            )
        # ping answers with `code`/`msg`; everything else with `retCode`/`retMsg`.
        code = resp.body.get("retCode", resp.body.get("code"))
        if str(code) != "0":
            message = resp.body.get("retMsg") or resp.body.get("msg") or ""
            raise ProviderError(
                self.family,
                code if code is not None else "missing",
                str(message),
                endpoint=endpoint,
            )
        return resp
