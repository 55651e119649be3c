"""Redis backend of the online store (redis-py with hiredis).

Layout, for project ``p``:

* ``fs:{view_key}:{entity}`` — hash: ``s`` state (without its event ids), ``i`` the event ids
  (``[id, ts]`` pairs, appended to by each commit: ``OnlineRecord.ids``), ``v`` the values row (``pack_row``: valid-until
  and watermark in ms as two 16-digit fields, then the values' JSON as of the watermark), ``o`` the
  offsets of the events applied to the state (``OnlineRecord.applied``, empty when the writer does
  not track them); expires ``ttl + TTL_GRACE_MS`` after its last write (expiry in event time is
  decided by the reader).  Rows written before this layout (``v`` the bare JSON, ``w`` and ``u``
  separate fields) are still read, and replaced at the entity's next write;
* ``fs:p:offsets:{group}`` — hash ``topic:partition`` -> last applied offset;
* ``fs:p:epoch`` — marker written when the store is initialised; when it is
  missing the server lost its data (restart without persistence);
* ``fs:p:live`` — hash ``{group}:{worker}`` -> a running worker's announcement (its topics,
  host, pid, time by the server's clock), renewed every few seconds and ignored (then removed)
  ``LIVE_TTL_MS`` after the last renewal;
  ``push`` and ``materialize`` refuse to write states of a topic a live worker consumes.

A commit writes the states of a micro-batch and the partitions' offsets with Lua
scripts that write only if the stored offsets still equal what the writer read
(compare-and-set): a worker that lost its partitions to another cannot
overwrite newer state.  The worker commits in chunks of states (a script blocks
every reader while it runs), the offsets advanced by the last chunk.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import socket
import weakref

import hiredis
import orjson
import redis
import redis.asyncio

from ..exceptions import ConfigurationError, StoreUnavailableError, WorkerRunningError
from .base import OnlineRecord

logger = logging.getLogger(__name__)

TTL_GRACE_MS = 3_600_000
_TIMEOUTS = {"socket_timeout": 10, "socket_connect_timeout": 5}
LIVE_TTL_MS = 30_000  # a worker's announcement outlives it by at most this (renewed every ~5 s)
LOAD_CHUNK = 1000  # keys per state-loading script call

_COMMIT = """
if ARGV[1] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[1] then return -1 end
local n = tonumber(ARGV[2])
local i = 5
for p = 1, n do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  if (cur or '-1') ~= ARGV[i + 1] then return 0 end
  if ARGV[4] ~= '' and redis.call('HGET', KEYS[3], ARGV[i]) ~= ARGV[4] then return 0 end
  i = i + 3
end
local j = i
for k = 4, #KEYS do  -- each state as its writer last saw it stored ('*': not checked)
  local want = ARGV[j + 5]
  if want ~= '*' and (redis.call('HGET', KEYS[k], 'o') or '') ~= want then return -2 end
  j = j + 6
end
if ARGV[3] == '1' then
  i = 5
  for p = 1, n do
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2])
    i = i + 3
  end
end
for k = 4, #KEYS do
  local ids = ARGV[i + 4]
  if string.byte(ids, 1) == 43 then  -- '+': pairs to append to the stored ids (ViewState.to_parts)
    if #ids == 1 then
      redis.call('HSET', KEYS[k], 's', ARGV[i], 'v', ARGV[i + 1], 'o', ARGV[i + 3])
    else
      local cur = redis.call('HGET', KEYS[k], 'i')
      if cur and #cur > 0 then ids = cur .. ',' .. string.sub(ids, 2) else ids = string.sub(ids, 2) end
      redis.call('HSET', KEYS[k], 's', ARGV[i], 'v', ARGV[i + 1], 'o', ARGV[i + 3], 'i', ids)
    end
  else
    redis.call('HSET', KEYS[k], 's', ARGV[i], 'v', ARGV[i + 1], 'o', ARGV[i + 3], 'i', ids)
  end
  local ttl = tonumber(ARGV[i + 2])
  if ttl > 0 then redis.call('PEXPIRE', KEYS[k], ttl) else redis.call('PERSIST', KEYS[k]) end
  i = i + 6
end
return 1
"""


# A values row: valid-until (ms) and watermark (ms), each plus ``OFFSET`` in 16 zero-padded digits,
# then the values' JSON.  The read script decides "exact at t" by comparing the first 16 bytes with
# t's 16 digits as strings: Lua compares strings with strcoll (Redis sets LC_COLLATE from its
# environment), and equal-length strings of ASCII digits order as their numbers in byte order and in
# glibc's locale collations (digits carry increasing primary weights, none ignorable); tested in
# the C locales only.  One HGET and one comparison per key: 0.50 ms of server time for 500 keys
# where HMGET of three fields and two ``tonumber`` took 1.05 ms (``bench_online``'s 100-entity read).
ROW_HEADER = 32
OFFSET = 10 ** 15
_NEVER = b"9" * 16  # valid-until of values that no tile leaving a window can change
_TS_MIN, _TS_MAX = -OFFSET, 10 ** 16 - 1 - OFFSET - 1


def pack_row(values: bytes, watermark: int, valid_until: int | None) -> bytes:
    """The stored values row of ``values`` (JSON) exact from ``watermark`` until ``valid_until``
    (None: for ever), both in ms."""
    if not (_TS_MIN <= watermark <= _TS_MAX and (valid_until is None or _TS_MIN <= valid_until <= _TS_MAX)):
        raise ValueError(f"timestamps beyond +-{OFFSET} ms cannot be stored (watermark {watermark}, "
                         f"valid until {valid_until})")
    until = _NEVER if valid_until is None else b"%016d" % (valid_until + OFFSET)
    return until + b"%016d" % (watermark + OFFSET) + values


class CommitResult(enum.IntEnum):
    """What ``RedisOnlineStore.commit`` did (an int, as the commit script returns it)."""

    #: every record written, the offsets advanced
    COMMITTED = 1
    #: nothing written: a stored offset differs from the expected one, or another worker owns a partition
    FENCED = 0
    #: nothing written: the store's epoch marker changed (the server lost its data)
    EPOCH_CHANGED = -1
    #: nothing written: another writer changed a state since this writer loaded it
    STATE_CONFLICT = -2


def row_watermark(row: bytes) -> int:
    return int(row[16:32]) - OFFSET


def unpack_row(row: bytes) -> tuple[bytes, int, int | None]:
    """(values JSON, watermark, valid-until or None) of a stored values row."""
    until = None if row[:16] == _NEVER else int(row[:16]) - OFFSET
    return row[ROW_HEADER:], row_watermark(row), until


def _request_time(t: int) -> bytes:
    return b"%016d" % (min(max(t, _TS_MIN), _TS_MAX) + OFFSET)


# ``read_packed``: ``out`` holds each key's values row (false when absent); ``states`` the
# (key index from 0, state) pairs of the rows not exact at ARGV[1] (a tile left a window since
# the last event: valid-until <= t).  A row of the former layout (bare JSON, first byte '[') is
# given the header from its ``w`` and ``u`` fields.
_READ_PACKED = """
local t = ARGV[1]
local out, states = {}, {}
local m = 0
for i = 1, #KEYS do
  local r = redis.call('HGET', KEYS[i], 'v')
  if r and string.byte(r, 1) == 91 then
    local x = redis.call('HMGET', KEYS[i], 'w', 'u')
    local u = tonumber(x[2])
    local upto = u < 0 and '9999999999999999' or string.format('%016.0f', u + 1e15)
    r = upto .. string.format('%016.0f', tonumber(x[1]) + 1e15) .. r
  end
  out[i] = r or false
  if r and string.sub(r, 1, 16) <= t then
    states[m + 1] = i - 1
    states[m + 2] = redis.call('HGET', KEYS[i], 's') or false
    m = m + 2
  end
end
return {out, states}
"""


_LOAD_STATES = """
local out = {}
for i = 1, #KEYS do
  local r = redis.call('HMGET', KEYS[i], 's', 'o', 'i')
  out[3 * i - 2] = r[1] or false
  out[3 * i - 1] = r[2] or false
  out[3 * i] = r[3] or false
end
return out
"""


class RedisOnlineStore:
    """Online store on one Redis database; ``url`` may be redis:// or rediss:// with auth and db."""

    def __init__(self, client: redis.Redis, project: str, url: str | None = None):
        self.client = client
        self.project = project
        self.url = url  # for the asyncio client of ``aread_packed`` (one per event loop)
        self._commit = client.register_script(_COMMIT)
        self._read_packed = client.register_script(_READ_PACKED)
        self._load_states = client.register_script(_LOAD_STATES)
        self._async_clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    @classmethod
    def from_url(cls, url: str, project: str) -> "RedisOnlineStore":
        return cls(redis.Redis.from_url(url, **_TIMEOUTS), project, url)

    # -- keys ------------------------------------------------------------------
    def view_key(self, view: str, version: int) -> str:
        return f"{self.project}:{view}:v{version}"

    @staticmethod
    def entity_key(view_key: str, key: str) -> str:
        return f"fs:{view_key}:{key}"

    def offsets_key(self, group: str) -> str:
        return f"fs:{self.project}:offsets:{group}"

    @property
    def epoch_key(self) -> str:
        return f"fs:{self.project}:epoch"

    # -- lost-data marker ----------------------------------------------------
    def ensure_epoch(self, epoch: str) -> str:
        """Set the marker if absent; return the marker now stored."""
        self.client.set(self.epoch_key, epoch, nx=True)
        return self.client.get(self.epoch_key).decode()

    def epoch(self) -> str | None:
        value = self.client.get(self.epoch_key)
        return None if value is None else value.decode()

    def hash_value_limit(self) -> int | None:
        """The largest field value Redis keeps in its compact hash encoding (``hash-max-listpack-value``,
        ``hash-max-ziplist-value`` before Redis 7); None when the server refuses CONFIG (managed Redis)."""
        for name in ("hash-max-listpack-value", "hash-max-ziplist-value"):
            try:
                value = self.client.config_get(name).get(name)
            except redis.exceptions.ResponseError:
                return None
            if value is not None:
                return int(value)
        return None

    # -- running workers -----------------------------------------------------------
    @property
    def live_key(self) -> str:
        return f"fs:{self.project}:live"

    def _server_ms(self) -> int:
        seconds, micros = self.client.time()
        return seconds * 1000 + micros // 1000

    def announce_worker(self, group: str, worker: str, topics: list[str], ttl_ms: int = LIVE_TTL_MS,
                        views: list[str] | None = None, started_ms: int | None = None) -> int:
        """Record (or renew) that ``worker`` of ``group`` consumes ``topics`` (computing the view keys
        ``views``, running since ``started_ms``), for ``ttl_ms`` (by the Redis server's clock, so hosts
        with skewed clocks agree).  Returns the server time written (``started_ms`` when not given)."""
        now = self._server_ms()
        doc = {"group": group, "worker": worker, "topics": sorted(topics), "host": socket.gethostname(),
               "pid": os.getpid(), "at_ms": now, "ttl_ms": ttl_ms,
               "views": sorted(views) if views is not None else None,
               "started_ms": now if started_ms is None else started_ms}
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
        now = seconds * 1000 + micros // 1000
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
                        f"renewed {(now - w['at_ms']) / 1000:.0f} s ago) consumes {', '.join(sorted(wanted & set(w['topics'])))}"
                        for w in busy)
        raise WorkerRunningError(
            f"{action}: {len(busy)} running worker(s) consume the topic(s) whose online states this would write: "
            f"{who}.  A worker keeps the states in memory and its next commit would overwrite what this writes. "
            f"Stop the worker group first (the announcement of a worker killed without stopping expires "
            f"{LIVE_TTL_MS // 1000} s after its last renewal).")

    # -- writing -----------------------------------------------------------------
    def owners_key(self, group: str) -> str:
        return f"fs:{self.project}:owners:{group}"

    def claim_partitions(self, group: str, names: list[str], token: str) -> None:
        """Record ``token`` as the owner of partitions ``names`` ("topic:partition") of ``group``: from
        now on a commit carrying another token for one of them writes nothing."""
        if names:
            self.client.hset(self.owners_key(group), mapping=dict.fromkeys(names, token))

    def commit(self, records: list[OnlineRecord], group: str | None, offsets: dict[str, tuple[int, int]],
               epoch: str | None = None, chunk: int | None = None, token: str | None = None) -> CommitResult:
        """Write ``records`` and advance ``offsets`` ({"topic:partition": (expected, new)}).

        Returns a ``CommitResult``: COMMITTED (1) on success; FENCED (0) when a stored offset differs from the expected one
        (another writer got there first), or when ``token`` is given and is not the owner
        claimed for one of the partitions (``claim_partitions``: another worker took them);
        EPOCH_CHANGED (-1) when ``epoch`` is given and the store's marker differs (the server lost its data);
        STATE_CONFLICT (-2) when a record's ``expected`` differs from the applied offsets stored for its state (another
        writer changed the state since this writer loaded it).  The checks precede every write.

        One script writes everything (atomic) unless ``chunk`` is given: then ``chunk``
        records per script, each checking the offsets, the owner token and the epoch, the
        offsets advanced by the last one; adjacent records of one entity key are never split,
        so a reader sees all views of an entity as of one commit when they are passed together.
        A script blocks the server: one of ~63k states held every read for ~0.4 s, one of 250
        holds them ~1 ms (``bench_online``).  A failure (or a crash) after the first chunk
        leaves the earlier chunks written with the offsets not advanced, so chunked records
        must be safe to replay: the worker's carry the offsets of the events applied to each
        state (``OnlineRecord.applied``), and a replay skips those.  The offsets' compare-and-set
        alone does not fence a worker that lost its partitions half way through a chunked
        commit (its chunks and the new owner's could interleave until the new owner advances
        the offsets): the worker passes its ``token``, which every chunk checks.
        """
        n = len(records)
        lo = 0
        while chunk is not None and n - lo > chunk:
            hi = lo + chunk
            while hi < n and records[hi].key == records[hi - 1].key:  # an entity's views stay together
                hi += 1
            if hi == n:
                break
            result = self._commit_part(records[lo:hi], group, offsets, epoch, False, token)
            if result != 1:
                return result
            lo = hi
        return self._commit_part(records[lo:], group, offsets, epoch, True, token)

    def _commit_part(self, records: list[OnlineRecord], group: str | None, offsets: dict[str, tuple[int, int]],
                     epoch: str | None, advance: bool, token: str | None = None) -> CommitResult:
        """One commit script: ``records`` written if the offsets, the epoch and the owner token check
        out; the offsets advanced too when ``advance``."""
        keys = [self.offsets_key(group or "_none"), self.epoch_key, self.owners_key(group or "_none")]
        args: list = [epoch or "", len(offsets), "1" if advance else "0", token or ""]
        for name, (expected, new) in offsets.items():
            args += [name, str(expected), str(new)]
        for rec in records:
            keys.append(self.entity_key(rec.view_key, rec.key))
            ttl = 0 if rec.ttl_ms is None else rec.ttl_ms + TTL_GRACE_MS
            args += [rec.state, pack_row(rec.values, rec.watermark, rec.valid_until), ttl, rec.applied, rec.ids,
                     b"*" if rec.expected is None else rec.expected]
        return CommitResult(int(self._evalsha_packed(self._commit, keys, args)))

    def _evalsha_packed(self, script, keys: list, args: list):
        """``script(keys, args)`` with the command packed by hiredis in one call: redis-py's own
        packing walks every argument in Python (measured: 60-85 ms vs 25-35 ms of CPU for a
        20,000-event batch).  Connection errors propagate (the caller retries), as from redis-py."""
        command = hiredis.pack_command(("EVALSHA", script.sha, len(keys), *keys, *args))
        pool = self.client.connection_pool
        conn = pool.get_connection()
        try:
            conn.send_packed_command([command])
            try:
                return conn.read_response()
            except redis.exceptions.NoScriptError:  # server restarted or scripts flushed
                self.client.script_load(script.script)
                conn.send_packed_command([command])
                return conn.read_response()
        except redis.exceptions.ResponseError as exc:
            if "OOM" in str(exc):  # maxmemory reached under noeviction: the script failed at its first write
                raise StoreUnavailableError(
                    f"Redis refused the commit: out of memory (maxmemory reached; {exc}). Nothing was written; "
                    "the batch is retried until memory is available (raise maxmemory or add shards of "
                    "capacity; see docs/operations.md, Redis sizing)") from exc
            raise
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
            conn.disconnect()
            raise
        finally:
            pool.release(conn)

    # -- reading -----------------------------------------------------------------
    def load_offsets(self, group: str) -> dict[str, int]:
        raw = self.client.hgetall(self.offsets_key(group))
        return {k.decode(): int(v) for k, v in raw.items()}

    def load_states(self, view_key: str, keys: list[str]) -> dict[str, bytes | None]:
        """The stored state of each entity (None when absent), in one script call per ``LOAD_CHUNK``
        keys: one command to encode however many keys, where a pipeline of HGETs costs a Python
        command object per key.  The event ids are not in it (``load_states_applied``)."""
        return {k: blob for k, (blob, _, _) in self.load_states_applied(view_key, keys).items()}

    def load_states_applied(self, view_key: str, keys: list[str]) -> dict[str, tuple[bytes | None, bytes, bytes]]:
        """(state or None, ``OnlineRecord.applied`` as written, ``OnlineRecord.ids``) of each entity
        (b"" for what was not written)."""
        out: dict[str, tuple[bytes | None, bytes, bytes]] = {}
        for lo in range(0, len(keys), LOAD_CHUNK):  # a script blocks the server: keep each call short (~1-2 ms)
            chunk = keys[lo:lo + LOAD_CHUNK]
            flat = self._load_states(keys=[self.entity_key(view_key, k) for k in chunk])
            out.update(zip(chunk, ((blob or None, applied or b"", ids or b"")
                                   for blob, applied, ids in zip(flat[::3], flat[1::3], flat[2::3]))))
        return out

    def load_state(self, view_key: str, key: str) -> bytes | None:
        return self.client.hget(self.entity_key(view_key, key), "s")

    def read_packed(self, keys: list[str], t: int) -> list[list]:
        """The read path of ``featurestore.online.reader``, one round trip (EVALSHA) for full entity keys.

        Returns ``[rows, states]``: ``rows`` holds each key's values row (``unpack_row``), None when
        absent; ``states`` the state of each row not exact at ``t`` (a window moved since the last
        event), as a flat list of (key index from 0, state) pairs.
        """
        return self._evalsha_packed(self._read_packed, keys, [_request_time(t)])

    async def aread_packed(self, keys: list[str], t: int) -> list[list]:
        """``read_packed`` on redis-py's asyncio client (one per running event loop, built from ``url``;
        closed by ``aclose``)."""
        loop = asyncio.get_running_loop()
        client = self._async_clients.get(loop)
        if client is None:
            if self.url is None:
                raise ConfigurationError("asyncio reads need the store's URL: build it with RedisOnlineStore.from_url "
                                         "(or pass url=)")
            client = self._async_clients[loop] = redis.asyncio.Redis.from_url(self.url, **_TIMEOUTS)
        # packed by hiredis and sent on a pooled connection, as ``_evalsha_packed`` does: redis-py's own
        # packing of the 500 keys of a 100-entity read cost ~1.5 ms more per read (bench_online)
        command = hiredis.pack_command(("EVALSHA", self._read_packed.sha, len(keys), *keys, _request_time(t)))
        pool = client.connection_pool
        conn = await pool.get_connection()
        try:
            await conn.send_packed_command([command])
            try:
                return await conn.read_response()
            except redis.exceptions.NoScriptError:  # server restarted or scripts flushed
                await client.script_load(_READ_PACKED)
                await conn.send_packed_command([command])
                return await conn.read_response()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
            await conn.disconnect()
            raise
        finally:
            await pool.release(conn)

    async def aclose(self) -> None:
        """Close the asyncio client of the running event loop, if ``aread_packed`` opened one."""
        client = self._async_clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()

    def read_values(self, items: list[tuple[str, str]]) -> list[tuple[bytes | None, int | None, int | None]]:
        """(values, watermark, valid_until) for each (view_key, entity) in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        for view_key, key in items:
            pipe.hmget(self.entity_key(view_key, key), "v", "w", "u")
        out = []
        for row, wm, until in pipe.execute():
            if row is None:
                out.append((None, None, None))
            elif row[:1] == b"[":  # the former layout
                u = int(until)
                out.append((row, int(wm), None if u < 0 else u))
            else:
                out.append(unpack_row(row))
        return out

    def delete_view(self, view_key: str) -> int:
        """Remove every entity of one view version (SCAN + UNLINK); returns the count."""
        n = 0
        for batch in self._scan_batches(f"fs:{view_key}:*"):
            n += self.client.unlink(*batch)
        return n

    def count_view(self, view_key: str) -> int:
        """Entities stored for one view version (SCAN)."""
        return sum(len(batch) for batch in self._scan_batches(f"fs:{view_key}:*"))

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

    def _scan_batches(self, pattern: str, size: int = 500):
        batch = []
        for key in self.client.scan_iter(match=pattern, count=size):
            batch.append(key)
            if len(batch) >= size:
                yield batch
                batch = []
        if batch:
            yield batch
