"""Online store: per-entity transform state and ready values, read at request time."""

from .base import OnlineRecord, OnlineStore
from .redis import CommitResult, RedisOnlineStore

__all__ = ["CommitResult", "OnlineRecord", "OnlineStore", "RedisOnlineStore"]
