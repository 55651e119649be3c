"""Shared pieces of the definition models: name rules, the frozen base model
that turns pydantic validation errors into ``DefinitionError``, type fields."""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer, ValidationError, field_validator

from ..exceptions import DefinitionError
from ..types import ValueType
from transforms.windows import format_duration, parse_duration

NAME_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

#: Words that break unquoted SQL identifiers (kept short on purpose).
RESERVED_WORDS = frozenset(
    """all and any as asc between by case cast check column constraint create default desc distinct
    do else end except false fetch for foreign from grant group having in into is join key limit
    not null offset on or order primary references select table then to true union unique user
    using when where window with""".split()
)


def check_name(value: Any, what: str = "name") -> str:
    """Return ``value`` if it is a valid identifier, else raise ``ValueError`` saying why."""
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {type(value).__name__} {value!r}")
    if not NAME_RE.match(value):
        raise ValueError(
            f"{what} {value!r} is not a valid name: use 1-63 lowercase letters, digits and "
            "underscores, not starting with a digit"
        )
    if value.startswith("__"):
        raise ValueError(f"{what} {value!r} is reserved: names starting with '__' are internal")
    if value in RESERVED_WORDS:
        raise ValueError(f"{what} {value!r} is an SQL reserved word; pick another name")
    return value


def _nul_at(value: Any, where: str = "") -> str | None:
    """Where a NUL character is in *value* (a string, or lists, tuples, sets and dicts of them,
    keys included): ``""`` for *value* itself, ``"['team']"`` for an item, ``" key 'te\\x00am'"`` for
    a key; None when there is none."""
    if isinstance(value, str):
        return where if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _nul_at(key, f"{where} key {key!r}") or _nul_at(item, f"{where}[{key!r}]")
            if found is not None:
                return found
    elif isinstance(value, (list, tuple, set, frozenset)):
        for i, item in enumerate(value):
            found = _nul_at(item, f"{where}[{i}]")
            if found is not None:
                return found
    return None


def _duration(value: Any) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, (str, int)):
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise ValueError(str(exc)) from None
    raise ValueError(f"expected a duration like '1h' or int milliseconds, got {value!r}")


def _value_type(value: Any) -> ValueType:
    return ValueType.parse(value)


#: A duration given as ``"1h"``/``"7d"`` or int ms; stored as int ms.
Duration = Annotated[int, BeforeValidator(_duration)]
#: A value type given as a name (``"float64"``) or a ``ValueType``.
TypeField = Annotated[ValueType, BeforeValidator(_value_type), PlainSerializer(lambda t: t.name)]


def fmt_duration(ms: int | None) -> str | None:
    return None if ms is None else format_duration(ms)


def _clean(msg: str) -> str:
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            return msg[len(prefix):]
    return msg


def format_validation_error(kind: str, name: Any, exc: ValidationError) -> str:
    """``"Entity 'customer': field 'join_key': ..."`` for every error of ``exc``."""
    who = f"{kind} {name!r}" if isinstance(name, str) else kind
    parts: list[str] = []
    seen: set[str] = set()
    for err in exc.errors():
        loc = err.get("loc") or ()
        field = ".".join(str(p) for p in loc) if loc else ""
        if err.get("type") == "missing":
            text = f"field {field!r} is required"
        elif err.get("type") == "extra_forbidden":
            text = f"unknown field {field!r}"
        elif field:
            text = f"field {field!r}: {_clean(err.get('msg', ''))}"
        else:
            text = _clean(err.get("msg", ""))
        if text not in seen:
            seen.add(text)
            parts.append(text)
    return f"{who}: " + "; ".join(parts)


class Definition(BaseModel):
    """Frozen pydantic base: keyword or positional construction (``positional``
    names the order), any validation failure raised as ``DefinitionError``."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    #: Field order for positional arguments; empty means the declared field order.
    positional: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *args: Any, **data: Any) -> None:
        kind = type(self).__name__
        if args:
            order = self.positional or tuple(type(self).model_fields)
            if len(args) > len(order):
                raise DefinitionError(f"{kind}: takes at most {len(order)} positional arguments ({', '.join(order)})")
            for field, value in zip(order, args):
                if field in data:
                    raise DefinitionError(f"{kind}: got two values for field {field!r}")
                data[field] = value
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise DefinitionError(format_validation_error(kind, data.get("name"), exc)) from None

    @field_validator("name", check_fields=False)
    @classmethod
    def _name(cls, v: Any) -> str:
        """Every definition's ``name`` becomes a Redis field and an SQL identifier."""
        return check_name(v, "name")

    @field_validator("*")
    @classmethod
    def _no_nul(cls, v: Any) -> Any:
        """The registry stores definitions in PostgreSQL, whose text cannot hold a NUL character."""
        where = _nul_at(v)
        if where is not None:
            at = f" at {where.strip()}" if where else ""
            raise ValueError(f"has a NUL character ('\\x00'){at}, which PostgreSQL text cannot hold: "
                             f"remove the NUL character")
        return v

    def _where(self) -> str:
        return f"{type(self).__name__} {getattr(self, 'name', '?')!r}"


__all__ = [
    "NAME_RE",
    "RESERVED_WORDS",
    "Definition",
    "Duration",
    "TypeField",
    "check_name",
    "fmt_duration",
    "format_validation_error",
]
