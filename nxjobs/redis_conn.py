"""One way to open a Redis client from a URL and its options: short timeouts and a bounded retry,
so a caller that cannot reach Redis gets a clear error within seconds, never a hang.

A URL is one of (docs/configuration.md § Redis):

- `redis://[user:password@]host:port/db`;
- `rediss://...` (TLS), verified against `TlsOptions.ca_file`, with a client certificate if
  given;
- Sentinel, kombu's form: `sentinel://[user:password@]h1:26379;sentinel://h2:26379/0` plus the
  master's name (`sentinel_master`). The user, password and db are the master's; the
  sentinels' own password, if they have one, is `sentinel_password`.

The same `RedisTarget` makes our sync clients (`connect`), the receiver's asyncio client
(`connect_async`) and kombu's options (`kombu_transport_options`, `kombu_ssl`), so a worker,
the receiver, a producer and the exporter all reach the same server the same way.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

SCHEMES = ("redis", "rediss", "sentinel")


class RedisUnavailable(RuntimeError):
    """Redis could not be reached (after a bounded retry)."""


class InvalidRedisUrl(ValueError):
    """A Redis URL or its options cannot work; the message names the setting, never a password."""


@dataclass(frozen=True)
class TlsOptions:
    """For `rediss://`: the CA that signed the server's certificate (None: the system's), a
    client certificate and key (servers with `tls-auth-clients yes`), and whether the server's
    name must match its certificate."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    check_hostname: bool = True

    def redis_kwargs(self) -> dict[str, Any]:
        """redis-py's connection arguments (also what kombu's `broker_use_ssl` takes)."""
        return {
            "ssl_cert_reqs": ssl.CERT_REQUIRED,
            "ssl_ca_certs": self.ca_file,
            "ssl_certfile": self.cert_file,
            "ssl_keyfile": self.key_file,
            "ssl_check_hostname": self.check_hostname,
        }


@dataclass(frozen=True)
class _Parsed:
    scheme: str
    nodes: list[tuple[str, int]]
    username: str | None
    password: str | None
    db: int


@dataclass(frozen=True)
class RedisTarget:
    """A Redis to connect to: its URL, the Sentinel master's name (sentinel:// only), the
    sentinels' password, and the TLS options (rediss:// only)."""

    url: str
    sentinel_master: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    tls: TlsOptions = TlsOptions()

    def __post_init__(self) -> None:
        parsed = self._parse()  # refuses a bad URL at once, naming no password
        if parsed.scheme == "sentinel" and not self.sentinel_master:
            raise InvalidRedisUrl(
                f"{self.describe()} is a Sentinel URL: the master's name is required "
                "(NXJOBS_REDIS_SENTINEL_MASTER / NXJOBS_BROKER_SENTINEL_MASTER)"
            )

    def __repr__(self) -> str:
        return f"RedisTarget({self.describe()!r}, sentinel_master={self.sentinel_master!r})"

    @property
    def scheme(self) -> str:
        return self._parse().scheme

    def describe(self) -> str:
        """The URL without user or password, for logs and errors."""
        return describe(self.url)

    def _parse(self) -> _Parsed:
        parts = [p for p in self.url.split(";") if p.strip()]
        if not parts:
            raise InvalidRedisUrl("empty Redis URL")
        nodes: list[tuple[str, int]] = []
        username = password = None
        db = 0
        schemes = set()
        for part in parts:
            split = urlsplit(part.strip())
            schemes.add(split.scheme)
            try:
                port = split.port
            except ValueError:
                raise InvalidRedisUrl(f"bad port in Redis URL {describe(part)}") from None
            default_port = 26379 if split.scheme == "sentinel" else 6379
            nodes.append((split.hostname or "localhost", port or default_port))
            username = username or (unquote(split.username) if split.username else None)
            password = password or (unquote(split.password) if split.password else None)
            path = split.path.strip("/")
            if path:
                if not path.isdigit():
                    raise InvalidRedisUrl(f"Redis URL {describe(part)}: the db must be a number")
                db = int(path)
        if len(schemes) != 1 or not schemes <= set(SCHEMES):
            raise InvalidRedisUrl(
                f"Redis URL {describe(self.url)}: the scheme must be one of "
                + ", ".join(f"{s}://" for s in SCHEMES)
            )
        scheme = schemes.pop()
        if scheme != "sentinel" and len(nodes) > 1:
            raise InvalidRedisUrl(
                f"Redis URL {describe(self.url)}: several hosts only with sentinel://"
            )
        return _Parsed(scheme, nodes, username, password, db)

    # ---- our clients -----------------------------------------------------------------------------

    def _common(self, parsed: _Parsed) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "db": parsed.db,
            "username": parsed.username,
            "password": parsed.password,
        }
        if parsed.scheme == "rediss":
            kwargs.update(ssl=True, **self.tls.redis_kwargs())
        return kwargs

    def _sentinel_kwargs(self) -> dict[str, Any]:
        return {
            "socket_connect_timeout": 3,
            "socket_timeout": 3,
            "password": self.sentinel_password,
        }

    def connect(self, **overrides: Any) -> redis.Redis:
        """A sync client (decoded responses); `overrides` replace the timeouts below."""
        parsed = self._parse()
        kwargs: dict[str, Any] = {
            "decode_responses": True,
            "socket_connect_timeout": 3,
            "socket_timeout": 10,
            "health_check_interval": 30,
            "retry": Retry(ExponentialBackoff(cap=1.0, base=0.1), retries=3),
            "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
            **self._common(parsed),
            **overrides,
        }
        if parsed.scheme == "sentinel":
            db = kwargs.pop("db")
            sentinel = redis.sentinel.Sentinel(
                parsed.nodes, sentinel_kwargs=self._sentinel_kwargs()
            )
            # A failover shows as one ConnectionError/ReadOnlyError; the retry asks the sentinels
            # again for the new master.
            kwargs["retry_on_error"] = [*kwargs["retry_on_error"], redis.ReadOnlyError]
            return sentinel.master_for(str(self.sentinel_master), db=db, **kwargs)
        host, port = parsed.nodes[0]
        return redis.Redis(host=host, port=port, **kwargs)

    def connect_async(self, **overrides: Any) -> redis.asyncio.Redis:
        """An asyncio client (the receiver's), same URL forms."""
        from redis.asyncio.retry import Retry as AsyncRetry

        parsed = self._parse()
        kwargs: dict[str, Any] = {
            "decode_responses": True,
            "socket_connect_timeout": 3,
            "socket_timeout": 5,
            "retry": AsyncRetry(ExponentialBackoff(cap=1.0, base=0.1), retries=3),
            "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
            **self._common(parsed),
            **overrides,
        }
        if parsed.scheme == "sentinel":
            db = kwargs.pop("db")
            kwargs["retry_on_error"] = [*kwargs["retry_on_error"], redis.ReadOnlyError]
            sentinel = redis.asyncio.sentinel.Sentinel(
                parsed.nodes, sentinel_kwargs=self._sentinel_kwargs()
            )
            return sentinel.master_for(str(self.sentinel_master), db=db, **kwargs)
        host, port = parsed.nodes[0]
        return redis.asyncio.Redis(host=host, port=port, **kwargs)

    # ---- kombu (the broker) --------------------------------------------------------------------

    def kombu_transport_options(self) -> dict[str, Any]:
        """What `broker_transport_options` needs for this URL (Sentinel: the master's name)."""
        if self.scheme != "sentinel":
            return {}
        options: dict[str, Any] = {"master_name": self.sentinel_master}
        if self.sentinel_password:
            options["sentinel_kwargs"] = {"password": self.sentinel_password}
        return options

    def kombu_ssl(self) -> dict[str, Any] | None:
        """`broker_use_ssl` for rediss:// (None otherwise)."""
        return self.tls.redis_kwargs() if self.scheme == "rediss" else None


def connect(target: str | RedisTarget) -> redis.Redis:
    """A sync client for a URL (plain `redis://`/`rediss://` with default TLS) or a target."""
    if isinstance(target, str):
        target = RedisTarget(target)
    return target.connect()


def describe(url: str | RedisTarget) -> str:
    """The URL(s) without user or password, for logs and error messages."""
    if isinstance(url, RedisTarget):
        url = url.url
    out = []
    for part in url.split(";"):
        if not part.strip():
            continue
        parts = urlsplit(part.strip())
        host = parts.hostname or "localhost"
        try:
            port = f":{parts.port}" if parts.port else ""
        except ValueError:
            port = ""
        out.append(f"{parts.scheme}://{host}{port}{parts.path}")
    return ";".join(out)


def target(
    url: str,
    *,
    sentinel_master: str | None = None,
    sentinel_password: str | None = None,
    tls: Mapping[str, Any] | None = None,
) -> RedisTarget:
    """A RedisTarget from settings (`config.settings.Settings.store_redis()` /
    `.broker_redis()`, `nxjobs.producers.ProducerSettings`)."""
    return RedisTarget(
        url,
        sentinel_master=sentinel_master,
        sentinel_password=sentinel_password,
        tls=TlsOptions(**(tls or {})),
    )
