"""Runtime settings read from FEATURESTORE_* environment variables."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit, urlunsplit

from pydantic import PositiveInt, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from featurestore.exceptions import ConfigurationError

__all__ = ["Settings", "mask_url", "url_passwords", "ENV_PREFIX", "MASK"]

ENV_PREFIX = "FEATURESTORE_"
MASK = "***"
PROJECT_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,39}$")

# Settings field -> kafka-python client keyword argument.
_KAFKA_OPTIONS = {
    "kafka_security_protocol": "security_protocol",
    "kafka_sasl_mechanism": "sasl_mechanism",
    "kafka_sasl_username": "sasl_plain_username",
    "kafka_sasl_password": "sasl_plain_password",
    "kafka_ssl_cafile": "ssl_cafile",
    "kafka_ssl_certfile": "ssl_certfile",
    "kafka_ssl_keyfile": "ssl_keyfile",
}
_URL_FIELDS = ("redis_url", "postgres_dsn")
_KV_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def mask_url(url: str) -> str:
    """Return *url* with the password of its user info replaced by ``***``.

    Handles URLs (``redis://:pw@h``, ``postgresql://u:pw@h/db``) and libpq
    key/value DSNs (``host=h password=pw``). URLs without a password are unchanged.
    """
    if "://" not in url:
        return _KV_PASSWORD.sub(lambda m: m.group(1) + MASK, url)
    parts = urlsplit(url)
    userinfo, sep, hostinfo = parts.netloc.rpartition("@")
    if not sep or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    netloc = f"{user}:{MASK}@{hostinfo}"
    masked = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return _KV_PASSWORD.sub(lambda m: m.group(1) + MASK, masked)


def url_passwords(url: str) -> list[str]:
    """The passwords written in *url*: of its user info and of a ``password`` query parameter, or
    the ``password=`` value of a libpq key/value DSN (unquoted)."""
    if "://" not in url:
        found = [m.group(2) for m in _KV_PASSWORD.finditer(url)]
        return [re.sub(r"\\(.)", r"\1", p[1:-1]) if p.startswith("'") else p for p in found]
    parts = urlsplit(url)
    userinfo, sep, _ = parts.netloc.rpartition("@")
    found = [userinfo.split(":", 1)[1]] if sep and ":" in userinfo else []
    found += parse_qs(parts.query).get("password", [])
    return [p for p in found if p]


class Settings(BaseSettings):
    """Connection and project settings; every field maps to ``FEATURESTORE_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", validate_default=True)

    kafka_bootstrap_servers: str | None = None
    kafka_security_protocol: str | None = None
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: str | None = None
    kafka_ssl_certfile: str | None = None
    kafka_ssl_keyfile: str | None = None
    redis_url: SecretStr | None = None
    #: the online store is a Redis Cluster (also implied by a ``redis+cluster://`` URL); docs/redis-cluster.md
    redis_cluster: bool = False
    postgres_dsn: SecretStr | None = None
    state_dir: Path = Path(".featurestore")
    project: str = "default"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"
    #: address of the worker's /metrics, /healthz and /readyz server ("0.0.0.0": every interface)
    metrics_host: str = "127.0.0.1"
    #: the worker's Kafka consumer library: kafka-python, or confluent (confluent-kafka: librdkafka's consumer,
    #: which parses records in C, in threads of its own)
    kafka_client: Literal["kafka-python", "confluent"] = "kafka-python"
    #: bearer token the feature server (`featurestore serve`) requires on every endpoint but its probes
    server_token: SecretStr | None = None
    #: most entity rows of one /get-online-features request
    server_max_entities: PositiveInt = 1000
    #: largest request body the feature server reads, in bytes
    server_max_body_bytes: PositiveInt = 1_048_576
    #: the PostgreSQL JDBC driver's jar for the Spark engine's reads of the event log (None:
    #: /usr/share/java/postgresql.jar, Debian's libpostgresql-jdbc-java)
    spark_jdbc_jar: str | None = None

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("project")
    @classmethod
    def _check_project(cls, value: str) -> str:
        if not PROJECT_PATTERN.match(value):
            raise ValueError(
                f"project must match {PROJECT_PATTERN.pattern} "
                f"(lowercase letter first, then up to 39 of a-z, 0-9, _), got {value!r}"
            )
        return value

    def kafka_client_options(self) -> dict[str, Any]:
        """Keyword arguments for kafka-python clients: bootstrap servers plus the security options that are set."""
        if not self.kafka_bootstrap_servers:
            raise ConfigurationError(
                f"{ENV_PREFIX}KAFKA_BOOTSTRAP_SERVERS is not set (run `featurestore dev up` for a local stack)"
            )
        options: dict[str, Any] = {"bootstrap_servers": self.kafka_bootstrap_servers}
        for field, kwarg in _KAFKA_OPTIONS.items():
            value = getattr(self, field)
            if value is None:
                continue
            options[kwarg] = value.get_secret_value() if isinstance(value, SecretStr) else value
        return options

    def as_dict(self, plaintext_secrets: bool = False) -> dict[str, Any]:
        """All fields as plain values; secrets and passwords inside URLs are masked unless *plaintext_secrets*."""
        result: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                plain = value.get_secret_value()
                if plaintext_secrets:
                    value = plain
                elif name in _URL_FIELDS:
                    value = mask_url(plain)
                else:
                    value = MASK
            elif isinstance(value, Path):
                value = str(value)
            result[name] = value
        return result

    def secret_values(self) -> list[str]:
        """The plain text of every secret that is set: the secret fields, and the passwords inside
        the URL ones (for logging to redact)."""
        values: list[str] = []
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                plain = value.get_secret_value()
                values.extend(url_passwords(plain) if name in _URL_FIELDS else [plain])
        return [v for v in values if v]

    def uses_embedded(self) -> bool:
        """True when any of Kafka, Redis or PostgreSQL is unset and must come from the embedded stack."""
        return not (self.kafka_bootstrap_servers and self.redis_url and self.postgres_dsn)

    def with_servers(
        self,
        kafka: str | None = None,
        redis_url: str | None = None,
        postgres_dsn: str | None = None,
    ) -> Settings:
        """Copy of these settings with the given server addresses; ``None`` keeps the current value."""
        update: dict[str, Any] = {}
        if kafka is not None:
            update["kafka_bootstrap_servers"] = kafka
        if redis_url is not None:
            update["redis_url"] = SecretStr(redis_url)
        if postgres_dsn is not None:
            update["postgres_dsn"] = SecretStr(postgres_dsn)
        return self.model_copy(update=update)

    def env_lines(self, plaintext_secrets: bool = False) -> list[str]:
        """``export FEATURESTORE_X=value`` lines for the server settings that are set."""
        values = self.as_dict(plaintext_secrets=plaintext_secrets)
        lines = []
        for name in ("kafka_bootstrap_servers", "redis_url", "postgres_dsn", "state_dir", "project"):
            if values[name] is not None:
                lines.append(f"export {ENV_PREFIX}{name.upper()}={_shell_quote(str(values[name]))}")
        return lines


def _shell_quote(value: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9_@%+=:,./-]+", value):
        return value
    return "'" + value.replace("'", "'\"'\"'") + "'"
