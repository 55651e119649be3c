"""The asyncio connections of the online store's reads (``RedisOnlineStore.aread_packed``)."""

from __future__ import annotations

import asyncio

import redis.asyncio

__all__ = ["ASYNC_READ_TIMEOUT_S", "ReadConnections"]

ASYNC_READ_TIMEOUT_S = 10.0  # one read's deadline on the asyncio connections (``aread_packed``)


class ReadConnections:
    """The asyncio connections of ``aread_packed`` on one event loop: made by redis-py (its URL
    options: auth, database, TLS), kept idle here between reads, at most ``IDLE`` of them."""

    IDLE = 64

    def __init__(self, url: str, connect_timeout_s: float) -> None:
        # no socket_timeout: each read has one deadline of its own (asyncio.timeout), not one per call
        self.client = redis.asyncio.Redis.from_url(url, socket_timeout=None, socket_connect_timeout=connect_timeout_s)
        self._idle: list = []

    def take(self):
        return self._idle.pop() if self._idle else self.client.connection_pool.make_connection()

    def give_back(self, conn) -> None:
        if len(self._idle) < self.IDLE:
            self._idle.append(conn)
        else:
            asyncio.get_running_loop().create_task(conn.disconnect())

    async def close_idle(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.disconnect(nowait=True)

    async def aclose(self) -> None:
        await self.close_idle()
        await self.client.aclose()
