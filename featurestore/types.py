"""Value types of event fields and feature values.

Each type has a JSON name (``"int64"``, ``"list<float64>"``, ``"embedding<128>"``),
``ValueType.parse(name)`` to get it back, ``coerce(value)`` that checks and
converts one Python value (raising ``ValueError`` that names the expected type
and what was given), and ``pg_type``, the PostgreSQL column type.

Rules of ``coerce``: ``bool`` is not an int; an ``int`` is accepted for a float;
NaN is a valid float; an embedding must have exactly ``dim`` numbers; ``None``
is never accepted (callers decide about nulls).  ``timestamp`` coerces
ISO-8601 strings, epoch-millisecond ints and datetimes to epoch ms (int).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, ClassVar

import numpy as np

__all__ = [
    "ValueType",
    "Embedding",
    "INT64",
    "FLOAT64",
    "STRING",
    "BOOL",
    "TIMESTAMP",
    "LIST_INT64",
    "LIST_FLOAT64",
    "parse_timestamp",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def parse_timestamp(value: Any) -> int:
    """ISO-8601 string (naive means UTC; ``Z`` and offsets accepted), epoch
    milliseconds ``int`` or ``datetime`` -> epoch milliseconds.

    Floats (ambiguous seconds/ms) and bools are rejected with ``ValueError``.
    """
    t = type(value)
    if t is int:
        return value
    if t is str:
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"expected an ISO-8601 timestamp or epoch ms, got {_describe(value)}") from None
    elif isinstance(value, datetime):
        dt = value
    elif isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return int(value)
    else:
        raise ValueError(f"expected an ISO-8601 timestamp, epoch ms int or datetime, got {_describe(value)}")
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


@dataclass(frozen=True)
class ValueType:
    """A scalar or list value type.  Use the module constants or ``ValueType.parse``."""

    name: str
    pg_type: str
    numeric: bool = False
    #: For list types: the element type name; ``None`` for scalars.
    element: str | None = None

    _BY_NAME: ClassVar[dict[str, "ValueType"]] = {}

    def __str__(self) -> str:
        return self.name

    @property
    def is_list(self) -> bool:
        return self.element is not None

    @staticmethod
    def parse(name: "str | ValueType") -> "ValueType":
        """``"int64"`` -> ``INT64``, ``"embedding<8>"`` -> ``Embedding(8)``; a ValueType passes through."""
        if isinstance(name, ValueType):
            return name
        if not isinstance(name, str):
            raise ValueError(f"expected a type name, got {_describe(name)}")
        key = name.strip().lower().replace(" ", "")
        found = ValueType._BY_NAME.get(key)
        if found is not None:
            return found
        m = re.fullmatch(r"embedding<(\d+)>", key)
        if m:
            return Embedding(int(m.group(1)))
        known = ", ".join(ValueType._BY_NAME) + ", embedding<N>"
        raise ValueError(f"unknown type {name!r}; choose from {known}")

    def coerce(self, value: Any) -> Any:
        raise NotImplementedError  # pragma: no cover - every constant overrides


def _err(expected: str, value: Any) -> ValueError:
    return ValueError(f"expected {expected}, got {_describe(value)}")


class _Int(ValueType):
    def coerce(self, value: Any) -> int:
        t = type(value)
        if t is int:
            return value
        if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
            return int(value)
        raise _err("int64", value)


class _Float(ValueType):
    def coerce(self, value: Any) -> float:
        t = type(value)
        if t is float:
            return value
        if t is int:
            return float(value)
        if isinstance(value, (float, int, np.floating, np.integer)) and not isinstance(value, (bool, np.bool_)):
            return float(value)
        raise _err("float64", value)


class _String(ValueType):
    def coerce(self, value: Any) -> str:
        if isinstance(value, str):
            return str(value)
        raise _err("string", value)


class _Bool(ValueType):
    def coerce(self, value: Any) -> bool:
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        raise _err("bool", value)


class _Timestamp(ValueType):
    def coerce(self, value: Any) -> int:
        return parse_timestamp(value)


class _List(ValueType):
    def coerce(self, value: Any) -> list:
        if isinstance(value, np.ndarray):
            value = value.tolist()
        if not isinstance(value, (list, tuple)):
            raise _err(self.name, value)
        elem = ValueType.parse(self.element)  # type: ignore[arg-type]
        try:
            return [elem.coerce(v) for v in value]
        except ValueError as exc:
            raise ValueError(f"{self.name}: element {exc}") from None


class Embedding(_List):
    """Fixed-length float vector: ``Embedding(128)`` is named ``"embedding<128>"``."""

    dim: int

    def __init__(self, dim: int) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= 65_536:
            raise ValueError(f"embedding dimension must be an int in [1, 65536], got {dim!r}")
        super().__init__(name=f"embedding<{dim}>", pg_type="real[]", numeric=False, element="float64")
        object.__setattr__(self, "dim", dim)

    def __repr__(self) -> str:
        return f"Embedding({self.dim})"

    def coerce(self, value: Any) -> list[float]:
        if isinstance(value, np.ndarray):
            if value.ndim != 1 or value.dtype.kind not in "fiu":
                raise ValueError(f"expected {self.name}, got array of shape {value.shape} and dtype {value.dtype}")
            if len(value) != self.dim:
                raise ValueError(f"expected {self.name}, got {len(value)} values")
            return value.astype(float).tolist()
        out = super().coerce(value)
        if len(out) != self.dim:
            raise ValueError(f"expected {self.name}, got {len(out)} values")
        return out


INT64 = _Int("int64", "bigint", numeric=True)
FLOAT64 = _Float("float64", "double precision", numeric=True)
STRING = _String("string", "text")
BOOL = _Bool("bool", "boolean", numeric=True)
TIMESTAMP = _Timestamp("timestamp", "timestamptz")
LIST_INT64 = _List("list<int64>", "bigint[]", element="int64")
LIST_FLOAT64 = _List("list<float64>", "double precision[]", element="float64")

for _t in (INT64, FLOAT64, STRING, BOOL, TIMESTAMP, LIST_INT64, LIST_FLOAT64):
    ValueType._BY_NAME[_t.name] = _t
del _t
