"""Shared fixtures: real Kafka, Redis and PostgreSQL servers, and unique names per test.

Servers come from, in order of preference:
1. the environment (FEATURESTORE_KAFKA_BOOTSTRAP_SERVERS, FEATURESTORE_REDIS_URL, FEATURESTORE_POSTGRES_DSN),
2. testcontainers, when a Docker engine answers,
3. the embedded stack (real servers from wheels), started in a temporary state folder.
A Redis Cluster (``redis_cluster_url``) comes from FEATURESTORE_TEST_REDIS_CLUSTER_URL, else is a local
cluster of three masters from the same wheel.
A server that cannot be had fails the tests that need it; it never skips them.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Callable, Iterator

import pytest

# One kernel cache for the whole run, the worker subprocesses included: the state engine's kernels
# compile once (a test's own state folder would hold a cold cache each time).
os.environ.setdefault("FEATURESTORE_KERNEL_CACHE",
                      os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".featurestore",
                                   "kernels"))

HYPOTHESIS_PROFILES = {
    "ci": {"max_examples": 1000, "deadline": None},
    "dev": {"max_examples": 100, "deadline": None},
    "thorough": {"max_examples": 2000, "deadline": None},
}
SERVER_ENV = {
    "kafka": "FEATURESTORE_KAFKA_BOOTSTRAP_SERVERS",
    "redis": "FEATURESTORE_REDIS_URL",
    "postgres": "FEATURESTORE_POSTGRES_DSN",
}
REDIS_CLUSTER_ENV = "FEATURESTORE_TEST_REDIS_CLUSTER_URL"
_USED: dict[str, str] = {}  # server name -> where it came from, for the terminal summary


def pytest_configure(config: pytest.Config) -> None:
    """Register the hypothesis profiles and load the one named by HYPOTHESIS_PROFILE (default dev)."""
    try:
        from hypothesis import settings as hypothesis_settings
    except ImportError:
        return
    for name, options in HYPOTHESIS_PROFILES.items():
        hypothesis_settings.register_profile(name, **options)
    hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001 - hook signature
    if _USED:
        used = ", ".join(f"{name}={source}" for name, source in _USED.items())
        terminalreporter.write_line(f"servers used: {used}")


@dataclass
class Servers:
    """Addresses of the three real servers the tests run against."""

    kafka_bootstrap: str
    redis_url: str
    postgres_dsn: str
    sources: dict[str, str] = field(default_factory=dict)  # server name -> env | testcontainers | embedded

    def describe(self) -> str:
        return ", ".join(f"{name}={source}" for name, source in self.sources.items())


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=3).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _from_testcontainers(missing: list[str], stack: ExitStack) -> dict[str, str]:
    found: dict[str, str] = {}
    if "kafka" in missing:
        try:
            from testcontainers.community.kafka import KafkaContainer
        except ImportError:
            from testcontainers.kafka import KafkaContainer
        kafka = stack.enter_context(KafkaContainer("confluentinc/cp-kafka:7.6.0"))
        found["kafka"] = kafka.get_bootstrap_server()
    if "redis" in missing:
        try:
            from testcontainers.community.redis import RedisContainer
        except ImportError:
            from testcontainers.redis import RedisContainer
        redis_c = stack.enter_context(RedisContainer("redis:7"))
        found["redis"] = f"redis://{redis_c.get_container_host_ip()}:{redis_c.get_exposed_port(6379)}/0"
    if "postgres" in missing:
        try:
            from testcontainers.community.postgres import PostgresContainer
        except ImportError:
            from testcontainers.postgres import PostgresContainer
        pg = stack.enter_context(PostgresContainer("postgres:16"))
        found["postgres"] = pg.get_connection_url(driver=None)
    return found


def _missing_message(missing: list[str], reason: str) -> str:
    env = ", ".join(SERVER_ENV[name] for name in missing)
    return (f"no {'/'.join(missing)} server for the integration tests: {reason}. "
            f"Provide them with the environment variables {env} (e.g. from `featurestore dev up`), "
            f"or a running Docker engine for testcontainers.")


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """The three real servers: from the environment, else testcontainers, else the embedded stack."""
    from featurestore.settings import Settings

    settings = Settings()
    found: dict[str, str] = {}
    sources: dict[str, str] = {}
    if settings.kafka_bootstrap_servers:
        found["kafka"] = settings.kafka_bootstrap_servers
    if settings.redis_url:
        found["redis"] = settings.redis_url.get_secret_value()
    if settings.postgres_dsn:
        found["postgres"] = settings.postgres_dsn.get_secret_value()
    sources.update(dict.fromkeys(found, "env"))
    missing = [name for name in SERVER_ENV if name not in found]

    with ExitStack() as stack:
        if missing and _docker_answers():
            try:
                started = _from_testcontainers(missing, stack)
            except Exception as exc:  # noqa: BLE001 - reported through pytest.fail
                pytest.fail(_missing_message(missing, f"testcontainers failed: {exc!r}"), pytrace=False)
            found.update(started)
            sources.update(dict.fromkeys(started, "testcontainers"))
            missing = [name for name in SERVER_ENV if name not in found]
        if missing:
            from featurestore.dev.stack import EmbeddedStack
            from featurestore.exceptions import StackError

            embedded = EmbeddedStack(tmp_path_factory.mktemp("embedded-stack"))
            try:
                info = embedded.up(timeout=120)
            except StackError as exc:
                pytest.fail(_missing_message(missing, f"the embedded stack did not start: {exc}"), pytrace=False)
            stack.callback(embedded.down)
            urls = {"kafka": info.kafka_bootstrap, "redis": info.redis_url, "postgres": info.postgres_dsn}
            for name in missing:
                found[name] = urls[name]
                sources[name] = "embedded"
        _USED.update(sources)
        yield Servers(found["kafka"], found["redis"], found["postgres"], sources)


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL (``redis+cluster://host:port``) of a Redis Cluster: FEATURESTORE_TEST_REDIS_CLUSTER_URL, else a
    local cluster of three masters (``featurestore.dev.cluster``), stopped at the end of the run."""
    url = os.environ.get(REDIS_CLUSTER_ENV)
    if url:
        _USED["redis-cluster"] = "env"
        yield url
        return
    from featurestore.dev.cluster import cluster_url, start_cluster, stop_cluster

    try:
        nodes = start_cluster(tmp_path_factory.mktemp("redis-cluster"), timeout=120)
    except Exception as exc:  # noqa: BLE001 - reported through pytest.fail
        pytest.fail(f"no Redis Cluster for the tests: the local cluster did not start: {type(exc).__name__}: {exc}. "
                    f"Provide one with the environment variable {REDIS_CLUSTER_ENV} "
                    f"(redis+cluster://host:port of one of its nodes).", pytrace=False)
    _USED["redis-cluster"] = "embedded"
    try:
        yield cluster_url([node.port for node in nodes])
    finally:
        stop_cluster(nodes)


@pytest.fixture(params=["single", "cluster"])
def online_url(request, servers) -> str:
    """The online store's URL: a test using it runs once on one Redis and once on the Redis Cluster."""
    return servers.redis_url if request.param == "single" else request.getfixturevalue("redis_cluster_url")


@pytest.fixture
def unique_name() -> Callable[..., str]:
    """``unique_name(prefix)`` -> ``<prefix>_<12 hex digits>``: valid for topics, keys and SQL identifiers."""

    def make(prefix: str = "t") -> str:
        return f"{prefix}_{uuid.uuid4().hex[:12]}"

    return make


@pytest.fixture
def topic_factory(servers: Servers, unique_name: Callable[..., str]) -> Iterator[Callable[..., str]]:
    """``topic_factory(partitions=3, prefix="topic")`` creates a unique Kafka topic and returns its name."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=servers.kafka_bootstrap, request_timeout_ms=10000)
    created: list[str] = []

    def make(partitions: int = 3, prefix: str = "topic", replication_factor: int = 1) -> str:
        name = unique_name(prefix)
        admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=replication_factor)])
        created.append(name)
        return name

    yield make
    try:
        if created:
            admin.delete_topics(created)
    except Exception:  # noqa: BLE001 - best-effort cleanup; names are unique anyway
        pass
    finally:
        admin.close()


@pytest.fixture
def redis_prefix(unique_name: Callable[..., str]) -> str:
    """A unique key prefix (``test_<hex>:``) for one test."""
    return unique_name("test") + ":"


@pytest.fixture
def redis_client(servers: Servers, redis_prefix: str) -> Iterator["redis.Redis"]:  # noqa: F821
    """A redis.Redis on the test server with ``key_prefix``; that prefix's keys are deleted afterwards."""
    import redis

    client = redis.Redis.from_url(servers.redis_url, socket_timeout=10)
    client.key_prefix = redis_prefix
    yield client
    keys = list(client.scan_iter(match=redis_prefix + "*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def pg_dsn(servers: Servers) -> str:
    """DSN of the test PostgreSQL server."""
    return servers.postgres_dsn


@pytest.fixture
def pg_schema(pg_dsn: str, unique_name: Callable[..., str]) -> Iterator[str]:
    """A unique, freshly created schema; dropped (CASCADE) afterwards."""
    import asyncpg

    name = unique_name("test")

    async def execute(sql: str) -> None:
        conn = await asyncpg.connect(pg_dsn, timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(execute(f'CREATE SCHEMA "{name}"'))
    yield name
    asyncio.run(execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
