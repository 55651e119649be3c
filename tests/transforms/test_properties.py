"""Property tests: streaming ViewState == compute_batch == brute-force reference.

Random event streams for 1-4 entities with ties, out-of-order arrivals within and
beyond the lateness, redeliveries (exact repeats of an earlier event), events that
use an earlier event's id again with their own time and values (a duplicate while
that event is within the lateness horizon, counted once it is beyond), NaN / None
/ missing values, and random specs over every function, window and hop.

The number of examples comes from the active hypothesis profile (tests/conftest.py
loads it from HYPOTHESIS_PROFILE); only the deadline is switched off here.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.transforms.reference import (
    Event,
    accepted_by_entity,
    mismatches,
    reference_accept,
    reference_values,
    reference_watermark,
    value_scale,
)
from transforms import COLUMN_FUNCTIONS, FUNCTIONS, AggSpec, ViewState, compute_batch

S, M, H, D = 1_000, 60_000, 3_600_000, 86_400_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
NAN = float("nan")
ID = "event_id"
WINDOWS = (S, M, H, D, 7 * D, 90 * D, None)
KEYS = ("alice", "bob", "u:1/é", "10")
LATENESS = (0, S, 5 * M)
SPAN = 10 * D


def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, int(math.isqrt(n)) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


DIVISORS = {w: _divisors(w) for w in WINDOWS if w is not None}


# --------------------------------------------------------------------------- strategies

@st.composite
def specs_strategy(draw):
    specs = []
    for i in range(draw(st.integers(1, 6))):
        fn = draw(st.sampled_from(FUNCTIONS))
        window = draw(st.sampled_from(WINDOWS[:-1] if fn == "events_per_minute" else WINDOWS))
        hop = None
        if window is not None:
            kind = draw(st.sampled_from(("default", "exact", "divisor")))
            hop = None if kind == "default" else 1 if kind == "exact" else draw(st.sampled_from(DIVISORS[window]))
        column = draw(st.sampled_from(("x", "y"))) if fn in COLUMN_FUNCTIONS else None
        n = draw(st.integers(1, 4)) if fn == "last_n" else 0
        specs.append(AggSpec(f"s{i}_{fn}", fn, column, window_ms=window, hop_ms=hop, n=n))
    return specs


VALUES = st.one_of(
    st.integers(-1000, 1000).map(float),
    st.integers(-1000, 1000).map(float),
    st.integers(-4000, 4000).map(lambda k: k / 4),
    st.floats(-1000, 1000, allow_nan=False, allow_infinity=False),
    st.sampled_from((None, NAN, "missing")),
)


def _step(draw, lateness):
    """Offset of the next event from the current max ts (the watermark)."""
    kind = draw(st.sampled_from(("tie", "ms", "s", "min", "h", "d", "back_in", "back_edge", "back_over", "back_far")))
    if kind == "tie":
        return 0
    if kind == "ms":
        return draw(st.integers(1, 999))
    if kind == "s":
        return draw(st.integers(1, 59)) * S + draw(st.sampled_from((0, 0, 1, 999)))
    if kind == "min":
        return draw(st.integers(1, 59)) * M + draw(st.sampled_from((0, 0, 1, 7_777)))
    if kind == "h":
        return draw(st.integers(1, 23)) * H + draw(st.sampled_from((0, 1, 123_457)))
    if kind == "d":
        return draw(st.integers(1, 3)) * D + draw(st.sampled_from((0, -1, 1, 3_333_333)))
    if kind == "back_in":
        return -draw(st.integers(0, lateness))
    if kind == "back_edge":
        return -lateness
    if kind == "back_over":
        return -lateness - 1
    return -lateness - draw(st.integers(1, 2 * D))


@dataclass
class Scenario:
    specs: list
    lateness: int
    has_ids: bool
    id_frame: bool  # the batch frame carries the id column (used only when has_ids)
    base: int
    events: list  # reference Events, arrival order
    batch_queries: list  # (key, t), any t
    stream_queries: dict  # key -> [t >= that key's watermark]


@st.composite
def scenarios(draw, max_events: int = 24):
    specs = draw(specs_strategy())
    lateness = draw(st.sampled_from(LATENESS))
    has_ids = draw(st.booleans())
    base = draw(st.sampled_from((T0, T0 + 12_345, 0, 7 * D + 1)))
    keys = draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=4, unique=True))
    windows = [s.window_ms for s in specs if s.window_ms is not None] or [H]
    hops = {s.window_ms: s.hop_ms for s in specs if s.window_ms is not None}

    # per-entity streams, then an interleaving that keeps each entity's order
    tagged = []  # (arrival rank, entity index, position, Event)
    for ki, key in enumerate(keys):
        start = base + draw(st.integers(0, 2 * D))
        wm = None
        out: list[Event] = []
        rank = 0
        # at least one event in the frame: the empty frame has its own table test
        for i in range(draw(st.integers(1 if ki == 0 else 0, max_events))):
            rank += draw(st.integers(0, 3))
            kind = draw(st.integers(0, 7)) if out else None
            if kind == 0:  # redelivery: repeats an earlier event exactly
                ev = draw(st.sampled_from(out))
            else:
                ts = start if wm is None else wm + _step(draw, lateness)
                ts = max(base, min(ts, start + SPAN))
                vals = {}
                for c in ("x", "y"):
                    v = draw(VALUES)
                    if not (isinstance(v, str) and v == "missing"):
                        vals[c] = v
                # ids repeat across entities on purpose; kind 1 takes the id of an earlier event of this entity
                ev = Event(key, ts, vals, draw(st.sampled_from(out)).id if kind == 1 else f"e{i}")
                wm = ts if wm is None else max(wm, ts)
            out.append(ev)
            tagged.append((rank, ki, i, ev))
    tagged.sort(key=lambda x: (x[0], x[1], x[2]))
    events = [ev for *_, ev in tagged]

    reasons = reference_accept(events, lateness, has_ids)
    groups = accepted_by_entity(events, reasons)

    def near(ts):
        w = draw(st.sampled_from(windows))
        h = hops[w] if w in hops else 1
        off = draw(st.sampled_from((0, 1, -1, w, w + 1, w - 1, w + h, w + h - 1, 100 * D, None)))
        return ts + (draw(st.integers(0, 10 * D)) if off is None else off)

    batch_queries = []
    stream_queries = {}
    for key in keys:
        mine = groups.get(key, [])
        wm = reference_watermark(mine)
        qs = []
        for _ in range(draw(st.integers(0, 4))):
            anchor = draw(st.sampled_from([e.ts for e in mine])) if mine else base
            qs.append(near(anchor))
        stream = []
        for _ in range(draw(st.integers(1, 4))):
            t = near(wm) if wm is not None else near(base)
            stream.append(t if wm is None else max(t, wm))
        if wm is not None:
            stream.append(wm)
        batch_queries += [(key, t) for t in qs + stream]
        stream_queries[key] = stream
    batch_queries.append(("nobody-here", base + 5 * D))
    batch_queries.sort()
    return Scenario(specs, lateness, has_ids, draw(st.booleans()), base, events, batch_queries, stream_queries)


# --------------------------------------------------------------------------- helpers

def frame(sc: Scenario) -> pd.DataFrame:
    data = {
        "key": pd.Series([e.key for e in sc.events], dtype=object),
        "ts": np.array([e.ts for e in sc.events], dtype=np.int64),
    }
    for c in ("x", "y"):
        data[c] = np.array([NAN if e.values.get(c) is None else e.values[c] for e in sc.events], dtype=np.float64)
    if sc.has_ids or sc.id_frame:
        data[ID] = pd.Series([e.id for e in sc.events], dtype=object)
    return pd.DataFrame(data)


def batch(sc: Scenario, queries):
    qdf = None
    if queries is not None:
        qdf = pd.DataFrame({"key": pd.Series([k for k, _ in queries], dtype=object),
                            "ts": np.array([t for _, t in queries], dtype=np.int64)})
    return compute_batch(sc.specs, frame(sc), queries=qdf, lateness_ms=sc.lateness,
                         id_column=ID if sc.has_ids else None)


def items_of(sc: Scenario, key):
    rows = [i for i, e in enumerate(sc.events) if e.key == key]
    items = [(sc.events[i].ts, dict(sc.events[i].values), sc.events[i].id if sc.has_ids else None) for i in rows]
    return rows, items


def keys_of(sc: Scenario):
    return list(sc.stream_queries)


def row(df: pd.DataFrame, specs, i: int) -> dict:
    return {s.name: df[s.name].iloc[i] for s in specs}


def scale_of(sc: Scenario, key) -> float:
    return value_scale([e for e in sc.events if e.key == key])


def fail(what, sc, key, t, problems):
    t_txt = "" if t is None else f" t=base+{t - sc.base}"
    raise AssertionError(f"{what} key={key!r}{t_txt}:\n  " + "\n  ".join(problems))


# --------------------------------------------------------------------------- properties

@settings(deadline=None)
@given(scenarios())
def test_a_rejections_agree(sc):
    """Batch rejects == reference rejects (same rows, same reasons) == streaming rejections."""
    reasons = reference_accept(sc.events, sc.lateness, sc.has_ids)
    expected = sorted((i, r) for i, r in enumerate(reasons) if r is not None)

    res = batch(sc, None)
    got = sorted((int(r), str(x)) for r, x in zip(res.rejects["row"], res.rejects["reason"]))
    assert got == expected, f"batch rejects {got} != reference {expected}"
    assert list(np.asarray(res.accepted, dtype=bool)) == [r is None for r in reasons]

    streamed = []
    for key in keys_of(sc):
        rows, items = items_of(sc, key)
        state = ViewState(sc.specs, lateness_ms=sc.lateness)
        streamed += [(rows[r.index], r.reason) for r in state.apply(items)]
        assert state.watermark == reference_watermark(accepted_by_entity(sc.events, reasons).get(key, []))
    assert sorted(streamed) == expected, f"streaming rejects {sorted(streamed)} != reference {expected}"


@settings(deadline=None)
@given(scenarios())
def test_b_queries_streaming_batch_reference(sc):
    """Query times between, at and long after events: streaming == reference == batch."""
    groups = accepted_by_entity(sc.events, reference_accept(sc.events, sc.lateness, sc.has_ids))

    res = batch(sc, sc.batch_queries)
    v = res.values
    assert len(v) == len(sc.batch_queries)
    assert [(k, int(t)) for k, t in zip(v["key"], v["ts"])] == sc.batch_queries
    for i, (key, t) in enumerate(sc.batch_queries):
        exp = reference_values(sc.specs, groups.get(key, []), t)
        bad = mismatches(sc.specs, exp, row(v, sc.specs, i), scale_of(sc, key), batch=True)
        if bad:
            fail("batch query", sc, key, t, bad)

    for key in keys_of(sc):
        _, items = items_of(sc, key)
        state = ViewState(sc.specs, lateness_ms=sc.lateness)
        state.apply(items)
        for t in sc.stream_queries[key]:
            exp = reference_values(sc.specs, groups.get(key, []), t)
            bad = mismatches(sc.specs, exp, state.evaluate(t), scale_of(sc, key))
            if bad:
                fail("streaming evaluate", sc, key, t, bad)


@settings(deadline=None)
@given(scenarios())
def test_c_batch_as_of_each_event(sc):
    """queries=None: one row per accepted event, valued as of that event's ts (== reference)."""
    reasons = reference_accept(sc.events, sc.lateness, sc.has_ids)
    groups = accepted_by_entity(sc.events, reasons)
    expected_rows = []
    for key in sorted(groups):
        for _, ev in sorted(enumerate(groups[key]), key=lambda x: (x[1].ts, x[0])):
            expected_rows.append((key, ev.ts))

    res = batch(sc, None)
    # row order is checked by a table test; compare in (key, ts) order, ties give equal values
    v = res.values.sort_values(["key", "ts"], kind="mergesort").reset_index(drop=True)
    assert [(k, int(t)) for k, t in zip(v["key"], v["ts"])] == expected_rows
    for i, (key, t) in enumerate(expected_rows):
        exp = reference_values(sc.specs, groups[key], t)
        bad = mismatches(sc.specs, exp, row(v, sc.specs, i), scale_of(sc, key), batch=True)
        if bad:
            fail("batch as-of-event", sc, key, t, bad)


@settings(deadline=None)
@given(scenarios(), st.data())
def test_d_micro_batches_and_round_trips(sc, data):
    """Random micro-batch splits with to_bytes/from_bytes in between give the same
    rejections and values as the reference (checked after every batch and at the end)."""
    reasons = reference_accept(sc.events, sc.lateness, sc.has_ids)
    for key in keys_of(sc):
        rows, items = items_of(sc, key)
        exp_rej = [(j, reasons[r]) for j, r in enumerate(rows) if reasons[r] is not None]
        state = ViewState(sc.specs, lateness_ms=sc.lateness)
        got_rej = []
        pos = 0
        while pos < len(items):
            size = data.draw(st.integers(1, len(items) - pos), label="batch size")
            chunk = items[pos:pos + size]
            got_rej += [(pos + r.index, r.reason) for r in state.apply(chunk)]
            if data.draw(st.integers(0, 9), label="empty batch") == 0:
                assert state.apply([]) == []
            pos += size
            if data.draw(st.booleans(), label="round trip"):
                state = ViewState.from_bytes(sc.specs, state.to_bytes(), lateness_ms=sc.lateness)
            seen = [Event(key, ts, vals, i) for ts, vals, i in items[:pos]]
            accepted = accepted_by_entity(seen, reasons_of(rows[:pos], reasons))
            wm = reference_watermark(accepted.get(key, []))
            assert state.watermark == wm
            if wm is not None:
                # a read at or after the watermark must not disturb the state for later events
                t = wm + data.draw(st.sampled_from((0, 0, 1, S, H, D + 1, 100 * D)), label="read offset")
                exp = reference_values(sc.specs, accepted[key], t)
                bad = mismatches(sc.specs, exp, state.evaluate(t), scale_of(sc, key))
                if bad:
                    fail(f"after {pos} of {len(items)} events (streamed in chunks)", sc, key, t, bad)
        assert got_rej == exp_rej, f"key {key!r}: chunked rejections {got_rej} != reference {exp_rej}"
        final = accepted_by_entity([Event(key, ts, vals, i) for ts, vals, i in items], reasons_of(rows, reasons))
        for t in sc.stream_queries[key]:
            exp = reference_values(sc.specs, final.get(key, []), t)
            bad = mismatches(sc.specs, exp, state.evaluate(t), scale_of(sc, key))
            if bad:
                fail("final evaluate after chunks", sc, key, t, bad)


def reasons_of(rows, reasons):
    return [reasons[r] for r in rows]


@contextlib.contextmanager
def batch_settings(**values):
    """``transforms.batch`` module settings (CHUNK_ROWS, COMPUTE_THREADS, PARALLEL_ROWS) for a block."""
    import transforms.batch as batch_module

    saved = {name: getattr(batch_module, name) for name in values}
    for name, value in values.items():
        setattr(batch_module, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(batch_module, name, value)


def check_queried(sc, queried, label: str) -> None:
    """``compute_batch`` with the scenario's queries == the reference, in query order."""
    groups = accepted_by_entity(sc.events, reference_accept(sc.events, sc.lateness, sc.has_ids))
    v = queried.values
    assert [(k, int(t)) for k, t in zip(v["key"], v["ts"])] == sc.batch_queries
    for i, (key, t) in enumerate(sc.batch_queries):
        bad = mismatches(sc.specs, reference_values(sc.specs, groups.get(key, []), t), row(v, sc.specs, i),
                         scale_of(sc, key), batch=True)
        if bad:
            fail(label, sc, key, t, bad)


@settings(deadline=None, max_examples=60)
@given(scenarios(), st.integers(1, 5))
def test_e_queries_in_slices_on_two_threads(sc, rows_per_slice):
    """compute_batch cut into slices of a few queries, evaluated by two threads (what large
    inputs get: ``CHUNK_ROWS`` queries per slice) == the reference, with and without queries."""
    with batch_settings(CHUNK_ROWS=rows_per_slice, COMPUTE_THREADS=2):
        queried = batch(sc, sc.batch_queries)
        per_event = batch(sc, None)
    check_queried(sc, queried, f"batch query, slices of {rows_per_slice}")
    groups = accepted_by_entity(sc.events, reference_accept(sc.events, sc.lateness, sc.has_ids))
    v = per_event.values.sort_values(["key", "ts"], kind="mergesort").reset_index(drop=True)
    for i, (key, t) in enumerate(zip(v["key"], v["ts"])):
        bad = mismatches(sc.specs, reference_values(sc.specs, groups[key], int(t)), row(v, sc.specs, i),
                         scale_of(sc, key), batch=True)
        if bad:
            fail(f"batch as-of-event, slices of {rows_per_slice}", sc, key, int(t), bad)


@settings(deadline=None, max_examples=60)
@given(scenarios(), st.integers(2, 3), st.integers(1, 5))
def test_e_entities_in_parts_on_threads(sc, parts, rows_per_slice):
    """compute_batch with queries cut into parts of consecutive entities, each sorted, accepted and
    evaluated on its own thread (what inputs of ``PARALLEL_ROWS`` rows get) == the reference, and row
    for row the same frames (values, rejects, accepted mask) as one part; values as of every event
    (one part, whatever the settings) unchanged too."""
    whole_q, whole_e = batch(sc, sc.batch_queries), batch(sc, None)
    with batch_settings(CHUNK_ROWS=rows_per_slice, COMPUTE_THREADS=parts, PARALLEL_ROWS=1):
        queried = batch(sc, sc.batch_queries)
        per_event = batch(sc, None)
    check_queried(sc, queried, f"batch query, {parts} parts")
    for got, whole in ((queried, whole_q), (per_event, whole_e)):
        pd.testing.assert_frame_equal(got.values, whole.values)
        pd.testing.assert_frame_equal(got.rejects, whole.rejects)
        assert np.array_equal(got.accepted, whole.accepted)
