"""Settings: environment prefix, secret masking, project name validation, server helpers."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

from featurestore.exceptions import ConfigurationError
from featurestore.settings import Settings, mask_url


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("FEATURESTORE_"):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    s = Settings()
    assert s.project == "default"
    assert s.state_dir == Path(".featurestore")
    assert s.kafka_bootstrap_servers is None
    assert s.uses_embedded()


def test_env_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEATURESTORE_KAFKA_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("FEATURESTORE_REDIS_URL", "redis://:s3cret@cache:6379/0")
    monkeypatch.setenv("FEATURESTORE_POSTGRES_DSN", "postgresql://app:pgpw@db:5432/features")
    monkeypatch.setenv("FEATURESTORE_PROJECT", "fraud_v2")
    monkeypatch.setenv("FEATURESTORE_STATE_DIR", "/var/lib/fs")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "unprefixed:1")  # ignored
    s = Settings()
    assert s.kafka_bootstrap_servers == "k1:9092,k2:9092"
    assert s.redis_url.get_secret_value() == "redis://:s3cret@cache:6379/0"
    assert s.project == "fraud_v2"
    assert s.state_dir == Path("/var/lib/fs")
    assert not s.uses_embedded()


def test_as_dict_masks_secrets_and_url_passwords() -> None:
    s = Settings(
        kafka_bootstrap_servers="k:9092", kafka_sasl_username="svc", kafka_sasl_password="kpw",
        redis_url="redis://:s3cret@cache:6379/0", postgres_dsn="postgresql://app:pgpw@db:5432/features",
    )
    masked = s.as_dict()
    assert masked["kafka_sasl_password"] == "***"
    assert masked["redis_url"] == "redis://:***@cache:6379/0"
    assert masked["postgres_dsn"] == "postgresql://app:***@db:5432/features"
    assert masked["kafka_sasl_username"] == "svc"
    text = repr(masked) + repr(s) + "\n".join(s.env_lines())
    for secret in ("kpw", "s3cret", "pgpw"):
        assert secret not in text
    plain = s.as_dict(plaintext_secrets=True)
    assert plain["redis_url"] == "redis://:s3cret@cache:6379/0"
    assert plain["kafka_sasl_password"] == "kpw"


@pytest.mark.parametrize(("url", "expected"), [
    ("redis://:pw@h", "redis://:***@h"),
    ("postgresql://u:pw@h/db", "postgresql://u:***@h/db"),
    ("postgresql://u@h/db", "postgresql://u@h/db"),
    ("redis://h:6379/0", "redis://h:6379/0"),
    ("rediss://user:p%40ss@h:6380/1?ssl_cert_reqs=none", "rediss://user:***@h:6380/1?ssl_cert_reqs=none"),
    ("host=db user=app password=pw dbname=f", "host=db user=app password=*** dbname=f"),
])
def test_mask_url(url: str, expected: str) -> None:
    assert mask_url(url) == expected


@given(password=st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!$&()*+,;=~.-_", min_size=1, max_size=30))
def test_mask_url_never_leaks_password(password: str) -> None:
    for url in (f"postgresql://app:{password}@db.internal:5432/features", f"redis://:{password}@cache:6379/0"):
        masked = mask_url(url)
        assert ":***@" in masked
        assert f":{password}@" not in masked or password == "***"


@pytest.mark.parametrize("bad", ["Default", "1abc", "has-dash", "", "a" * 41, "spa ce"])
def test_project_validation_names_the_field(bad: str) -> None:
    with pytest.raises(pydantic.ValidationError) as info:
        Settings(project=bad)
    assert info.value.errors()[0]["loc"] == ("project",)
    assert "project" in str(info.value)


def test_project_from_env_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEATURESTORE_PROJECT", "Bad-Name")
    with pytest.raises(pydantic.ValidationError, match="project"):
        Settings()


def test_kafka_client_options_only_set_values() -> None:
    s = Settings(kafka_bootstrap_servers="k:9092")
    assert s.kafka_client_options() == {"bootstrap_servers": "k:9092"}
    s = Settings(kafka_bootstrap_servers="k:9093", kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="PLAIN",
                 kafka_sasl_username="svc", kafka_sasl_password="pw", kafka_ssl_cafile="/ca.pem")
    assert s.kafka_client_options() == {
        "bootstrap_servers": "k:9093", "security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "svc", "sasl_plain_password": "pw", "ssl_cafile": "/ca.pem",
    }


def test_kafka_client_options_without_bootstrap_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="FEATURESTORE_KAFKA_BOOTSTRAP_SERVERS"):
        Settings().kafka_client_options()


def test_with_servers_returns_filled_copy() -> None:
    s = Settings(redis_url="redis://:pw@r:1/0")
    filled = s.with_servers("k:1", None, "postgresql://postgres@p:2/postgres")
    assert filled is not s
    assert s.kafka_bootstrap_servers is None
    assert filled.kafka_bootstrap_servers == "k:1"
    assert filled.redis_url.get_secret_value() == "redis://:pw@r:1/0"
    assert filled.postgres_dsn.get_secret_value() == "postgresql://postgres@p:2/postgres"
    assert not filled.uses_embedded()
