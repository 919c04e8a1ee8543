"""RedisServer from workers.devstack: start, PING, restart on the same port,
stop. Skipped only outside CI when no redis-server is installed; in CI
(CI set) a missing Redis is a failure, not a skip."""

from __future__ import annotations

import os
import socket

import pytest

from workers.devstack import RedisServer, find_redis_server, free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def redis_server_bin() -> str:
    try:
        return find_redis_server()
    except RuntimeError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))


def _raw(port: int, command: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(command)
        return s.recv(4096)


def _port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def test_find_redis_server_is_absolute_executable(redis_server_bin):
    assert os.path.isabs(redis_server_bin)
    assert os.access(redis_server_bin, os.X_OK)


def test_free_port_is_bindable():
    port = free_port()
    assert 1024 <= port <= 65535
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_redis_server_lifecycle(redis_server_bin):
    with RedisServer(executable=redis_server_bin) as r:
        port, first_pid = r.port, r.pid
        assert r.url == f"redis://127.0.0.1:{port}/0"
        assert first_pid and r.dir is not None and r.dir.is_dir()
        assert _raw(port, b"PING\r\n").startswith(b"+PONG")
        # Configured like the shipped Redis: AOF persistence, never evicting (no RDB snapshots).
        assert b"noeviction" in _raw(port, b"CONFIG GET maxmemory-policy\r\n")
        assert _raw(port, b"CONFIG GET save\r\n").endswith(b"$0\r\n\r\n")
        assert _raw(port, b"CONFIG GET appendonly\r\n").endswith(b"$3\r\nyes\r\n")

        data_dir = r.dir
        r.restart()
        assert r.port == port and r.dir == data_dir
        assert r.pid and r.pid != first_pid
        assert _raw(port, b"PING\r\n").startswith(b"+PONG")

        r.stop()
        assert r.pid is None
        assert not _port_open(port)
        assert not data_dir.exists()
    assert not _port_open(port)


def test_restart_keeps_data_with_appendonly(redis_server_bin):
    with RedisServer(executable=redis_server_bin, appendonly=True) as r:
        assert _raw(r.port, b"SET nxjobs:k v\r\n").startswith(b"+OK")
        r.restart()
        assert _raw(r.port, b"GET nxjobs:k\r\n") == b"$1\r\nv\r\n"


def test_port_clash_fails_clearly(redis_server_bin):
    with RedisServer(executable=redis_server_bin) as r:
        with pytest.raises(RuntimeError, match="log tail"):
            with RedisServer(port=r.port, executable=redis_server_bin):
                pass


def test_debug_command_is_off_unless_asked_for(redis_server_bin):
    # As shipped: DEBUG refused, so nothing outside a bench or a test can populate or crash it.
    with RedisServer(executable=redis_server_bin, appendonly=False) as r:
        assert _raw(r.port, b"DEBUG POPULATE 10 filler:\r\n").startswith(b"-ERR")
        assert _raw(r.port, b"DBSIZE\r\n") == b":0\r\n"
    # A bench's or a test's server: one DEBUG POPULATE fills the keys.
    with RedisServer(executable=redis_server_bin, appendonly=False, debug_command=True) as r:
        assert _raw(r.port, b"DEBUG POPULATE 1000 filler:\r\n").startswith(b"+OK")
        assert _raw(r.port, b"DBSIZE\r\n") == b":1000\r\n"
