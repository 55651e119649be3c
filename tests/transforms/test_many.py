"""``snapshot_many`` (vectorized over states) equals ``ViewState.snapshot`` state by state."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from transforms import AggSpec, ViewState
from transforms.many import snapshot_many
from transforms.specs import FUNCTIONS

M, H, D = 60_000, 3_600_000, 86_400_000
T0 = 1_767_225_600_000
WINDOWS = (1000, M, H, 24 * H, 7 * D, None)


def make_specs(choices):
    specs = []
    for i, (fn, window, exact) in enumerate(choices):
        if fn == "events_per_minute" and window is None:
            window = H
        if fn == "seconds_since_last":
            window = None
        kwargs = {"window_ms": window}
        if window is not None and exact:
            kwargs["hop_ms"] = 1
        column = None if fn in ("count_events", "events_per_minute", "seconds_since_last") else "x"
        specs.append(AggSpec(f"f{i}", fn, column, n=3 if fn == "last_n" else 0, **kwargs))
    return tuple(specs)


def same(a, b) -> bool:
    if isinstance(a, list) or isinstance(b, list):
        return a == b
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


spec_choice = st.tuples(st.sampled_from(FUNCTIONS), st.sampled_from(WINDOWS), st.booleans())
value = st.one_of(st.none(), st.just(float("nan")), st.integers(-1000, 1000).map(float),
                  st.floats(-1000, 1000, allow_nan=False))
event = st.tuples(st.integers(0, 3), st.integers(0, 3 * D), value)


@settings(deadline=None)
@given(st.lists(spec_choice, min_size=1, max_size=8), st.lists(event, max_size=60),
       st.lists(st.integers(0, 10 * D), min_size=4, max_size=4))
def test_snapshot_many_equals_snapshot(choices, events, delays):
    specs = make_specs(choices)
    states = [ViewState(specs, lateness_ms=H) for _ in range(4)]
    for key, ts, x in events:
        states[key].apply([(T0 + ts, {"x": x}, None)])
    times = [(s.watermark if s.watermark is not None else T0) + d for s, d in zip(states, delays)]
    values, horizons = snapshot_many(states, times)
    for state, t, got, horizon in zip(states, times, values, horizons):
        want, want_horizon = state.snapshot(t)
        assert horizon == want_horizon
        for name in want:
            assert same(got[name], want[name]), (name, got[name], want[name])


def test_snapshot_many_refuses_times_before_the_watermark():
    state = ViewState((AggSpec("n", "count_events"),))
    state.apply([(T0, {}, None)])
    try:
        snapshot_many([state], [T0 - 1])
    except ValueError as exc:
        assert "watermark" in str(exc)
    else:
        raise AssertionError("expected ValueError")
