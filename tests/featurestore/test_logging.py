"""configure_logging: secrets redacted from every record, client libraries quiet unless DEBUG."""

from __future__ import annotations

import io
import json
import logging
from typing import Iterator

import pytest

from featurestore.logging import CLIENT_LOGGERS, SecretFilter, configure_logging
from featurestore.settings import Settings

KAFKA_PW = "k4fka-s3cret"
REDIS_PW = "r3dis+pw/42"  # URL-encoded in the Redis URL
PG_PW = "pg'pw\\9"  # URL-encoded in the DSN; escaped in a repr or JSON string


@pytest.fixture
def settings() -> Settings:
    return Settings(kafka_bootstrap_servers="k:9092", kafka_sasl_password=KAFKA_PW,
                    redis_url="redis://app:r3dis%2Bpw%2F42@cache:6379/0",
                    postgres_dsn="postgresql://app:pg'pw%5C9@db:5432/features")


@pytest.fixture
def configured() -> Iterator[None]:
    """Puts the root logger and the client loggers back as they were."""
    root = logging.getLogger()
    saved = (root.level, list(root.handlers), {name: logging.getLogger(name).level for name in CLIENT_LOGGERS})
    yield
    root.setLevel(saved[0])
    root.handlers[:] = saved[1]
    for name, level in saved[2].items():
        logging.getLogger(name).setLevel(level)


def test_settings_list_every_secret(settings: Settings) -> None:
    assert sorted(settings.secret_values()) == sorted([KAFKA_PW, "r3dis%2Bpw%2F42", "pg'pw%5C9"])
    other = Settings(postgres_dsn="host=db password='kv pw'", redis_url="redis://h:1/0?password=q%40w")
    assert sorted(other.secret_values()) == ["kv pw", "q@w"]
    assert Settings(redis_url="redis://h:1/0", postgres_dsn="postgresql://postgres@h/db").secret_values() == []


@pytest.mark.parametrize("as_json", [False, True], ids=["plain", "json"])
def test_no_secret_reaches_the_output(settings: Settings, configured, as_json: bool) -> None:
    out = io.StringIO()
    configure_logging("DEBUG", json=as_json, stream=out, secrets=settings.secret_values())
    log = logging.getLogger("kafka.admin.client")
    log.debug("Starting KafkaAdminClient with configuration: %s", {"sasl_plain_password": KAFKA_PW})
    logging.getLogger("asyncpg").debug("connect %r", settings.postgres_dsn.get_secret_value())
    logging.getLogger("redis").info("url %s, password %s", settings.redis_url.get_secret_value(), REDIS_PW)
    logging.getLogger("featurestore").warning("pg %s", PG_PW, extra={"dsn": f"password={PG_PW}"})
    try:
        raise ValueError(f"bad password {KAFKA_PW}")
    except ValueError:
        logging.getLogger("featurestore").exception("failed with %s", json.dumps(PG_PW))
    text = out.getvalue()
    for form in (KAFKA_PW, REDIS_PW, "r3dis%2Bpw%2F42", PG_PW, "pg'pw%5C9", repr(PG_PW)[1:-1], json.dumps(PG_PW)[1:-1]):
        assert form not in text, form
    assert text.count("***") >= 6
    assert "Traceback" in text and "ValueError: bad password ***" in text


def test_a_record_whose_arguments_do_not_fit_is_redacted_too() -> None:
    """The handler's report of a formatting error prints the message and the arguments."""
    record = logging.LogRecord("kafka", logging.ERROR, __file__, 1, "%s and %s", (KAFKA_PW,), None)
    assert SecretFilter([KAFKA_PW]).filter(record)
    assert record.args is None
    assert KAFKA_PW not in record.getMessage() and "***" in record.getMessage()


def test_client_loggers_stay_at_warning_unless_debug(configured) -> None:
    configure_logging("INFO", stream=io.StringIO())
    assert logging.getLogger("featurestore").getEffectiveLevel() == logging.INFO
    for name in CLIENT_LOGGERS:
        assert logging.getLogger(f"{name}.some.module").getEffectiveLevel() == logging.WARNING, name
    configure_logging("DEBUG", stream=io.StringIO())
    for name in (*CLIENT_LOGGERS, "featurestore"):
        assert logging.getLogger(f"{name}.some.module").getEffectiveLevel() == logging.DEBUG, name
