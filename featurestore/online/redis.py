"""Redis backend of the online store (redis-py with hiredis).

Layout, for project ``p``:

* ``fs:{view_key}:{entity}`` — hash: ``s`` state (without its event ids), ``i`` the event ids
  (``[id, ts]`` pairs, appended to by each commit: ``OnlineRecord.ids``), ``v`` the values row (``pack_row``:
  valid-until and watermark in ms as two 16-digit fields, then the values' JSON as of the watermark), ``o`` the
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
import weakref
from importlib import resources

import hiredis
import redis
import redis.asyncio

from ..exceptions import ConfigurationError, StoreUnavailableError
from .base import OnlineRecord
from .aio import ASYNC_READ_TIMEOUT_S, ReadConnections
from .coordination import LIVE_TTL_MS, CoordinationMixin
from .rows import OFFSET, ROW_HEADER, pack_row, row_watermark, unpack_row
from .rows import request_time as _request_time

__all__ = ["LIVE_TTL_MS", "OFFSET", "ROW_HEADER", "TTL_GRACE_MS", "CommitResult", "RedisOnlineStore", "pack_row",
           "row_watermark", "unpack_row"]

logger = logging.getLogger(__name__)

TTL_GRACE_MS = 3_600_000
_TIMEOUTS = {"socket_timeout": 10, "socket_connect_timeout": 5}
LOAD_CHUNK = 1000  # keys per state-loading script call


def _lua(name: str) -> str:
    """The source of a Lua script shipped beside this module (``lua/``)."""
    return (resources.files(__package__) / "lua" / name).read_text()


_COMMIT = _lua("commit.lua")


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


# ``read_packed``: ``out`` holds each key's values row (false when absent); ``states`` the
# (key index from 0, state) pairs of the rows not exact at ARGV[1] (a tile left a window since
# the last event: valid-until <= t).  A row of the former layout (bare JSON, first byte '[') is
# given the header from its ``w`` and ``u`` fields.
_READ_PACKED = _lua("read_packed.lua")


_LOAD_STATES = _lua("load_states.lua")
def out_of_memory(exc: Exception) -> StoreUnavailableError:
    return StoreUnavailableError(
        f"Redis refused the commit: out of memory (maxmemory reached; {exc}). Nothing was written; "
        "the batch is retried until memory is available (raise maxmemory or add shards of "
        "capacity; see docs/operations.md, Redis sizing)")


class RedisOnlineStore(CoordinationMixin):
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

    def entity_keys(self, view_key: str, keys: list[str]) -> list[str]:
        """The full keys of ``keys``' states of ``view_key``."""
        prefix = f"fs:{view_key}:"
        return [prefix + k for k in keys]

    #: whether entities' keys depend on their topic's partition count (``use_partitions``)
    places_by_partition = False

    def use_partitions(self, counts: dict[str, int]) -> None:
        """The partition count of each view's topic (``{view_key: N}``): one node places no key by it."""

    @staticmethod
    def created_epoch(token: str, candidate: str) -> bool:
        """Whether ``ensure_epoch(candidate)`` returning ``token`` wrote the marker (it was missing)."""
        return token == candidate

    def offsets_key(self, group: str) -> str:
        return f"fs:{self.project}:offsets:{group}"

    @property
    def epoch_key(self) -> str:
        return f"fs:{self.project}:epoch"

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

    # -- writing -----------------------------------------------------------------
    def commit(self, records: list[OnlineRecord], group: str | None, offsets: dict[str, tuple[int, int]],
               epoch: str | None = None, chunk: int | None = None, token: str | None = None) -> CommitResult:
        """Write ``records`` and advance ``offsets`` ({"topic:partition": (expected, new)}).

        Returns a ``CommitResult``: COMMITTED (1) on success; FENCED (0) when a stored offset differs from the expected
        one (another writer got there first), or when ``token`` is given and is not the owner
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
        return self._commit_chunks(records, group, offsets, epoch, chunk, token, None)

    def _commit_chunks(self, records: list[OnlineRecord], group: str | None, offsets: dict[str, tuple[int, int]],
                       epoch: str | None, chunk: int | None, token: str | None, slot_group: int | None,
                       advance: bool = True) -> CommitResult:
        """``commit``'s scripts, ``chunk`` records each, on the keys of ``slot_group`` (cluster mode); the
        last one advances the offsets when ``advance``."""
        n = len(records)
        lo = 0
        while chunk is not None and n - lo > chunk:
            hi = lo + chunk
            while hi < n and records[hi].key == records[hi - 1].key:  # an entity's views stay together
                hi += 1
            if hi == n:
                break
            result = self._commit_part(records[lo:hi], group, offsets, epoch, False, token, slot_group)
            if result != 1:
                return result
            lo = hi
        return self._commit_part(records[lo:], group, offsets, epoch, advance, token, slot_group)

    def _commit_keys(self, group: str | None, slot_group: int | None) -> list[str]:
        """The offsets, epoch marker and owner claims a commit script checks (``slot_group``: cluster mode)."""
        return [self.offsets_key(group or "_none"), self.epoch_key, self.owners_key(group or "_none")]

    def _state_key(self, rec: OnlineRecord, slot_group: int | None) -> str:
        return self.entity_key(rec.view_key, rec.key)

    def _commit_part(self, records: list[OnlineRecord], group: str | None, offsets: dict[str, tuple[int, int]],
                     epoch: str | None, advance: bool, token: str | None = None,
                     slot_group: int | None = None) -> CommitResult:
        """One commit script: ``records`` written if the offsets, the epoch and the owner token check
        out; the offsets advanced too when ``advance``."""
        keys = self._commit_keys(group, slot_group)
        args: list = [epoch or "", len(offsets), "1" if advance else "0", token or ""]
        for name, (expected, new) in offsets.items():
            args += [name, str(expected), str(new)]
        for rec in records:
            keys.append(self._state_key(rec, slot_group))
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
                raise out_of_memory(exc) from exc
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
        """``read_packed`` on redis-py's asyncio connections (a set per running event loop, built from
        ``url``; closed by ``aclose``).

        The command is packed by hiredis, as ``_evalsha_packed`` does (redis-py's own packing of the
        500 keys of a 100-entity read cost ~1.5 ms more, ``bench_online``), and sent on an idle
        connection of this store's own set, under one ``ASYNC_READ_TIMEOUT_S`` deadline: redis-py's
        pool and per-call timeouts cost a lock, a readiness poll and a task per read.  A connection
        whose read did not complete (an error, a timeout, a cancelled request) is closed, never reused."""
        loop = asyncio.get_running_loop()
        connections = self._async_clients.get(loop)
        if connections is None:
            if self.url is None:
                raise ConfigurationError("asyncio reads need the store's URL: build it with RedisOnlineStore.from_url "
                                         "(or pass url=)")
            connections = self._async_clients[loop] = ReadConnections(self.url, _TIMEOUTS["socket_connect_timeout"])
        command = hiredis.pack_command(("EVALSHA", self._read_packed.sha, len(keys), *keys, _request_time(t)))
        conn = connections.take()
        try:
            async with asyncio.timeout(ASYNC_READ_TIMEOUT_S):
                if not conn.is_connected:
                    await conn.connect()
                await conn.send_packed_command([command], check_health=False)
                try:
                    reply = await conn.read_response()
                except redis.exceptions.NoScriptError:  # server restarted or scripts flushed
                    await conn.send_packed_command([hiredis.pack_command(("SCRIPT", "LOAD", _READ_PACKED))],
                                                   check_health=False)
                    await conn.read_response()
                    await conn.send_packed_command([command], check_health=False)
                    reply = await conn.read_response()
        except BaseException as exc:
            await conn.disconnect(nowait=True)
            if isinstance(exc, (redis.exceptions.ConnectionError, OSError)):
                await connections.close_idle()  # opened before the same failure (a Redis restart): stale too
            if isinstance(exc, TimeoutError) and not isinstance(exc, redis.exceptions.RedisError):
                raise redis.exceptions.TimeoutError(f"Redis did not answer a read within {ASYNC_READ_TIMEOUT_S} s"
                                                    ) from None
            raise
        connections.give_back(conn)
        return reply

    async def aclose(self) -> None:
        """Close the asyncio connections of the running event loop, if ``aread_packed`` opened some."""
        connections = self._async_clients.pop(asyncio.get_running_loop(), None)
        if connections is not None:
            await connections.aclose()

    def read_values(self, items: list[tuple[str, str]]) -> list[tuple[bytes | None, int | None, int | None]]:
        """(values, watermark, valid_until) for each (view_key, entity) in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        for view_key, key in items:
            pipe.hmget(self.entity_key(view_key, key), "v", "w", "u")
        return [self._values_of(reply) for reply in pipe.execute()]

    @staticmethod
    def _values_of(reply: list) -> tuple[bytes | None, int | None, int | None]:
        """``read_values``' answer from one HMGET of ``v``, ``w`` and ``u``."""
        row, wm, until = reply
        if row is None:
            return None, None, None
        if row[:1] == b"[":  # the former layout
            u = int(until)
            return row, int(wm), None if u < 0 else u
        return unpack_row(row)

    def delete_view(self, view_key: str) -> int:
        """Remove every entity of one view version (SCAN + UNLINK); returns the count."""
        n = 0
        for batch in self.scan_view(view_key):
            n += self.client.unlink(*batch)
        return n

    def count_view(self, view_key: str) -> int:
        """Entities stored for one view version (SCAN)."""
        return sum(len(batch) for batch in self.scan_view(view_key))

    def forget_partitions(self, view_key: str) -> None:
        """Forget the recorded partition counts of ``view_key`` (a glob): one node records none."""

    def scan_view(self, view_key: str):
        """The full keys of one view version's states, in batches (SCAN)."""
        return self._scan_batches(f"fs:{view_key}:*")

    def _scan_batches(self, pattern: str, size: int = 500):
        batch = []
        for key in self.client.scan_iter(match=pattern, count=size):
            batch.append(key)
            if len(batch) >= size:
                yield batch
                batch = []
        if batch:
            yield batch
