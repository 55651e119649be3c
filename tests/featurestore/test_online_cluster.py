"""The online store on a 3-master Redis Cluster, with keys spread over many slot groups: one script per
slot group and commit, the order of the scripts, per-group epoch markers, reads across masters, the
recorded partition counts, and slot migration (ASK, then MOVED) under reads and commits."""

from __future__ import annotations

import pytest
import redis

from featurestore.exceptions import ConfigurationError
from featurestore.online import CommitResult, OnlineRecord, open_online_store
from featurestore.online.slots import home_partition, redis_py_url
from featurestore.online.redis import unpack_row
from tests.support import delete_project_keys

pytestmark = pytest.mark.integration
N = 6  # partitions of the views' topic


@pytest.fixture
def project(redis_cluster_url, unique_name):
    name = unique_name("p")
    yield name
    delete_project_keys(redis_cluster_url, name)


@pytest.fixture
def store(redis_cluster_url, project):
    s = open_online_store(redis_cluster_url, project)
    s.use_partitions({s.view_key("v", 1): N})
    return s


def rec(view_key, key, state=b"S", until=None, applied=b"", expected=None):
    return OnlineRecord(view_key, key, state, b"[1]", 1000, until, None, applied, b"", expected)


def homes(keys):
    return {k: home_partition(k, N) for k in keys}


def test_states_and_offsets_of_many_slot_groups_commit_and_read_back(store) -> None:
    vk = store.view_key("v", 1)
    keys = [f"c{i}" for i in range(60)]
    home = homes(keys)
    assert len(set(home.values())) == N
    masters = {store.client.get_node_from_key(store.entity_keys(vk, [k])[0]).name for k in keys}
    assert len(masters) >= 2, "the slot groups all landed on one master"
    offsets = {f"t:{h}": (-1, 10 + h) for h in range(N)}
    epoch = store.ensure_epoch("E")
    assert epoch == ",".join(["E"] * N)
    records = [rec(vk, k, state=k.encode(), until=2_000 if i % 3 == 0 else None) for i, k in enumerate(keys)]
    assert store.commit(records, "g", offsets, epoch, chunk=4) == CommitResult.COMMITTED
    assert store.load_offsets("g") == {name: new for name, (_, new) in offsets.items()}
    assert store.load_states(vk, keys) == {k: k.encode() for k in keys}
    full = store.entity_keys(vk, keys + ["nobody"])
    rows, stale = store.read_packed(full, 5_000)
    assert [unpack_row(r)[1] for r in rows[:-1]] == [1000] * len(keys) and rows[-1] is None
    # the stale states are named by their position in the request, whichever master answered them
    assert dict(zip(stale[::2], stale[1::2])) == {i: k.encode() for i, k in enumerate(keys) if i % 3 == 0}
    assert store.count_view(vk) == len(keys)
    assert store.topic_offsets("t") == {"g": store.load_offsets("g")}
    assert store.delete_view(vk) == len(keys) and store.count_view(vk) == 0


def test_a_fenced_partition_stops_the_commit_before_any_offset_advances(store) -> None:
    """The states go first, slot group after slot group, then the offsets: the first refused script stops
    the commit; what ran before stays (each state carries its applied offsets) and no offset moved."""
    vk = store.view_key("v", 1)
    keys = [f"k{i}" for i in range(40)]
    home = homes(keys)
    assert store.commit([], "g", {"t:3": (-1, 50)}) == 1  # another writer got to partition 3 first
    offsets = {f"t:{h}": (-1, 7) for h in range(N)}
    got = store.commit([rec(vk, k, applied=f"{home[k]}:7".encode()) for k in keys], "g", offsets)
    assert got == CommitResult.FENCED
    assert store.load_offsets("g") == {"t:3": 50}
    states = store.load_states(vk, keys)
    assert {k for k, s in states.items() if s} == {k for k in keys if home[k] < 3}


def test_offsets_advance_only_after_every_state_of_the_commit_is_written(store) -> None:
    """A state away from its home partition (its events came on partition 3, its home is 5): a refusal in
    its slot group leaves partition 3's offsets where they were, so a replay reads those events again."""
    vk = store.view_key("v", 1)
    away = next(k for k in (f"a{i}" for i in range(200)) if home_partition(k, N) == 5)
    local = next(k for k in (f"b{i}" for i in range(200)) if home_partition(k, N) == 3)
    assert store.commit([rec(vk, away, applied=b"3:1")], "g", {"t:3": (-1, 1), "t:5": (-1, 1)}) == 1
    stale = rec(vk, away, applied=b"3:9", expected=b"")  # as loaded before the first commit: refused
    got = store.commit([rec(vk, local, applied=b"3:9"), stale], "g", {"t:3": (1, 9), "t:5": (1, 1)})
    assert got == CommitResult.STATE_CONFLICT
    assert store.load_offsets("g") == {"t:3": 1, "t:5": 1}


def test_a_partition_taken_over_fences_every_slot_group_of_the_old_owner(store) -> None:
    """The owner claims are in every slot group: a worker that lost partition 1 writes no state of its
    commit anywhere, even in a slot group whose own partition it still owns or that has none."""
    vk = store.view_key("v", 1)
    store.claim_partitions("g", ["t:1", "t:2"], "A")
    store.claim_partitions("g", ["t:1"], "B")  # B took partition 1 over
    keys = [f"z{i}" for i in range(40)]
    got = store.commit([rec(vk, k, applied=b"1:4") for k in keys], "g", {"t:1": (-1, 4)}, token="A")
    assert got == CommitResult.FENCED
    assert store.load_states(vk, keys) == dict.fromkeys(keys)  # nothing written, in any slot group
    assert store.commit([rec(vk, k, applied=b"1:4") for k in keys], "g", {"t:1": (-1, 4)}, token="B") == 1
    assert store.load_offsets("g") == {"t:1": 4}


def test_states_away_from_their_home_partition_commit_before_it(store) -> None:
    """Events of an entity that came on another partition than its home (a producer not keyed by the
    join key): its state is written in its home's slot group, checked per state, before the offsets."""
    vk = store.view_key("v", 1)
    key = next(k for k in (f"x{i}" for i in range(100)) if home_partition(k, N) == 4)
    calls = []
    part = store._commit_part
    store._commit_part = lambda *a: calls.append((a[-1], sorted(a[2]), [r.key for r in a[0]])) or part(*a)
    assert store.commit([rec(vk, key, applied=b"1:3", expected=b"")], "g", {"t:1": (-1, 3)}) == 1
    assert calls == [(4, [], [key]), (1, ["t:1"], [])]
    # the state's own check still holds there: a writer that loaded an older state is refused
    assert store.commit([rec(vk, key, expected=b"")], "g", {"t:1": (3, 4)}) == CommitResult.STATE_CONFLICT
    assert store.load_offsets("g") == {"t:1": 3}


def test_each_slot_group_has_its_epoch_marker(store) -> None:
    vk = store.view_key("v", 1)
    epoch = store.ensure_epoch("E1")
    assert store.created_epoch(epoch, "E1")
    lost = 2
    store.client.delete(store.group_epoch_key(lost))  # the master of group 2 restarted empty
    k_lost = next(k for k in (f"y{i}" for i in range(100)) if home_partition(k, N) == lost)
    k_kept = next(k for k in (f"y{i}" for i in range(100)) if home_partition(k, N) == 0)
    assert store.commit([rec(vk, k_kept)], "g", {"t:0": (-1, 1)}, epoch) == 1
    assert store.commit([rec(vk, k_lost)], "g", {"t:2": (-1, 1)}, epoch) == CommitResult.EPOCH_CHANGED
    again = store.ensure_epoch("E2")  # the recovery: only the lost marker is written anew
    assert again.split(",") == ["E1", "E1", "E2", "E1", "E1", "E1"] and store.created_epoch(again, "E2")
    assert store.commit([rec(vk, k_lost)], "g", {"t:2": (-1, 1)}, again) == 1


def test_partition_counts_are_recorded_and_checked(store, redis_cluster_url, project) -> None:
    other = open_online_store(redis_cluster_url, project)
    assert other.partitions_of(store.view_key("v", 1)) == N
    with pytest.raises(ConfigurationError, match="placed for 6"):
        other.use_partitions({store.view_key("v", 1): 8})
    assert other.partitions_of(store.view_key("w", 1)) is None
    with pytest.raises(ConfigurationError, match="no partition count is recorded"):
        other.commit([rec(other.view_key("w", 1), "a")], None, {})
    # a view no writer placed reads as absent
    rows, stale = other.read_packed(other.entity_keys(other.view_key("w", 1), ["a", "b"]), 0)
    assert rows == [None, None] and stale == []
    with pytest.raises(ConfigurationError, match="beyond the 6 of the recorded"):
        store.commit([], "g", {"t:6": (-1, 1)})


def test_reads_and_commits_follow_a_slot_in_migration(store, redis_cluster_url) -> None:
    """A slot group's slot moved to another master key by key (as ``redis-cli --cluster reshard``
    does): reads and commits go on through ASK while it moves and through MOVED after."""
    vk = store.view_key("v", 1)
    keys = [k for k in (f"m{i}" for i in range(400)) if home_partition(k, N) == 5][:30]
    assert store.commit([rec(vk, k, state=b"before") for k in keys], "g", {"t:5": (-1, 1)}) == 1
    slot = store.client.keyslot(store.entity_keys(vk, keys[:1])[0])
    admin = redis.RedisCluster.from_url(redis_py_url(redis_cluster_url))
    source = admin.get_node_from_key(store.entity_keys(vk, keys[:1])[0])
    target = next(n for n in admin.get_primaries() if n.name != source.name)
    src, dst = redis.Redis(host=source.host, port=source.port), redis.Redis(host=target.host, port=target.port)
    ids = {n.name: r.execute_command("CLUSTER MYID").decode() for n, r in ((source, src), (target, dst))}
    dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", ids[source.name])
    src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", ids[target.name])
    moved = src.execute_command("CLUSTER GETKEYSINSLOT", slot, 1000)[:12]  # some keys moved, some not
    src.execute_command("MIGRATE", target.host, target.port, "", 0, 5000, "KEYS", *moved)
    full = store.entity_keys(vk, keys)
    # a key moved is answered through ASK; a script whose keys are split waits (TRYAGAIN) in vain, so
    # read the moved keys and the others apart, as a reshard's batches leave them
    moved_set = {m if isinstance(m, str) else m.decode() for m in moved}
    there = [k for k in full if k in moved_set]
    here = [k for k in full if k not in moved_set]
    assert there and all(r is not None for r in store.read_packed(there, 2_000)[0])
    assert all(r is not None for r in store.read_packed(here, 2_000)[0])
    rest = src.execute_command("CLUSTER GETKEYSINSLOT", slot, 1000)
    if rest:
        src.execute_command("MIGRATE", target.host, target.port, "", 0, 5000, "KEYS", *rest)
    for r in (dst, src):
        r.execute_command("CLUSTER SETSLOT", slot, "NODE", ids[target.name])
    for n in admin.get_primaries():
        if n.name not in ids:
            redis.Redis(host=n.host, port=n.port).execute_command("CLUSTER SETSLOT", slot, "NODE", ids[target.name])
    # the store's slot map still names the old master: MOVED, then the map is refreshed
    assert store.commit([rec(vk, k, state=b"after") for k in keys], "g", {"t:5": (1, 2)}) == 1
    assert store.load_states(vk, keys) == dict.fromkeys(keys, b"after")
    assert store.load_offsets("g")["t:5"] == 2
    assert store.client.get_node_from_key(full[0]).name == target.name
