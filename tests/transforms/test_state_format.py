"""States stored by the released format 2 keep working after an upgrade, and format 3 round-trips.

``data/state_v1.json`` holds a state serialized by format 1 (one 14-field row per
(column, hop) and tile, written by no released version: refused), with the events it
was built from.  Format 2 states are written by ``transforms.legacy`` (the JSON engine
of 0.1).  The compiled engine reads them, converts them, and must answer exactly as a
state built from the same events today, before and after more events, and through the
online reader (``compile_reader``) too.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import orjson
import pytest

from tests.transforms.reference import value_matches
from transforms import (
    FORMAT_VERSION,
    REJECT_DUPLICATE,
    AggSpec,
    ViewState,
    compile_reader,
)
from transforms.engine.codec import MAGIC, StateFormatError
from transforms.legacy.state import ViewState as LegacyState
from transforms.state import append_ids, id_hash

FIXTURE = json.loads((Path(__file__).parent / "data" / "state_v1.json").read_text())
SPECS = tuple(AggSpec(**s) for s in FIXTURE["specs"])
LATENESS = FIXTURE["lateness_ms"]
M, H, D = 60_000, 3_600_000, 86_400_000


def events(rows):
    return [(ts, {k: (math.nan if v == "nan" else v) for k, v in values.items()}, eid) for ts, values, eid in rows]


def fresh_state() -> ViewState:
    state = ViewState(SPECS, lateness_ms=LATENESS)
    cut = FIXTURE["batches"][0]
    state.apply(events(FIXTURE["events"][:cut]))
    state.apply(events(FIXTURE["events"][cut:]))
    return state


def same(a: dict, b: dict, where: str) -> None:
    bad = [f"{s.name}: {a[s.name]!r} vs {b[s.name]!r}" for s in SPECS
           if not value_matches(a[s.name], b[s.name], 1.0, batch=False, function=s.function)]
    assert not bad, f"{where}: " + "; ".join(bad)


def pairs_of(ids: bytes) -> list[list[int]]:
    """Stored format 3 event ids (``b"="`` or ``b"&"`` and 16-byte pairs) as [hash, ts] pairs."""
    words = np.frombuffer(ids[1:], dtype=np.int64).tolist()
    return [list(p) for p in zip(words[0::2], words[1::2])]


def test_fixture_is_format_1_and_current_format_differs() -> None:
    assert orjson.loads(FIXTURE["blob"])["v"] == 1
    assert FORMAT_VERSION == 3
    blob, _ = fresh_state().to_parts()
    assert blob[:4] == MAGIC


def test_format_2_state_and_its_json_ids_convert_to_the_same_state() -> None:
    """A state the JSON engine (format 2) wrote, with its ids stored as JSON pairs, answers and
    refuses as the state built by the compiled engine; its ids are rewritten whole at the next write."""
    old = LegacyState(SPECS, lateness_ms=LATENESS)
    cut = FIXTURE["batches"][0]
    old.apply(events(FIXTURE["events"][:cut]))
    old.apply(events(FIXTURE["events"][cut:]))
    blob, ids = old.to_parts()
    assert orjson.loads(blob)["v"] == 2 and ids[:1] == b"["
    converted = ViewState.from_bytes(SPECS, blob, lateness_ms=LATENESS, ids=ids)
    expected = fresh_state()
    assert converted.watermark == expected.watermark and converted.seq == expected.seq
    assert converted.ids == expected.ids == {id_hash(i): ts for i, ts in old.ids.items()}
    read = compile_reader(SPECS, [s.name for s in SPECS])
    wm = expected.watermark
    for dt in (0, 1, 30 * M, H, 3 * H, D + 7, 3 * D, 8 * D, 40 * D):
        same(expected.evaluate(wm + dt), converted.evaluate(wm + dt), f"converted at wm+{dt}")
        same(expected.evaluate(wm + dt), dict(zip([s.name for s in SPECS], read(blob, wm + dt))),
             f"reader of format 2 at wm+{dt}")
    redelivered = events(FIXTURE["events"][-5:])
    assert ([(r.index, r.reason) for r in converted.apply(redelivered)]
            == [(r.index, r.reason) for r in expected.apply(redelivered)])
    new_blob, new_ids = converted.to_parts()
    assert new_blob[:4] == MAGIC and new_ids[:1] == b"="  # whole, in format 3


def test_format_1_state_is_refused_with_what_to_do() -> None:
    """Format 1 was written by no released version: its states are not read, and the error says how
    to rebuild them."""
    with pytest.raises(StateFormatError, match="format 1.*rebuild the state"):
        ViewState.from_bytes(SPECS, FIXTURE["blob"].encode(), lateness_ms=LATENESS)


def test_state_and_its_event_ids_apart_join_to_the_same_state() -> None:
    """``to_parts``: the state without its ids (what an online read fetches) and the ids; joined by
    ``from_bytes`` they behave as the whole state (``to_bytes``), redelivered ids refused alike."""
    whole = fresh_state()
    assert whole.ids  # the fixture's events carry ids within the lateness
    blob, ids = whole.to_parts()  # a new state: its ids whole, as (hash, ts) pairs
    assert ids[:1] == b"=" and pairs_of(ids) == [list(p) for p in whole.ids.items()]
    assert all(h.to_bytes(8, "little", signed=True) not in blob for h in whole.ids)  # the state holds no ids
    joined = ViewState.from_bytes(SPECS, blob, lateness_ms=LATENESS, ids=ids)
    legacy = ViewState.from_bytes(SPECS, whole.to_bytes(), lateness_ms=LATENESS)  # ids inside the state
    read = compile_reader(SPECS, [s.name for s in SPECS])
    wm = whole.watermark
    for dt in (0, 30 * M, 3 * H, 3 * D):
        same(whole.evaluate(wm + dt), joined.evaluate(wm + dt), f"joined at wm+{dt}")
        same(whole.evaluate(wm + dt), dict(zip([s.name for s in SPECS], read(blob, wm + dt))), f"reader at wm+{dt}")
    redelivered = [(ts, {k: (math.nan if v == "nan" else v) for k, v in values.items()}, eid)
                   for ts, values, eid in FIXTURE["events"][-5:]]
    outcomes = [[(r.index, r.reason) for r in s.apply(redelivered)] for s in (whole, joined, legacy)]
    assert outcomes[0] == outcomes[1] == outcomes[2] and len(outcomes[0]) == 5
    assert REJECT_DUPLICATE in {reason for _, reason in outcomes[0]}
    assert ViewState(SPECS).to_parts()[1] == b""  # no ids: nothing beside the state


def test_event_ids_written_incrementally_reload_as_the_state_in_memory() -> None:
    """A state written after every batch sends only the ids accepted since (``b"&"`` and the pairs)
    while it knows what is stored; pruned ids stay stored until they outnumber the live ones by half
    (then the ids are rewritten whole).  Loaded from what is stored at any step, a state holds the
    same ids as the one kept in memory and refuses and accepts the same events."""
    lateness = 60_000
    spec = AggSpec("n", "count", "x", 3_600_000, 60_000)
    kept = ViewState((spec,), lateness_ms=lateness)
    stored, appends, rewrites, most = None, 0, 0, 0
    t0 = 1_767_225_600_000
    for batch in range(200):
        # ~3 events a second of event time, one arriving out of order, one id redelivered, and
        # from batch 100 on the ids of batch 10 again with new times (ids reused after they expired)
        ts = [t0 + batch * 1000 + j * 300 for j in range(3)] + [t0 + batch * 1000 - 20_000]
        rows = [(t, {"x": 1.0}, f"e{batch}-{j}") for j, t in enumerate(ts)]
        rows.append((ts[0], {"x": 1.0}, f"e{max(batch - 1, 0)}-0"))
        if batch >= 100:
            rows.append((ts[2] + 1, {"x": 1.0}, f"e{batch - 90}-1"))
        kept.apply(rows)
        _, part = kept.to_parts()
        if part[:1] == b"&":
            appends += 1
        else:
            rewrites += 1
        stored = append_ids(stored, part)
        pairs = pairs_of(stored)
        most = max(most, len(pairs) / max(len(kept.ids), 1))
        loaded = ViewState.from_bytes((spec,), kept.to_bytes(), lateness_ms=lateness, ids=stored)
        assert loaded.ids == kept.ids and list(loaded.ids) == list(kept.ids), batch
        probe = [(ts[0] + 5, {"x": 1.0}, f"e{batch}-1"), (ts[0] - 30_000, {"x": 1.0}, f"e{batch - 30}-2"),
                 (ts[0] + 6, {"x": 1.0}, "fresh")]
        twin = ViewState.from_bytes((spec,), kept.to_bytes(), lateness_ms=lateness)  # ids inside the state
        assert [(r.index, r.reason) for r in loaded.apply(probe)] == [(r.index, r.reason) for r in twin.apply(probe)]
    assert appends > 150 and rewrites >= 3  # mostly appends; a rewrite now and then
    assert most <= 1.5 + 32 / 60  # stored pairs stay within half the live ones (plus 32)
