"""A batch that raises while ``ViewState.apply`` runs leaves the state exactly as it was.

Each case feeds a state a first batch, then a batch whose last event carries an input the
aggregations cannot take (a value ``float()`` refuses, a string where a number is summed, one
that cannot be hashed, an event id that cannot be hashed), after events that were accepted and
would be added to tiles, ids, distinct values and last values.  The exception reaches the caller; the
state must equal, field by field, one that never saw that batch, and go on to the same values.
"""

from __future__ import annotations

import pytest

from transforms import AggSpec, ViewState
from transforms.engine.layout import M_IDS_MARK, M_IDS_STORED

M, H, D = 60_000, 3_600_000, 86_400_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
LATENESS = 10 * M

SPECS = (
    AggSpec("sum_1h", "sum", "x", window_ms=H), AggSpec("mean_1h", "mean", "x", window_ms=H),
    AggSpec("var_1d", "var", "x", window_ms=D), AggSpec("min_1d", "min", "x", window_ms=D),
    AggSpec("max_1d", "max", "x", window_ms=D), AggSpec("first_1h", "first", "x", window_ms=H),
    AggSpec("last_1h", "last", "x", window_ms=H), AggSpec("last3", "last_n", "x", window_ms=D, n=3),
    AggSpec("distinct", "count_distinct", "x", window_ms=D), AggSpec("n_1h", "count_events", window_ms=H),
    AggSpec("sum_life", "sum", "x"), AggSpec("ssl", "seconds_since_last", window_ms=H),
)


class NoFloat(float):
    """A number that ``float()`` refuses (sum and Welford convert each value)."""

    def __float__(self):
        raise ArithmeticError("no float")


class NoHash(float):
    """A number that cannot be hashed (count_distinct keeps the values in a dict): it passes every
    tile update and fails after them."""

    __hash__ = None


FIRST = [(T0 + 5 * M, {"x": 1.0}, "a"), (T0 + 20 * M, {"x": 4.0}, "b"), (T0 + 12 * M, {"x": 2.0}, "c")]
# accepted before the bad event: one into a new tile, one into a stored tile within the lateness, and one
# that takes the id of an event now beyond the lateness horizon ("c", 12 min: the id moves to its place)
GOOD = [(T0 + 30 * M, {"x": 8.0}, "d"), (T0 + 20 * M + 1, {"x": 3.0}, "e"), (T0 + 35 * M, {"x": 5.0}, "c")]
BAD = {  # the event, and what it raises
    "value refused by float()": ((T0 + 36 * M, {"x": NoFloat(7.0)}, "g"), ArithmeticError, "no float"),
    "string where a number is summed": ((T0 + 36 * M, {"x": "seven"}, "g"), ValueError, "could not convert"),
    "value that cannot be hashed": ((T0 + 36 * M, {"x": NoHash(7.0)}, "g"), TypeError, "unhashable"),
    "event id that cannot be hashed": ((T0 + 36 * M, {"x": 7.0}, ["g"]), TypeError, "unhashable"),
}
# a repeat of an id of GOOD: a duplicate once GOOD is applied
NEXT = [(T0 + 40 * M, {"x": 6.0}, "h"), (T0 + 39 * M, {"x": 2.0}, "d")]


def contents(state: ViewState) -> dict:
    """Everything a state holds: the whole state as bytes (tiles, ids in arrival order, distinct and
    last values), and what its writer knows stored of its ids (what the next ``to_parts`` sends)."""
    arena, slot = state.arena, state.slot
    return {
        "watermark": state.watermark, "seq": state.seq, "ids": list(state.ids.items()),
        "whole": state.to_bytes(),
        "ids_written": (int(arena.S[slot, M_IDS_STORED]), int(arena.S[slot, M_IDS_MARK])),
    }


def state_after(*batches) -> ViewState:
    state = ViewState(SPECS, lateness_ms=LATENESS)
    for batch in batches:
        state.apply(batch)
    return state


@pytest.mark.parametrize("stored", [False, True], ids=["in memory", "written and reloaded"])
@pytest.mark.parametrize("bad", list(BAD), ids=list(BAD))
def test_a_batch_that_raises_leaves_the_state_as_it_was(bad, stored):
    state, twin = state_after(FIRST), state_after(FIRST)
    if stored:  # the ids as a writer knows them: appended incrementally from here on
        blob, ids = state.to_parts()
        state = ViewState.from_bytes(SPECS, blob, LATENESS, ids)
        twin = ViewState.from_bytes(SPECS, blob, LATENESS, ids)
    before = contents(state)

    event, error, match = BAD[bad]
    with pytest.raises(error, match=match):
        state.apply([*GOOD, event])

    assert contents(state) == before
    assert state.evaluate(T0 + 36 * M) == twin.evaluate(T0 + 36 * M)
    assert state.to_parts() == twin.to_parts()
    # the events of the failed batch were not counted: applied again, none is a duplicate
    assert state.apply(GOOD) == twin.apply(GOOD) == []
    assert [r.reason for r in state.apply(NEXT)] == [r.reason for r in twin.apply(NEXT)] == ["duplicate_event_id"]
    assert contents(state) == contents(twin)
    assert state.evaluate(T0 + 2 * H) == twin.evaluate(T0 + 2 * H)


def test_a_first_batch_that_raises_leaves_an_empty_state():
    state, before = ViewState(SPECS, lateness_ms=LATENESS), contents(ViewState(SPECS, lateness_ms=LATENESS))
    with pytest.raises(ArithmeticError):
        state.apply([*FIRST, (T0 + 25 * M, {"x": NoFloat(1.0)}, "z")])
    assert contents(state) == before
    assert state.watermark is None and state.valid_until() is None
    assert state.apply(FIRST) == []
    assert contents(state) == contents(state_after(FIRST))
