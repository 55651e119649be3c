"""Online store: per-entity transform state and ready values, read at request time."""

from .base import OnlineRecord, OnlineStore
from .cluster import RedisClusterOnlineStore
from .slots import is_cluster_url, redis_py_url
from .redis import CommitResult, RedisOnlineStore

__all__ = ["CommitResult", "OnlineRecord", "OnlineStore", "RedisClusterOnlineStore", "RedisOnlineStore",
           "async_redis", "open_online_store"]


def async_redis(url: str, cluster: bool = False, **options):
    """A redis-py asyncio client of the online store's server at ``url`` (a cluster client for a
    Redis Cluster): for probes and counters beside the reads, with redis-py's own connections."""
    import redis.asyncio

    if cluster or is_cluster_url(url):
        return redis.asyncio.RedisCluster.from_url(redis_py_url(url), **options)
    return redis.asyncio.Redis.from_url(url, **options)


def open_online_store(url: str, project: str, cluster: bool = False) -> RedisOnlineStore:
    """The online store at ``url``: a Redis Cluster when ``cluster`` or the URL is ``redis+cluster://``
    (``rediss+cluster://`` with TLS), else one Redis server."""
    if cluster or is_cluster_url(url):
        return RedisClusterOnlineStore.from_url(url, project)
    return RedisOnlineStore.from_url(url, project)
