"""The errors that mean a store cannot be reached now: the one list of them.

The worker re-runs its batch on these (``workers.errors.RETRYABLE`` adds Kafka's errors), and the
feature server answers them with 503 and ``Retry-After``.  For PostgreSQL: a lost connection (class
08), a server shutting down, starting up or recovering, or a cancelled statement (57), out of
resources or connection slots (53).
"""

from __future__ import annotations

import asyncio

import asyncpg
import redis.exceptions

from .exceptions import StoreUnavailableError

__all__ = ["STORE_OUTAGES"]

STORE_OUTAGES: tuple[type[BaseException], ...] = (
    StoreUnavailableError, OSError, asyncio.TimeoutError,
    redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.BusyLoadingError,
    redis.exceptions.OutOfMemoryError, redis.exceptions.ReadOnlyError,
    # Redis Cluster: slots without a master (a master down), a script's keys split by a migration
    redis.exceptions.ClusterDownError, redis.exceptions.TryAgainError, redis.exceptions.MasterDownError,
    redis.exceptions.ClusterError,
    asyncpg.exceptions.PostgresConnectionError, asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
)
