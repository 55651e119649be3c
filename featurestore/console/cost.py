"""What each part of the store costs, measured: Redis bytes per view, PostgreSQL bytes of the event log,
segments and history per source and view, and worker CPU time per view.

Redis: ``MEMORY USAGE`` of a sample of a view's keys (up to ``SAMPLE_KEYS``) times its key count; the
count is exact (a SCAN of the view's keys) up to ``EXACT_COUNT_MAX`` keys in the database, else estimated
from ``RANDOMKEY`` samples.  PostgreSQL: ``pg_total_relation_size`` of each table.  CPU: what the live
workers publish (``workers.reporting.StatusBook``: the engine's CPU time per view, plus each view's share of
the rest of each batch's process CPU time)."""

from __future__ import annotations

import asyncio
from typing import Any

from featurestore.exceptions import ConfigurationError

__all__ = ["EXACT_COUNT_MAX", "SAMPLE_KEYS", "postgres_bytes", "redis_bytes", "worker_cpu"]

SAMPLE_KEYS = 200
EXACT_COUNT_MAX = 200_000
_RANDOM_SAMPLES = 2_000


def redis_bytes(online: Any, view_keys: dict[str, str]) -> list[dict[str, Any]]:
    """Per view (name -> view key): keys, sampled bytes per key, total bytes and whether the key count is
    estimated.  Synchronous (run it in a thread)."""
    client = online.client
    total_keys = int(client.dbsize())
    estimated = total_keys > EXACT_COUNT_MAX
    shares: dict[str, int] = {}
    if estimated:
        picks = [client.randomkey() for _ in range(_RANDOM_SAMPLES)]
        for name, vk in view_keys.items():
            prefix = f"fs:{vk}:".encode()
            shares[name] = sum(1 for k in picks if k is not None and k.startswith(prefix))
    out = []
    for name, vk in sorted(view_keys.items()):
        sample: list[bytes] = []
        count = 0
        for key in client.scan_iter(match=f"fs:{vk}:*", count=1000):
            if len(sample) < SAMPLE_KEYS:
                sample.append(key)
            elif estimated:
                break
            count += 1
        if estimated:
            count = int(total_keys * shares[name] / _RANDOM_SAMPLES)
        pipe = client.pipeline(transaction=False)
        for key in sample:
            pipe.memory_usage(key, samples=0)
        sizes = [s for s in pipe.execute() if s is not None]
        per_key = sum(sizes) / len(sizes) if sizes else 0.0
        out.append({"view": name, "view_key": vk, "keys": count, "bytes_per_key": round(per_key),
                    "bytes": int(per_key * count), "estimated": estimated, "sampled": len(sizes)})
    return out


async def postgres_bytes(store: Any) -> dict[str, Any]:
    """``{"tables": [{"part", "name", "table", "bytes"}], "error"}``: the event log and segments of each
    source, the history of each registered view version, and the rejects table."""
    try:
        offline, registry = await store.astores()
    except ConfigurationError:
        return {"tables": [], "error": "no offline store configured"}
    wanted: list[tuple[str, str, str]] = []
    for name in sorted(store.repo.sources):
        wanted.append(("event log", name, offline.events_table(name)))
        wanted.append(("segments", name, offline.segments_table(name)))
    for name in sorted(store.repo.views):
        versions = await registry.versions(name) if registry is not None else []
        for v in versions:
            wanted.append(("history", f"{name} v{v}", offline.history_table(name, v)))
    wanted.append(("rejects", "all sources", offline.rejects_table()))
    tables = []
    try:
        async with offline.pool.acquire() as conn:
            for part, name, table in wanted:
                size = await conn.fetchval("SELECT pg_total_relation_size(to_regclass($1))",
                                           offline.qualified(table))
                if size is not None:
                    tables.append({"part": part, "name": name, "table": table, "bytes": int(size)})
    except Exception as exc:  # noqa: BLE001 - shown on the page
        return {"tables": tables, "error": f"{type(exc).__name__}: {exc}"}
    return {"tables": tables, "error": None}


def worker_cpu(live: list[dict]) -> list[dict[str, Any]]:
    """Per view: CPU seconds the live workers spent on it since they started, and events applied."""
    per: dict[str, dict[str, Any]] = {}
    for w in live:
        for vs in ((w.get("status") or {}).get("views") or {}).values():
            row = per.setdefault(vs["view"], {"view": vs["view"], "cpu_s": 0.0, "applied": 0, "workers": 0})
            row["cpu_s"] += vs.get("cpu_s") or 0.0
            row["applied"] += vs.get("applied") or 0
            row["workers"] += 1
    for row in per.values():
        row["us_per_event"] = round(row["cpu_s"] * 1e6 / row["applied"], 1) if row["applied"] else None
        row["cpu_s"] = round(row["cpu_s"], 3)
    return sorted(per.values(), key=lambda r: r["view"])


async def redis_bytes_async(online: Any, view_keys: dict[str, str]) -> list[dict[str, Any]]:
    return await asyncio.to_thread(redis_bytes, online, view_keys)
