"""The Transport reads the environment's proxy settings once per origin and still obeys them."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from nxjobs.client.transport import Transport


class _Proxy(BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        _Proxy.seen.append(self.path)
        body = json.dumps({"code": 0}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def proxy():
    server = HTTPServer(("127.0.0.1", 0), _Proxy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Proxy.seen = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _clear_proxy_env(monkeypatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def test_a_proxy_from_the_environment_carries_the_request(proxy, monkeypatch):
    _clear_proxy_env(monkeypatch)
    monkeypatch.setenv("HTTP_PROXY", proxy)
    transport = Transport(connect_timeout_s=2, read_timeout_s=2)
    resp = transport.post("http://provider.example/api/ota/init", data=b"{}", headers={})
    assert resp.body == {"code": 0}
    # A proxy gets the absolute URL: the request went through it, not to provider.example.
    assert _Proxy.seen == ["http://provider.example/api/ota/init"]
    transport.close()


def test_the_environment_is_read_once_per_origin_and_no_proxy_is_obeyed(monkeypatch):
    _clear_proxy_env(monkeypatch)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "direct.example")
    transport = Transport(connect_timeout_s=1, read_timeout_s=1)
    proxied = transport._from_environment("https://provider.example/a")
    assert proxied["proxies"].get("https") == "http://127.0.0.1:9"
    assert "https" not in transport._from_environment("https://direct.example/a")["proxies"]
    monkeypatch.delenv("HTTPS_PROXY")
    # Same origin, another path: what was read first still applies.
    assert transport._from_environment("https://provider.example/b") is proxied
    transport.close()
