"""User-facing definitions: entities, event sources, features, views, services.

All are frozen pydantic models; invalid definitions raise
``featurestore.exceptions.DefinitionError`` naming the object and field.
"""

from __future__ import annotations

from ._base import NAME_RE, RESERVED_WORDS, check_name
from .expectations import AllowedValues, NotNull, Range, Relation
from .features import Activity, Aggregate, BatchTransform, Feature, Latest, output_dtype
from .services import FeatureService, OnDemandFeatureView
from .sources import Entity, EventSource, FileHistory, TableHistory
from .views import FeatureSelection, FeatureView
from ..types import Embedding, ValueType

__all__ = [
    "NAME_RE",
    "RESERVED_WORDS",
    "Activity",
    "Aggregate",
    "AllowedValues",
    "BatchTransform",
    "Embedding",
    "Entity",
    "EventSource",
    "Feature",
    "FeatureSelection",
    "FeatureService",
    "FeatureView",
    "FileHistory",
    "Latest",
    "NotNull",
    "OnDemandFeatureView",
    "Range",
    "Relation",
    "TableHistory",
    "ValueType",
    "check_name",
    "output_dtype",
]
