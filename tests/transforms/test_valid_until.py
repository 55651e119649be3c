"""``valid_until``: the values of a state stay what they are at ``t`` up to the time it names.

The online store serves a stored values row without re-evaluating it until that time, so a time
too late (or "never") serves stale values.  Checked against evaluation itself: the values at
every probe before the time equal the values at ``t``, and a state that says "never" keeps its
values a year later.
"""

from __future__ import annotations

import random

import pytest

from transforms import AggSpec, ViewState

MIN, HOUR, DAY = 60_000, 3_600_000, 86_400_000
T0 = 1_767_225_600_000

# windowed features of every kind whose window can empty, long windows before short ones: the
# earliest change of a long window must survive a short window that has nothing left in it
SPECS = (
    AggSpec("sum_7d", "sum", "x", 7 * DAY),
    AggSpec("events_1h", "count_events", None, HOUR),
    AggSpec("distinct_1h", "count_distinct", "c", HOUR),
    AggSpec("last_2_1h", "last_n", "c", HOUR, n=2),
    AggSpec("max_1d", "max", "x", DAY),
    AggSpec("distinct_2h", "count_distinct", "c", 2 * HOUR),
)


def _events(rng: random.Random, n: int) -> list[tuple[int, dict, str]]:
    out = []
    for i in range(n):
        t = T0 + rng.randrange(0, 3 * DAY)
        values = {"x": rng.choice([1.0, 2.5, None]), "c": rng.choice(["a", "b", None])}
        out.append((t, values, f"e{i}"))
    return sorted(out, key=lambda e: e[0])


@pytest.mark.parametrize("seed", range(40))
def test_values_hold_until_valid_until(seed):
    rng = random.Random(seed)
    state = ViewState(SPECS, 10 * MIN)
    state.apply(_events(rng, rng.randrange(1, 12)))
    wm = state.watermark
    for t in sorted({wm, wm + rng.randrange(0, 2 * HOUR), wm + rng.randrange(0, 9 * DAY)}):
        values, until = state.snapshot_values(t)
        if until is None:
            assert state.snapshot_values(t + 365 * DAY)[0] == values, "valid until 'never', yet the values change"
            continue
        assert until > t
        for probe in sorted({t + 1, (t + until) // 2, until - 1}):
            assert state.snapshot_values(probe)[0] == values, (t, until, probe)


def test_an_empty_short_window_keeps_the_long_windows_change_time():
    """One event, read 3 h later: the 1 h and 2 h windows are empty (no change ahead); the 1-day max
    goes when its tile leaves, and that time is what the state says."""
    state = ViewState(SPECS, 10 * MIN)
    state.apply([(T0, {"x": 2.0, "c": "a"}, "e0")])
    values, until = state.snapshot_values(T0 + 3 * HOUR)
    assert values[0] == 2.0 and values[2] == 0 and values[4] == 2.0 and values[5] == 0
    assert until is not None and T0 + DAY <= until <= T0 + DAY + HOUR
    assert state.snapshot_values(until - 1)[0] == values
    assert state.snapshot_values(until)[0][4] is None
