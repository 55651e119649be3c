"""Feature kinds: ``Aggregate``, ``Activity``, ``Latest`` and ``BatchTransform``.

A feature alone only checks what it can without its view (names, function,
durations).  Everything that needs the source (columns, types, window range,
hop) is checked by ``FeatureView``, whose errors name the view and feature.
"""

from __future__ import annotations

import hashlib
import inspect
from typing import Any, Callable, Literal

import pandas as pd
from pydantic import field_validator, model_validator

from ..exceptions import DefinitionError, InvalidInputError
from ..types import BOOL, FLOAT64, INT64, LIST_FLOAT64, LIST_INT64, ValueType
from ._base import Definition, Duration, TypeField, fmt_duration
from ._columns import coerce_column
from transforms.specs import NUMERIC_FUNCTIONS, AggSpec

AggFunction = Literal[
    "sum", "count", "mean", "min", "max", "first", "last", "last_n", "count_distinct", "var", "stddev"
]
ActivityKind = Literal["count_events", "events_per_minute", "seconds_since_last"]

_INT_OUT = ("count", "count_events", "count_distinct")
_FLOAT_OUT = ("sum", "mean", "min", "max", "var", "stddev", "events_per_minute", "seconds_since_last")
_NUMERIC_IN = (INT64, FLOAT64, BOOL)


def output_dtype(function: str, column_type: ValueType | None) -> ValueType:
    """Type of a feature computing ``function`` over a column of ``column_type``;
    ``ValueError`` when the column type does not fit the function."""
    if function in NUMERIC_FUNCTIONS and column_type not in _NUMERIC_IN:
        raise ValueError(
            f"function {function!r} needs a numeric column (int64, float64 or bool), "
            f"got {column_type.name if column_type else None}"
        )
    if function == "count_distinct" and column_type is not None and column_type.is_list:
        raise ValueError(f"function 'count_distinct' needs a scalar column, got {column_type.name}")
    if function in _INT_OUT:
        return INT64
    if function in _FLOAT_OUT:
        return FLOAT64
    if function in ("first", "last"):
        assert column_type is not None
        return column_type
    if function == "last_n":
        if column_type == INT64:
            return LIST_INT64
        if column_type == FLOAT64:
            return LIST_FLOAT64
        raise ValueError(
            f"function 'last_n' needs an int64 or float64 column, got "
            f"{column_type.name if column_type else None} (lists of other types are not supported)"
        )
    raise ValueError(f"unknown function {function!r}")  # pragma: no cover


class Feature(Definition):
    """Base of the feature kinds.  ``dtype`` is derived by the view when not given
    (a given one must match); ``default`` is returned for missing reads."""

    name: str

    # Every kind also has ``function`` (a field of Aggregate, a property of the others).

    @property
    def columns(self) -> tuple[str, ...]:
        """Source fields read by this feature."""
        return ()

    def derive_dtype(self, schema: dict[str, ValueType]) -> ValueType:
        """The output type given the source schema (columns already checked)."""
        raise NotImplementedError  # pragma: no cover

    def to_spec(self) -> AggSpec:
        """The ``AggSpec`` computing this feature (``ValueError`` from AggSpec passes through)."""
        raise NotImplementedError  # pragma: no cover

    def _json_extra(self) -> dict[str, Any]:
        return {}

    def to_json(self) -> dict[str, Any]:
        dtype = getattr(self, "dtype", None)
        out: dict[str, Any] = {"name": self.name, "kind": type(self).__name__}
        out.update(self._json_extra())
        out["dtype"] = dtype.name if dtype is not None else None
        out["description"] = getattr(self, "description", "")
        default = getattr(self, "default", None)
        out["default"] = default if not isinstance(default, float) or default == default else None
        return out


class Aggregate(Feature):
    """``function`` over ``column`` in a ``window`` (``"1h"``, ``"7d"``, int ms; None =
    lifetime) updated every ``hop`` (default: ``transforms.windows.default_hop``).
    ``n`` is the length for ``last_n``."""

    positional = ("name", "column", "function", "window", "hop", "n")

    column: str
    function: AggFunction
    window: Duration | None = None
    hop: Duration | None = None
    n: int | None = None
    dtype: TypeField | None = None
    description: str = ""
    default: Any = None

    @model_validator(mode="after")
    def _check(self) -> "Aggregate":
        where = f"Aggregate {self.name!r}"
        if self.function == "last_n" and self.n is None:
            raise DefinitionError(f"{where}: field 'n': function 'last_n' needs n (how many values to keep)")
        if self.function != "last_n" and self.n is not None:
            raise DefinitionError(f"{where}: field 'n': only function 'last_n' takes n")
        if self.hop is not None and self.window is None:
            raise DefinitionError(f"{where}: field 'hop': a lifetime aggregation (window=None) takes no hop")
        return self

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.column,)

    def derive_dtype(self, schema: dict[str, ValueType]) -> ValueType:
        return output_dtype(self.function, schema[self.column])

    def to_spec(self) -> AggSpec:
        return AggSpec(self.name, self.function, self.column, self.window, self.hop, self.n or 0)

    def _json_extra(self) -> dict[str, Any]:
        return {"column": self.column, "function": self.function, "window": fmt_duration(self.window),
                "hop": fmt_duration(self.hop), "n": self.n}


class Activity(Feature):
    """Event-time activity of the entity: ``count_events``, ``events_per_minute``
    (needs a window) or ``seconds_since_last`` over ``window`` (None = lifetime)."""

    positional = ("name", "kind", "window", "hop")

    kind: ActivityKind
    window: Duration | None = None
    hop: Duration | None = None
    dtype: TypeField | None = None
    description: str = ""
    default: Any = None

    @model_validator(mode="after")
    def _check(self) -> "Activity":
        where = f"Activity {self.name!r}"
        if self.kind == "events_per_minute" and self.window is None:
            raise DefinitionError(f"{where}: field 'window': events_per_minute needs a window")
        if self.hop is not None and self.window is None:
            raise DefinitionError(f"{where}: field 'hop': a lifetime activity (window=None) takes no hop")
        return self

    @property
    def function(self) -> str:
        return self.kind

    def derive_dtype(self, schema: dict[str, ValueType]) -> ValueType:
        return output_dtype(self.kind, None)

    def to_spec(self) -> AggSpec:
        return AggSpec(self.name, self.kind, None, self.window, self.hop)

    def _json_extra(self) -> dict[str, Any]:
        return {"function": self.kind, "window": fmt_duration(self.window), "hop": fmt_duration(self.hop)}


class Latest(Feature):
    """The latest (by event time) value of ``column``; compiles to ``last`` over the lifetime."""

    positional = ("name", "column")

    column: str
    dtype: TypeField | None = None
    description: str = ""
    default: Any = None

    @property
    def function(self) -> str:
        return "last"

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.column,)

    def derive_dtype(self, schema: dict[str, ValueType]) -> ValueType:
        return schema[self.column]

    def to_spec(self) -> AggSpec:
        return AggSpec(self.name, "last", self.column)

    def _json_extra(self) -> dict[str, Any]:
        return {"column": self.column, "function": "last"}


def function_identity(fn: Callable[..., Any]) -> tuple[str, str | None]:
    """``(qualified name, sha256 of the source code or None when unavailable)``."""
    qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    try:
        code = inspect.getsource(fn)
    except (OSError, TypeError):
        return qualname, None
    return qualname, hashlib.sha256(code.encode()).hexdigest()


class BatchTransform(Feature):
    """A user function over a batch of events producing one derived value per
    event (``fn(df[inputs])`` -> Series, array or list of ``dtype``; an embedding
    may be a 2-D array of shape ``(rows, dim)``).  The feature is the latest
    value of the derived column ``__bt_<name>``."""

    positional = ("name", "inputs", "fn", "dtype")

    inputs: tuple[str, ...]
    fn: Callable[..., Any]
    dtype: TypeField
    description: str = ""
    default: Any = None

    @field_validator("inputs")
    @classmethod
    def _inputs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("needs at least one input field")
        if len(set(v)) != len(v):
            raise ValueError(f"inputs {list(v)} repeat a field")
        return v

    @property
    def function(self) -> str:
        return "last"

    @property
    def column(self) -> str:
        """Name of the derived per-event column."""
        return f"__bt_{self.name}"

    @property
    def columns(self) -> tuple[str, ...]:
        return self.inputs

    def derive_dtype(self, schema: dict[str, ValueType]) -> ValueType:
        return self.dtype

    def to_spec(self) -> AggSpec:
        return AggSpec(self.name, "last", column=self.column)

    def apply(self, df: pd.DataFrame, owned: bool = False) -> pd.Series:
        """Run ``fn`` on ``df[inputs]`` and return the derived column (indexed like
        ``df``) converted to ``dtype``; ``InvalidInputError`` naming the transform
        when inputs are missing, ``fn`` fails, or its output has the wrong length
        or type (e.g. embedding dimension).  ``owned``: ``df`` is a frame of exactly
        the inputs that ``fn`` may modify (no copy is made for it)."""
        where = f"BatchTransform {self.name!r}"
        missing = [c for c in self.inputs if c not in df.columns]
        if missing:
            raise InvalidInputError(f"{where}: input frame lacks columns {missing}")
        mine = owned and tuple(df.columns) == self.inputs
        try:
            out = self.fn(df if mine else df[list(self.inputs)].copy())
        except Exception as exc:  # noqa: BLE001 - user code
            raise InvalidInputError(f"{where}: fn raised {type(exc).__name__}: {exc}") from exc
        if isinstance(out, pd.DataFrame):
            if out.shape[1] != 1:
                raise InvalidInputError(f"{where}: fn returned a DataFrame with {out.shape[1]} columns, "
                                        "expected one column")
            out = out.iloc[:, 0]
        if not hasattr(out, "__len__") or isinstance(out, (str, bytes, dict)):
            raise InvalidInputError(f"{where}: fn returned {type(out).__name__}, expected a Series, array or list")
        try:
            return coerce_column(out, self.dtype, df.index).rename(self.column)
        except ValueError as exc:
            raise InvalidInputError(f"{where}: output is not {self.dtype.name}: {exc}") from None

    def _json_extra(self) -> dict[str, Any]:
        qualname, code_hash = function_identity(self.fn)
        return {"inputs": list(self.inputs), "column": self.column, "function": "last",
                "fn": qualname, "fn_source_sha256": code_hash}


FEATURE_KINDS = (Aggregate, Activity, Latest, BatchTransform)

__all__ = [
    "Activity",
    "Aggregate",
    "BatchTransform",
    "Feature",
    "FEATURE_KINDS",
    "Latest",
    "function_identity",
    "output_dtype",
]
