"""Worker coordination in the online store, beside the states: the epoch marker that tells a server
restarted empty, the announcements of running workers (``fs:p:live``), the partition claims
(``fs:p:owners:{group}``) and the per-group offsets of a topic.  Mixed into ``RedisOnlineStore``
(``self.client``, ``self.project``, ``offsets_key``, ``epoch_key``).
"""

from __future__ import annotations

import os
import socket

import orjson

from ..exceptions import WorkerRunningError

LIVE_TTL_MS = 30_000  # a worker's announcement outlives it by at most this (renewed every ~5 s)


class CoordinationMixin:
    """Epoch marker, live workers, partition claims and topic offsets of ``RedisOnlineStore``."""

    def ensure_epoch(self, epoch: str) -> str:
        """Set the marker if absent; return the marker now stored."""
        self.client.set(self.epoch_key, epoch, nx=True)
        return self.client.get(self.epoch_key).decode()

    def epoch(self) -> str | None:
        value = self.client.get(self.epoch_key)
        return None if value is None else value.decode()

    @property
    def live_key(self) -> str:
        return f"fs:{self.project}:live"

    def _server_ms(self) -> int:
        seconds, micros = self.client.time()
        return seconds * 1000 + micros // 1000

    def announce_worker(self, group: str, worker: str, topics: list[str], ttl_ms: int = LIVE_TTL_MS,
                        views: list[str] | None = None, started_ms: int | None = None,
                        status: dict | None = None) -> int:
        """Record (or renew) that ``worker`` of ``group`` consumes ``topics`` (computing the view keys
        ``views``, running since ``started_ms``), for ``ttl_ms`` (by the Redis server's clock, so hosts
        with skewed clocks agree).  ``status``: what the worker does (JSON; ``workers.membership``), kept
        in the announcement for the web console.  Returns the server time written (``started_ms`` when
        not given)."""
        now = self._server_ms()
        doc = {"group": group, "worker": worker, "topics": sorted(topics), "host": socket.gethostname(),
               "pid": os.getpid(), "at_ms": now, "ttl_ms": ttl_ms,
               "views": sorted(views) if views is not None else None,
               "started_ms": now if started_ms is None else started_ms}
        if status is not None:
            doc["status"] = status
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(self.live_key, f"{group}:{worker}", orjson.dumps(doc))
        pipe.pexpire(self.live_key, max(ttl_ms, LIVE_TTL_MS))  # gone when no worker of the project renews it
        pipe.execute()
        return now

    def retire_worker(self, group: str, worker: str) -> None:
        self.client.hdel(self.live_key, f"{group}:{worker}")

    def live_workers(self) -> list[dict]:
        """The announcements of the workers running now (or stopped less than their ``ttl_ms`` ago
        without retiring: killed, say); expired ones are removed.  One hash per project: no scan of
        the keyspace (which holds every entity's state)."""
        return self._live_workers()[1]

    def _live_workers(self) -> tuple[int, list[dict]]:
        """(the server's time in ms, ``live_workers()``) in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        pipe.time()
        pipe.hgetall(self.live_key)
        (seconds, micros), raw = pipe.execute()
        return self._sort_live(seconds * 1000 + micros // 1000, raw)

    def _sort_live(self, now: int, raw: dict) -> tuple[int, list[dict]]:
        """(``now``, the live announcements of ``raw``, sorted); expired ones removed."""
        live, expired = [], []
        for field, blob in raw.items():
            doc = orjson.loads(blob)
            if doc["at_ms"] + doc["ttl_ms"] > now:
                live.append(doc)
            else:
                expired.append(field)
        if expired:
            self.client.hdel(self.live_key, *expired)
        return now, sorted(live, key=lambda d: (d["group"], d["worker"]))

    def refuse_if_consumed(self, topics, action: str) -> None:
        """Raise ``WorkerRunningError`` when a live worker consumes one of ``topics``: ``action``
        would write states that the worker holds in its cache and overwrites at its next commit
        (or, after a reload, counts events twice)."""
        wanted = set(topics)
        now, live = self._live_workers()
        busy = [w for w in live if wanted & set(w.get("topics", ()))]
        if not busy:
            return
        who = "; ".join(f"group {w['group']!r} worker {w['worker']} (pid {w['pid']} on {w['host']}, "
                        f"renewed {(now - w['at_ms']) / 1000:.0f} s ago) "
                        f"consumes {', '.join(sorted(wanted & set(w['topics'])))}"
                        for w in busy)
        raise WorkerRunningError(
            f"{action}: {len(busy)} running worker(s) consume the topic(s) whose online states this would write: "
            f"{who}.  A worker keeps the states in memory and its next commit would overwrite what this writes. "
            f"Stop the worker group first (the announcement of a worker killed without stopping expires "
            f"{LIVE_TTL_MS // 1000} s after its last renewal).")

    def owners_key(self, group: str) -> str:
        return f"fs:{self.project}:owners:{group}"

    def claim_partitions(self, group: str, names: list[str], token: str) -> None:
        """Record ``token`` as the owner of partitions ``names`` ("topic:partition") of ``group``: from
        now on a commit carrying another token for one of them writes nothing."""
        if names:
            self.client.hset(self.owners_key(group), mapping=dict.fromkeys(names, token))

    def topic_offsets(self, topic: str) -> dict[str, dict[str, int]]:
        """Per consumer group: the applied offsets of ``topic``'s partitions (``topic:partition`` -> offset)."""
        prefix = self.offsets_key("")
        out: dict[str, dict[str, int]] = {}
        for key in self.client.scan_iter(match=prefix + "*", count=500):
            found = {k.decode(): int(v) for k, v in self.client.hgetall(key).items()
                     if k.decode().rsplit(":", 1)[0] == topic}
            if found:
                out[key.decode()[len(prefix):]] = found
        return out

    def forget_topic(self, topic: str) -> int:
        """Delete every group's applied offsets and partition claims of ``topic``; returns the fields deleted."""
        n = 0
        for prefix in (self.offsets_key(""), self.owners_key("")):
            for key in self.client.scan_iter(match=prefix + "*", count=500):
                fields = [k for k in self.client.hkeys(key) if k.decode().rsplit(":", 1)[0] == topic]
                if fields:
                    n += self.client.hdel(key, *fields)
        return n
