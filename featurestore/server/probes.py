"""``/readyz``: can this server answer reads now?  Redis answers a PING, and PostgreSQL a ``SELECT 1``
where the store has an offline store; each check is bounded by ``PROBE_TIMEOUT_S``."""

from __future__ import annotations

import asyncio
from typing import Callable



from featurestore.client import FeatureStore
from featurestore.exceptions import ConfigurationError
from featurestore.online import async_redis

__all__ = ["PROBE_TIMEOUT_S", "Readiness"]

PROBE_TIMEOUT_S = 2.0


class Readiness:
    """The readiness checks of one store.  The Redis client is the probe's own (a probe that times out
    never touches the connections of the reads)."""

    def __init__(self, store: FeatureStore, redact: Callable[[str], str] = str) -> None:
        self.store, self.redact = store, redact
        url = getattr(store.online, "url", None)
        self._redis = (async_redis(url, getattr(store.online, "places_by_partition", False),
                                   socket_timeout=PROBE_TIMEOUT_S, socket_connect_timeout=PROBE_TIMEOUT_S)
                       if url else None)

    async def check(self) -> tuple[bool, dict]:
        """(ready, a report: each store's state and the views served with their versions)."""
        redis_state = await self._redis_state()
        postgres_state = await self._postgres_state()
        ready = redis_state == "ok" and postgres_state in ("ok", "not configured")
        not_applied = sorted(set(self.store.repo.views) - set(self.store.versions))
        return ready, {"status": "ready" if ready else "not ready", "redis": self.redact(redis_state),
                       "postgres": self.redact(postgres_state), "views": dict(sorted(self.store.versions.items())),
                       "views_not_applied": not_applied}

    async def _redis_state(self) -> str:
        if self._redis is None:
            return "not configured"
        try:
            await self._redis.ping()
        except Exception as exc:  # noqa: BLE001 - reported, the probe answers 503
            return f"unavailable: {type(exc).__name__}: {exc}"
        return "ok"

    async def _postgres_state(self) -> str:
        try:
            offline, _ = await asyncio.wait_for(self.store.astores(), PROBE_TIMEOUT_S)
        except ConfigurationError:
            return "not configured"
        except Exception as exc:  # noqa: BLE001 - reported, the probe answers 503
            return f"unavailable: {type(exc).__name__}: {exc}"
        try:
            async with offline.pool.acquire(timeout=PROBE_TIMEOUT_S) as conn:
                await conn.fetchval("SELECT 1", timeout=PROBE_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - reported, the probe answers 503
            return f"unavailable: {type(exc).__name__}: {exc}"
        return "ok"

    async def aclose(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
