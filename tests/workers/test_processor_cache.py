"""The worker's state cache is bounded: least recently used states leave it after a commit and come
back from Redis with everything they had (real Redis)."""

from __future__ import annotations

import pytest

from featurestore.online import RedisOnlineStore
from featurestore.schema import validator_for
from tests.workers.support import make_events, make_view
from transforms import ViewState
from transforms.state import append_ids
from featurestore.processing import SourceProcessor, prepare_view

pytestmark = pytest.mark.integration


def test_evicted_states_reload_from_redis(servers, unique_name):
    view = make_view(unique_name("t"))
    project = unique_name("p")
    online = RedisOnlineStore.from_url(servers.redis_url, project)
    pv = prepare_view(view, 1, project)
    bounded = SourceProcessor([pv], online, max_states=3)
    other = unique_name("q")  # a processor that never evicts, in its own namespace
    unbounded = SourceProcessor([prepare_view(view, 1, other)], RedisOnlineStore.from_url(servers.redis_url, other))
    validate = validator_for(view.source)
    events = [validate(r) for r in make_events(400)]
    keys = sorted({str(e.key) for e in events})
    assert len(keys) > 3
    for lo in range(0, len(events), 50):
        batch = events[lo:lo + 50]
        records, _ = bounded.apply(batch)
        assert online.commit(records, None, {}) == 1
        bounded.evict()
        cached = bounded.cache[pv.view_key]
        assert len(cached) <= 3
        # least recently used out: what stays was touched by this batch (which touches more than 3 keys)
        touched = {str(e.key) for e in batch}
        assert len(touched) > 3 and set(cached) <= touched
        expected, _ = unbounded.apply(batch)
        # every record written after reloads equals the one of a processor that never evicted
        assert sorted((r.key, r.values, r.watermark, r.valid_until) for r in records) == \
            sorted((r.key, r.values, r.watermark, r.valid_until) for r in expected)
    assert bounded.evicted > 0
    # The event ids come back with the states (stored beside them): the last batch again is refused
    # as repeated (or late), nothing counted twice.
    bounded.invalidate()
    records, refused = bounded.apply(events[-50:])
    assert len(refused) == 50 and {r.reason for r in refused.values()} <= {"duplicate_event_id", "late"}
    assert "duplicate_event_id" in {r.reason for r in refused.values()}


def test_replay_skips_per_state_what_each_state_already_applied(servers, unique_name):
    """A batch re-run after a commit that wrote only some states (a crash between chunks): each state
    skips the events at or below its own stored offsets, so every event counts once in every state."""
    view = make_view(unique_name("t"))
    project, clean_project = unique_name("p"), unique_name("q")
    online = RedisOnlineStore.from_url(servers.redis_url, project)
    clean = RedisOnlineStore.from_url(servers.redis_url, clean_project)
    pv, clean_pv = prepare_view(view, 1, project), prepare_view(view, 1, clean_project)
    validate = validator_for(view.source)
    raw = make_events(300)
    positions = [(i % 3, i // 3) for i in range(len(raw))]  # (partition, offset): offsets rise per partition

    def events():  # fresh ValidEvents (applying a batch adds derived columns to them)
        return [validate(r) for r in raw]

    # The reference: everything applied once.
    expected, refused = SourceProcessor([clean_pv], clean).apply(events(), positions)
    assert not refused and clean.commit(expected, None, {}) == 1

    # A first batch (events 0-99) committed; of the next (100-199) only half the entities' states reach Redis.
    processor = SourceProcessor([pv], online)
    first, _ = processor.apply(events()[:100], positions[:100])
    assert online.commit(first, None, {}) == 1
    second, _ = processor.apply(events()[100:200], positions[100:200])
    written = sorted(second, key=lambda r: r.key)[: len(second) // 2]
    assert written and online.commit(written, None, {}) == 1
    # The restart re-runs from event 100 (its partitions' offsets were not advanced) on states loaded from Redis.
    again, refused = SourceProcessor([pv], online).apply(events()[100:], positions[100:])
    assert not refused  # nothing refused as late or repeated: a state skips what it holds
    skipped = {r.key for r in written} - {r.key for r in again}
    # entities written in full and with no event after 200 are not rewritten at all
    assert skipped == {r.key for r in written} - {str(e.key) for e in events()[200:]}
    assert online.commit(again, None, {}) == 1
    keys = sorted({r.key for r in expected})
    # the same states and the same event ids beside them (the applied offsets differ: the runs differ;
    # the stored ids may differ in pruned pairs not rewritten yet, never in the ids they load as)
    def loaded(store, view_key):
        return {k: (blob, ViewState.from_bytes(pv.specs, blob, pv.lateness_ms, ids).ids)
                for k, (blob, _, ids) in store.load_states_applied(view_key, keys).items()}

    got, want = loaded(online, pv.view_key), loaded(clean, clean_pv.view_key)
    assert got == want and any(ids for _, ids in got.values())


def test_event_ids_appended_by_the_commit_script_reload_as_the_cached_states(servers, unique_name):
    """Each commit appends the ids a state accepted since its last write (``ViewState.to_parts``):
    the commit script stores what ``append_ids`` computes, pruned ids are dropped by an occasional
    rewrite, and a processor loading the states from Redis at any point holds the ids of the one
    that kept them cached, refusing the same redelivered events."""
    view = make_view(unique_name("t"), lateness="2m")
    project = unique_name("p")
    online = RedisOnlineStore.from_url(servers.redis_url, project)
    pv = prepare_view(view, 1, project)
    cached = SourceProcessor([pv], online)
    validate = validator_for(view.source)
    raw = make_events(1200, customers=4)  # ~6 live ids per entity within the 2 minutes' lateness
    expected: dict[str, bytes | None] = {}
    parts = set()
    for lo in range(0, len(raw), 30):
        records, _ = cached.apply([validate(r) for r in raw[lo:lo + 30]])
        assert online.commit(records, None, {}) == 1
        for rec in records:
            parts.add(rec.ids[:1] == b"&")
            expected[rec.key] = append_ids(expected.get(rec.key), rec.ids)
        stored = online.load_states_applied(pv.view_key, sorted(expected))
        assert {k: ids for k, (_, _, ids) in stored.items()} == expected  # the script appended as append_ids does
        fresh = SourceProcessor([pv], online)
        states = fresh._states(pv, sorted(expected))
        assert {k: list(s.ids.items()) for k, s in states.items()} == \
            {k: list(s.ids.items()) for k, s in cached.cache[pv.view_key].items()}
    assert parts == {True, False}  # appends, and rewrites
    again = [validate(r) for r in raw[-60:]]
    outcomes = [sorted((i, r.reason) for i, r in p.apply(again)[1].items())
                for p in (cached, SourceProcessor([pv], online))]
    assert outcomes[0] == outcomes[1] and len(outcomes[0]) == 60


def test_history_of_absent_entities_is_asked_in_chunks_and_applied_first(servers, unique_name, monkeypatch):
    """Entities the online store does not hold get ``history`` applied before the batch, asked for
    ``HISTORY_CHUNK`` entities at a time (each call holds those entities' whole logged history)."""
    import featurestore.processing as processor_module

    view = make_view(unique_name("t"))
    project = unique_name("p")
    pv = prepare_view(view, 1, project)
    validate = validator_for(view.source)
    raw = make_events(300, customers=25)
    past, now = [validate(r) for r in raw[:250]], [validate(r) for r in raw[250:]]
    asked: list[list[str]] = []

    def history(keys):
        asked.append(keys)
        mine = [e for e in past if str(e.key) in keys]
        return {k: ([(e.ts_ms, e.values, e.event_id) for e in mine if str(e.key) == k], {0: 1}) for k in keys}

    monkeypatch.setattr(processor_module, "HISTORY_CHUNK", 10)
    seeded = SourceProcessor([pv], RedisOnlineStore.from_url(servers.redis_url, project), history=history)
    records, refused = seeded.apply(now)
    assert not refused
    touched = sorted({str(e.key) for e in now})
    assert [len(k) for k in asked] == [10] * (len(touched) // 10) + ([len(touched) % 10] if len(touched) % 10 else [])
    assert sorted(k for chunk in asked for k in chunk) == touched
    other = unique_name("q")  # the reference: every event applied in order by one processor
    reference = SourceProcessor([prepare_view(view, 1, other)], RedisOnlineStore.from_url(servers.redis_url, other))
    reference.apply(past)
    expected, _ = reference.apply(now)
    assert sorted((r.key, r.values, r.watermark, r.valid_until) for r in records) == \
        sorted((r.key, r.values, r.watermark, r.valid_until) for r in expected)
    assert seeded.applied_offsets(pv.view_key, touched[0]) == {0: 1}  # offsets from the history


def test_entities_with_events_on_a_new_partition_are_reported(servers, unique_name):
    """An entity's events on two Kafka partitions (a producer not keying by the entity key, or partitions
    added): ``spread`` names it at the batch where its state first gets events of another partition, also
    when the state comes back from Redis."""
    view = make_view(unique_name("t"))
    project = unique_name("p")
    online = RedisOnlineStore.from_url(servers.redis_url, project)
    processor = SourceProcessor([prepare_view(view, 1, project)], online)
    validate = validator_for(view.source)
    events = [validate(r) for r in make_events(40, seed=9)]
    by_key: dict[str, list] = {}
    for event in events:
        by_key.setdefault(str(event.key), []).append(event)
    a, b = sorted(by_key, key=lambda k: -len(by_key[k]))[:2]  # two entities with several events each
    assert len(by_key[a]) >= 4 and len(by_key[b]) >= 3

    def apply(batch, positions):
        records, _ = processor.apply(batch, positions)
        assert online.commit(records, None, {}) == 1
        return processor.spread

    assert apply(by_key[a][:1] + by_key[b][:1], [(0, 1), (1, 2)]) == set()  # one partition each
    assert apply(by_key[a][1:2] + by_key[b][1:2], [(0, 3), (1, 4)]) == set()  # same partitions
    assert apply(by_key[a][2:3], [(1, 5)]) == {a}  # a's event on b's partition
    processor.invalidate()  # states reloaded from Redis keep their partitions
    assert apply(by_key[a][3:4] + by_key[b][2:3], [(2, 6), (1, 7)]) == {a}
    c = next(k for k in sorted(by_key, key=lambda k: -len(by_key[k])) if k not in (a, b))
    assert len(by_key[c]) >= 2
    assert apply(by_key[c][:2], [(0, 8), (1, 9)]) == {c}  # a new entity's first batch on two partitions


def test_an_unreadable_stored_state_is_rebuilt_from_the_event_log(servers, unique_name, caplog):
    """A stored state this version cannot read (damaged, or of an unknown format) does not stop the
    batch: it is logged, counted, and rebuilt from ``history`` as an absent one; the other entities'
    states load as stored.  The values then equal those of a processor that applied every event."""
    view = make_view(unique_name("t"))
    project = unique_name("p")
    online = RedisOnlineStore.from_url(servers.redis_url, project)
    pv = prepare_view(view, 1, project)
    validate = validator_for(view.source)
    raw = make_events(300, customers=6)
    past, now = [validate(r) for r in raw[:250]], [validate(r) for r in raw[250:]]
    writer = SourceProcessor([pv], online)
    records, _ = writer.apply(past)
    assert online.commit(records, None, {}) == 1
    keys = sorted({str(e.key) for e in now})
    broken = {keys[0]: b"SFS\x03" + b"\x00" * 60, keys[1]: b"\x07garbage"}
    for key, blob in broken.items():
        online.client.hset(online.entity_key(pv.view_key, key), "s", blob)
    asked: list[list[str]] = []

    def history(wanted):
        asked.append(sorted(wanted))
        return {k: ([(e.ts_ms, e.values, e.event_id) for e in past if str(e.key) == k], {}) for k in wanted}

    healing = SourceProcessor([pv], online, history=history)
    with caplog.at_level("ERROR", logger="featurestore.processing"):
        got, refused = healing.apply(now)
    assert asked == [sorted(broken)] and healing.unreadable == 2
    assert sum("cannot be read" in r.getMessage() and "rebuilt from the event log" in r.getMessage()
               for r in caplog.records) == 2
    other = unique_name("q")
    reference = SourceProcessor([prepare_view(view, 1, other)], RedisOnlineStore.from_url(servers.redis_url, other))
    reference.apply(past)
    expected, expected_refused = reference.apply(now)
    assert sorted(refused) == sorted(expected_refused)
    assert sorted((r.key, r.values, r.watermark, r.valid_until) for r in got) == \
        sorted((r.key, r.values, r.watermark, r.valid_until) for r in expected)
