"""Talking to a Redis Cluster: its URLs, where an entity's keys go, and sending commands to the masters
of their slots (``SlotRouter``), for ``featurestore.online.cluster``.

Commands go to the master of their key's slot (redis-py's slot map), every master's share pipelined
on one connection and all masters at once.  MOVED refreshes the map, ASK follows a slot in migration
(``ASKING`` to the importing master), NOSCRIPT loads the scripts; TRYAGAIN (a script's keys split by a
migration) and CLUSTERDOWN are retried every 50 ms.  Past ``REDIRECT_DEADLINE_S`` the command is a
store outage.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import hiredis
import redis
from kafka.partitioner.default import murmur2

from ..exceptions import StoreUnavailableError

__all__ = ["CLUSTER_SCHEMES", "REDIRECT_DEADLINE_S", "SlotRouter", "home_partition", "is_cluster_url", "key_hash",
           "redis_py_url"]

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")  # rediss: TLS
REDIRECT_DEADLINE_S = 10.0  # how long MOVED, ASK, TRYAGAIN and CLUSTERDOWN are followed before an error
_WAIT_S = 0.05  # between two tries of a command refused for now (TRYAGAIN, CLUSTERDOWN)


def is_cluster_url(url: str) -> bool:
    return urlsplit(url).scheme.lower() in CLUSTER_SCHEMES


def redis_py_url(url: str) -> str:
    """The URL ``redis.RedisCluster.from_url`` takes for *url*: ``redis+cluster://[user:pw@]host:port[/0]``
    becomes ``redis://[user:pw@]host:port`` (``rediss+cluster`` becomes ``rediss``); of several comma-separated
    seeds the first is kept; the query stays.  ``redis://`` and ``rediss://`` URLs are returned unchanged.

    Raises ValueError for another scheme, a missing host, or a database other than 0 (a cluster has only 0)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("redis", "rediss"):
        return url
    if scheme not in CLUSTER_SCHEMES:
        raise ValueError(f"not a Redis Cluster URL (expected {CLUSTER_SCHEMES[0]}://host:port): {url!r}")
    userinfo, at, hosts = parts.netloc.rpartition("@")
    seed = hosts.split(",")[0].strip()
    if not seed:
        raise ValueError(f"no host in Redis Cluster URL {url!r}")
    if parts.path.strip("/") not in ("", "0"):
        raise ValueError(f"a Redis Cluster has database 0 only, not {parts.path.strip('/')!r}: {url!r}")
    return urlunsplit((scheme.split("+")[0], f"{userinfo}{at}{seed}", "", parts.query, parts.fragment))


def home_partition(key: str, partitions: int) -> int:
    """The partition Kafka's default partitioner gives the message key ``key`` (UTF-8) among ``partitions``."""
    return key_hash(key) % partitions


def key_hash(key: str) -> int:
    """Kafka's default partitioner's hash of the message key ``key`` (murmur2 of its UTF-8 bytes, positive)."""
    return murmur2(key.encode("utf-8", "surrogatepass")) & 0x7FFFFFFF


@dataclass
class _Round:
    """What one round of ``SlotRouter.send`` leaves to the next."""

    retry: list[int] = field(default_factory=list)
    refresh: bool = False  # the slot map changed
    wait: bool = False  # a command was refused for now


class SlotRouter:
    """Commands to the masters of a ``redis.RedisCluster``'s slots (see the module's docstring);
    ``scripts``: the redis-py ``Script`` objects to load where a master lost them."""

    def __init__(self, client: redis.RedisCluster, scripts) -> None:
        self.client, self.scripts = client, scripts

    def send(self, commands: list[tuple[str, tuple]]) -> list:
        """Run ``(key, command)`` pairs; the replies in order, errors as exceptions in the list (raised
        by the caller).  Connection errors propagate (the slot map refreshed first)."""
        replies: list = [None] * len(commands)
        todo = list(range(len(commands)))
        asking: dict[int, str] = {}  # command -> the master to ASK
        deadline = time.monotonic() + REDIRECT_DEADLINE_S
        while True:
            done = self._round(commands, todo, asking, replies)
            if not done.retry:
                return replies
            if time.monotonic() > deadline:
                raise StoreUnavailableError(f"Redis Cluster: {len(done.retry)} command(s) still redirected or "
                                            f"refused after {REDIRECT_DEADLINE_S:.0f} s (a master down, or a slot "
                                            f"migrating): {replies[done.retry[0]]!r}")
            if done.wait:
                time.sleep(_WAIT_S)
            if done.refresh:
                self.refresh()
            todo = done.retry

    def raised(self, commands: list[tuple[str, tuple]]) -> list:
        """``send``, raising the first error reply."""
        replies = self.send(commands)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    def refresh(self) -> None:
        """Reload the slot map; a cluster that cannot answer now leaves the old one (the next command fails)."""
        with contextlib.suppress(redis.exceptions.RedisError, redis.exceptions.RedisClusterException):
            self.client.nodes_manager.initialize()

    def _round(self, commands, todo: list[int], asking: dict[int, str], replies: list) -> _Round:
        """Send ``todo`` to their masters, all written before any reply is read; fill ``replies``."""
        sent: list = []
        complete = False  # every reply read: the connections can be reused
        try:
            for node, idx in self._by_node(commands, todo, asking):
                pool = node.redis_connection.connection_pool
                conn = pool.get_connection()
                sent.append((pool, conn, idx))
                packed = []
                for i in idx:
                    if i in asking:
                        packed.append(hiredis.pack_command(("ASKING",)))
                    packed.append(hiredis.pack_command(commands[i][1]))
                conn.send_packed_command(packed)
            done = _Round()
            for _, conn, idx in sent:
                for i in idx:
                    self._read(conn, i, asking, replies, done)
            complete = True
            return done
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
            self.refresh()  # a master down or replaced: the map may have changed
            raise
        finally:
            for pool, conn, _ in sent:
                if not complete:  # replies left unread (an error, an interruption): never reused
                    conn.disconnect()
                pool.release(conn)

    def _by_node(self, commands, todo: list[int], asking: dict[int, str]):
        """(master, command positions) of ``todo``: the master named by an ASK, else the slot's."""
        by_node: dict[str, list[int]] = defaultdict(list)
        nodes = {}
        for i in todo:
            name = asking.get(i)
            node = (self.client.get_node(node_name=name) if name else None) or \
                self.client.get_node_from_key(commands[i][0])
            if node is None:
                self.refresh()
                node = self.client.get_node_from_key(commands[i][0])
            nodes[node.name] = node
            by_node[node.name].append(i)
        return [(nodes[name], idx) for name, idx in by_node.items()]

    def _read(self, conn, i: int, asking: dict[int, str], replies: list, done: _Round) -> None:
        """Read command ``i``'s reply (after its ``ASKING``'s) into ``replies``, or mark it for ``done.retry``."""
        if i in asking:
            with contextlib.suppress(redis.exceptions.ResponseError):
                conn.read_response()
        try:
            replies[i] = conn.read_response()
            asking.pop(i, None)
        except redis.exceptions.MovedError:
            done.refresh = True
            asking.pop(i, None)
            done.retry.append(i)
        except redis.exceptions.AskError as exc:
            asking[i] = f"{exc.host}:{exc.port}"
            done.refresh |= self.client.get_node(node_name=asking[i]) is None
            done.retry.append(i)
        except redis.exceptions.NoScriptError:
            for script in self.scripts:
                self.client.script_load(script.script)
            done.retry.append(i)
        except (redis.exceptions.TryAgainError, redis.exceptions.ClusterDownError) as exc:
            replies[i] = exc  # a script's keys split by a slot migration in progress, or a failover
            done.refresh = done.wait = True
            done.retry.append(i)
        except redis.exceptions.ResponseError as exc:
            replies[i] = exc
