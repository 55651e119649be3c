"""Hand-computed cases that check the brute-force reference itself.

Nothing here touches the implementation: specs are plain stand-ins with the
attributes the reference reads, so a broken ``transforms`` package cannot make
these fail or pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from tests.transforms.reference import (
    EMPTY,
    REJECT_DUPLICATE,
    REJECT_LATE,
    Event,
    accepted_by_entity,
    reference_accept,
    reference_value,
    value_matches,
)

S, M, H, D = 1_000, 60_000, 3_600_000, 86_400_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z, a multiple of one day
NAN = float("nan")


@dataclass(frozen=True)
class Spec:  # the attributes the reference reads; hop given explicitly
    function: str
    window_ms: int | None = None
    hop_ms: int | None = None
    n: int = 0
    column: str = "x"
    name: str = "f"


def evs(*pairs, key="k"):
    """Events from (offset from T0, value) pairs, in arrival order; value MISSING = column absent."""
    out = []
    for off, v in pairs:
        out.append(Event(key, T0 + off, {} if v is MISSING else {"x": v}))
    return out


MISSING = object()

# events at 0, 30 min, 59 min, 61 min
A = evs((0, 10.0), (30 * M, 20.0), (59 * M, 30.0), (61 * M, 40.0))
# 24 h window with a 15 min hop: sawtooth start
B = evs((5 * M, 1.0), (20 * M, 2.0))
# ties and out-of-order arrival: order by (ts, arrival) is (5M, 2.0), (10M, 1.0), (10M, 3.0), (10M, None)
C = evs((10 * M, 1.0), (5 * M, 2.0), (10 * M, 3.0), (10 * M, None))
# nulls: NaN, None, absent column; the latest event is null
NULLS = evs((0, 1.0), (M, NAN), (2 * M, None), (3 * M, 3.0), (4 * M, MISSING))
VAR8 = evs(*[(i * S, float(v)) for i, v in enumerate([2, 4, 4, 4, 5, 5, 7, 9])])
BIG = evs(*[(i * S, 1e9 + v) for i, v in enumerate([4, 7, 13, 16])])
DISTINCT = evs(*[(i * S, v) for i, v in enumerate([1.0, 1.0, 2.0, NAN, 2.0, 3.0, None])])
NEG = evs((0, -5.0), (S, 3.0), (2 * S, -7.5))

HW = dict(window_ms=H, hop_ms=M)  # 1 h window, 1 min hop
HX = dict(window_ms=H, hop_ms=1)  # exact 1 h
DQ = dict(window_ms=D, hop_ms=15 * M)  # 24 h, 15 min hop

CASES = [
    # --- the 0 / 30 / 59 / 61 min scenario, 1 h window, 1 min hop
    ("sum@60m", A, Spec("sum", **HW), 60 * M, 60.0),
    ("count@60m", A, Spec("count", **HW), 60 * M, 3),
    ("mean@60m", A, Spec("mean", **HW), 60 * M, 20.0),
    ("var@60m", A, Spec("var", **HW), 60 * M, 100.0),
    ("stddev@60m", A, Spec("stddev", **HW), 60 * M, 10.0),
    ("last_n2@60m", A, Spec("last_n", n=2, **HW), 60 * M, [20.0, 30.0]),
    ("epm@60m", A, Spec("events_per_minute", **HW), 60 * M, 0.05),
    ("ssl@60m", A, Spec("seconds_since_last", **HW), 60 * M, 60.0),
    ("sum@90m", A, Spec("sum", **HW), 90 * M, 90.0),
    ("min@90m", A, Spec("min", **HW), 90 * M, 20.0),
    ("max@90m", A, Spec("max", **HW), 90 * M, 40.0),
    ("first@90m", A, Spec("first", **HW), 90 * M, 20.0),
    ("last@90m", A, Spec("last", **HW), 90 * M, 40.0),
    ("ssl@90m", A, Spec("seconds_since_last", **HW), 90 * M, 1740.0),
    # boundary t - w = 61 min exactly: included for hop 1 min and hop 1 ms
    ("sum@121m", A, Spec("sum", **HW), 121 * M, 40.0),
    ("exact sum@121m", A, Spec("sum", **HX), 121 * M, 40.0),
    ("exact sum@121m+1ms", A, Spec("sum", **HX), 121 * M + 1, 0.0),
    ("exact mean@121m+1ms", A, Spec("mean", **HX), 121 * M + 1, None),
    ("hop sum@121m+1ms", A, Spec("sum", **HW), 121 * M + 1, 40.0),
    ("hop sum@122m-1ms", A, Spec("sum", **HW), 122 * M - 1, 40.0),
    ("hop sum@122m", A, Spec("sum", **HW), 122 * M, 0.0),
    ("var one value", A, Spec("var", **HW), 121 * M, None),
    ("stddev one value", A, Spec("stddev", **HW), 121 * M, None),
    ("count_events@121m", A, Spec("count_events", **HW), 121 * M, 1),
    ("epm@121m", A, Spec("events_per_minute", **HW), 121 * M, 1 / 60),
    # window emptied without new events; seconds_since_last still looks at all events
    ("ssl@122m", A, Spec("seconds_since_last", **HW), 122 * M, 3660.0),
    ("ssl long after", A, Spec("seconds_since_last", **HW), 61 * M + 30 * D, 30 * 86_400.0),
    # events after t never count
    ("sum before late event", A, Spec("sum", **HW), 59 * M, 60.0),
    ("sum before everything", A, Spec("sum", **HW), -1, 0.0),
    ("ssl before everything", A, Spec("seconds_since_last"), -1, None),
    ("lifetime sum", A, Spec("sum"), 30 * D, 100.0),
    ("lifetime sum@30m", A, Spec("sum"), 30 * M, 30.0),
    ("lifetime count_events@30m-1", A, Spec("count_events"), 30 * M - 1, 1),
    # --- coarse hop sawtooth: 24 h window, 15 min hop
    ("24h sum@24h10m", B, Spec("sum", **DQ), D + 10 * M, 3.0),
    ("24h sum@24h15m", B, Spec("sum", **DQ), D + 15 * M, 2.0),
    ("24h sum@24h30m-1", B, Spec("sum", **DQ), D + 30 * M - 1, 2.0),
    ("24h sum@24h30m", B, Spec("sum", **DQ), D + 30 * M, 0.0),
    ("24h exact sum@24h10m", B, Spec("sum", window_ms=D, hop_ms=1), D + 10 * M, 2.0),
    ("tumbling-like hop=w", evs((0, 1.0), (59 * M, 2.0), (60 * M, 4.0)), Spec("sum", window_ms=H, hop_ms=H),
     119 * M, 7.0),
    ("tumbling-like hop=w next", evs((0, 1.0), (59 * M, 2.0), (60 * M, 4.0)), Spec("sum", window_ms=H, hop_ms=H),
     120 * M, 4.0),
    # --- ties and out-of-order: (ts, arrival) order
    ("first ties", C, Spec("first", **HW), 12 * M, 2.0),
    ("last ties", C, Spec("last", **HW), 12 * M, 3.0),
    ("last_n3 ties", C, Spec("last_n", n=3, **HW), 12 * M, [2.0, 1.0, 3.0]),
    ("last_n10 ties", C, Spec("last_n", n=10), 12 * M, [2.0, 1.0, 3.0]),
    ("count ties", C, Spec("count"), 12 * M, 3),
    ("count_events ties", C, Spec("count_events", **HW), 12 * M, 4),
    ("ssl ties", C, Spec("seconds_since_last"), 12 * M, 120.0),
    ("lifetime first@7m", C, Spec("first"), 7 * M, 2.0),
    ("lifetime last@7m", C, Spec("last"), 7 * M, 2.0),
    ("lifetime first@4m", C, Spec("first"), 4 * M, None),
    ("lifetime last_n@4m", C, Spec("last_n", n=2), 4 * M, []),
    # --- nulls
    ("nulls count", NULLS, Spec("count"), 10 * M, 2),
    ("nulls count_events", NULLS, Spec("count_events", **HW), 10 * M, 5),
    ("nulls sum", NULLS, Spec("sum"), 10 * M, 4.0),
    ("nulls mean", NULLS, Spec("mean", **HW), 10 * M, 2.0),
    ("nulls var", NULLS, Spec("var"), 10 * M, 2.0),
    ("nulls stddev", NULLS, Spec("stddev"), 10 * M, math.sqrt(2.0)),
    ("nulls min", NULLS, Spec("min"), 10 * M, 1.0),
    ("nulls max", NULLS, Spec("max"), 10 * M, 3.0),
    ("nulls last", NULLS, Spec("last"), 10 * M, 3.0),
    ("nulls last_n", NULLS, Spec("last_n", n=5), 10 * M, [1.0, 3.0]),
    ("nulls count_distinct", NULLS, Spec("count_distinct"), 10 * M, 2),
    ("nulls ssl", NULLS, Spec("seconds_since_last"), 10 * M, 360.0),
    ("only nulls mean", NULLS, Spec("mean", window_ms=H, hop_ms=1), 63 * M + 30 * S, None),
    ("only nulls count", NULLS, Spec("count", window_ms=H, hop_ms=1), 63 * M + 30 * S, 0),
    ("only nulls count_events", NULLS, Spec("count_events", window_ms=H, hop_ms=1), 63 * M + 30 * S, 1),
    ("nulls window count_events", NULLS, Spec("count_events", window_ms=H, hop_ms=1), 62 * M + 30 * S, 2),
    ("nulls window mean", NULLS, Spec("mean", window_ms=H, hop_ms=1), 62 * M + 30 * S, 3.0),
    # --- variance: sample, two-pass accurate
    ("var sample", VAR8, Spec("var"), H, 32 / 7),
    ("stddev sample", VAR8, Spec("stddev"), H, math.sqrt(32 / 7)),
    ("var large offset", BIG, Spec("var"), H, 30.0),
    ("mean large offset", BIG, Spec("mean"), H, 1e9 + 10),
    # --- others
    ("count_distinct", DISTINCT, Spec("count_distinct"), H, 3),
    ("min negative", NEG, Spec("min", window_ms=S, hop_ms=1), 2 * S, -7.5),
    ("max negative window", NEG, Spec("max", window_ms=S, hop_ms=1), 2 * S, 3.0),
    ("epm 1s", evs((0, 1.0), (500, 1.0)), Spec("events_per_minute", window_ms=S, hop_ms=10), 900, 120.0),
]


@pytest.mark.parametrize("events,spec,t,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_reference_value(events, spec, t, expected):
    got = reference_value(spec, events, T0 + t)
    assert value_matches(expected, got, 1.0, function=spec.function), (expected, got)
    if expected is None:
        assert got is None
    elif isinstance(expected, list):
        assert got == expected
    else:
        assert type(got) is type(expected)


@pytest.mark.parametrize("function", list(EMPTY))
@pytest.mark.parametrize("window", [dict(window_ms=H, hop_ms=M), dict(window_ms=S, hop_ms=1)])
def test_reference_empty_values(function, window):
    spec = Spec(function, n=3, **window)
    assert reference_value(spec, [], T0) == EMPTY[function]
    # window emptied long after the events; seconds_since_last keeps looking at all events
    got = reference_value(spec, A, T0 + 100 * D)
    if function == "seconds_since_last":
        assert got == (100 * D - 61 * M) / 1000
    else:
        assert got == EMPTY[function]
        assert type(got) is type(EMPTY[function])


def ev(key, off, v=1.0, id=None):
    return Event(key, T0 + off, {"x": v}, id)


ACCEPT_CASES = [
    # (name, events, lateness, has_ids, expected reasons)
    ("late boundary", [ev("a", 60 * M), ev("a", 55 * M - 1), ev("a", 55 * M), ev("a", 70 * M), ev("a", 60 * M)],
     5 * M, False, [None, REJECT_LATE, None, None, REJECT_LATE]),
    ("lateness 0 ties ok", [ev("a", 10), ev("a", 10), ev("a", 9), ev("a", 11)], 0, False,
     [None, None, REJECT_LATE, None]),
    ("watermark per entity", [ev("a", 100 * M), ev("b", 0), ev("a", 0), ev("b", 0)], 5 * M, False,
     [None, None, REJECT_LATE, None]),
    ("duplicates", [ev("a", 10 * M, 1.0, "e1"), ev("a", 10 * M, 1.0, "e1"), ev("b", 10 * M, 1.0, "e1"),
                    ev("a", 10 * M, 2.0, "e2"), ev("a", 10 * M, 3.0, None), ev("a", 10 * M, 3.0, None),
                    ev("a", 10 * M, 1.0, "e1")],
     0, True, [None, REJECT_DUPLICATE, None, None, None, None, REJECT_DUPLICATE]),
    ("no id column: no dedup", [ev("a", 10 * M, 1.0, "e1"), ev("a", 10 * M, 1.0, "e1")], 0, False, [None, None]),
    ("late wins over duplicate", [ev("a", 0, 1.0, "e1"), ev("a", 10 * M, 1.0, "e2"), ev("a", 0, 1.0, "e1")],
     5 * M, True, [None, None, REJECT_LATE]),
    ("late event's id not remembered", [ev("a", 10 * M, 1.0, "e1"), ev("a", 0, 1.0, "e2"), ev("a", 10 * M, 1.0, "e2")],
     5 * M, True, [None, REJECT_LATE, None]),
    ("rejected events do not move the watermark",
     [ev("a", 10 * M, 1.0, "e1"), ev("a", 0, 1.0, "e0"), ev("a", 6 * M, 1.0, "e3")],
     5 * M, True, [None, REJECT_LATE, None]),
    # ids are remembered within the lateness horizon only (README "Duplicates")
    ("id used again once its event left the horizon",
     [ev("a", 0, 1.0, "e1"), ev("a", 10 * M, 1.0, "e2"), ev("a", 11 * M, 1.0, "e1")],
     5 * M, True, [None, None, None]),
    ("id used again within the horizon, with a newer time",
     [ev("a", 0, 1.0, "e1"), ev("a", 5 * M, 1.0, "e2"), ev("a", 11 * M, 1.0, "e1")],
     5 * M, True, [None, None, REJECT_DUPLICATE]),
    ("horizon boundary: an event at watermark - lateness is within it, 1 ms older is not",
     [ev("a", 0, 1.0, "e1"), ev("a", 5 * M, 1.0, "e2"), ev("a", 6 * M, 1.0, "e1"), ev("a", 5 * M + 1, 1.0, "e3"),
      ev("a", 6 * M, 1.0, "e1")],
     5 * M, True, [None, None, REJECT_DUPLICATE, None, None]),
    ("lateness 0: only ids at the watermark are remembered",
     [ev("a", 10, 1.0, "e1"), ev("a", 10, 1.0, "e1"), ev("a", 11, 1.0, "e1"), ev("a", 12, 1.0, "e2"),
      ev("a", 12, 1.0, "e1")],
     0, True, [None, REJECT_DUPLICATE, REJECT_DUPLICATE, None, None]),
    ("an id used again is remembered at its new time",
     [ev("a", 0, 1.0, "e1"), ev("a", 10 * M, 1.0, "e2"), ev("a", 11 * M, 1.0, "e1"), ev("a", 14 * M, 1.0, "e3"),
      ev("a", 13 * M, 1.0, "e1")],
     5 * M, True, [None, None, None, None, REJECT_DUPLICATE]),
    ("a duplicate with a newer time does not move the watermark",
     [ev("a", 10 * M, 1.0, "e1"), ev("a", 12 * M, 1.0, "e1"), ev("a", 5 * M, 1.0, "e2")],
     5 * M, True, [None, REJECT_DUPLICATE, None]),
    ("ids are per entity, horizons too",
     [ev("a", 0, 1.0, "e1"), ev("b", 0, 1.0, "e1"), ev("a", 10 * M, 1.0, "e2"), ev("a", 10 * M, 1.0, "e1"),
      ev("b", 1 * M, 1.0, "e1")],
     5 * M, True, [None, None, None, None, REJECT_DUPLICATE]),
]


@pytest.mark.parametrize("events,lateness,has_ids,expected", [c[1:] for c in ACCEPT_CASES],
                         ids=[c[0] for c in ACCEPT_CASES])
def test_reference_accept(events, lateness, has_ids, expected):
    assert reference_accept(events, lateness, has_ids) == expected


def test_accepted_by_entity_keeps_arrival_order():
    events = [ev("a", 10 * M, 1.0), ev("b", 0, 2.0), ev("a", 9 * M, 3.0), ev("a", 0, 4.0)]
    reasons = reference_accept(events, 5 * M, False)
    groups = accepted_by_entity(events, reasons)
    assert [e.values["x"] for e in groups["a"]] == [1.0, 3.0]
    assert [e.values["x"] for e in groups["b"]] == [2.0]


@pytest.mark.parametrize(
    "expected,got,ok",
    [
        (None, None, True), (None, float("nan"), False), (None, 0.0, False), (0.0, None, False),
        (1.0, 1.0 + 1e-12, True), (1.0, 1.001, False), (3, 3, True), (3, 3.0, True), (3, 3.5, False),
        ([1.0, 2.0], [1.0, 2.0], True), ([1.0, 2.0], [2.0, 1.0], False), ([], [], True), ([1.0], [], False),
        ("a", "a", True), ("a", "b", False),
    ],
)
def test_value_matches(expected, got, ok):
    assert value_matches(expected, got, 1.0) is ok


@pytest.mark.parametrize(
    "function,got,ok",
    [("mean", float("nan"), True), ("mean", None, False), ("first", None, True), ("first", float("nan"), False),
     ("last", None, True), ("seconds_since_last", float("nan"), True), ("var", 0.0, False)],
)
def test_value_matches_batch_nulls(function, got, ok):
    assert value_matches(None, got, 1.0, batch=True, function=function) is ok
