"""The monitoring page's data: the stores' health, the live workers' status (published with each worker's
announcement in Redis, ``workers.membership``), and the dead letters kept in PostgreSQL's rejects table.

Per view: freshness (now minus the newest event time applied, by any live worker), the last commit,
events applied and events/s, consumer lag, cached states and the workers computing it with their
partitions."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

from featurestore.exceptions import ConfigurationError

__all__ = ["PROBE_TIMEOUT_S", "dead_letters", "health", "view_monitoring", "worker_rows"]

PROBE_TIMEOUT_S = 2.0
#: dead letters listed with their reason and position
LATEST_DEAD_LETTERS = 8


async def health(store: Any, kafka_bootstrap: str | None) -> dict[str, str]:
    """``{"redis", "postgres", "kafka"}``: "ok", "unavailable: ..." or "not configured" (Kafka: a TCP
    connection to the first bootstrap server)."""
    return {"redis": await _redis_state(store), "postgres": await _postgres_state(store),
            "kafka": await asyncio.to_thread(_kafka_state, kafka_bootstrap)}


async def _redis_state(store: Any) -> str:
    try:
        await asyncio.wait_for(asyncio.to_thread(store.online.client.ping), PROBE_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - shown on the page
        return f"unavailable: {type(exc).__name__}: {exc}"
    return "ok"


async def _postgres_state(store: Any) -> str:
    try:
        offline, _ = await asyncio.wait_for(store.astores(), PROBE_TIMEOUT_S)
        async with offline.pool.acquire(timeout=PROBE_TIMEOUT_S) as conn:
            await conn.fetchval("SELECT 1", timeout=PROBE_TIMEOUT_S)
    except ConfigurationError:
        return "not configured"
    except Exception as exc:  # noqa: BLE001 - shown on the page
        return f"unavailable: {type(exc).__name__}: {exc}"
    return "ok"


def _kafka_state(bootstrap: str | None) -> str:
    if not bootstrap:
        return "not configured"
    first = bootstrap.split(",")[0].strip()
    host, _, port = first.rpartition(":")
    try:
        socket.create_connection((host.strip("[]") or first, int(port or 9092)), timeout=PROBE_TIMEOUT_S).close()
    except (OSError, ValueError) as exc:
        return f"unavailable: {type(exc).__name__}: {exc}"
    return "ok"


def worker_rows(live: list[dict], now_ms: int) -> list[dict[str, Any]]:
    """One row per live worker: group, id, host, pid, views, partitions, lag, records done, CPU seconds,
    dead letters by reason (since it started), its uptime and how long ago it renewed its announcement."""
    rows = []
    for w in live:
        status = w.get("status") or {}
        rows.append({"group": w["group"], "worker": w["worker"], "host": w.get("host"), "pid": w.get("pid"),
                     "views": w.get("views") or [], "partitions": status.get("partitions", []),
                     "lag": sum(status.get("lag", {}).values()), "records_done": status.get("records_done"),
                     "cpu_s": status.get("cpu_s"), "dead_letters": dict(sorted(status.get("dead_letters", {}).items())),
                     "renewed_s": round((now_ms - w["at_ms"]) / 1000, 1),
                     "uptime_s": round((now_ms - (w.get("started_ms") or now_ms)) / 1000)})
    return rows


def view_monitoring(repo: Any, versions: dict[str, int], live: list[dict], now_ms: int) -> list[dict[str, Any]]:
    """Per feature view of the repository, what its live workers report (summed over workers; times are
    the newest).  ``freshness_s`` is None while no live worker has applied an event of it."""
    out = []
    for name in sorted(repo.views):
        row: dict[str, Any] = {"view": name, "version": versions.get(name), "workers": [], "partitions": [],
                               "applied": 0, "events_per_s": 0.0, "lag": 0, "cached_states": 0,
                               "last_event_ms": None, "last_commit_ms": None, "cpu_s": 0.0}
        for w in live:
            for vs in ((w.get("status") or {}).get("views") or {}).values():
                if vs.get("view") != name or (versions.get(name) is not None and vs.get("version") != versions[name]):
                    continue
                row["workers"].append(w["worker"])
                row["partitions"] += [p for p in w["status"].get("partitions", [])
                                      if p.rsplit(":", 1)[0] == vs.get("topic")]
                for key in ("applied", "events_per_s", "lag", "cached_states", "cpu_s"):
                    row[key] += vs.get(key) or 0
                for key in ("last_event_ms", "last_commit_ms"):
                    if vs.get(key) is not None and (row[key] is None or vs[key] > row[key]):
                        row[key] = vs[key]
        for key, at in (("freshness_s", "last_event_ms"), ("commit_age_s", "last_commit_ms")):
            row[key] = None if row[at] is None else max(0.0, (now_ms - row[at]) / 1000)
        row["partitions"] = sorted(set(row["partitions"]))
        out.append(row)
    return out


async def dead_letters(store: Any, limit: int = LATEST_DEAD_LETTERS) -> dict[str, Any]:
    """``{"by_reason": [{"source", "reason", "count"}], "latest": [{"source", "partition", "offset",
    "reason", "detail", "at"}], "error": None | str}`` from the rejects table (every record a worker or a
    backfill refused)."""
    try:
        offline, _ = await store.astores()
        table = offline.qualified(offline.rejects_table())
        async with offline.pool.acquire() as conn:
            exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table)
            if not exists:
                return {"by_reason": [], "latest": [], "error": None}
            counts = await conn.fetch(f"SELECT source, reason, count(*) AS n FROM {table} GROUP BY source, reason "
                                      f"ORDER BY n DESC, source, reason")
            latest = await conn.fetch(f'SELECT source, partition, "offset", reason, detail, at FROM {table} '
                                      f'ORDER BY at DESC, "offset" DESC LIMIT $1', limit)
    except ConfigurationError:
        return {"by_reason": [], "latest": [], "error": "no offline store configured"}
    except Exception as exc:  # noqa: BLE001 - shown on the page
        return {"by_reason": [], "latest": [], "error": f"{type(exc).__name__}: {exc}"}
    return {"by_reason": [{"source": r["source"], "reason": r["reason"], "count": r["n"]} for r in counts],
            "latest": [{"source": r["source"], "partition": r["partition"], "offset": r["offset"],
                        "reason": r["reason"], "detail": r["detail"] or "",
                        "at": r["at"].isoformat() if r["at"] is not None else ""} for r in latest],
            "error": None}


def now_ms() -> int:
    return int(time.time() * 1000)
