"""Helpers shared by test modules of several folders: applying a repository under a project of the
session servers and removing it again, creating a topic, and probing a port."""

from __future__ import annotations

import asyncio
import socket

import asyncpg

from featurestore.online import RedisClusterOnlineStore, open_online_store


def ensure_topic(servers, topic: str, partitions: int) -> None:
    """Create ``topic`` with ``partitions`` partitions on the session broker, unless it exists."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=servers.kafka_bootstrap)
    try:
        admin.create_topics([NewTopic(topic, partitions, 1)])
    except TopicAlreadyExistsError:
        pass
    finally:
        admin.close()


def apply_repo(servers, project: str, repo_path) -> None:
    """Register the repository at ``repo_path`` under ``project`` and create its offline tables."""
    from featurestore.offline import PostgresOfflineStore
    from featurestore.registry import Registry
    from featurestore.repo import load_repo

    async def apply() -> None:
        store = await PostgresOfflineStore.create(servers.postgres_dsn, project)
        try:
            await Registry.for_store(store).apply(load_repo(repo_path), store)
        finally:
            await store.close()

    asyncio.run(apply())


def drop_project(servers, project: str) -> None:
    """Drop the project's tables and sequences in the ``public`` schema, and its Redis keys."""
    async def drop() -> None:
        conn = await asyncpg.connect(servers.postgres_dsn)
        try:
            rows = await conn.fetch("SELECT c.relname, c.relkind::text AS kind FROM pg_class c JOIN pg_namespace n "
                                    "ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relname LIKE $1 "
                                    "AND c.relkind IN ('r', 'S')", project + "\\_\\_%")
            for r in rows:
                await conn.execute(f'DROP {"TABLE" if r["kind"] == "r" else "SEQUENCE"} IF EXISTS '
                                   f'public."{r["relname"]}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(drop())
    delete_project_keys(servers.redis_url, project)


def delete_project_keys(url: str, project: str) -> None:
    """Delete the online store keys of ``project`` (one Redis, or every master of a cluster)."""
    online = open_online_store(url, project)
    patterns = [f"fs:{project}:*"]
    if isinstance(online, RedisClusterOnlineStore):
        patterns.append(f"fs:{{{project}[#}}]*")  # its hash-tagged keys
    for pattern in patterns:
        keys = list(online.client.scan_iter(match=pattern, count=1000))
        for lo in range(0, len(keys), 500):
            online.client.delete(*keys[lo:lo + 500])  # a cluster client splits them by slot
    online.client.close()


def refused(host: str, port: int) -> bool:
    """True when nothing listens on ``host:port``."""
    try:
        socket.create_connection((host, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False
