"""Expectations: checks a ``FeatureView`` or ``FeatureService`` declares on its feature values, evaluated by
``featurestore stats`` on the values it computes statistics over (one row per entity, as serving returns
them).

* ``Range("amount", min=0, max=10_000)``: every present value within ``[min, max]`` (either bound optional);
* ``NotNull("last_category")``: no row without a value;
* ``AllowedValues("segment", ["budget", "standard", "premium"])``: every present value one of these;
* ``Relation("avg_amount_7d", "<=", "max_amount_7d")``: the relation holds on every row where both
  features have a value.

A missing value fails ``NotNull`` only: the other checks look at the rows that have their features' values.
``failing(frame)`` takes a frame with one column per feature, named by the plain feature name, and
returns one bool per row (True: the row fails).  In a view, checks name the view's features; in a service,
``"view:feature"`` or a plain name the service's views hold once."""

from __future__ import annotations

import math
import operator
from typing import Any, Callable, ClassVar, Literal, Union

import numpy as np
import pandas as pd
from pydantic import Field, field_validator, model_validator

from ..types import ValueType
from ._base import Definition

__all__ = ["AllowedValues", "AnyExpectation", "EXPECTATION_KINDS", "Expectation", "NotNull", "Range", "Relation",
           "check_expectation_types"]

_OPS: dict[str, Callable[[Any, Any], Any]] = {"<": operator.lt, "<=": operator.le, "==": operator.eq,
                                              "!=": operator.ne, ">=": operator.ge, ">": operator.gt}


def _numbers(values: pd.Series) -> pd.Series:
    return pd.to_numeric(values.astype(object).where(values.notna(), None), errors="coerce").astype(float)


class Expectation(Definition):
    """One check on feature values; subclasses say which features it reads and which rows fail."""

    kind: ClassVar[str] = ""
    #: a sentence for people reading a failure (optional)
    description: str = ""

    def features(self) -> tuple[str, ...]:
        raise NotImplementedError

    def failing(self, frame: pd.DataFrame) -> pd.Series:
        """One bool per row of ``frame``: True where the row fails this check."""
        raise NotImplementedError

    def checked(self, frame: pd.DataFrame) -> int:
        """How many rows the check looked at (the rows that have its features' values)."""
        present = pd.Series(True, index=frame.index)
        for name in self.features():
            present &= frame[name].notna()
        return int(present.sum())

    def describe(self) -> str:
        raise NotImplementedError

    def renamed(self, names: dict[str, str]) -> "Expectation":
        """A copy naming its features by ``names[old]`` (used to bind a service's checks to a view's features)."""
        raise NotImplementedError

    def to_json(self) -> dict[str, Any]:
        out = {"kind": self.kind, **self.model_dump(mode="json", exclude={"description"}),
               "check": self.describe()}
        if self.description:
            out["description"] = self.description
        return out


class Range(Expectation):
    """Every present value of ``feature`` is at least ``min`` and at most ``max``."""

    kind: ClassVar[str] = "range"
    positional = ("feature", "min", "max")

    feature: str
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _bounds(self) -> "Range":
        if self.min is None and self.max is None:
            raise ValueError(f"feature {self.feature!r}: give min, max or both")
        for bound in (self.min, self.max):
            if bound is not None and not math.isfinite(bound):
                raise ValueError(f"feature {self.feature!r}: bounds must be finite numbers, got {bound}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"feature {self.feature!r}: min {self.min} is above max {self.max}")
        return self

    def features(self) -> tuple[str, ...]:
        return (self.feature,)

    def failing(self, frame: pd.DataFrame) -> pd.Series:
        x = _numbers(frame[self.feature])
        bad = pd.Series(False, index=frame.index)
        if self.min is not None:
            bad |= x < self.min
        if self.max is not None:
            bad |= x > self.max
        return bad

    def describe(self) -> str:
        lo = "-inf" if self.min is None else f"{self.min:g}"
        hi = "inf" if self.max is None else f"{self.max:g}"
        return f"{self.feature} in [{lo}, {hi}]"

    def renamed(self, names: dict[str, str]) -> "Range":
        return self.model_copy(update={"feature": names[self.feature]})


class NotNull(Expectation):
    """Every row has a value of ``feature``."""

    kind: ClassVar[str] = "not_null"
    positional = ("feature",)

    feature: str

    def features(self) -> tuple[str, ...]:
        return (self.feature,)

    def failing(self, frame: pd.DataFrame) -> pd.Series:
        values = frame[self.feature]
        if values.dtype == object:  # list values: isna() of a list is not a bool
            return values.map(lambda v: v is None or (isinstance(v, float) and math.isnan(v))).astype(bool)
        return values.isna()

    def checked(self, frame: pd.DataFrame) -> int:
        return len(frame)

    def describe(self) -> str:
        return f"{self.feature} not null"

    def renamed(self, names: dict[str, str]) -> "NotNull":
        return self.model_copy(update={"feature": names[self.feature]})


class AllowedValues(Expectation):
    """Every present value of ``feature`` is one of ``values``."""

    kind: ClassVar[str] = "allowed_values"
    positional = ("feature", "values")

    feature: str
    values: tuple[Union[str, int, float, bool], ...]

    @field_validator("values", mode="before")
    @classmethod
    def _values(cls, v: Any) -> Any:
        if isinstance(v, (str, bytes)) or not hasattr(v, "__iter__"):
            raise ValueError(f"values must be a list of allowed values, got {v!r}")
        v = list(v)
        if not v:
            raise ValueError("values must not be empty")
        return v

    def features(self) -> tuple[str, ...]:
        return (self.feature,)

    def failing(self, frame: pd.DataFrame) -> pd.Series:
        values = frame[self.feature]
        return values.notna() & ~values.isin(list(self.values))

    def describe(self) -> str:
        return f"{self.feature} in {{{', '.join(repr(v) for v in self.values)}}}"

    def renamed(self, names: dict[str, str]) -> "AllowedValues":
        return self.model_copy(update={"feature": names[self.feature]})


class Relation(Expectation):
    """``left op right`` on every row where both features have a value (``op``: <, <=, ==, !=, >=, >).

    ``tolerance`` is an absolute slack for float rounding (a mean of equal values can exceed their max
    by an ulp): ``<``/``<=`` compare ``left`` with ``right + tolerance``, ``>``/``>=`` with
    ``right - tolerance``; ``==`` holds when ``|left - right| <= tolerance``, ``!=`` when it is more."""

    kind: ClassVar[str] = "relation"
    positional = ("left", "op", "right")

    left: str
    op: Literal["<", "<=", "==", "!=", ">=", ">"]
    right: str
    tolerance: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _two(self) -> "Relation":
        if self.left == self.right:
            raise ValueError(f"{self.describe()!r} compares {self.left!r} with itself; name two features")
        return self

    def features(self) -> tuple[str, ...]:
        return (self.left, self.right)

    def failing(self, frame: pd.DataFrame) -> pd.Series:
        a, b = _numbers(frame[self.left]).to_numpy(), _numbers(frame[self.right]).to_numpy()
        tol = self.tolerance
        with np.errstate(invalid="ignore"):
            if self.op in ("==", "!="):
                close = np.abs(a - b) <= tol
                holds = close if self.op == "==" else ~close
            else:
                holds = _OPS[self.op](a, b + tol if self.op in ("<", "<=") else b - tol)
        both = ~np.isnan(a) & ~np.isnan(b)
        return pd.Series(both & ~np.asarray(holds, dtype=bool), index=frame.index)

    def describe(self) -> str:
        slack = f" (± {self.tolerance:g})" if self.tolerance else ""
        return f"{self.left} {self.op} {self.right}{slack}"

    def renamed(self, names: dict[str, str]) -> "Relation":
        return self.model_copy(update={"left": names[self.left], "right": names[self.right]})


AnyExpectation = Union[Range, NotNull, AllowedValues, Relation]
EXPECTATION_KINDS = (Range, NotNull, AllowedValues, Relation)


def check_expectation_types(check: Expectation, dtypes: dict[str, ValueType], where: str) -> str | None:
    """Why ``check`` cannot apply to features of these types (``dtypes``: feature -> type), or None."""
    for name in check.features():
        dtype = dtypes[name]
        if isinstance(check, (Range, Relation)) and not dtype.numeric:
            return (f"{where}: expectation {check.describe()!r}: feature {name!r} is {dtype.name}; "
                    f"{type(check).__name__} compares numbers (int64, float64, bool)")
        if isinstance(check, AllowedValues) and dtype.is_list:
            return (f"{where}: expectation {check.describe()!r}: feature {name!r} is a list ({dtype.name}); "
                    f"AllowedValues checks single values")
    return None
