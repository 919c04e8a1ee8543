"""nxjobs.redis_conn: the URL forms, what each client and kombu are given, and no password in
anything an operator reads."""

from __future__ import annotations

import ssl

import pytest

from nxjobs.redis_conn import InvalidRedisUrl, RedisTarget, TlsOptions, describe, target

SENTINEL = "sentinel://u:pw@h1:26379;sentinel://h2:26380/3"


def test_sentinel_url_lists_every_sentinel_and_the_masters_db_and_credentials() -> None:
    t = RedisTarget(SENTINEL, sentinel_master="mymaster")
    parsed = t._parse()
    assert (parsed.scheme, parsed.nodes, parsed.db) == (
        "sentinel",
        [("h1", 26379), ("h2", 26380)],
        3,
    )
    assert (parsed.username, parsed.password) == ("u", "pw")
    assert t.kombu_transport_options() == {"master_name": "mymaster"}
    assert t.kombu_ssl() is None


def test_sentinel_needs_its_master_name() -> None:
    with pytest.raises(InvalidRedisUrl, match="NXJOBS_REDIS_SENTINEL_MASTER") as exc:
        RedisTarget(SENTINEL)
    assert "pw" not in str(exc.value)


def test_sentinel_password_goes_to_kombu_apart() -> None:
    t = RedisTarget(SENTINEL, sentinel_master="m", sentinel_password="spw")
    assert t.kombu_transport_options()["sentinel_kwargs"] == {"password": "spw"}
    assert "spw" not in repr(t)


@pytest.mark.parametrize(
    "url", ["http://h:1/0", "redis://a:1;redis://b:2/0", "redis://h:1/x", "redis://h:port/0", ""]
)
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(InvalidRedisUrl):
        RedisTarget(url)


def test_rediss_carries_the_tls_options_to_both_clients() -> None:
    t = target("rediss://h:6380/0", tls={"ca_file": "/ca.pem", "check_hostname": False})
    ssl_kwargs = t.kombu_ssl()
    assert ssl_kwargs is not None
    assert ssl_kwargs["ssl_ca_certs"] == "/ca.pem"
    assert ssl_kwargs["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    assert ssl_kwargs["ssl_check_hostname"] is False
    kwargs = t.connect().connection_pool.connection_kwargs
    assert kwargs["ssl_ca_certs"] == "/ca.pem" and kwargs["ssl_check_hostname"] is False
    assert RedisTarget("redis://h/0", tls=TlsOptions(ca_file="/x")).kombu_ssl() is None


def test_acl_user_and_password_reach_the_client_and_never_the_description() -> None:
    t = RedisTarget("redis://nxjobs:s3cret@h:6379/2")
    kwargs = t.connect().connection_pool.connection_kwargs
    assert (kwargs["username"], kwargs["password"], kwargs["db"]) == ("nxjobs", "s3cret", 2)
    assert describe(t) == "redis://h:6379/2"
    assert describe(SENTINEL) == "sentinel://h1:26379;sentinel://h2:26380/3"
    assert "s3cret" not in repr(t)
