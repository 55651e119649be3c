"""Exception hierarchy of the feature store; every error raised on purpose derives from FeatureStoreError.

The stores' outages are listed in one place, ``featurestore/outages.py`` (``STORE_OUTAGES``): the worker
retries its batch on them (``workers/errors.py`` ``RETRYABLE`` adds Kafka's errors; ``FATAL`` stops it),
the feature server answers them with 503.  ``transforms`` raises ``ValueError`` subclasses (it imports
nothing of this package); the store re-raises an unreadable state as ``StateFormatError``.
"""

from __future__ import annotations

from transforms.engine.codec import StateFormatError as _EngineStateFormatError

__all__ = [
    "FeatureStoreError",
    "ConfigurationError",
    "StackError",
    "DefinitionError",
    "RegistryError",
    "UnknownNameError",
    "InvalidInputError",
    "StoreUnavailableError",
    "WorkerRunningError",
    "GroupConflictError",
    "RecoveryError",
    "BackfillError",
    "StateFormatError",
]


class FeatureStoreError(Exception):
    """Root of all feature store errors."""


class ConfigurationError(FeatureStoreError):
    """Settings or environment are missing or inconsistent."""


class StackError(FeatureStoreError):
    """The embedded dev stack could not start or stop."""


class DefinitionError(FeatureStoreError):
    """A feature, view, entity or service definition is invalid."""


class RegistryError(FeatureStoreError):
    """The registry of applied definitions could not be read or written."""


class UnknownNameError(FeatureStoreError, KeyError):
    """An unknown feature, view, service or entity name was requested."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class InvalidInputError(FeatureStoreError, ValueError):
    """Input data (events, entity rows, arguments) failed validation."""


class StoreUnavailableError(FeatureStoreError):
    """An online or offline store could not be reached; the operation may be retried (the worker
    retries it: ``workers.errors.RETRYABLE``)."""


class WorkerRunningError(FeatureStoreError):
    """A running worker consumes the topic whose online states an operation (push, materialize,
    an online backfill) would write: its cached states would overwrite them."""


class GroupConflictError(ConfigurationError):
    """A worker would join a consumer group whose running workers compute other feature views (or
    other versions): the group's partitions are shared, so each view would miss the events of the
    partitions the other workers hold."""


class RecoveryError(FeatureStoreError):
    """Rebuilding a worker's states from the event log failed for a reason other than a store outage.
    The worker stops: read the error it chains, fix its cause, and start the worker again."""


class BackfillError(FeatureStoreError):
    """A backfill that cannot go on: a row refused in ``--strict`` mode, a worker of the hand-off group
    that committed during the backfill or is ahead of its cut-over, an online store that lost its data;
    the message names the cause."""


class StateFormatError(FeatureStoreError, _EngineStateFormatError):
    """A stored online state this version cannot read: damaged, of an unknown (newer) format, or laid
    out for other features.  The worker logs it and rebuilds that state from the event log; a reader
    raises it naming the view and entity.  Rebuild the view's states with
    ``featurestore backfill --online``, or run the version that wrote them."""
