"""Brute-force reference for the transforms core, written from transforms/API.md.

Deliberately naive: plain Python loops over every event for every query, no
tiles, no partials, no numpy.  It imports nothing from ``transforms`` except
the frozen ``AggSpec`` description it reads (name, function, column, window_ms,
hop_ms, n), so it cannot share a bug with the implementation.

Events are ``Event(key, ts, values, id)`` tuples in ARRIVAL order; ``values``
is a dict column -> value (a missing column is null).

Semantics implemented (API.md):

* accept: an event is "late" when ts < watermark - lateness, watermark = max ts
  of the earlier ACCEPTED events of the same entity (arrival order); with ids, an
  event whose id equals the id of an earlier accepted event of the same entity
  within the lateness horizon (that event's ts >= watermark - lateness) is
  "duplicate_event_id": an id whose accepted event is older than the horizon can
  be used again.  The late check comes first (API.md: a redelivery older than the
  lateness horizon is "late").  A ``None`` id never matches.
* value as of t: window (w, h) covers ts in [floor((t - w) / h) * h, t] (both
  ends included); lifetime covers ts <= t.  Nulls (None, NaN) are skipped by
  column aggregations and still count for count_events.  Order for
  first/last/last_n is (ts, arrival).  seconds_since_last looks at ALL events of
  the entity with ts <= t (API.md: "over all events"), not only the window.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

REJECT_LATE = "late"
REJECT_DUPLICATE = "duplicate_event_id"

#: Value of each function over an empty window (API.md).
EMPTY = {
    "sum": 0.0, "count": 0, "mean": None, "min": None, "max": None, "first": None,
    "last": None, "last_n": [], "count_distinct": 0, "var": None, "stddev": None,
    "count_events": 0, "events_per_minute": 0.0, "seconds_since_last": None,
}


class Event(NamedTuple):
    key: str
    ts: int
    values: dict
    id: Any = None


def is_null(v: Any) -> bool:
    if v is None:
        return True
    try:
        return v != v  # NaN (Python float, numpy float) is the only value != itself
    except Exception:  # pragma: no cover - exotic objects
        return False


def reference_accept(events, lateness_ms: int, has_ids: bool) -> list[str | None]:
    """Reason per event (None = accepted), applying the rules in arrival order per entity."""
    watermark: dict[Any, int] = {}
    seen_ids: dict[Any, list] = {}  # key -> (id, ts) of every accepted event with an id
    reasons: list[str | None] = []
    for ev in events:
        wm = watermark.get(ev.key)
        ids = seen_ids.setdefault(ev.key, [])
        if wm is not None and ev.ts < wm - lateness_ms:
            reasons.append(REJECT_LATE)
            continue
        if has_ids and ev.id is not None and any(ev.id == old and ts >= wm - lateness_ms for old, ts in ids):
            reasons.append(REJECT_DUPLICATE)
            continue
        reasons.append(None)
        watermark[ev.key] = ev.ts if wm is None else max(wm, ev.ts)
        if has_ids and ev.id is not None:
            ids.append((ev.id, ev.ts))
    return reasons


def accepted_by_entity(events, reasons) -> dict[Any, list[Event]]:
    """Accepted events grouped by key, each list in arrival order."""
    out: dict[Any, list[Event]] = {}
    for ev, reason in zip(events, reasons):
        if reason is None:
            out.setdefault(ev.key, []).append(ev)
    return out


def reference_watermark(accepted_events) -> int | None:
    wm = None
    for ev in accepted_events:
        if wm is None or ev.ts > wm:
            wm = ev.ts
    return wm


def _in_window(spec, ts: int, t: int) -> bool:
    if ts > t:
        return False
    if spec.window_ms is None:
        return True
    start = ((t - spec.window_ms) // spec.hop_ms) * spec.hop_ms  # Python // is floor
    return ts >= start


def reference_value(spec, events, t: int):
    """Value of ``spec`` as of ``t`` over ``events`` (accepted events of ONE entity, arrival order)."""
    fn = spec.function
    if fn == "seconds_since_last":
        latest = None
        for ev in events:  # over ALL events of the entity, not only the window
            if ev.ts <= t and (latest is None or ev.ts > latest):
                latest = ev.ts
        return None if latest is None else (t - latest) / 1000

    # (ts, arrival index, event) of the events inside the window, ordered by (ts, arrival)
    inside = []
    for i, ev in enumerate(events):
        if _in_window(spec, ev.ts, t):
            inside.append((ev.ts, i, ev))
    inside.sort(key=lambda x: (x[0], x[1]))

    if fn == "count_events":
        return len(inside)
    if fn == "events_per_minute":
        return len(inside) / (spec.window_ms / 60_000)

    vals = []
    for _, _, ev in inside:
        v = ev.values.get(spec.column)
        if not is_null(v):
            vals.append(v)

    if fn == "count":
        return len(vals)
    if fn == "sum":
        return math.fsum(vals) if vals else 0.0
    if fn == "count_distinct":
        distinct = []
        for v in vals:
            if not any(v == d for d in distinct):
                distinct.append(v)
        return len(distinct)
    if fn == "last_n":
        return list(vals[-spec.n:]) if vals else []
    if not vals:
        return EMPTY[fn]
    if fn == "mean":
        return math.fsum(vals) / len(vals)
    if fn == "min":
        best = vals[0]
        for v in vals[1:]:
            if v < best:
                best = v
        return best
    if fn == "max":
        best = vals[0]
        for v in vals[1:]:
            if v > best:
                best = v
        return best
    if fn == "first":
        return vals[0]
    if fn == "last":
        return vals[-1]
    if fn in ("var", "stddev"):
        n = len(vals)
        if n < 2:
            return None
        mean = math.fsum(vals) / n  # two-pass: mean first ...
        m2 = math.fsum((v - mean) * (v - mean) for v in vals)  # ... then squared deviations
        var = m2 / (n - 1)
        return var if fn == "var" else math.sqrt(var)
    raise ValueError(f"reference does not know function {fn!r}")


def reference_values(specs, events, t: int) -> dict:
    """dict name -> value for every spec (events of one entity, arrival order)."""
    return {s.name: reference_value(s, events, t) for s in specs}


# --------------------------------------------------------------------------- comparison

def _to_python(v):
    """Normalise numpy / pandas scalars and sequences to plain Python for comparison."""
    if v is None:
        return None
    try:
        import pandas as pd

        if v is pd.NA or v is pd.NaT:
            return None
    except ImportError:  # pragma: no cover
        pass
    if hasattr(v, "tolist") and not isinstance(v, (str, bytes)):
        v = v.tolist()  # numpy scalar -> Python scalar, numpy array -> list
    if isinstance(v, tuple):
        v = list(v)
    return v


#: Functions whose batch column is object dtype (null = None); the others are float (null = NaN) or int64.
OBJECT_FUNCTIONS = ("first", "last", "last_n")


def value_matches(expected, got, scale: float = 1.0, *, batch: bool = False, function: str = "") -> bool:
    """``expected`` (reference, plain Python) vs ``got`` (implementation).

    Floats: math.isclose(rel_tol=1e-9, abs_tol=1e-9 * scale) (scale squared for var).
    Null: streaming must give None.  A batch DataFrame cell (``batch=True``) must give
    None for first/last/last_n and NaN for the float functions (API.md).
    Lists elementwise.  Integers exactly (an integral float is accepted for an int).
    """
    got = _to_python(got)
    if expected is None:
        if not batch or function in OBJECT_FUNCTIONS or not function:
            return got is None
        return isinstance(got, float) and math.isnan(got)
    if got is None:
        return False
    if isinstance(expected, list):
        if not isinstance(got, list) or len(got) != len(expected):
            return False
        return all(value_matches(e, g, scale) for e, g in zip(expected, got))
    if isinstance(expected, bool) or isinstance(got, bool) or isinstance(expected, str) or isinstance(got, str):
        return type(expected) is type(got) and expected == got
    if isinstance(expected, int) and not isinstance(expected, bool):
        if isinstance(got, float) and (math.isnan(got) or not got.is_integer()):
            return False
        return expected == got
    if isinstance(expected, float):
        if not isinstance(got, (int, float)) or (isinstance(got, float) and math.isnan(got)):
            return False
        s = max(scale, 1.0)
        abs_tol = 1e-9 * (s * s if function == "var" else s)
        return math.isclose(expected, got, rel_tol=1e-9, abs_tol=abs_tol)
    return expected == got


def mismatches(specs, expected: dict, got: dict, scale: float = 1.0, *, batch: bool = False) -> list[str]:
    """Human-readable list of the names whose values differ (empty = all equal)."""
    out = []
    for s in specs:
        if s.name not in got:
            out.append(f"{s.name}: missing from result")
            continue
        if not value_matches(expected[s.name], got[s.name], scale, batch=batch, function=s.function):
            out.append(f"{s.name} ({s.function}, w={s.window_ms}, h={s.hop_ms}): "
                       f"expected {expected[s.name]!r}, got {got[s.name]!r}")
    return out


def value_scale(events, columns=None) -> float:
    """Sum of |non-null numeric values| in play (the float tolerance scale)."""
    total = 0.0
    for ev in events:
        for c, v in ev.values.items():
            if columns is not None and c not in columns:
                continue
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not is_null(v):
                total += abs(v)
    return total
