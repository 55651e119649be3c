"""``OnDemandFeatureView`` (request-time transformations) and ``FeatureService``."""

from __future__ import annotations

import warnings
from typing import Any, Callable, Union

import pandas as pd
from pydantic import PrivateAttr, field_validator, model_validator

from ..exceptions import DefinitionError, InvalidInputError
from ..types import ValueType
from ._base import Definition, TypeField, check_name
from ._columns import coerce_column
from .expectations import AnyExpectation, Expectation, check_expectation_types
from .features import function_identity
from .views import FeatureSelection, FeatureView, expectation_items, selection_of

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*shadows an attribute.*")

    class OnDemandFeatureView(Definition):
        """Features computed at request time from other features and request data.

        ``fn`` takes a pandas DataFrame with one column per input feature, named by
        the **plain feature name** (``"total_purchases"``, not ``"view__feature"``),
        plus one column per ``request_schema`` field, and returns a DataFrame with
        exactly the ``schema`` columns and the same number of rows.  Plain names
        must be unambiguous: two sources with the same feature name, or a feature
        named like a request field, are rejected at definition time.  The same
        ``fn`` runs online (one row per entity) and offline (one row per training
        row).

        Where an input view has no live value for a row (the entity has no event up to the
        request time, or its latest one is older than the view's TTL), the outputs of that
        row are missing (None; status ``missing``, or ``expired`` when an input expired)
        and ``fn`` does not see the row's inputs as values; ``compute_on_missing=True``
        runs ``fn`` on such rows too (their inputs None/NaN or the views' defaults) and
        reports its outputs present.
        """

        positional = ("name", "sources", "schema", "fn", "request_schema")

        name: str
        sources: tuple[Union[FeatureView, FeatureSelection], ...]
        request_schema: dict[str, TypeField] = {}
        schema: dict[str, TypeField]  # type: ignore[assignment]  # the field users name; shadows BaseModel.schema
        fn: Callable[[pd.DataFrame], pd.DataFrame]
        compute_on_missing: bool = False
        description: str = ""
        owner: str = ""
        tags: dict[str, str] = {}

        @field_validator("sources", mode="before")
        @classmethod
        def _sources(cls, v: Any) -> Any:
            if isinstance(v, (FeatureView, FeatureSelection)):
                v = [v]
            v = list(v)
            if not v:
                raise ValueError("needs at least one source view or selection")
            for i, item in enumerate(v):
                if not isinstance(item, (FeatureView, FeatureSelection)):
                    raise ValueError(f"item {i} is {type(item).__name__}, expected a FeatureView or view[[...]]")
            return v

        @field_validator("request_schema", "schema")
        @classmethod
        def _names(cls, v: dict[str, ValueType], info: Any) -> dict[str, ValueType]:
            for key in v:
                check_name(key, "field")
            if info.field_name == "schema" and not v:
                raise ValueError("needs at least one output")
            return v

        @model_validator(mode="after")
        def _inputs(self) -> "OnDemandFeatureView":
            where = f"OnDemandFeatureView {self.name!r}"
            owner: dict[str, str] = {}
            for sel in self.sources:
                sel = selection_of(sel)
                for f in sel.features:
                    if f in owner and owner[f] != sel.view.name:
                        raise DefinitionError(
                            f"{where}: field 'sources': feature {f!r} is in both {owner[f]!r} and "
                            f"{sel.view.name!r}; input columns use plain feature names, so they must be unique"
                        )
                    owner[f] = sel.view.name
            for r in self.request_schema:
                if r in owner:
                    raise DefinitionError(
                        f"{where}: field 'request_schema': {r!r} is also a feature of {owner[r]!r}"
                    )
            return self

        def inputs(self) -> list[tuple[str, str]]:
            """``(view, feature)`` pairs the function reads, in column order (deduplicated)."""
            out: list[tuple[str, str]] = []
            for sel in self.sources:
                for pair in selection_of(sel).resolve():
                    if pair not in out:
                        out.append(pair)
            return out

        def input_columns(self) -> list[str]:
            """Columns of the frame passed to ``fn``: feature names, then request fields."""
            return [f for _, f in self.inputs()] + list(self.request_schema)

        @property
        def feature_names(self) -> list[str]:
            return list(self.schema)

        def resolve(self) -> list[tuple[str, str]]:
            return [(self.name, out) for out in self.schema]

        def compute(self, df: pd.DataFrame) -> pd.DataFrame:
            """Run ``fn`` on the input columns of ``df``; return the outputs (indexed like
            ``df``, columns in ``schema`` order, converted to their types).  Raises
            ``InvalidInputError`` naming this view when inputs are missing or the
            output has the wrong columns, length or types."""
            where = f"OnDemandFeatureView {self.name!r}"
            cols = self.input_columns()
            missing = [c for c in cols if c not in df.columns]
            if missing:
                raise InvalidInputError(f"{where}: input frame lacks columns {missing}")
            try:
                out = self.fn(df[cols].copy())
            except Exception as exc:  # noqa: BLE001 - user code
                raise InvalidInputError(f"{where}: fn raised {type(exc).__name__}: {exc}") from exc
            if not isinstance(out, pd.DataFrame):
                raise InvalidInputError(f"{where}: fn returned {type(out).__name__}, expected a pandas DataFrame")
            got, want = list(out.columns), list(self.schema)
            if set(got) != set(want) or len(got) != len(want):
                extra = [c for c in got if c not in self.schema]
                lacking = [c for c in want if c not in got]
                raise InvalidInputError(
                    f"{where}: fn returned columns {got}, expected {want} (missing {lacking}, unexpected {extra})"
                )
            if len(out) != len(df):
                raise InvalidInputError(f"{where}: fn returned {len(out)} rows for {len(df)} input rows")
            result = {}
            for name, vtype in self.schema.items():
                try:
                    result[name] = coerce_column(out[name].reset_index(drop=True), vtype, df.index)
                except ValueError as exc:
                    raise InvalidInputError(f"{where}: output {name!r} is not {vtype.name}: {exc}") from None
            return pd.DataFrame(result, index=df.index)

        def to_json(self) -> dict[str, Any]:
            qualname, code_hash = function_identity(self.fn)
            return {
                "name": self.name,
                "sources": [selection_of(s).to_json() for s in self.sources],
                "request_schema": {k: v.name for k, v in self.request_schema.items()},
                "schema": {k: v.name for k, v in self.schema.items()},
                "fn": qualname,
                "fn_source_sha256": code_hash,
                "description": self.description,
                "owner": self.owner,
                "tags": dict(self.tags),
            }


ServiceItem = Union[FeatureView, FeatureSelection, OnDemandFeatureView]


class FeatureService(Definition):
    """A named set of features served together (what a model consumes).

    ``expectations`` are checks on the values of its views' features, named ``"view:feature"`` or by a
    plain name its views hold once; the features of one check belong to one view, and ``featurestore
    stats --view`` of that view evaluates it."""

    positional = ("name", "features")

    name: str
    features: tuple[ServiceItem, ...]
    description: str = ""
    owner: str = ""
    tags: dict[str, str] = {}
    expectations: tuple[AnyExpectation, ...] = ()

    _bound: tuple[tuple[str, Expectation], ...] = PrivateAttr(default=())

    @field_validator("features", mode="before")
    @classmethod
    def _items(cls, v: Any) -> Any:
        if isinstance(v, (FeatureView, FeatureSelection, OnDemandFeatureView)):
            v = [v]
        v = list(v)
        if not v:
            raise ValueError("a feature service needs at least one view, selection or on-demand view")
        for i, item in enumerate(v):
            if not isinstance(item, (FeatureView, FeatureSelection, OnDemandFeatureView)):
                raise ValueError(
                    f"item {i} is {type(item).__name__}, expected a FeatureView, view[[...]] or OnDemandFeatureView"
                )
        return v

    @field_validator("expectations", mode="before")
    @classmethod
    def _expectation_items(cls, v: Any) -> Any:
        return expectation_items(v)

    @model_validator(mode="after")
    def _bind_expectations(self) -> "FeatureService":
        where = f"FeatureService {self.name!r}"
        pairs = [p for item in self.features if not isinstance(item, OnDemandFeatureView)
                 for p in selection_of(item).resolve()]
        views = {v.name: v for v in self.views()}
        bound = []
        for check in self.expectations:
            names = {ref: _feature_of(ref, pairs, where, check) for ref in check.features()}
            owners = sorted({view for view, _ in names.values()})
            if len(owners) > 1:
                raise DefinitionError(f"{where}: expectation {check.describe()!r} reads features of views "
                                      f"{', '.join(owners)}; a check compares the features of one view")
            view = views[owners[0]]
            problem = check_expectation_types(
                check, {ref: view.dtype(f) for ref, (_, f) in names.items()}, where)
            if problem:
                raise DefinitionError(problem)
            bound.append((view.name, check.renamed({ref: f for ref, (_, f) in names.items()})))
        self._bound = tuple(bound)
        return self

    def expectations_of(self, view_name: str) -> list[Expectation]:
        """This service's checks on ``view_name``, naming the view's features by their plain names."""
        return [check for view, check in self._bound if view == view_name]

    def resolve(self) -> list[tuple[str, str]]:
        """``(view or ODFV name, feature name)`` for every feature served, in order,
        each pair once."""
        out: list[tuple[str, str]] = []
        for item in self.features:
            pairs = item.resolve() if isinstance(item, OnDemandFeatureView) else selection_of(item).resolve()
            for pair in pairs:
                if pair not in out:
                    out.append(pair)
        return out

    def views(self) -> list[FeatureView]:
        """Feature views read, directly or through on-demand views (each once)."""
        seen: dict[str, FeatureView] = {}
        for item in self.features:
            sels = ([selection_of(s) for s in item.sources] if isinstance(item, OnDemandFeatureView)
                    else [selection_of(item)])
            for sel in sels:
                seen.setdefault(sel.view.name, sel.view)
        return list(seen.values())

    def odfvs(self) -> list[OnDemandFeatureView]:
        return [item for item in self.features if isinstance(item, OnDemandFeatureView)]

    def to_json(self) -> dict[str, Any]:
        items = []
        for item in self.features:
            if isinstance(item, OnDemandFeatureView):
                items.append({"odfv": item.name, "features": list(item.schema)})
            else:
                items.append(selection_of(item).to_json())
        out = {"name": self.name, "features": items, "description": self.description,
               "owner": self.owner, "tags": dict(self.tags)}
        if self.expectations:
            out["expectations"] = [c.to_json() for c in self.expectations]
        return out


def _feature_of(ref: str, pairs: list[tuple[str, str]], where: str, check: Expectation) -> tuple[str, str]:
    """The ``(view, feature)`` of the service's views that ``ref`` (``"view:feature"`` or a plain name) names."""
    view, sep, feature = ref.rpartition(":")
    found = [p for p in pairs if (p == (view, feature) if sep else p[1] == ref)]
    if len(found) == 1:
        return found[0]
    served = ", ".join(f"{v}:{f}" for v, f in pairs)
    if not found:
        raise DefinitionError(f"{where}: expectation {check.describe()!r}: {ref!r} is not a feature of the "
                              f"service's views (features: {served}; on-demand outputs cannot be checked)")
    raise DefinitionError(f"{where}: expectation {check.describe()!r}: {ref!r} is in views "
                          f"{', '.join(v for v, _ in found)}; name it 'view:feature'")


__all__ = ["FeatureService", "OnDemandFeatureView"]
