"""How the worker classifies errors: what it retries, and what stops it.  One place for both."""

from __future__ import annotations

import asyncio

import asyncpg
import redis
from kafka.errors import KafkaError

from featurestore.exceptions import (ConfigurationError, GroupConflictError, RecoveryError, RegistryError,
                                     StoreUnavailableError, UnknownNameError, WorkerRunningError)

__all__ = ["FATAL", "RETRYABLE"]

#: Errors of the stores that are worth retrying (the batch is re-run from scratch).  For
#: PostgreSQL: a lost connection (class 08), a server starting up or recovering (57P03),
#: shutting down (57P01/57P02) or out of connection slots (53300).
RETRYABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.BusyLoadingError,
             OSError, asyncio.TimeoutError, StoreUnavailableError, KafkaError,
             asyncpg.exceptions.PostgresConnectionError, asyncpg.exceptions.CannotConnectNowError,
             asyncpg.exceptions.AdminShutdownError, asyncpg.exceptions.CrashShutdownError,
             asyncpg.exceptions.TooManyConnectionsError, asyncpg.exceptions.InsufficientResourcesError,
             redis.exceptions.OutOfMemoryError, redis.exceptions.ReadOnlyError)

#: Errors of the environment, not of a record (a missing table, refused credentials or permissions, an
#: inconsistent configuration): the worker stops with them rather than dead-letter every record.
FATAL = (ConfigurationError, UnknownNameError, RegistryError, GroupConflictError, RecoveryError, WorkerRunningError,
         asyncpg.exceptions.UndefinedTableError, asyncpg.exceptions.UndefinedColumnError,
         asyncpg.exceptions.InsufficientPrivilegeError, asyncpg.exceptions.InvalidAuthorizationSpecificationError,
         asyncpg.exceptions.InvalidSchemaNameError,
         redis.exceptions.AuthenticationError, redis.exceptions.NoPermissionError)
