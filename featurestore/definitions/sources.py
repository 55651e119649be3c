"""Entities and event sources."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ..exceptions import DefinitionError
from ..types import INT64, STRING, TIMESTAMP, ValueType
from ._base import Definition, Duration, TypeField, check_name

TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


class Entity(Definition):
    """What features are about (a customer, a card).  ``join_key`` is the column
    naming it in requests and training rows; ``key_type`` is ``"string"`` or ``"int64"``."""

    positional = ("name", "join_key", "key_type", "description")

    name: str
    join_key: str
    key_type: Literal["string", "int64"] = "string"
    description: str = ""

    @field_validator("join_key")
    @classmethod
    def _join_key(cls, v: Any) -> str:
        return check_name(v, "join_key")

    @property
    def value_type(self) -> ValueType:
        return ValueType.parse(self.key_type)


class FileHistory(Definition):
    """Past events in a Parquet or CSV file (format inferred from the suffix when
    not given).  A relative path is resolved against the repository file's folder
    by ``load_repo``.  ``reference_column``: a column of epoch-ms times (when each
    event was recorded, as a Kafka timestamp is) that the source's ``max_future``
    judges event times against; without it, the time the backfill starts."""

    positional = ("path", "format")

    path: str
    format: Literal["parquet", "csv"] | None = None
    reference_column: str | None = None

    @model_validator(mode="after")
    def _infer_format(self) -> "FileHistory":
        if self.format is None:
            suffix = Path(self.path).suffix.lower().lstrip(".")
            if suffix not in ("parquet", "csv"):
                raise DefinitionError(
                    f"FileHistory {self.path!r}: field 'format': cannot infer the format from "
                    f"suffix {suffix!r}; give format='parquet' or 'csv'"
                )
            object.__setattr__(self, "format", suffix)
        return self

    def resolve(self, base: str | Path) -> "FileHistory":
        """Same history with a relative ``path`` made absolute against ``base``."""
        p = Path(self.path)
        if p.is_absolute():
            return self
        return FileHistory(path=str((Path(base) / p).resolve()), format=self.format,
                           reference_column=self.reference_column)


class TableHistory(Definition):
    """Past events in a PostgreSQL table (``table`` or ``schema.table``)."""

    positional = ("table",)

    table: str

    @field_validator("table")
    @classmethod
    def _table(cls, v: Any) -> str:
        if not isinstance(v, str):
            raise ValueError(f"expected a table name, got {v!r}")
        parts = v.split(".")
        if len(parts) > 2:
            raise ValueError(f"table {v!r} must be 'table' or 'schema.table'")
        for part in parts:
            check_name(part, "table")
        return v


with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*shadows an attribute.*")

    class EventSource(Definition):
        """A Kafka topic of JSON events.

        ``schema`` maps every field to a type name; the ``timestamp_field`` has type
        ``"timestamp"`` (ISO-8601 string, epoch ms int or datetime in events), the
        ``entity_field`` ``"string"`` or ``"int64"``.  All schema fields are required
        in events except ``optional_fields`` (which may also be null).
        ``allowed_lateness`` (``"5m"`` or ms) is how late an event may arrive.

        Limits, so that every accepted event fits the stores (an event beyond one is
        dead-lettered with a reason, never written): ``max_message_bytes`` per Kafka
        record (``oversize``); ``max_key_bytes`` per entity key and event id in UTF-8
        (``key_too_long``); ``max_string_bytes`` per string field, overridden per field
        by ``string_limits`` (``too_long``); ``max_future``, how far an event time may
        lie after its record's Kafka timestamp (``future_timestamp``; ``None`` turns
        the check off).
        """

        positional = ("name", "topic", "schema", "timestamp_field", "entity_field")

        name: str
        topic: str
        schema: dict[str, TypeField]  # type: ignore[assignment]  # the field users name; shadows BaseModel.schema
        timestamp_field: str
        entity_field: str
        event_id_field: str | None = None
        allowed_lateness: Duration = 0
        history: FileHistory | TableHistory | None = None
        max_message_bytes: int = Field(default=1_000_000, gt=0)
        max_key_bytes: int = Field(default=512, gt=0, le=2048)
        max_string_bytes: int = Field(default=65_536, gt=0)
        string_limits: dict[str, int] = Field(default_factory=dict)
        max_future: Duration | None = 3_600_000
        optional_fields: tuple[str, ...] = ()
        description: str = ""
        owner: str = ""

        @field_validator("topic")
        @classmethod
        def _topic(cls, v: Any) -> str:
            if not isinstance(v, str) or not TOPIC_RE.match(v) or v in (".", ".."):
                raise ValueError(f"topic {v!r} is not a valid Kafka topic name")
            return v

        @field_validator("schema")
        @classmethod
        def _schema(cls, v: dict[str, ValueType]) -> dict[str, ValueType]:
            if not v:
                raise ValueError("schema must list at least the timestamp and entity fields")
            for key in v:
                check_name(key, "field")
            return v

        @field_validator("allowed_lateness")
        @classmethod
        def _lateness(cls, v: int) -> int:
            if v < 0:
                raise ValueError(f"allowed_lateness must not be negative, got {v} ms")
            return v

        @model_validator(mode="after")
        def _fields(self) -> "EventSource":
            where = f"EventSource {self.name!r}"
            fields = ", ".join(self.schema)

            def need(field: str, attr: str, allowed: tuple[ValueType, ...]) -> None:
                if field not in self.schema:
                    raise DefinitionError(f"{where}: field {attr!r}: {field!r} is not in the schema (fields: {fields})")
                t = self.schema[field]
                if t not in allowed:
                    names = " or ".join(a.name for a in allowed)
                    raise DefinitionError(f"{where}: field {attr!r}: {field!r} has type {t.name}, expected {names}")

            need(self.timestamp_field, "timestamp_field", (TIMESTAMP,))
            need(self.entity_field, "entity_field", (STRING, INT64))
            if self.event_id_field is not None:
                need(self.event_id_field, "event_id_field", (STRING, INT64))
            for f, limit in self.string_limits.items():
                if self.schema.get(f) != STRING:
                    raise DefinitionError(f"{where}: field 'string_limits': {f!r} is not a string field of the schema "
                                          f"(fields: {fields})")
                if not isinstance(limit, int) or limit < 1:
                    raise DefinitionError(f"{where}: field 'string_limits': the limit of {f!r} must be a positive "
                                          f"number of bytes, got {limit!r}")
            if self.max_future is not None and self.max_future < 0:
                raise DefinitionError(f"{where}: field 'max_future' must not be negative, got {self.max_future} ms")
            for f in self.optional_fields:
                if f not in self.schema:
                    raise DefinitionError(f"{where}: field 'optional_fields': {f!r} is not in the schema "
                                          f"(fields: {fields})")
                if f in (self.timestamp_field, self.entity_field):
                    raise DefinitionError(f"{where}: field 'optional_fields': {f!r} is the timestamp or entity field "
                                          "and cannot be optional")
            return self

        @property
        def fields(self) -> list[str]:
            return list(self.schema)

        def string_limit(self, field: str) -> int:
            """Largest UTF-8 size in bytes of string ``field`` (the entity key and event id: ``max_key_bytes``)."""
            if field in (self.entity_field, self.event_id_field):
                return min(self.max_key_bytes, self.string_limits.get(field, self.max_key_bytes))
            return self.string_limits.get(field, self.max_string_bytes)

        def to_json(self) -> dict[str, Any]:
            return self.model_dump(mode="json")


__all__ = ["Entity", "EventSource", "FileHistory", "TableHistory"]
