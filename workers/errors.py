"""How the worker classifies errors: what it retries, and what stops it.  One place for both."""

from __future__ import annotations


import asyncpg
import redis
from kafka.errors import KafkaError

from featurestore.exceptions import (ConfigurationError, GroupConflictError, RecoveryError, RegistryError,
                                     UnknownNameError, WorkerRunningError)
from featurestore.outages import STORE_OUTAGES

__all__ = ["FATAL", "RETRYABLE"]

#: Errors worth retrying (the batch is re-run from scratch): the stores' outages
#: (``featurestore.outages.STORE_OUTAGES``, the one list) and Kafka's errors.
RETRYABLE = (*STORE_OUTAGES, KafkaError)

#: Errors of the environment, not of a record (a missing table, refused credentials or permissions, an
#: inconsistent configuration): the worker stops with them rather than dead-letter every record.
FATAL = (ConfigurationError, UnknownNameError, RegistryError, GroupConflictError, RecoveryError, WorkerRunningError,
         asyncpg.exceptions.UndefinedTableError, asyncpg.exceptions.UndefinedColumnError,
         asyncpg.exceptions.InsufficientPrivilegeError, asyncpg.exceptions.InvalidAuthorizationSpecificationError,
         asyncpg.exceptions.InvalidSchemaNameError,
         redis.exceptions.AuthenticationError, redis.exceptions.NoPermissionError)
