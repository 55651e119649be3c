"""The compiled JSON values rows (``json_rows``) are byte for byte what ``orjson`` writes for the
Python rows ``StateArena.values`` builds: every function, every kind of value (floats with NaN and
infinities, the int64 limits, bools, strings that hold JSON's own brackets, commas, quotes and
escapes, lists and dicts), in lists of last values too."""

from __future__ import annotations

import random

import numpy as np
import orjson
import pytest

from tests.transforms.every_function import H, M, SPECS, T0
from transforms import AggSpec
from transforms.engine import StateArena
from transforms.engine.json_text import json_rows
from transforms.engine.layout import M_WM

ODD_VALUES = (None, float("nan"), float("inf"), -float("inf"), -0.0, 1e16, 5e-324, 0.1, -(1 << 63), (1 << 63) - 1,
              0, -7, True, False, "", "a,b", '"]', "[{", "\\", "é\u2028\n", (3, "t"))
UNHASHABLE = ([1, "x,]", [2.5, None]], {"k": [1, 2], "q": "}"}, [])


def _arena(specs, rng: random.Random, states: int = 40, batches: int = 12) -> StateArena:
    arena = StateArena(specs, 5 * M)
    t = T0
    for _ in range(batches):
        slots, ts, values = [], [], []
        for s in range(states):
            for _ in range(rng.randint(0, 5)):
                t += rng.choice((1, 500, 30_000, 9 * M, 2 * H))
                slots.append(arena.slot(f"k{s}"))
                ts.append(t)
                values.append({"x": rng.choice((None, rng.uniform(-5, 5), rng.randint(-3, 3), float("nan"))),
                               "y": rng.choice((None, rng.uniform(0, 9), 1e300)),
                               "c": rng.choice(ODD_VALUES), "o": rng.choice(ODD_VALUES + UNHASHABLE)})
        arena.apply(np.array(slots, dtype=np.int64), np.array(ts, dtype=np.int64), None, values)
    return arena


def _both(arena: StateArena, times) -> tuple[list[bytes], list[bytes]]:
    slots = np.array(sorted(arena.slot_of.values()), dtype=np.int64)
    times = np.asarray(times(arena.S[slots, M_WM]), dtype=np.int64)
    rows, _ = arena.values(slots, times)
    old = [orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY) for row in rows]
    return old, json_rows(arena, *arena.evaluate(slots, times)[:4])


@pytest.mark.parametrize("seed", range(6))
def test_rows_equal_orjson_of_the_python_rows(seed: int) -> None:
    rng = random.Random(seed)
    specs = SPECS + (AggSpec("cn", "last_n", "o", 24 * H, n=4), AggSpec("lc", "last", "o"),
                     AggSpec("hi_c", "max", "y"), AggSpec("few", "count", "c", M))
    arena = _arena(specs, rng)
    for times in (lambda wm: wm, lambda wm: wm + 3 * H, lambda wm: wm + 40 * 24 * H):
        old, new = _both(arena, times)
        assert new == old
    assert any(b"null" in row for row in new) and any(b'"' in row for row in old)


def test_int64_limits_and_every_kind_in_one_row() -> None:
    specs = (AggSpec("l", "last", "c"), AggSpec("n", "last_n", "c", None, n=len(ODD_VALUES) + 3),
             AggSpec("s", "sum", "x"), AggSpec("e", "count_events", None, H))
    arena = StateArena(specs, 0)
    s = arena.slot("k")
    values = [{"c": v, "x": v if type(v) is int else None} for v in ODD_VALUES[6:10] + ODD_VALUES[12:] + UNHASHABLE]
    arena.apply(np.full(len(values), s, dtype=np.int64), np.arange(T0, T0 + len(values)), None, values)
    old, new = _both(arena, lambda wm: wm)
    assert new == old
    assert b"-9223372036854775808" in new[0] and b"9223372036854775807" in new[0]


def test_no_states_give_no_rows() -> None:
    arena = StateArena(SPECS, 0)
    assert json_rows(arena, *arena.evaluate(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))[:4]) == []


@pytest.mark.parametrize("seed", range(3))
def test_state_trailers_are_orjson_of_the_values_they_hold(seed: int) -> None:
    from transforms.engine import codec

    specs = SPECS + (AggSpec("cn", "last_n", "o", 24 * H, n=4), AggSpec("lc", "last", "o"))
    arena = _arena(specs, random.Random(seed))
    slots = np.array(sorted(arena.slot_of.values()), dtype=np.int64)
    blobs = codec.encode_many(arena, slots)
    with_objects = 0
    for s, blob in zip(slots.tolist(), blobs):
        words = int.from_bytes(blob[8:16], "little")
        trailer = blob[8 * words:]
        assert len(blob) % 8 == 0
        if trailer:
            with_objects += 1
            text = trailer.rstrip(b" ")
            assert text == orjson.dumps(orjson.loads(text)) and len(trailer) - len(text) < 8
        again = StateArena(specs, 5 * M)
        t = again.slot("k")
        codec.decode(again, t, blob)
        assert codec.encode(again, t) == blob
        wm = int(arena.S[s, M_WM])
        assert orjson.dumps(again.values([t], [wm])[0]) == orjson.dumps(arena.values([s], [wm])[0])
    assert with_objects > len(blobs) // 2
