"""Reads per feature service and feature over time, counted in Redis.

The feature server already counts the entity rows it answers per service (its Prometheus counter
``featurestore_server_rows_served_total``).  ``UsageRecorder`` adds the growth of that counter to Redis
at most every ``FLUSH_PERIOD_S`` (from the request path: one clock read per request; the Redis write
runs as a task of its own) and when the server stops, so the read path does no Redis write of its own.
Counts land in one hash per UTC day, ``fs:{project}:usage:{YYYYMMDD}``, field ``{minute ms}|{service}``,
kept ``KEEP_DAYS`` days.  Reads per feature are the reads of the services serving it.

``ReadCounter`` does the same for the Python client's ``get_online_features``: entity rows read per service
(field ``{minute ms}|{service}``) or, for a list of features, under ``FEATURE_LISTS`` and per feature (field
``{minute ms}|-|{view}:{feature}``), added up in memory per request shape and written at most every
``CLIENT_FLUSH_PERIOD_S`` (by the read that finds the period over) and at ``close``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from typing import Any

__all__ = ["CLIENT_FLUSH_PERIOD_S", "FEATURE_LISTS", "FLUSH_PERIOD_S", "KEEP_DAYS", "ReadCounter", "UsageRecorder",
           "read_usage", "usage_key"]

logger = logging.getLogger(__name__)

FLUSH_PERIOD_S = 10.0
CLIENT_FLUSH_PERIOD_S = 5.0
#: the series name of reads that named features rather than a service
FEATURE_LISTS = "(feature lists)"
KEEP_DAYS = 8
_DAY_MS = 86_400_000


def usage_key(project: str, day_ms: int) -> str:
    return f"fs:{project}:usage:{time.strftime('%Y%m%d', time.gmtime(day_ms / 1000))}"


def _served_rows(rows_counter: Any) -> dict[str, float]:
    """service -> rows served so far, from the server's counter."""
    out: dict[str, float] = {}
    for metric in rows_counter.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                out[sample.labels["service"]] = sample.value
    return out


class UsageRecorder:
    """ASGI middleware in front of the feature server app: adds the rows served per service to Redis (see
    the module docstring).  ``rows_counter``: the server's rows counter; ``redis_url``: the online store."""

    def __init__(self, app: Any, rows_counter: Any, redis_url: str, project: str,
                 period_s: float | None = None, cluster: bool = False) -> None:
        self.app, self.rows_counter, self.project = app, rows_counter, project
        self.period_s = FLUSH_PERIOD_S if period_s is None else period_s
        self.redis_url, self.cluster = redis_url, cluster  # cluster: a Redis Cluster (redis:// URL and the setting)
        self._client: Any = None
        self._sent: dict[str, float] = {}
        self._next = time.monotonic() + self.period_s
        self._task: asyncio.Task | None = None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, self._on_shutdown(receive), send)
            return
        await self.app(scope, receive, send)
        if scope["type"] == "http" and time.monotonic() >= self._next and (self._task is None or self._task.done()):
            self._next = time.monotonic() + self.period_s
            self._task = asyncio.get_running_loop().create_task(self.flush())

    def _on_shutdown(self, receive: Any) -> Any:
        async def wrapped() -> dict:
            message = await receive()
            if message.get("type") == "lifespan.shutdown":
                await self.flush()
                if self._client is not None:
                    await self._client.aclose()
                    self._client = None
            return message
        return wrapped

    async def flush(self) -> int:
        """Add the rows served since the last flush to this minute's counts; returns the rows added."""
        served = _served_rows(self.rows_counter)
        delta = {s: n - self._sent.get(s, 0.0) for s, n in served.items() if n > self._sent.get(s, 0.0)}
        if not delta:
            return 0
        try:
            if self._client is None:
                from featurestore.online import async_redis

                self._client = async_redis(self.redis_url, self.cluster, socket_timeout=5)
            now = int(time.time() * 1000)
            key = usage_key(self.project, now)
            minute = now - now % 60_000
            pipe = self._client.pipeline(transaction=False)
            for service, n in delta.items():
                pipe.hincrby(key, f"{minute}|{service}", int(n))
            pipe.expire(key, KEEP_DAYS * 86_400)
            await pipe.execute()
        except Exception as exc:  # noqa: BLE001 - counted again at the next flush
            logger.warning("could not record feature reads in the online store: %s", exc)
            return 0
        self._sent.update({s: served[s] for s in delta})
        return int(sum(delta.values()))


class ReadCounter:
    """Counts a client's online reads (see the module docstring).  ``client``: a synchronous redis-py client
    of the online store.  ``add`` is the read path's part: a dict update and a clock read."""

    def __init__(self, client: Any, project: str, period_s: float = CLIENT_FLUSH_PERIOD_S) -> None:
        self.client, self.project, self.period_s = client, project, period_s
        self._pending: dict[Any, int] = {}  # request plan -> entity rows read since the last flush
        self._labels: dict[Any, tuple[str | None, tuple[str, ...]]] = {}  # plan -> (service, features)
        self._next = time.monotonic() + period_s

    def add(self, plan: Any, service: str | None, rows: int) -> None:
        """Count ``rows`` entity rows read with ``plan`` (of ``service``, or of ``plan.refs`` when None)."""
        pending = self._pending
        if plan in pending:
            pending[plan] += rows
        else:
            pending[plan] = rows
            self._labels[plan] = (service, () if service else tuple(f"{r.view}:{r.feature}" for r in plan.refs))
        if time.monotonic() >= self._next:
            self.flush()

    def flush(self) -> int:
        """Write the counts since the last flush to this minute's fields; returns the rows written (0 when
        Redis did not answer: the counts are kept for the next flush)."""
        self._next = time.monotonic() + self.period_s
        if not self._pending:
            return 0
        pending, labels = self._pending, self._labels
        self._pending, self._labels = {}, {}
        fields: dict[str, int] = defaultdict(int)
        now = int(time.time() * 1000)
        minute = now - now % 60_000
        for plan, n in pending.items():
            service, features = labels[plan]
            fields[f"{minute}|{service or FEATURE_LISTS}"] += n
            for feature in features:
                fields[f"{minute}|-|{feature}"] += n
        key = usage_key(self.project, now)
        try:
            pipe = self.client.pipeline(transaction=False)
            for field, n in fields.items():
                pipe.hincrby(key, field, n)
            pipe.expire(key, KEEP_DAYS * 86_400)
            pipe.execute()
        except Exception as exc:  # noqa: BLE001 - kept and written at the next flush
            logger.warning("could not record feature reads in the online store: %s", exc)
            for plan, n in pending.items():
                self._pending[plan] = self._pending.get(plan, 0) + n
                self._labels.setdefault(plan, labels[plan])
            return 0
        return sum(pending.values())


def read_usage(client: Any, project: str, services: dict[str, list[str]], hours: int = 24,
               now_ms: int | None = None) -> dict[str, Any]:
    """Reads of the last ``hours``: per service a time series of (minute ms, rows read) and a total, and
    per feature (``view:feature``, from ``services``: service -> its features) a total."""
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    since = now - hours * 3_600_000
    days = range(since - since % _DAY_MS, now + 1, _DAY_MS)
    pipe = client.pipeline(transaction=False)
    for day in days:
        pipe.hgetall(usage_key(project, day))
    series: dict[str, dict[int, int]] = defaultdict(dict)
    features: dict[str, int] = defaultdict(int)
    for raw in pipe.execute():
        for field, value in raw.items():
            minute, _, service = field.decode().partition("|")
            if int(minute) < since:
                continue
            if service.startswith("-|"):  # a feature of a client's read of a list of features
                features[service[2:]] += int(value)
                continue
            series[service][int(minute)] = series[service].get(int(minute), 0) + int(value)
    totals = {s: sum(points.values()) for s, points in series.items()}
    for service, n in totals.items():
        for feature in services.get(service, []):
            features[feature] += n
    return {"series": {s: sorted(points.items()) for s, points in series.items()},
            "services": sorted(totals.items(), key=lambda kv: (-kv[1], kv[0])),
            "features": sorted(features.items(), key=lambda kv: (-kv[1], kv[0]))}
