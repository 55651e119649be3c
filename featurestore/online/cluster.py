"""Redis Cluster backend of the online store: the single-node layout (``redis.py``) with a hash tag
per slot group, so that every script touches keys of one hash slot.

For project ``p``, the slot group of an entity of view ``V`` is its home partition ``h``: what Kafka's
default partitioner (murmur2 of the key's UTF-8 bytes) gives for its join key among the ``N``
partitions of ``V``'s topic.  ``N`` is recorded per view version in ``fs:{p}:partitions`` by the
first worker and checked by every later writer (``use_partitions``).  Keys:

* ``fs:{p#h}:<view_key>:<entity>`` — the state hash of one (view, entity), fields as on one node;
* ``fs:{p#h}:offsets:<group>``, ``fs:{p#h}:owners:<group>`` — the applied offsets and the owner
  claims of partition ``h`` of every topic;
* ``fs:{p#h}:epoch`` — slot group ``h``'s marker: a master restarted empty loses the markers of its
  groups, and the next commit to one of them writes nothing (``CommitResult.EPOCH_CHANGED``);
* ``fs:p:live`` — the running workers' announcements, as on one node.

A commit runs one script per slot group, chunked as on one node: first the groups that only hold
states (events of an entity that came on a partition other than its home, pushes), then one per
partition with its home states and its offsets, each checking that partition's offsets, owner and
epoch.  A worker killed between two scripts leaves the earlier ones written and the later
partitions' offsets where they were; the replay skips per state the events it applied
(``OnlineRecord.applied``), exactly as between two chunks on one node.

Commands go to the master of their slot, the reads of one request to every master at once
(``featurestore.online.slots``).
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
from collections import defaultdict

import redis

from ..exceptions import ConfigurationError, StoreUnavailableError
from .base import OnlineRecord
from .redis import CommitResult, RedisOnlineStore, _request_time, out_of_memory
from .slots import SlotRouter, key_hash, redis_py_url

__all__ = ["RedisClusterOnlineStore"]

logger = logging.getLogger(__name__)
_LOAD_CHUNK = 1000

#: entities whose key hash a store keeps (kafka-python's murmur2 is Python: ~1.2 µs a key, paid per view
#: and read without it); past this many the table starts over
HASHES_KEPT = 262_144


class RedisClusterOnlineStore(RedisOnlineStore):
    """Online store on a Redis Cluster (``redis+cluster://host:port`` names one node; the rest is found)."""

    places_by_partition = True

    def __init__(self, client: redis.RedisCluster, project: str, url: str | None = None):
        if "{" in project or "}" in project:
            raise ConfigurationError(f"project {project!r}: a project name for Redis Cluster holds no braces "
                                     "(they delimit the keys' hash tags)")
        super().__init__(client, project, url)
        self.router = SlotRouter(client, (self._commit, self._read_packed, self._load_states))
        self._partitions: dict[str, int] = {}  # view key -> partition count of its topic, as recorded
        self._hashes: dict[str, int] = {}  # entity key -> key_hash (HASHES_KEPT at most)
        self._unplaced: set[str] = set()  # view keys read without a recorded partition count (warned once)

    @classmethod
    def from_url(cls, url: str, project: str) -> "RedisClusterOnlineStore":
        client = redis.RedisCluster.from_url(redis_py_url(url), socket_timeout=10, socket_connect_timeout=5)
        return cls(client, project, url)

    # -- layout ----------------------------------------------------------------
    def tag(self, group: int) -> str:
        return f"{{{self.project}#{group}}}"

    @property
    def partitions_key(self) -> str:
        return f"fs:{{{self.project}}}:partitions"

    def use_partitions(self, counts: dict[str, int]) -> None:
        """Record the partition count of each view key's topic (``{view_key: N}``), or check it against
        the one recorded: keys are placed by partition, so a count that changed places them anew."""
        if not counts:
            return
        pipe = self.client.pipeline(transaction=False)
        for view_key, n in counts.items():
            pipe.hsetnx(self.partitions_key, view_key, n)
        pipe.execute()
        recorded = self.client.hmget(self.partitions_key, list(counts))
        for (view_key, n), got in zip(counts.items(), recorded):
            if int(got) != n:
                raise ConfigurationError(
                    f"view {view_key}: its topic has {n} partitions, but the online store's keys were placed "
                    f"for {int(got)} (Redis Cluster places each entity by its Kafka partition). Stop the "
                    f"source's workers and run `featurestore reset --source NAME --online-only`: the workers "
                    f"started next rebuild the states from the event log at the new count "
                    f"(docs/redis-cluster.md, when the partition count changes)")
            self._partitions[view_key] = n

    def partitions_of(self, view_key: str) -> int | None:
        """The recorded partition count of ``view_key``'s topic (None: no writer recorded one yet)."""
        n = self._partitions.get(view_key)
        if n is None:
            got = self.client.hget(self.partitions_key, view_key)
            if got is None:
                return None
            n = self._partitions[view_key] = int(got)
        return n

    @property
    def groups(self) -> int:
        """Slot groups in use: the largest partition count recorded."""
        if not self._partitions:
            self._partitions.update({k.decode(): int(v) for k, v in self.client.hgetall(self.partitions_key).items()})
        return max(self._partitions.values(), default=0)

    def group_of(self, view_key: str, key: str) -> int:
        """The slot group of ``key``'s state of ``view_key`` (its home partition)."""
        n = self.partitions_of(view_key)
        if n is None:
            raise ConfigurationError(
                f"view {view_key}: no partition count is recorded for its topic, and Redis Cluster places each "
                "entity by its Kafka partition: set FEATURESTORE_KAFKA_BOOTSTRAP_SERVERS (writers then read it "
                "from the broker), or start a worker of the source once (docs/redis-cluster.md)")
        h = self._hashes.get(key)
        return (key_hash(key) if h is None else h) % n

    def entity_keys(self, view_key: str, keys: list[str]) -> list[str]:
        """The full keys of ``keys``' states of ``view_key`` (an unrecorded view: keys no state has)."""
        n = self.partitions_of(view_key)
        if n is None:
            if view_key not in self._unplaced:
                self._unplaced.add(view_key)
                logger.warning("view %s: no partition count is recorded in the Redis Cluster, so it holds no state "
                               "of it and its reads answer missing (a worker of its source records the count; "
                               "a master that lost its data loses it too: docs/redis-cluster.md)", view_key)
            tag = self.tag(-1)
            return [f"fs:{tag}:{view_key}:{k}" for k in keys]
        tags = [self.tag(h) for h in range(n)]
        hashes = self._hashes
        if len(hashes) > HASHES_KEPT:
            hashes.clear()
        get = hashes.get
        out = []
        for k in keys:
            h = get(k)
            if h is None:
                h = hashes[k] = key_hash(k)
            out.append(f"fs:{tags[h % n]}:{view_key}:{k}")
        return out

    def entity_key(self, view_key: str, key: str) -> str:  # type: ignore[override]
        """The full key of one entity's state (``entity_keys``; one node's layout has no tag)."""
        return self.entity_keys(view_key, [key])[0]

    def offsets_key(self, group: str, slot_group: int = 0) -> str:  # type: ignore[override]
        return f"fs:{self.tag(slot_group)}:offsets:{group}"

    def owners_key(self, group: str, slot_group: int = 0) -> str:  # type: ignore[override]
        return f"fs:{self.tag(slot_group)}:owners:{group}"

    def group_epoch_key(self, slot_group: int) -> str:
        return f"fs:{self.tag(slot_group)}:epoch"

    # -- routing -----------------------------------------------------------------
    def _send(self, commands: list[tuple[str, tuple]]) -> list:
        """``SlotRouter.send``: each command on the master of its key's slot, all masters at once."""
        return self.router.send(commands)

    def _one(self, key: str, command: tuple):
        return self.router.raised([(key, command)])[0]

    def _evalsha_packed(self, script, keys: list, args: list):
        """``script(keys, args)`` on the master of ``keys``' slot (one slot: the caller groups them)."""
        try:
            return self._one(keys[0], ("EVALSHA", script.sha, len(keys), *keys, *args))
        except redis.exceptions.ResponseError as exc:
            if "OOM" in str(exc):
                raise out_of_memory(exc) from exc
            raise

    # -- writing -----------------------------------------------------------------
    def ensure_epoch(self, epoch: str) -> str:
        """Set every slot group's marker that is missing to ``epoch``, and every partition count this store
        knows (recorded or read) that is missing from ``fs:{p}:partitions`` (lost with the data of the master
        holding it: readers would place every key in no slot group); returns the markers (one token)."""
        n = self.groups
        if n == 0:
            raise ConfigurationError("the Redis Cluster's slot groups are not known: record the views' partition "
                                     "counts first (use_partitions; featurestore.placement)")
        keys = [self.group_epoch_key(h) for h in range(n)]
        counts = [(self.partitions_key, ("HSETNX", self.partitions_key, view_key, count))
                  for view_key, count in self._partitions.items()]
        self.router.raised([(k, ("SET", k, epoch, "NX")) for k in keys] + counts)
        token = self.epoch()
        if token is None:  # a master lost its data between the two round trips
            raise StoreUnavailableError("Redis Cluster: an epoch marker vanished while being written (a master "
                                        "restarted empty?); retrying")
        return token

    def epoch(self) -> str | None:
        n = self.groups
        if n == 0:
            return None
        keys = [self.group_epoch_key(h) for h in range(n)]
        got = self.router.raised([(k, ("GET", k)) for k in keys])
        if any(v is None for v in got):
            return None
        return ",".join(v.decode() for v in got)

    @staticmethod
    def created_epoch(token: str, candidate: str) -> bool:
        return candidate in token.split(",")

    def commit(self, records: list[OnlineRecord], group: str | None, offsets: dict[str, tuple[int, int]],
               epoch: str | None = None, chunk: int | None = None, token: str | None = None) -> CommitResult:
        """``RedisOnlineStore.commit`` over slot groups, in two steps.

        1. The states of every slot group, none advancing an offset.  Each script checks its group's epoch
           marker, each state's stored applied offsets, the offsets of the partitions whose slot group it is
           and, with ``token``, that the writer owns every partition of the commit (the claims are in every
           slot group: ``claim_partitions``).
        2. Each partition's offsets, in its slot group, checked and advanced.

        The first script refused stops the commit (its result returned); what earlier scripts wrote stays,
        every state carrying its applied offsets (a replay skips them), and no offset advanced before all
        states are written."""
        states: dict[int, list[OnlineRecord]] = defaultdict(list)
        for rec in records:
            states[self.group_of(rec.view_key, rec.key)].append(rec)
        advance: dict[int, dict[str, tuple[int, int]]] = defaultdict(dict)
        for name, pair in offsets.items():
            advance[int(name.rsplit(":", 1)[1])][name] = pair
        markers = epoch.split(",") if epoch else None
        known = self.groups if markers is None else len(markers)
        beyond = sorted(h for h in {*advance, *states} if h >= known)
        if beyond:
            raise ConfigurationError(f"slot group {beyond[0]} is beyond the {known} of the recorded partition "
                                     "counts: a topic gained partitions (docs/redis-cluster.md)")
        owned = dict.fromkeys(offsets, ("*", 0)) if token else {}  # the owner checked, the offsets elsewhere
        for h in sorted(states):
            result = self._commit_chunks(states[h], group, {**owned, **advance.get(h, {})},
                                         markers[h] if markers is not None else None, chunk, token, h, False)
            if result != CommitResult.COMMITTED:
                return result
        for h in sorted(advance):
            result = self._commit_part([], group, advance[h], markers[h] if markers is not None else None, True,
                                       token, h)
            if result != CommitResult.COMMITTED:
                return result
        return CommitResult.COMMITTED

    def _commit_keys(self, group: str | None, slot_group: int | None) -> list[str]:
        h = slot_group or 0
        return [self.offsets_key(group or "_none", h), self.group_epoch_key(h), self.owners_key(group or "_none", h)]

    def _state_key(self, rec: OnlineRecord, slot_group: int | None) -> str:
        return f"fs:{self.tag(slot_group or 0)}:{rec.view_key}:{rec.key}"

    # -- reading -----------------------------------------------------------------
    def load_offsets(self, group: str) -> dict[str, int]:
        n = self.groups
        out: dict[str, int] = {}
        if n:
            pipe = self.client.pipeline(transaction=False)
            for h in range(n):
                pipe.hgetall(self.offsets_key(group, h))
            for raw in pipe.execute():
                out.update({k.decode(): int(v) for k, v in raw.items()})
        return out

    def claim_partitions(self, group: str, names: list[str], token: str) -> None:
        """``token`` owns ``names`` in every slot group: each commit script checks the owner of every partition
        of its commit, wherever the states it writes live."""
        if not names:
            return
        claims = dict.fromkeys(names, token)
        pipe = self.client.pipeline(transaction=False)
        for h in range(max(self.groups, 1 + max(int(n.rsplit(":", 1)[1]) for n in names))):
            pipe.hset(self.owners_key(group, h), mapping=claims)
        pipe.execute()

    def load_states_applied(self, view_key: str, keys: list[str]) -> dict[str, tuple[bytes | None, bytes, bytes]]:
        full = self.entity_keys(view_key, keys)
        by_tag: dict[str, list[int]] = defaultdict(list)
        for i, k in enumerate(full):
            by_tag[k[3:k.index("}") + 1]].append(i)
        calls, parts = [], []
        for idx in by_tag.values():
            for lo in range(0, len(idx), _LOAD_CHUNK):
                part = idx[lo:lo + _LOAD_CHUNK]
                names = [full[i] for i in part]
                calls.append((names[0], ("EVALSHA", self._load_states.sha, len(names), *names)))
                parts.append(part)
        out: dict[str, tuple[bytes | None, bytes, bytes]] = {}
        for part, flat in zip(parts, self._send(calls)):
            if isinstance(flat, Exception):
                raise flat
            for i, blob, applied, ids in zip(part, flat[::3], flat[1::3], flat[2::3]):
                out[keys[i]] = (blob or None, applied or b"", ids or b"")
        return {k: out[k] for k in keys}

    def load_state(self, view_key: str, key: str) -> bytes | None:
        return self.client.hget(self.entity_keys(view_key, [key])[0], "s")

    def read_packed(self, keys: list[str], t: int) -> list[list]:
        """``RedisOnlineStore.read_packed`` with one script per slot group, all masters at once."""
        by_tag: dict[str, list[int]] = defaultdict(list)
        for i, k in enumerate(keys):
            by_tag[k[3:k.index("}") + 1]].append(i)
        at = _request_time(t)
        groups = list(by_tag.values())
        calls = [(keys[idx[0]], ("EVALSHA", self._read_packed.sha, len(idx), *[keys[i] for i in idx], at))
                 for idx in groups]
        rows: list = [None] * len(keys)
        stale: list = []
        for idx, reply in zip(groups, self._send(calls)):
            if isinstance(reply, Exception):
                raise reply
            out, states = reply
            for i, row in zip(idx, out):
                rows[i] = row
            for j in range(0, len(states), 2):
                stale += [idx[states[j]], states[j + 1]]
        return [rows, stale]

    async def aread_packed(self, keys: list[str], t: int) -> list[list]:
        """``read_packed`` on a thread of the running loop's default executor (the cluster's connections
        are redis-py's blocking ones)."""
        return await asyncio.get_running_loop().run_in_executor(None, self.read_packed, keys, t)

    async def aclose(self) -> None:
        return None

    def read_values(self, items: list[tuple[str, str]]) -> list[tuple[bytes | None, int | None, int | None]]:
        by_view: dict[str, list[int]] = defaultdict(list)
        for i, (view_key, _) in enumerate(items):
            by_view[view_key].append(i)
        full: list = [None] * len(items)
        for view_key, idx in by_view.items():
            for i, k in zip(idx, self.entity_keys(view_key, [items[i][1] for i in idx])):
                full[i] = k
        replies = self.router.raised([(k, ("HMGET", k, "v", "w", "u")) for k in full])
        return [self._values_of(r) for r in replies]

    def forget_partitions(self, view_key: str) -> None:
        """Forget the recorded partition counts of ``view_key`` (a glob, ``p:view:v*``): the next writer
        records its topic's count anew."""
        names = [k for k in self.client.hkeys(self.partitions_key) if fnmatch.fnmatchcase(k.decode(), view_key)]
        if names:
            self.client.hdel(self.partitions_key, *names)
        self._partitions = {k: n for k, n in self._partitions.items() if not fnmatch.fnmatchcase(k, view_key)}

    def scan_view(self, view_key: str):
        return self._scan_batches(self._view_pattern(view_key))

    def _view_pattern(self, view_key: str) -> str:
        return f"fs:{{{self.project}#*}}:{view_key}:*"

    def _scan_batches(self, pattern: str, size: int = 500):
        tail = pattern.split("}:", 1)[1]  # what follows the tag: the view key (a glob) and the entity
        for batch in super()._scan_batches(pattern, size):
            kept = [k for k in batch if fnmatch.fnmatchcase(k.decode().split("}:", 1)[1], tail)]
            if kept:
                yield kept

    # -- coordination ----------------------------------------------------------------
    def _live_workers(self) -> tuple[int, list[dict]]:
        now = self._server_ms()
        raw = self.client.hgetall(self.live_key)
        return self._sort_live(now, raw)

    def topic_offsets(self, topic: str) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for key, group in self._group_keys("offsets"):
            found = {k.decode(): int(v) for k, v in self.client.hgetall(key).items()
                     if k.decode().rsplit(":", 1)[0] == topic}
            if found:
                out.setdefault(group, {}).update(found)
        return out

    def forget_topic(self, topic: str) -> int:
        n = 0
        for kind in ("offsets", "owners"):
            for key, _ in self._group_keys(kind):
                fields = [k for k in self.client.hkeys(key) if k.decode().rsplit(":", 1)[0] == topic]
                if fields:
                    n += self.client.hdel(key, *fields)
        return n

    def _group_keys(self, kind: str):
        """(key, consumer group) of every ``fs:{p#h}:<kind>:<group>`` hash."""
        marker = f"}}:{kind}:"
        for key in self.client.scan_iter(match=f"fs:{{{self.project}#*}}:{kind}:*", count=500):
            text = key.decode()
            if marker in text:
                yield key, text.split(marker, 1)[1]
