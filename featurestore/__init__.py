"""Streaming feature store: Kafka events -> windowed features -> Redis and PostgreSQL.

The public API::

    from featurestore import FeatureStore, Entity, EventSource, FeatureView, Aggregate

``FeatureStore`` (the client) is imported on first use, so ``import featurestore`` stays light.
"""

from __future__ import annotations

from typing import Any

from .definitions import (Activity, Aggregate, BatchTransform, Embedding, Entity, EventSource, FeatureService,
                          FeatureView, FileHistory, Latest, OnDemandFeatureView, TableHistory)
from .exceptions import (BackfillError, ConfigurationError, DefinitionError, FeatureStoreError, GroupConflictError,
                         InvalidInputError, RecoveryError, RegistryError, StackError, StateFormatError,
                         StoreUnavailableError, UnknownNameError, WorkerRunningError)

__version__ = "0.2.0"

__all__ = [
    "Activity",
    "Aggregate",
    "BackfillError",
    "BatchTransform",
    "ConfigurationError",
    "DefinitionError",
    "Embedding",
    "Entity",
    "EventSource",
    "FeatureService",
    "FeatureStore",
    "FeatureStoreError",
    "FeatureView",
    "FileHistory",
    "GroupConflictError",
    "InvalidInputError",
    "Latest",
    "OnDemandFeatureView",
    "RecoveryError",
    "RegistryError",
    "StackError",
    "StateFormatError",
    "StoreUnavailableError",
    "TableHistory",
    "UnknownNameError",
    "WorkerRunningError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name == "FeatureStore":
        from .client import FeatureStore

        return FeatureStore
    raise AttributeError(f"module 'featurestore' has no attribute {name!r}")
