"""Online store: per-entity transform state and ready values, read at request time."""

from .base import OnlineRecord, OnlineStore
from .cluster import RedisClusterOnlineStore, is_cluster_url
from .redis import CommitResult, RedisOnlineStore

__all__ = ["CommitResult", "OnlineRecord", "OnlineStore", "RedisClusterOnlineStore", "RedisOnlineStore",
           "open_online_store"]


def open_online_store(url: str, project: str, cluster: bool = False) -> RedisOnlineStore:
    """The online store at ``url``: a Redis Cluster when ``cluster`` or the URL is ``redis+cluster://``
    (``rediss+cluster://`` with TLS), else one Redis server."""
    if cluster or is_cluster_url(url):
        return RedisClusterOnlineStore.from_url(url, project)
    return RedisOnlineStore.from_url(url, project)
