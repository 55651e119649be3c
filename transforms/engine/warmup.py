"""Load (or compile) every kernel before the first batch: a worker calls ``warm_up`` before it joins
its consumer group, so that no batch waits for numba."""

from __future__ import annotations

import time

import numpy as np

from ..specs import AggSpec
from .arena import StateArena
from .jit import COMPILED


def warm_up() -> float:
    """Run each kernel once on a small state of every function; returns the seconds it took."""
    start = time.perf_counter()
    hour, day = 3_600_000, 86_400_000
    specs = (AggSpec("s", "sum", "x", hour), AggSpec("m", "mean", "x", day), AggSpec("v", "var", "x"),
             AggSpec("lo", "min", "x", hour), AggSpec("hi", "max", "x", hour), AggSpec("f", "first", "c", hour),
             AggSpec("l", "last", "c", hour), AggSpec("n", "last_n", "c", day, n=2),
             AggSpec("d", "count_distinct", "c", day), AggSpec("e", "count_events", None, hour),
             AggSpec("r", "events_per_minute", None, hour), AggSpec("t", "seconds_since_last"))
    from .. import state

    one = state.ViewState(specs, 60_000)
    one.apply([(1_000, {"x": 1.0, "c": "a"}, "i1"), (2_000, {"x": 2, "c": "b"}, "i2"), (1_500, {"x": None}, "i1")])
    blob, ids = one.to_parts()
    again = state.ViewState.from_bytes(specs, blob, 60_000, ids)
    again.evaluate(5_000)
    state.compile_reader(specs, ["s", "n"]).read_many([blob], [5_000])
    state.compile_reader(specs, ["s", "n"]).read_many([blob] * 9, [5_000] * 9)  # the many-state loader
    many = StateArena(specs, 60_000)
    state.load_states(many, [many.slot(m) for m in range(2)], [blob, blob], [state.append_ids(None, ids), b""])
    from ..legacy.state import ViewState as FormatTwo

    two = FormatTwo(specs, 60_000)
    two.apply([(1_000, {"x": 1.0, "c": "a"}, "i1")])
    state.ViewState.from_bytes(specs, two.to_bytes(), 60_000).evaluate(5_000)  # a format 2 state converted
    arena = StateArena(specs, 60_000)
    s = arena.slot("k")
    arena.apply(np.array([s]), np.array([3_000]), [None], [{"x": 3.0}])
    from . import codec

    codec.encode_many(arena, np.array([s]))
    from .json_text import json_rows

    json_rows(arena, *arena.evaluate(np.array([s]), np.array([3_000]))[:4])
    codec.encode_ids_many(arena, np.array([s]))
    _grow_and_compact(arena, s)
    arena.drop("k")
    return time.perf_counter() - start


def _grow_and_compact(arena: StateArena, s: int) -> None:
    """What a long-running worker meets later: an event-id table that outgrows its size (rehash)
    and an interned-values table past its limit (compaction)."""
    arena.reserve(0, len(arena.HV))
    arena.objects.limit = 0
    arena.apply(np.array([s]), np.array([4_000]), ["i9"], [{"x": 4.0, "c": "z"}])
    arena.objects.limit = 4096


__all__ = ["COMPILED", "warm_up"]
