"""Agent API client (legacy): token, makecall and CDR lookup (docs/provider.md §7).

Credentials travel in form fields, not signatures; none of them is ever
returned, logged or put in an exception message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from nxjobs.client.errors import ProviderError
from nxjobs.client.signing import serialize_body
from nxjobs.client.transport import Gate, Response, Transport, gated

TOKEN_PATH = "/v1/call/token"
MAKECALL_PATH = "/v1/call/makecall"
CDR_BY_ORDERID_PATH = "/api/voiceSms/getSipCdrByOrderid"

T = TypeVar("T")


class TokenSource(Protocol):
    """Where makecall gets its token: shared by every worker (nxjobs.agent_tokens keeps it in
    Redis), so the client itself holds no store."""

    def call(self, fn: Callable[[str], T]) -> T:
        """Run `fn(token)`, refreshing the token once if the provider says it is stale."""
        ...


class AgentClient:
    family = "agent"

    def __init__(
        self,
        transport: Transport,
        *,
        base_url: str,
        cdr_base_url: str,
        appkey: str,
        secretkey: str,
        gate: Gate | None = None,
    ):
        self.transport = transport
        self.base_url = base_url.rstrip("/")
        self.cdr_base_url = cdr_base_url.rstrip("/")
        self.appkey = appkey
        self._secretkey = secretkey
        self.gate = gate

    def _check(self, resp: Response, endpoint: str) -> Response:
        code = resp.body.get("code")
        if str(code) != "0":
            raise ProviderError(
                self.family,
                code if code is not None else "missing",
                str(resp.body.get("info") or ""),
                endpoint=endpoint,
            )
        return resp

    def fetch_token(self) -> tuple[str, int]:
        """A new token and its lifetime in seconds."""
        resp = self.transport.post(
            self.base_url + TOKEN_PATH,
            data={"appkey": self.appkey, "secretkey": self._secretkey},
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        self._check(resp, TOKEN_PATH)
        return str(resp.body["token"]), int(resp.body.get("expireinterval") or 1200)

    def make_call(
        self, *, token: str, username: str, phone: str, orderid: str, showphone: str | None
    ) -> Response:
        form = {"token": token, "username": username, "phone": phone, "orderid": orderid}
        if showphone:
            form["showphone"] = showphone
        with gated(self.gate, self.family, MAKECALL_PATH, form):
            resp = self.transport.post(
                self.base_url + MAKECALL_PATH,
                data=form,
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
        return self._check(resp, MAKECALL_PATH)

    def cdr_by_orderid(self, orderids: list[str]) -> list[dict[str, Any]]:
        """CDR rows for up to 20 orderids (only the last 15 days exist)."""
        if not 1 <= len(orderids) <= 20:
            raise ValueError("cdr_by_orderid takes 1 to 20 orderids")
        with gated(self.gate, "cdr", CDR_BY_ORDERID_PATH, orderids):
            text = serialize_body(
                {"orderid": ",".join(orderids), "appkey": self.appkey, "secretkey": self._secretkey}
            )
            resp = self.transport.post(
                self.cdr_base_url + CDR_BY_ORDERID_PATH,
                data=text.encode("utf-8"),
                headers={"Content-Type": "application/json; charset=utf-8"},
            )
        code = resp.body.get("code")
        if str(code) != "0":
            raise ProviderError(
                "cdr",
                code if code is not None else "missing",
                str(resp.body.get("info") or ""),
                endpoint=CDR_BY_ORDERID_PATH,
            )
        return list(resp.body.get("row") or [])
