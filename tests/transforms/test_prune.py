"""Pruning keeps exactly the tiles a future window reaches: after every micro-batch, every tile list
holds only tiles in reach of its state's watermark, and the slot's record of each list's oldest tile
(which lets pruning skip a list without walking it) is that list's oldest tile, for states applied
batch by batch and for states loaded from their stored bytes."""

from __future__ import annotations

import random

import numpy as np
import pytest

from tests.transforms.every_function import H, M, SPECS, T0
from transforms.engine import StateArena, codec
from transforms.engine.layout import M_FIXED, M_WM, NO_TIME


def _tiles(arena: StateArena, s: int, g: int) -> list[int]:
    out, cur = [], int(arena.S[s, M_FIXED + g])
    while cur >= 0:
        out.append(int(arena.P[cur]))
        cur = int(arena.P[cur + 2])
    return out


def _check(arena: StateArena) -> int:
    """Assert the invariant on every used slot; returns how many tiles the lists hold."""
    L = arena.layout
    G = len(L.g_hop)
    held = 0
    for s in arena.slot_of.values():
        wm = int(arena.S[s, M_WM])
        for g in range(G):
            ks = _tiles(arena, s, g)
            held += len(ks)
            assert ks == sorted(ks, reverse=True)
            hop = int(L.g_hop[g])
            if not ks or hop == 0 or wm == NO_TIME:
                continue
            assert min(ks) >= (wm - int(L.g_reach[g])) // hop
            assert int(arena.S[s, arena.S.shape[1] - G + g]) == ks[-1]
    return held


@pytest.mark.parametrize("seed", range(4))
def test_lists_hold_only_tiles_in_reach_and_know_their_oldest(seed: int) -> None:
    rng = random.Random(seed)
    arena = StateArena(SPECS, 5 * M)
    t = T0
    for _ in range(40):
        slots, ts, values = [], [], []
        for _ in range(rng.randint(1, 30)):
            t += rng.choice((1, 500, 30_000, 9 * M, 2 * H, 26 * H))
            key = f"k{rng.randint(0, 5)}"
            when = t - rng.choice((0, 0, 0, M, 4 * M, 3 * H))  # some late, some out of reach
            value = {"x": rng.uniform(-5, 5), "y": rng.uniform(0, 9), "c": rng.choice("abc")}
            slots.append(arena.slot(key))
            ts.append(when)
            values.append(value)
        arena.apply(np.array(slots, dtype=np.int64), np.array(ts, dtype=np.int64), None, values)
        _check(arena)
        # the same states through their bytes: loaded lists know their oldest tile too
        loaded = StateArena(SPECS, 5 * M)
        for key, s in arena.slot_of.items():
            codec.decode(loaded, loaded.slot(key), codec.encode(arena, s))
        assert _check(loaded) == _check(arena)
