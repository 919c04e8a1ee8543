"""Client for the sandbox's unauthenticated /_sandbox/* control API (tests, demo, CLI).

Talks HTTP only, so it works against an in-thread sandbox or one in another
process or container.
"""

from __future__ import annotations

from typing import Any

import requests


class SandboxControl:
    """Wraps the control endpoints of the sandbox at `base_url` (e.g. ``http://127.0.0.1:8090``).

    Every method raises `requests.HTTPError` on a non-2xx answer (bad config key, unknown path).
    """

    def __init__(self, base_url: str, timeout_s: float = 5.0):
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._session = requests.Session()

    def _call(self, method: str, name: str, **kw: Any) -> dict[str, Any]:
        resp = self._session.request(
            method, f"{self.base_url}/_sandbox/{name}", timeout=self.timeout_s, **kw
        )
        resp.raise_for_status()
        return resp.json()

    def health(self) -> bool:
        return bool(self._call("GET", "health").get("ok"))

    def stats(self) -> dict[str, Any]:
        """Counters: requests, responses[path][code], throttled, faults, duplicates, accepted,
        config."""
        return self._call("GET", "stats")

    def requests(self, path: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The last `limit` API requests received (oldest first), optionally for one path."""
        params: dict[str, Any] = {"limit": limit}
        if path:
            params["path"] = path
        return self._call("GET", "requests", params=params)["requests"]

    def callbacks(self, kind: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The last `limit` callback delivery attempts (oldest first): kind, url, status,
        attempt, body.

        `kind`: number-check, callbot-call, callbot-order, callbot-task or cdr."""
        params: dict[str, Any] = {"limit": limit}
        if kind:
            params["kind"] = kind
        return self._call("GET", "callbacks", params=params)["callbacks"]

    def configure(self, **changes: Any) -> dict[str, Any]:
        """Partial update of quotas/faults/token_ttl_s/number_check_shape/seed and the callback_* /
        cdr_callback_url settings (callback_drop_rate=1.0 drops every callback); returns the new
        config."""
        return self._call("POST", "config", json=changes)["config"]

    def script(
        self,
        path: str,
        code: int | str,
        times: int = 1,
        http_status: int = 200,
        message: str | None = None,
    ) -> None:
        """Answer the next `times` verified requests to `path` with body `code` (or HTTP
        `http_status`)."""
        payload = {
            "path": path,
            "code": code,
            "times": times,
            "http_status": http_status,
            "message": message,
        }
        self._call("POST", "script", json=payload)

    def expire_tokens(self) -> int:
        """Make every Agent token issued so far expired; returns how many."""
        return int(self._call("POST", "expire-tokens")["expired"])

    def reset(self, config: bool = False) -> None:
        """Forget state, counters and scripts; also restore default config when `config`."""
        self._call("POST", "reset", json={"config": config})

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> SandboxControl:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
