"""``FeatureView``: features of one entity computed from one event source, and
``FeatureSelection``, the projection ``view[["f1", "f2"]]``."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from ..exceptions import DefinitionError, UnknownNameError
from ..types import ValueType
from ._base import Definition, Duration, fmt_duration
from .expectations import EXPECTATION_KINDS, AnyExpectation, check_expectation_types
from .features import FEATURE_KINDS, Activity, Aggregate, BatchTransform, Feature, Latest, function_identity
from .sources import Entity, EventSource

AnyFeature = Union[Aggregate, Activity, Latest, BatchTransform]


class FeatureView(Definition):
    """Features of ``entity`` computed from the events of ``source``.

    ``ttl`` (``"30d"`` or ms; None = never) is how long online values live after
    the entity's last event; ``version`` overrides the version the registry
    assigns.  ``view.features`` holds copies of the given features with ``dtype``
    resolved.  ``view[["a", "b"]]`` selects features for a service or an ODFV.
    ``expectations`` (``Range``, ``NotNull``, ``AllowedValues``, ``Relation``) are checks on
    the view's values that ``featurestore stats`` evaluates; they are metadata (no new version).
    """

    positional = ("name", "entity", "source", "features", "ttl")

    name: str
    entity: Entity
    source: EventSource
    features: tuple[AnyFeature, ...]
    ttl: Duration | None = None
    version: int | None = Field(default=None, ge=1)
    owner: str = ""
    description: str = ""
    tags: dict[str, str] = {}
    expectations: tuple[AnyExpectation, ...] = ()

    _specs: tuple[Any, ...] = PrivateAttr(default=())
    _fingerprint: str | None = PrivateAttr(default=None)

    @field_validator("features", mode="before")
    @classmethod
    def _feature_items(cls, v: Any) -> Any:
        if isinstance(v, (str, bytes)) or not hasattr(v, "__iter__"):
            raise ValueError("features must be a list of Aggregate, Activity, Latest or BatchTransform")
        v = list(v)
        if not v:
            raise ValueError("a feature view needs at least one feature")
        for i, item in enumerate(v):
            if not isinstance(item, FEATURE_KINDS):
                raise ValueError(
                    f"item {i} is {type(item).__name__}, expected Aggregate, Activity, Latest or BatchTransform"
                )
        return v

    @field_validator("expectations", mode="before")
    @classmethod
    def _expectation_items(cls, v: Any) -> Any:
        return expectation_items(v)

    @field_validator("ttl")
    @classmethod
    def _ttl(cls, v: int | None) -> int | None:
        if v is not None and v <= 0:
            raise ValueError(f"ttl must be positive, got {v} ms")
        return v

    @model_validator(mode="after")
    def _resolve(self) -> "FeatureView":
        where = f"FeatureView {self.name!r}"
        schema = self.source.schema
        key_field = self.source.entity_field
        if schema[key_field].name != self.entity.key_type:
            raise DefinitionError(
                f"{where}: field 'entity': entity {self.entity.name!r} has key_type {self.entity.key_type} but "
                f"source {self.source.name!r} field {key_field!r} is {schema[key_field].name}"
            )
        seen: set[str] = set()
        resolved: list[Feature] = []
        specs = []
        for f in self.features:
            fw = f"{where}: feature {f.name!r}"
            if f.name in seen:
                raise DefinitionError(f"{fw}: duplicate feature name")
            seen.add(f.name)
            if f.name == self.entity.join_key:
                raise DefinitionError(f"{fw}: name clashes with the entity join key")
            for col in f.columns:
                if col not in schema:
                    field = "inputs" if isinstance(f, BatchTransform) else "column"
                    raise DefinitionError(
                        f"{fw}: {field} {col!r} is not in source {self.source.name!r} (fields: {', '.join(schema)})"
                    )
            try:
                dtype = f.derive_dtype(schema)
            except ValueError as exc:
                raise DefinitionError(f"{fw}: {exc}") from None
            given = getattr(f, "dtype", None)
            if given is not None and given != dtype:
                raise DefinitionError(f"{fw}: dtype {given.name} does not match the computed type {dtype.name}")
            if f.default is not None:
                try:
                    dtype.coerce(f.default)
                except ValueError as exc:
                    raise DefinitionError(f"{fw}: default {f.default!r} is not {dtype.name}: {exc}") from None
            try:
                specs.append(f.to_spec())
            except ValueError as exc:
                raise DefinitionError(f"{fw}: {exc}") from None
            resolved.append(f if given is not None else f.model_copy(update={"dtype": dtype}))
        object.__setattr__(self, "features", tuple(resolved))
        self._specs = tuple(specs)
        self._check_expectations(where)
        return self

    def _check_expectations(self, where: str) -> None:
        dtypes = {f.name: f.dtype for f in self.features}
        for check in self.expectations:
            for name in check.features():
                if name not in dtypes:
                    raise DefinitionError(f"{where}: expectation {check.describe()!r}: no feature {name!r} "
                                          f"(features: {', '.join(dtypes)})")
            problem = check_expectation_types(check, dtypes, where)  # type: ignore[arg-type]
            if problem:
                raise DefinitionError(problem)

    # -- lookups -----------------------------------------------------------------------

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    def feature(self, name: str) -> AnyFeature:
        for f in self.features:
            if f.name == name:
                return f
        raise UnknownNameError(
            f"FeatureView {self.name!r} has no feature {name!r} (features: {', '.join(self.feature_names)})"
        )

    def dtype(self, name: str) -> ValueType:
        return self.feature(name).dtype  # type: ignore[return-value]

    def agg_specs(self) -> list[Any]:
        """One ``transforms.specs.AggSpec`` per feature, in feature order."""
        return list(self._specs)

    def batch_transforms(self) -> list[BatchTransform]:
        return [f for f in self.features if isinstance(f, BatchTransform)]

    def __getitem__(self, names: list[str] | tuple[str, ...] | str) -> "FeatureSelection":
        if isinstance(names, str):
            names = [names]
        return FeatureSelection(view=self, features=tuple(names))

    # -- identity ----------------------------------------------------------------------

    def _computation(self) -> dict[str, Any]:
        src = self.source
        feats = []
        for f, spec in zip(self.features, self._specs):
            item = {
                "name": f.name, "kind": type(f).__name__, "column": spec.column, "function": spec.function,
                "window_ms": spec.window_ms, "hop_ms": spec.hop_ms, "n": spec.n,
                "dtype": None if f.dtype is None else f.dtype.name,
            }
            if isinstance(f, BatchTransform):
                qualname, code_hash = function_identity(f.fn)
                item.update(inputs=list(f.inputs), fn=qualname, fn_source_sha256=code_hash)
            feats.append(item)
        return {
            "entity": {"join_key": self.entity.join_key, "key_type": self.entity.key_type},
            "source": {
                "schema": {k: v.name for k, v in src.schema.items()},
                "timestamp_field": src.timestamp_field,
                "entity_field": src.entity_field,
                "event_id_field": src.event_id_field,
                "optional_fields": sorted(src.optional_fields),
                "allowed_lateness_ms": src.allowed_lateness,
            },
            "features": sorted(feats, key=lambda d: d["name"]),
        }

    def fingerprint(self) -> str:
        """sha256 hex of what changes computed values (entity key, source fields and
        lateness, each feature's computation); not owner, description, tags or ttl."""
        if self._fingerprint is None:
            canon = json.dumps(self._computation(), sort_keys=True, separators=(",", ":"))
            self._fingerprint = hashlib.sha256(canon.encode()).hexdigest()
        return self._fingerprint

    def to_json(self) -> dict[str, Any]:
        """JSON-able description for the registry (callables recorded by name)."""
        return {
            "name": self.name,
            "entity": self.entity.model_dump(mode="json"),
            "source": self.source.to_json(),
            "features": [f.to_json() for f in self.features],
            "ttl": fmt_duration(self.ttl),
            "ttl_ms": self.ttl,
            "version": self.version,
            "owner": self.owner,
            "description": self.description,
            "tags": dict(self.tags),
            "fingerprint": self.fingerprint(),
            **({"expectations": [c.to_json() for c in self.expectations]} if self.expectations else {}),
        }


class FeatureSelection(BaseModel):
    """Some features of a view, in the given order (``view[["a", "b"]]``)."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    view: FeatureView
    features: tuple[str, ...]

    @model_validator(mode="after")
    def _check(self) -> "FeatureSelection":
        if not self.features:
            raise DefinitionError(f"FeatureView {self.view.name!r}: empty feature selection")
        known = set(self.view.feature_names)
        for name in self.features:
            if name not in known:
                raise UnknownNameError(
                    f"FeatureView {self.view.name!r} has no feature {name!r} "
                    f"(features: {', '.join(self.view.feature_names)})"
                )
        if len(set(self.features)) != len(self.features):
            raise DefinitionError(f"FeatureView {self.view.name!r}: selection {list(self.features)} repeats a feature")
        return self

    @property
    def name(self) -> str:
        return self.view.name

    def resolve(self) -> list[tuple[str, str]]:
        return [(self.view.name, f) for f in self.features]

    def to_json(self) -> dict[str, Any]:
        return {"view": self.view.name, "features": list(self.features)}


def expectation_items(v: Any) -> Any:
    """The ``expectations`` field's items as given, after checking each is an expectation."""
    if v is None:
        return ()
    if isinstance(v, EXPECTATION_KINDS):
        v = [v]
    if isinstance(v, (str, bytes, dict)) or not hasattr(v, "__iter__"):
        raise ValueError("expectations must be a list of Range, NotNull, AllowedValues or Relation")
    v = list(v)
    for i, item in enumerate(v):
        if not isinstance(item, EXPECTATION_KINDS):
            raise ValueError(f"item {i} is {type(item).__name__}, expected Range, NotNull, AllowedValues or Relation")
    return v


def selection_of(item: FeatureView | FeatureSelection) -> FeatureSelection:
    """A view as the selection of all its features; a selection unchanged."""
    if isinstance(item, FeatureSelection):
        return item
    return FeatureSelection(view=item, features=tuple(item.feature_names))


__all__ = ["AnyFeature", "FeatureSelection", "FeatureView", "expectation_items", "selection_of"]
