"""Table-driven cases for every aggregation through BOTH the streaming ViewState
and compute_batch, against hand-written expected values (never computed by the
implementation, and not by the reference either)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pytest

from tests.transforms.reference import value_matches
from transforms import REJECT_DUPLICATE, REJECT_LATE, AggSpec, ViewState, compute_batch
from transforms.state import id_hash

S, M, H, D = 1_000, 60_000, 3_600_000, 86_400_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z, a multiple of one day
NAN = float("nan")
ID = "event_id"


# --------------------------------------------------------------------------- harness

@dataclass
class Case:
    specs: list
    events: list  # (key, ts offset from T0, values dict, id) in arrival order
    expected: dict  # (key, t offset) -> {name: value}
    lateness: int = 0
    ids: bool = False
    rejects: list = field(default_factory=list)  # [(row, reason)]
    float_column: bool = True  # build value columns as float64 (NaN for None) in the batch frame


def events_frame(events, columns, *, ids: bool, float_column: bool = True):
    data = {"key": [k for k, *_ in events], "ts": np.array([T0 + off for _, off, *_ in events], dtype=np.int64)}
    for c in columns:
        vals = [vals.get(c) for _, _, vals, *_ in events]
        if float_column:
            data[c] = np.array([NAN if v is None else v for v in vals], dtype=np.float64)
        else:
            data[c] = pd.Series(vals, dtype=object)
    if ids:
        data[ID] = pd.Series([e[3] if len(e) > 3 else None for e in events], dtype=object)
    return pd.DataFrame(data)


def columns_of(specs):
    return sorted({s.column for s in specs if s.column})


def row_values(res_values, specs, i):
    return {s.name: res_values[s.name].iloc[i] for s in specs}


def check_values(specs, expected, got, where, *, batch):
    bad = [f"{n}: expected {expected[n]!r}, got {got.get(n, '<missing>')!r}"
           for n in expected if n not in got or not value_matches(
               expected[n], got[n], 1.0, batch=batch,
               function=next(s.function for s in specs if s.name == n))]
    assert not bad, f"{where}:\n  " + "\n  ".join(bad)


def run_batch(case: Case, *, id_column=ID):
    df = events_frame(case.events, columns_of(case.specs), ids=case.ids, float_column=case.float_column)
    queries = sorted(case.expected)
    qdf = pd.DataFrame({"key": [k for k, _ in queries], "ts": np.array([T0 + t for _, t in queries], dtype=np.int64)})
    res = compute_batch(case.specs, df, queries=qdf, lateness_ms=case.lateness,
                        id_column=id_column if case.ids else None)
    assert len(res.values) == len(queries)
    assert list(res.values["key"]) == [k for k, _ in queries]
    assert [int(x) for x in res.values["ts"]] == [T0 + t for _, t in queries]
    for i, q in enumerate(queries):
        check_values(case.specs, case.expected[q], row_values(res.values, case.specs, i),
                     f"batch key={q[0]!r} t=T0+{q[1]}", batch=True)
    got_rejects = sorted((int(r), str(reason)) for r, reason in zip(res.rejects["row"], res.rejects["reason"]))
    assert got_rejects == sorted(case.rejects)
    accepted = np.asarray(res.accepted, dtype=bool)
    assert accepted.shape == (len(case.events),)
    assert [i for i in range(len(case.events)) if not accepted[i]] == sorted(r for r, _ in case.rejects)
    return res


def stream_items(events):
    return [(T0 + off, dict(vals), (e[0] if e else None)) for _, off, vals, *e in events]


def run_streaming(case: Case):
    """One ViewState per key.  Queries at t >= the key's final watermark are read
    after applying everything in one batch; when a key's events arrive in time
    order, every query is also read incrementally (apply the events with ts <= t,
    then evaluate t)."""
    keys = sorted({k for k, *_ in case.events} | {k for k, _ in case.expected})
    reject_rows = []
    for key in keys:
        rows = [i for i, e in enumerate(case.events) if e[0] == key]
        mine = [case.events[i] for i in rows]
        items = stream_items(mine)
        if not case.ids:
            items = [(ts, vals, None) for ts, vals, _ in items]
        state = ViewState(case.specs, lateness_ms=case.lateness)
        rej = state.apply(items)
        reject_rows += [(rows[r.index], r.reason) for r in rej]
        wm = state.watermark
        for (k, t), exp in sorted(case.expected.items()):
            if k == key and (wm is None or T0 + t >= wm):
                check_values(case.specs, exp, state.evaluate(T0 + t), f"streaming key={key!r} t=T0+{t}",
                             batch=False)
        offs = [off for _, off, *_ in mine]
        if offs == sorted(offs) and not case.rejects:
            inc = ViewState(case.specs, lateness_ms=case.lateness)
            done = 0
            for (k, t), exp in sorted(case.expected.items()):
                if k != key:
                    continue
                todo = [it for it, off in zip(items, offs) if off <= t][done:]
                assert inc.apply(todo) == []
                done += len(todo)
                check_values(case.specs, exp, inc.evaluate(T0 + t), f"incremental streaming key={key!r} t=T0+{t}",
                             batch=False)
    assert sorted(reject_rows) == sorted(case.rejects)


def check_case(case: Case):
    run_batch(case)
    run_streaming(case)


def empties(specs, **overrides):
    base = {"sum": 0.0, "count": 0, "mean": None, "min": None, "max": None, "first": None, "last": None,
            "last_n": [], "count_distinct": 0, "var": None, "stddev": None, "count_events": 0,
            "events_per_minute": 0.0, "seconds_since_last": None}
    out = {s.name: base[s.function] for s in specs}
    out.update(overrides)
    return out


# --------------------------------------------------------------------------- every function, 1 h window

ALL_1H = [
    AggSpec("sum", "sum", "x", window_ms=H), AggSpec("count", "count", "x", window_ms=H),
    AggSpec("mean", "mean", "x", window_ms=H), AggSpec("min", "min", "x", window_ms=H),
    AggSpec("max", "max", "x", window_ms=H), AggSpec("first", "first", "x", window_ms=H),
    AggSpec("last", "last", "x", window_ms=H), AggSpec("last2", "last_n", "x", window_ms=H, n=2),
    AggSpec("distinct", "count_distinct", "x", window_ms=H), AggSpec("var", "var", "x", window_ms=H),
    AggSpec("stddev", "stddev", "x", window_ms=H), AggSpec("n", "count_events", window_ms=H),
    AggSpec("epm", "events_per_minute", window_ms=H), AggSpec("ssl", "seconds_since_last", window_ms=H),
    AggSpec("sum_x", "sum", "x", window_ms=H, hop_ms=1), AggSpec("n_x", "count_events", window_ms=H, hop_ms=1),
    AggSpec("sum_life", "sum", "x"), AggSpec("n_life", "count_events"), AggSpec("first_life", "first", "x"),
]


def test_default_hop_of_1h_is_1min():
    assert ALL_1H[0].hop_ms == M


def e(off, v, key="k", id=None):
    return (key, off, {"x": v}, id)


FOUR = [e(0, 10.0), e(30 * M, 20.0), e(59 * M, 30.0), e(61 * M, 40.0)]
LIFE = dict(sum_life=100.0, n_life=4, first_life=10.0)

WINDOW_CASE = Case(
    specs=ALL_1H,
    events=FOUR,
    expected={
        ("k", 60 * M): dict(sum=60.0, count=3, mean=20.0, min=10.0, max=30.0, first=10.0, last=30.0,
                            last2=[20.0, 30.0], distinct=3, var=100.0, stddev=10.0, n=3, epm=0.05, ssl=60.0,
                            sum_x=60.0, n_x=3, sum_life=60.0, n_life=3, first_life=10.0),
        ("k", 90 * M): dict(sum=90.0, count=3, mean=30.0, min=20.0, max=40.0, first=20.0, last=40.0,
                            last2=[30.0, 40.0], distinct=3, var=100.0, stddev=10.0, n=3, epm=0.05, ssl=1740.0,
                            sum_x=90.0, n_x=3, **LIFE),
        # t - w = 61 min exactly: the 61 min event is still in (both ends included)
        ("k", 121 * M): dict(sum=40.0, count=1, mean=40.0, min=40.0, max=40.0, first=40.0, last=40.0,
                             last2=[40.0], distinct=1, var=None, stddev=None, n=1, epm=1 / 60, ssl=3600.0,
                             sum_x=40.0, n_x=1, **LIFE),
        # 1 ms later: gone from the exact window, still in the 1 min hop window (start = 61 min)
        ("k", 121 * M + 1): dict(sum=40.0, count=1, mean=40.0, min=40.0, max=40.0, first=40.0, last=40.0,
                                 last2=[40.0], distinct=1, var=None, stddev=None, n=1, epm=1 / 60, ssl=3600.001,
                                 sum_x=0.0, n_x=0, **LIFE),
        ("k", 122 * M - 1): dict(sum=40.0, count=1, n=1, sum_x=0.0, n_x=0, ssl=3659.999, **LIFE),
        # window emptied without new events
        ("k", 122 * M): empties(ALL_1H, ssl=3660.0, **LIFE),
        ("k", 61 * M + 30 * D): empties(ALL_1H, ssl=30 * 86_400.0, **LIFE),
    },
)


def test_every_function_1h_window():
    check_case(WINDOW_CASE)


def test_batch_queries_before_and_between_events():
    """Batch queries at t before later events: those never count (streaming can't go back)."""
    case = Case(specs=ALL_1H, events=FOUR, expected={
        ("k", -1): empties(ALL_1H, sum_life=0.0, n_life=0, first_life=None),
        ("k", 0): dict(sum=10.0, count=1, mean=10.0, last2=[10.0], var=None, n=1, ssl=0.0, sum_life=10.0, n_life=1),
        ("k", 59 * M): dict(sum=60.0, count=3, last=30.0, ssl=0.0, n_life=3, sum_x=60.0),
        ("k", 60 * M + 59_999): dict(sum=60.0, n=3, last=30.0, ssl=119.999, sum_life=60.0, n_life=3),
    })
    run_batch(case)


def test_unknown_key_query_gives_empty_values():
    case = Case(specs=ALL_1H, events=FOUR, expected={
        ("nobody", 90 * M): empties(ALL_1H, sum_life=0.0, n_life=0, first_life=None),
        ("k", 90 * M): dict(sum=90.0, n=3, sum_life=100.0),
    })
    run_batch(case)
    state = ViewState(ALL_1H, lateness_ms=0)
    assert state.watermark is None
    check_values(ALL_1H, empties(ALL_1H), state.evaluate(T0), "empty state", batch=False)


# --------------------------------------------------------------------------- events after t sharing t's tile

TILE_SPECS = [
    AggSpec("sum", "sum", "x", window_ms=H),  # hop 1 min
    AggSpec("n", "count_events", window_ms=H),
    AggSpec("last", "last", "x", window_ms=H),
    AggSpec("max24", "max", "x", window_ms=D),  # hop 15 min
    AggSpec("last_n24", "last_n", "x", window_ms=D, n=3),
    AggSpec("sum_life", "sum", "x"),
    AggSpec("n_life", "count_events"),
    AggSpec("ssl", "seconds_since_last"),
    AggSpec("sum1s", "sum", "x", window_ms=S),  # hop 10 ms
    AggSpec("mean1s", "mean", "x", window_ms=S),
]


def test_events_after_t_in_the_same_tile_never_count():
    assert TILE_SPECS[3].hop_ms == 15 * M and TILE_SPECS[8].hop_ms == 10
    b = 10 * M
    events = [e(b, 1.0), e(b + 30 * S, 2.0), e(b + 45 * S, 4.0), e(H + 3, 8.0), e(H + 7, 16.0)]
    case = Case(specs=TILE_SPECS, events=events, expected={
        ("k", b - 1): empties(TILE_SPECS, sum_life=0.0, n_life=0),
        ("k", b + 15 * S): dict(sum=1.0, n=1, last=1.0, max24=1.0, last_n24=[1.0], sum_life=1.0, n_life=1, ssl=15.0,
                                sum1s=0.0, mean1s=None),
        ("k", b + 30 * S): dict(sum=3.0, n=2, last=2.0, max24=2.0, last_n24=[1.0, 2.0], sum_life=3.0, n_life=2,
                                ssl=0.0, sum1s=2.0, mean1s=2.0),
        ("k", b + 45 * S - 1): dict(sum=3.0, n=2, last=2.0, max24=2.0, sum_life=3.0, ssl=14.999, sum1s=0.0),
        # 10 ms tile [H, H + 10) holds events at H + 3 and H + 7
        ("k", H + 5): dict(sum=15.0, n=4, last=8.0, max24=8.0, last_n24=[2.0, 4.0, 8.0], sum_life=15.0, n_life=4,
                           ssl=0.002, sum1s=8.0, mean1s=8.0),
        ("k", H + 7): dict(sum=31.0, n=5, last=16.0, max24=16.0, last_n24=[4.0, 8.0, 16.0], sum_life=31.0,
                           n_life=5, ssl=0.0, sum1s=24.0, mean1s=12.0),
    })
    check_case(case)


# --------------------------------------------------------------------------- order, lateness, duplicates

ORDER_SPECS = [
    AggSpec("sum", "sum", "x", window_ms=H), AggSpec("count", "count", "x", window_ms=H),
    AggSpec("mean", "mean", "x", window_ms=H), AggSpec("min", "min", "x", window_ms=H),
    AggSpec("max", "max", "x", window_ms=H), AggSpec("first", "first", "x", window_ms=H),
    AggSpec("last", "last", "x", window_ms=H), AggSpec("last3", "last_n", "x", window_ms=H, n=3),
    AggSpec("n", "count_events", window_ms=H), AggSpec("first_life", "first", "x"),
    AggSpec("last_life", "last", "x"), AggSpec("ssl", "seconds_since_last"),
    AggSpec("distinct", "count_distinct", "x", window_ms=H),
]

# arrival order; watermark goes 10, 10, 12, 12, 12, 12 min; lateness 5 min -> 7 min is the oldest accepted
OUT_OF_ORDER = [e(10 * M, 1.0), e(7 * M, 2.0), e(12 * M, 3.0), e(8 * M, 4.0), e(7 * M - 1, 5.0), e(7 * M, 6.0)]
# (ts, arrival) order of the accepted ones: (7M, 2.0), (7M, 6.0), (8M, 4.0), (10M, 1.0), (12M, 3.0)
AT_12M = dict(sum=16.0, count=5, mean=3.2, min=1.0, max=6.0, first=2.0, last=3.0, last3=[4.0, 1.0, 3.0], n=5,
              first_life=2.0, last_life=3.0, ssl=0.0, distinct=5)


def test_out_of_order_within_lateness_counts_as_in_order_and_late_is_rejected():
    case = Case(specs=ORDER_SPECS, events=OUT_OF_ORDER, lateness=5 * M, rejects=[(4, REJECT_LATE)], expected={
        ("k", 12 * M): AT_12M,
        ("k", 2 * H): dict(sum=0.0, count=0, mean=None, min=None, max=None, first=None, last=None, last3=[], n=0,
                           first_life=2.0, last_life=3.0, ssl=6480.0, distinct=0),
        # start = 7 min: both 7 min events still in
        ("k", 67 * M + 30 * S): dict(AT_12M, ssl=3330.0),
        # start = 8 min
        ("k", 68 * M + 30 * S): dict(sum=8.0, count=3, mean=8 / 3, min=1.0, max=4.0, first=4.0, last=3.0,
                                     last3=[4.0, 1.0, 3.0], n=3, first_life=2.0, ssl=3390.0, distinct=3),
        # batch only: as of 9 min, the 10 and 12 min events do not count yet
        ("k", 9 * M): dict(sum=12.0, count=3, mean=4.0, min=2.0, max=6.0, first=2.0, last=4.0,
                           last3=[2.0, 6.0, 4.0], n=3, first_life=2.0, last_life=4.0, ssl=60.0, distinct=3),
    })
    check_case(case)
    # the same accepted events delivered in time order give the same values
    in_order = [e(7 * M, 2.0), e(7 * M, 6.0), e(8 * M, 4.0), e(10 * M, 1.0), e(12 * M, 3.0)]
    check_case(Case(specs=ORDER_SPECS, events=in_order, lateness=0, expected={("k", 12 * M): AT_12M}))


def test_late_rejection_streaming_details():
    state = ViewState(ORDER_SPECS, lateness_ms=5 * M)
    items = stream_items(OUT_OF_ORDER)
    rej = state.apply(items[:4])
    assert rej == [] and state.watermark == T0 + 12 * M
    rej = state.apply(items[4:])
    assert [(r.index, r.reason) for r in rej] == [(0, REJECT_LATE)]
    assert REJECT_LATE == "late"
    assert isinstance(rej[0].detail, str)
    assert state.watermark == T0 + 12 * M
    check_values(ORDER_SPECS, AT_12M, state.evaluate(T0 + 12 * M), "after late", batch=False)


@pytest.mark.parametrize("lateness", [0, 1, S])
def test_lateness_boundary(lateness):
    # oldest acceptable ts = watermark - lateness; one ms older is late
    specs = [AggSpec("n", "count_events"), AggSpec("s", "sum", "x")]
    events = [e(H, 1.0), e(H - lateness, 2.0), e(H - lateness - 1, 4.0), e(H, 8.0)]
    case = Case(specs=specs, events=events, lateness=lateness, rejects=[(2, REJECT_LATE)],
                expected={("k", H): dict(n=3, s=11.0)})
    check_case(case)


def test_watermark_is_per_entity():
    specs = [AggSpec("n", "count_events"), AggSpec("s", "sum", "x", window_ms=D)]
    events = [e(10 * H, 1.0, "a"), e(0, 2.0, "b"), e(0, 4.0, "a"), e(S, 8.0, "b")]
    case = Case(specs=specs, events=events, lateness=M, rejects=[(2, REJECT_LATE)],
                expected={("a", 10 * H): dict(n=1, s=1.0), ("b", 10 * H): dict(n=2, s=10.0)})
    check_case(case)


DUP_SPECS = [AggSpec("sum", "sum", "x", window_ms=H), AggSpec("n", "count_events", window_ms=H),
             AggSpec("distinct", "count_distinct", "x", window_ms=H), AggSpec("last", "last", "x", window_ms=H),
             AggSpec("n_life", "count_events")]
DUPS = [e(10 * M, 1.0, "a", "e1"), e(11 * M, 2.0, "a", "e2"), e(10 * M, 1.0, "a", "e1"),
        e(10 * M, 5.0, "b", "e1"), e(11 * M, 2.0, "a", "e2")]


def test_duplicate_id_counted_once():
    case = Case(specs=DUP_SPECS, events=DUPS, ids=True, lateness=5 * M,
                rejects=[(2, REJECT_DUPLICATE), (4, REJECT_DUPLICATE)],
                expected={("a", 12 * M): dict(sum=3.0, n=2, distinct=2, last=2.0, n_life=2),
                          ("b", 12 * M): dict(sum=5.0, n=1, distinct=1, last=5.0, n_life=1)})
    check_case(case)
    assert REJECT_DUPLICATE == "duplicate_event_id"


def test_without_id_column_redeliveries_count_twice():
    case = Case(specs=DUP_SPECS, events=DUPS, ids=False, lateness=5 * M,
                expected={("a", 12 * M): dict(sum=6.0, n=4, distinct=2, last=2.0, n_life=4),
                          ("b", 12 * M): dict(sum=5.0, n=1)})
    check_case(case)
    # batch ignores an id column it was not told about
    df = events_frame(DUPS, ["x"], ids=True)
    res = compute_batch(DUP_SPECS, df, queries=pd.DataFrame({"key": ["a"], "ts": [T0 + 12 * M]}), lateness_ms=5 * M)
    assert len(res.rejects) == 0 and bool(np.all(res.accepted))
    assert res.values["sum"].iloc[0] == 6.0


def test_duplicate_across_batches_and_none_ids_streaming():
    state = ViewState(DUP_SPECS, lateness_ms=5 * M)
    assert state.apply([(T0 + 10 * M, {"x": 1.0}, "e1")]) == []
    rej = state.apply([(T0 + 11 * M, {"x": 2.0}, None), (T0 + 10 * M, {"x": 1.0}, "e1"),
                       (T0 + 11 * M, {"x": 2.0}, None)])
    assert [(r.index, r.reason) for r in rej] == [(1, REJECT_DUPLICATE)]
    check_values(DUP_SPECS, dict(sum=5.0, n=3, distinct=2), state.evaluate(T0 + 12 * M), "dups", batch=False)


def test_id_used_again_once_its_event_left_the_lateness_horizon():
    """Ids are remembered within the lateness horizon (README "Duplicates"): at watermark 10 min, e2
    (5 min, at the horizon's edge) is remembered and e1 (0) is not, so e1 counts again at 11 min, and
    is remembered at that time."""
    events = [e(0, 1.0, "a", "e1"), e(5 * M, 2.0, "a", "e2"), e(10 * M, 4.0, "a", "e3"),
              e(12 * M, 16.0, "a", "e2"), e(11 * M, 8.0, "a", "e1"), e(14 * M, 32.0, "a", "e1")]
    case = Case(specs=DUP_SPECS, events=events, ids=True, lateness=5 * M,
                rejects=[(3, REJECT_DUPLICATE), (5, REJECT_DUPLICATE)],
                expected={("a", 20 * M): dict(sum=15.0, n=4, distinct=4, last=8.0, n_life=4)})
    check_case(case)
    for size in (1, 2, 4):  # the decisions do not depend on how the events are cut into micro-batches
        state, refused = ViewState(DUP_SPECS, lateness_ms=5 * M), []
        for lo in range(0, len(events), size):
            refused += [(lo + r.index, r.reason) for r in state.apply(stream_items(events[lo:lo + size]))]
        assert refused == case.rejects, size
        check_values(DUP_SPECS, case.expected[("a", 20 * M)], state.evaluate(T0 + 20 * M), f"batches of {size}",
                     batch=False)


# --------------------------------------------------------------------------- nulls

NULL_SPECS = [
    AggSpec("sum", "sum", "x", window_ms=H), AggSpec("count", "count", "x", window_ms=H),
    AggSpec("mean", "mean", "x"), AggSpec("min", "min", "x"), AggSpec("max", "max", "x"),
    AggSpec("first", "first", "x"), AggSpec("last", "last", "x"), AggSpec("last5", "last_n", "x", n=5),
    AggSpec("distinct", "count_distinct", "x"), AggSpec("var", "var", "x"), AggSpec("stddev", "stddev", "x"),
    AggSpec("n", "count_events", window_ms=H), AggSpec("ssl", "seconds_since_last"),
    AggSpec("sum_y", "sum", "y"), AggSpec("count_y", "count", "y"),
]
NULL_EVENTS = [("k", 0, {"x": NAN, "y": 1.0}), ("k", M, {"x": 1.0, "y": None}), ("k", 2 * M, {"x": None, "y": 2.0}),
               ("k", 3 * M, {"x": 3.0, "y": NAN}), ("k", 4 * M, {"x": NAN, "y": None})]
NULL_EXPECTED = dict(sum=4.0, count=2, mean=2.0, min=1.0, max=3.0, first=1.0, last=3.0, last5=[1.0, 3.0], distinct=2,
                     var=2.0, stddev=math.sqrt(2.0), n=5, ssl=60.0, sum_y=3.0, count_y=2)


@pytest.mark.parametrize("float_column", [True, False], ids=["float64-NaN", "object-None"])
def test_nan_and_none_are_skipped(float_column):
    case = Case(specs=NULL_SPECS, events=NULL_EVENTS, float_column=float_column,
                expected={("k", 5 * M): NULL_EXPECTED,
                          ("k", 30 * S): empties(NULL_SPECS, n=1, ssl=30.0, sum_y=1.0, count_y=1)})
    check_case(case)


def test_missing_column_in_streaming_event_is_null():
    state = ViewState(NULL_SPECS, lateness_ms=0)
    state.apply([(T0, {"y": 1.0}, None), (T0 + M, {"x": 1.0}, None), (T0 + 2 * M, {}, None),
                 (T0 + 3 * M, {"x": 3.0}, None), (T0 + 4 * M, {"y": 2.0}, None)])
    check_values(NULL_SPECS, dict(NULL_EXPECTED, sum_y=3.0, count_y=2), state.evaluate(T0 + 5 * M), "missing",
                 batch=False)


def test_string_column_for_non_numeric_functions():
    specs = [AggSpec("distinct", "count_distinct", "m", window_ms=H), AggSpec("first", "first", "m", window_ms=H),
             AggSpec("last", "last", "m"), AggSpec("last2", "last_n", "m", n=2), AggSpec("count", "count", "m")]
    events = [("k", 0, {"m": "shop"}), ("k", M, {"m": "cafe"}), ("k", 2 * M, {"m": "shop"}), ("k", 3 * M, {"m": None})]
    check_case(Case(specs=specs, events=events, float_column=False, expected={
        ("k", 5 * M): dict(distinct=2, first="shop", last="shop", last2=["cafe", "shop"], count=3)}))


# --------------------------------------------------------------------------- state round trip, watermark guard

def test_to_bytes_round_trip():
    specs = ALL_1H + ORDER_SPECS[7:8] + NULL_SPECS[-2:]
    state = ViewState(specs, lateness_ms=5 * M)
    items = [(T0 + off, vals, id) for _, off, vals, id in
             [e(10 * M, 1.0, id="a"), e(7 * M, 2.0, id="b"), e(12 * M, NAN, id="c"), e(8 * M, None, id="d"),
              ("k", 9 * M, {"x": 5.5, "y": 3.0}, "e")]]
    assert state.apply(items) == []
    blob = state.to_bytes()
    assert isinstance(blob, (bytes, bytearray))
    restored = ViewState.from_bytes(specs, blob, lateness_ms=5 * M)
    assert restored.watermark == state.watermark == T0 + 12 * M
    for t in (12 * M, 30 * M, 67 * M, 68 * M + 1, 2 * H, 90 * D):
        a, b = state.evaluate(T0 + t), restored.evaluate(T0 + t)
        check_values(specs, a, b, f"round trip t=T0+{t}", batch=False)
    check_values(specs, dict(sum=8.5, count=3, n=5, last2=[5.5, 1.0], sum_y=3.0, sum_life=8.5),
                 restored.evaluate(T0 + 12 * M), "restored", batch=False)
    # rules survive the round trip: a redelivery and a late event are still rejected
    more = [(T0 + 9 * M, {"x": 5.5, "y": 3.0}, "e"), (T0 + 7 * M - 1, {"x": 100.0}, "z"),
            (T0 + 13 * M, {"x": 4.0}, "f")]
    r1 = [(r.index, r.reason) for r in state.apply(more)]
    r2 = [(r.index, r.reason) for r in restored.apply(more)]
    assert r1 == r2 == [(0, REJECT_DUPLICATE), (1, REJECT_LATE)]
    for t in (13 * M, 70 * M):
        check_values(specs, state.evaluate(T0 + t), restored.evaluate(T0 + t), f"after more t={t}",
                     batch=False)
    # and again through bytes
    again = ViewState.from_bytes(specs, restored.to_bytes(), lateness_ms=5 * M)
    check_values(specs, state.evaluate(T0 + 13 * M), again.evaluate(T0 + 13 * M), "twice", batch=False)
    check_values(specs, dict(sum=12.5, n=6), again.evaluate(T0 + 13 * M), "twice values", batch=False)
    empty = ViewState.from_bytes(specs, ViewState(specs, lateness_ms=0).to_bytes(), lateness_ms=0)
    assert empty.watermark is None
    # ids leave a restored state at the same time as a live one's (past the lateness horizon)
    later = [(T0 + 30 * M, {"x": 1.0}, "g")]
    assert state.apply(later) == again.apply(later) == []
    assert state.ids == again.ids == {id_hash("g"): T0 + 30 * M}
    assert state.to_bytes() == again.to_bytes()
    check_values(specs, empties(specs), empty.evaluate(T0), "empty round trip", batch=False)


def test_evaluate_before_watermark_raises():
    state = ViewState(ALL_1H, lateness_ms=5 * M)
    state.apply([(T0 + 10 * M, {"x": 1.0}, None), (T0 + 8 * M, {"x": 2.0}, None)])
    assert state.watermark == T0 + 10 * M
    with pytest.raises(ValueError):
        state.evaluate(T0 + 10 * M - 1)
    state.evaluate(T0 + 10 * M)  # at the watermark is fine
    # evaluate does not disturb the state: a far-future read then a read at the watermark
    state.evaluate(T0 + 365 * D)
    check_values(ALL_1H, dict(sum=3.0, n=2, first=2.0, last=1.0, ssl=0.0), state.evaluate(T0 + 10 * M),
                 "after far read", batch=False)


# --------------------------------------------------------------------------- 1 s and 90 d windows, lifetime

SEC_SPECS = [AggSpec("sum", "sum", "x", window_ms=S), AggSpec("sum_x", "sum", "x", window_ms=S, hop_ms=1),
             AggSpec("epm", "events_per_minute", window_ms=S), AggSpec("max", "max", "x", window_ms=S),
             AggSpec("mean_x", "mean", "x", window_ms=S, hop_ms=1)]


def test_one_second_window():
    assert SEC_SPECS[0].hop_ms == 10
    events = [e(0, 1.0), e(500, 2.0), e(1000, 4.0), e(1005, 8.0)]
    check_case(Case(specs=SEC_SPECS, events=events, expected={
        ("k", 1000): dict(sum=7.0, sum_x=7.0, epm=180.0, max=4.0, mean_x=7 / 3),
        ("k", 1005): dict(sum=15.0, sum_x=14.0, epm=240.0, max=8.0, mean_x=14 / 3),
        ("k", 1009): dict(sum=15.0, sum_x=14.0, epm=240.0),
        ("k", 1010): dict(sum=14.0, sum_x=14.0, epm=180.0, max=8.0),
        ("k", 1500): dict(sum=14.0, sum_x=14.0, mean_x=14 / 3),
        ("k", 1501): dict(sum=14.0, sum_x=12.0, mean_x=6.0),
        ("k", 1510): dict(sum=12.0, sum_x=12.0, epm=120.0, max=8.0),
        ("k", 2005): dict(sum=12.0, sum_x=8.0, epm=120.0, max=8.0, mean_x=8.0),
        ("k", 2006): dict(sum=12.0, sum_x=0.0, mean_x=None),
        ("k", 2010): dict(sum=0.0, sum_x=0.0, epm=0.0, max=None, mean_x=None),
    }))


QUARTER = [AggSpec("sum", "sum", "x", window_ms=90 * D), AggSpec("sum_x", "sum", "x", window_ms=90 * D, hop_ms=1),
           AggSpec("n", "count_events", window_ms=90 * D), AggSpec("epm", "events_per_minute", window_ms=90 * D),
           AggSpec("first", "first", "x", window_ms=90 * D), AggSpec("ssl", "seconds_since_last", window_ms=90 * D),
           AggSpec("sum_life", "sum", "x"), AggSpec("n_life", "count_events")]


def test_ninety_day_window_and_lifetime():
    assert QUARTER[0].hop_ms == D
    events = [e(0, 1.0), e(10 * D + 5 * H, 2.0), e(89 * D, 4.0)]
    life = dict(sum_life=7.0, n_life=3)
    check_case(Case(specs=QUARTER, events=events, expected={
        ("k", 89 * D): dict(sum=7.0, sum_x=7.0, n=3, epm=3 / 129_600, first=1.0, ssl=0.0, **life),
        ("k", 90 * D + 12 * H): dict(sum=7.0, sum_x=6.0, n=3, first=1.0, ssl=86_400 * 1.5, **life),
        ("k", 91 * D): dict(sum=6.0, sum_x=6.0, n=2, epm=2 / 129_600, first=2.0, **life),
        ("k", 100 * D + 5 * H): dict(sum=6.0, sum_x=6.0, first=2.0, **life),
        ("k", 100 * D + 5 * H + 1): dict(sum=6.0, sum_x=4.0, first=2.0, **life),
        ("k", 101 * D): dict(sum=4.0, sum_x=4.0, n=1, first=4.0, **life),
        ("k", 179 * D + 1): dict(sum=4.0, sum_x=0.0, n=1, first=4.0, ssl=90 * 86_400 + 0.001, **life),
        ("k", 180 * D): dict(sum=0.0, sum_x=0.0, n=0, epm=0.0, first=None, ssl=91 * 86_400.0, **life),
        ("k", 3 * 365 * D): dict(sum=0.0, n=0, first=None, **life),
    }))


def test_hop_equal_to_window():
    specs = [AggSpec("sum", "sum", "x", window_ms=H, hop_ms=H), AggSpec("n", "count_events", window_ms=H, hop_ms=H)]
    events = [e(0, 1.0), e(59 * M, 2.0), e(60 * M, 4.0)]
    check_case(Case(specs=specs, events=events, expected={
        ("k", 119 * M): dict(sum=7.0, n=3), ("k", 120 * M - 1): dict(sum=7.0, n=3),
        ("k", 120 * M): dict(sum=4.0, n=1), ("k", 180 * M): dict(sum=0.0, n=0)}))


# --------------------------------------------------------------------------- batch queries=None

def test_batch_as_of_each_event():
    specs = [AggSpec("sum", "sum", "x", window_ms=H), AggSpec("n", "count_events", window_ms=H),
             AggSpec("last", "last", "x"), AggSpec("ssl", "seconds_since_last")]
    events = [e(10 * M, 1.0, "b"), e(0, 2.0, "a"), e(5 * M, 4.0, "a"), e(5 * M, 8.0, "a"), e(3 * M, 16.0, "a"),
              e(-H, 32.0, "a")]
    df = events_frame(events, ["x"], ids=False)
    res = compute_batch(specs, df, queries=None, lateness_ms=5 * M)
    assert [(int(r), str(x)) for r, x in zip(res.rejects["row"], res.rejects["reason"])] == [(5, REJECT_LATE)]
    # values, whatever the row order (checked separately below)
    v = res.values.sort_values(["key", "ts"], kind="mergesort").reset_index(drop=True)
    assert list(v["key"]) == ["a", "a", "a", "a", "b"]
    assert [int(t) - T0 for t in v["ts"]] == [0, 3 * M, 5 * M, 5 * M, 10 * M]
    # ties at 5 min: the value as of t = 5 min includes both tied events
    expected = [dict(sum=2.0, n=1, last=2.0, ssl=0.0), dict(sum=18.0, n=2, last=16.0, ssl=0.0),
                dict(sum=30.0, n=4, last=8.0, ssl=0.0), dict(sum=30.0, n=4, last=8.0, ssl=0.0),
                dict(sum=1.0, n=1, last=1.0, ssl=0.0)]
    for i, exp in enumerate(expected):
        check_values(specs, exp, row_values(v, specs, i), f"as-of row {i}", batch=True)


def test_batch_as_of_each_event_row_order():
    """API.md: queries=None gives one row per accepted event, sorted by key, ts, arrival."""
    specs = [AggSpec("n", "count_events"), AggSpec("last", "last", "x")]
    events = [e(10 * M, 1.0, "b"), e(0, 2.0, "a"), e(5 * M, 4.0, "a"), e(5 * M, 8.0, "a"), e(3 * M, 16.0, "a")]
    res = compute_batch(specs, events_frame(events, ["x"], ids=False), queries=None, lateness_ms=5 * M)
    got = [(k, int(t) - T0) for k, t in zip(res.values["key"], res.values["ts"])]
    assert got == [("a", 0), ("a", 3 * M), ("a", 5 * M), ("a", 5 * M), ("b", 10 * M)]


def test_batch_with_no_events_at_all():
    """An empty events frame (a backfill range with no events) gives the empty values for every query."""
    specs = ALL_1H + [AggSpec("last3", "last_n", "x", window_ms=S, n=3), AggSpec("var_life", "var", "x")]
    case = Case(specs=specs, events=[], expected={
        ("a", 0): empties(specs, sum_life=0.0, n_life=0),
        ("b", 5 * D): empties(specs, sum_life=0.0, n_life=0)})
    # events_frame([]) has no rows but keeps the columns and dtypes
    df = events_frame([], ["x"], ids=False)
    assert list(df.columns) == ["key", "ts", "x"] and len(df) == 0
    run_batch(case)
    res = compute_batch(specs, df, queries=None, lateness_ms=0)
    assert len(res.values) == 0 and len(res.rejects) == 0 and len(res.accepted) == 0


def test_batch_null_representation_and_dtypes():
    """API.md: NaN in float columns, None in object columns (first/last/last_n), counts int64."""
    specs = [AggSpec(f, f, "x", window_ms=H) for f in ("sum", "mean", "min", "max", "var", "stddev")] + [
        AggSpec("first", "first", "x", window_ms=H), AggSpec("last", "last", "x", window_ms=H),
        AggSpec("last_n", "last_n", "x", window_ms=H, n=2), AggSpec("count", "count", "x", window_ms=H),
        AggSpec("count_distinct", "count_distinct", "x", window_ms=H), AggSpec("count_events", "count_events"),
        AggSpec("events_per_minute", "events_per_minute", window_ms=H),
        AggSpec("seconds_since_last", "seconds_since_last")]
    df = events_frame([e(0, 1.0), e(M, NAN)], ["x"], ids=False)
    q = pd.DataFrame({"key": ["k", "k", "other"], "ts": np.array([T0 + 30 * S, T0 + 3 * H, T0], dtype=np.int64)})
    v = compute_batch(specs, df, queries=q, lateness_ms=0).values
    for name in ("sum", "mean", "min", "max", "var", "stddev", "events_per_minute", "seconds_since_last"):
        assert v[name].dtype == np.float64, name
    for name in ("count", "count_distinct", "count_events"):
        assert v[name].dtype == np.int64, name
    for name in ("first", "last", "last_n"):
        assert v[name].dtype == object, name
    # row 1: window emptied; row 2: unknown key
    for i in (1, 2):
        for name in ("mean", "min", "max", "var", "stddev"):
            assert math.isnan(v[name].iloc[i]), (name, i)
        assert v["first"].iloc[i] is None and v["last"].iloc[i] is None and list(v["last_n"].iloc[i]) == []
        assert v["sum"].iloc[i] == 0.0 and v["count"].iloc[i] == 0 and v["events_per_minute"].iloc[i] == 0.0
    assert math.isnan(v["var"].iloc[0]) and v["mean"].iloc[0] == 1.0  # one value: var null
    assert v["seconds_since_last"].iloc[1] == 3 * 3600 - 60 and math.isnan(v["seconds_since_last"].iloc[2])
    assert v["count_events"].iloc[1] == 2 and v["count_events"].iloc[2] == 0


def test_batch_rows_follow_the_queries():
    """One row per query, in the order of the queries frame (unsorted, repeated, unknown keys)."""
    specs = [AggSpec("n", "count_events"), AggSpec("s", "sum", "x", window_ms=H)]
    events = [e(0, 1.0, "a"), e(M, 2.0, "b"), e(2 * M, 4.0, "a")]
    queries = [("b", 5 * M), ("a", M), ("zz", 0), ("a", 3 * M), ("a", M), ("b", 0)]
    df = events_frame(events, ["x"], ids=False)
    qdf = pd.DataFrame({"key": [k for k, _ in queries], "ts": np.array([T0 + t for _, t in queries], dtype=np.int64)})
    v = compute_batch(specs, df, queries=qdf, lateness_ms=0).values
    assert [(k, int(t) - T0) for k, t in zip(v["key"], v["ts"])] == queries
    assert list(v["n"]) == [1, 1, 0, 2, 1, 0]
    assert list(v["s"]) == [2.0, 1.0, 0.0, 5.0, 1.0, 0.0]


def test_batch_reject_rows_are_positions_not_index_labels():
    specs = [AggSpec("n", "count_events"), AggSpec("s", "sum", "x")]
    events = [e(10 * M, 1.0, "a", "i1"), e(0, 2.0, "a", "i2"), e(11 * M, 4.0, "a", "i3"), e(11 * M, 4.0, "a", "i3")]
    df = events_frame(events, ["x"], ids=True)
    df.index = [70, 30, 90, 10]  # e.g. a filtered / shuffled frame
    res = compute_batch(specs, df, queries=None, lateness_ms=5 * M, id_column=ID)
    got = sorted((int(r), str(x)) for r, x in zip(res.rejects["row"], res.rejects["reason"]))
    assert got == [(1, REJECT_LATE), (3, REJECT_DUPLICATE)]
    assert list(np.asarray(res.accepted, dtype=bool)) == [True, False, True, False]
    assert list(res.values["n"]) == [1, 2] and list(res.values["s"]) == [1.0, 5.0]


def test_batch_keeps_nullable_int64_values_beyond_2_53_exact() -> None:
    """A nullable int64 column (pandas ``Int64`` with nulls, which ``to_numpy`` would turn into float64,
    exact to 2^53 only): ``last``, ``first``, ``last_n``, ``count_distinct``, ``min`` and ``max`` (one a
    window holding only a null) give the exact ints, as the streaming state does."""
    import numpy as np
    import pandas as pd

    from transforms import AggSpec, ViewState
    from transforms.batch import compute_batch

    big = 2 ** 62
    qty = [big + 1, None, big + 3, big + 2]
    events = pd.DataFrame({"key": ["a"] * 4, "ts": np.array([1_000, 2_000, 3_000, 4_000], dtype="int64"),
                           "qty": pd.array(qty, dtype="Int64"), "eid": ["w", "x", "y", "z"]})
    specs = [AggSpec("l", "last", "qty"), AggSpec("f", "first", "qty"), AggSpec("n", "last_n", "qty", n=2),
             AggSpec("d", "count_distinct", "qty"), AggSpec("lo", "min", "qty"), AggSpec("hi", "max", "qty", 2_000),
             AggSpec("lo1", "min", "qty", 1_000)]
    got = compute_batch(specs, events, None, 0, "eid").values
    state = ViewState(specs)
    expected = []
    for i, q in enumerate(qty):
        state.apply([((i + 1) * 1_000, {"qty": q}, f"e{i}")])
        expected.append(state.evaluate((i + 1) * 1_000))
    for name in ("l", "f", "n", "d", "lo", "hi", "lo1"):
        assert [v.tolist() if isinstance(v, np.ndarray) else v for v in got[name]] == [e[name] for e in expected]
    assert got["l"].tolist()[-1] == big + 2 and type(got["l"].tolist()[-1]) is int

