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


# ---- calling hours and the do-not-call list: the same variables on both sides ---------------

PAIRS = [
    ("calling_hours", "CallingHoursSettings", "ProducerCallingHoursSettings"),
    ("suppression", "SuppressionSettings", "ProducerSuppressionSettings"),
]


@pytest.mark.parametrize(("group", "service", "producer"), PAIRS)
def test_calling_hours_and_suppression_models_are_equal(
    group: str, service: str, producer: str
) -> None:
    import config.settings
    import nxjobs.producers

    theirs = getattr(config.settings, service).model_fields
    ours = getattr(nxjobs.producers, producer).model_fields
    assert sorted(ours) == sorted(theirs)
    for name in ours:
        assert ours[name].default == theirs[name].default, name
        assert ours[name].default_factory == theirs[name].default_factory, name
        assert ours[name].annotation == theirs[name].annotation, name
        assert sorted(map(repr, ours[name].metadata)) == sorted(map(repr, theirs[name].metadata))


def test_calling_hours_variables_reach_both(monkeypatch: pytest.MonkeyPatch) -> None:
    from config.settings import Settings

    monkeypatch.setenv("NXJOBS_CALLING_HOURS__WINDOW", "10:00-18:00")
    monkeypatch.setenv("NXJOBS_CALLING_HOURS__BY_COUNTRY", '{"SG": {"days": "mon"}}')
    monkeypatch.setenv("NXJOBS_SUPPRESSION__SECRET", "s" * 16)
    for settings in (ProducerSettings(), Settings()):
        assert settings.calling_hours.window == "10:00-18:00"
        assert settings.calling_hours.by_country == {"SG": {"days": "mon"}}
        assert settings.suppression.secret is not None


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("NXJOBS_CALLING_HOURS__WINDOW", "9-20", "window"),
        ("NXJOBS_CALLING_HOURS__DAYS", "monday tuesday", "days"),
        ("NXJOBS_CALLING_HOURS__HOLIDAYS", "U S", "holidays"),
        ("NXJOBS_CALLING_HOURS__BY_COUNTRY", '{"SG": "10-18"}', "by_country"),
        ("NXJOBS_SUPPRESSION__SECRET", "short", "secret"),
    ],
)
def test_malformed_values_are_refused_by_both(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, named: str
) -> None:
    from pydantic import ValidationError

    from config.settings import Settings

    monkeypatch.setenv(variable, value)
    for model in (ProducerSettings, Settings):
        with pytest.raises(ValidationError, match=named):
            model()


def test_both_find_the_settings_files_in_the_same_directory(tmp_path, monkeypatch) -> None:
    from config import settings as service
    from nxjobs import producers

    assert producers.SECRETS_DIR_VARIABLE == service.SECRETS_DIR_VARIABLE
    assert producers.DEFAULT_SECRETS_DIR == service.DEFAULT_SECRETS_DIR
    for env in ({}, {"NXJOBS_SECRETS_DIR": str(tmp_path)}):
        assert producers.settings_files_dir(env) == service.secrets_dir(env)
    with pytest.raises(RuntimeError, match="NXJOBS_SECRETS_DIR"):
        producers.settings_files_dir({"NXJOBS_SECRETS_DIR": str(tmp_path / "absent")})


def test_both_read_the_redis_url_from_its_file(tmp_path, monkeypatch) -> None:
    from config.settings import Settings

    # Given the Redis URL only as a file (how the Kubernetes pods get it)
    monkeypatch.delenv("NXJOBS_REDIS_URL", raising=False)
    (tmp_path / "NXJOBS_REDIS_URL").write_text("redis://:pw@redis.internal:6379/2\n")
    (tmp_path / "..data").mkdir()
    monkeypatch.setenv("NXJOBS_SECRETS_DIR", str(tmp_path))
    # Then `nxjobs status` in a pod reaches the same Redis as the workers
    url = "redis://:pw@redis.internal:6379/2"
    assert ProducerSettings(_env_file=None).redis_url == Settings(_env_file=None).redis_url == url


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


def test_both_read_a_nested_setting_from_its_file(tmp_path, monkeypatch) -> None:
    from config.settings import Settings

    # Given the do-not-call list's key only as a file (a nested setting: `__`)
    monkeypatch.delenv("NXJOBS_SUPPRESSION__SECRET", raising=False)
    (tmp_path / "NXJOBS_SUPPRESSION__SECRET").write_text("k" * 20 + "\n")
    monkeypatch.setenv("NXJOBS_SECRETS_DIR", str(tmp_path))
    # Then `nxjobs suppress` in a pod has the workers' key
    for settings in (ProducerSettings(_env_file=None), Settings(_env_file=None)):
        assert settings.suppression.secret is not None
        assert settings.suppression.secret.get_secret_value() == "k" * 20
