"""Producers and workers read the same NXJOBS_COALESCE__* variables through two models (config
imports nothing of nxjobs, nxjobs never imports config): they must agree field by field."""

from __future__ import annotations

import pytest

from config.settings import CoalesceSettings
from nxjobs import coalesce
from nxjobs.jobs import NUMBER_CHECK_MAX_PHONES
from nxjobs.producers import ProducerCoalesceSettings, ProducerSettings

SHARED = sorted(ProducerCoalesceSettings.model_fields)


def test_producer_fields_are_a_subset_of_the_services() -> None:
    assert SHARED and set(SHARED) <= set(CoalesceSettings.model_fields)


@pytest.mark.parametrize("name", SHARED)
def test_same_default_and_bounds(name: str) -> None:
    ours, theirs = ProducerCoalesceSettings.model_fields[name], CoalesceSettings.model_fields[name]
    assert ours.default == theirs.default
    assert ours.annotation == theirs.annotation
    assert sorted(map(repr, ours.metadata)) == sorted(map(repr, theirs.metadata))


def test_bounds_match_the_provider_limits_nxjobs_knows() -> None:
    assert CoalesceSettings().max_numbers == coalesce.BIG_BATCH_NUMBERS
    le = [m.le for m in CoalesceSettings.model_fields["max_numbers"].metadata if hasattr(m, "le")]
    assert le == [NUMBER_CHECK_MAX_PHONES]


def test_both_read_the_same_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    from config.settings import Settings

    monkeypatch.setenv("NXJOBS_COALESCE__MAX_NUMBERS", "123")
    monkeypatch.setenv("NXJOBS_COALESCE__LINGER_S", "2.5")
    assert ProducerSettings().coalesce.max_numbers == Settings().coalesce.max_numbers == 123
    assert ProducerSettings().coalesce.linger_s == Settings().coalesce.linger_s == 2.5


def test_redis_settings_are_the_same_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Producers reach the same record store and broker as the workers (nxjobs.redis_conn)."""
    from config.settings import RedisTlsSettings, Settings
    from nxjobs.producers import ProducerRedisTlsSettings

    assert ProducerRedisTlsSettings().model_dump() == RedisTlsSettings().model_dump()
    monkeypatch.setenv("NXJOBS_REDIS_URL", "sentinel://h1:26379;sentinel://h2:26379/0")
    monkeypatch.setenv("NXJOBS_REDIS_SENTINEL_MASTER", "mymaster")
    monkeypatch.setenv("NXJOBS_BROKER_URL", "rediss://broker:6380/0")
    monkeypatch.setenv("NXJOBS_REDIS_TLS__CA_FILE", "/ca.pem")
    service, producer = Settings(), ProducerSettings()
    assert service.store_redis()["tls"] == producer.redis_tls.model_dump()
    assert producer.target(
        producer.redis_url, producer.redis_sentinel_master
    ).kombu_transport_options() == {"master_name": "mymaster"}
    assert service.broker_redis()["url"] == producer.broker_url == "rediss://broker:6380/0"
    # The broker's master defaults to the record store's.
    assert service.broker_redis()["sentinel_master"] == "mymaster"
