"""Online store: per-entity transform state and ready values, read at request time."""

from .base import OnlineRecord, OnlineStore
from .redis import RedisOnlineStore

__all__ = ["OnlineRecord", "OnlineStore", "RedisOnlineStore"]
