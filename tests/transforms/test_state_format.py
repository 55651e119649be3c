"""States stored by an older format keep working after an upgrade.

``data/state_v1.json`` holds a state serialized by format 1 (one 14-field row per
(column, hop) and tile), written by the code of that format, with the events it
was built from.  Format 2 states read it and must answer exactly as a state
built from the same events today, before and after more events, and through the
online reader (``compile_reader``) too.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import orjson

from tests.transforms.reference import value_matches
from transforms import (
    FORMAT_VERSION,
    REJECT_DUPLICATE,
    REJECT_LATE,
    AggSpec,
    ViewState,
    compile_reader,
)

FIXTURE = json.loads((Path(__file__).parent / "data" / "state_v1.json").read_text())
SPECS = tuple(AggSpec(**s) for s in FIXTURE["specs"])
LATENESS = FIXTURE["lateness_ms"]
M, H, D = 60_000, 3_600_000, 86_400_000


def events(rows):
    return [(ts, {k: (math.nan if v == "nan" else v) for k, v in values.items()}, eid) for ts, values, eid in rows]


def fresh_state() -> ViewState:
    state = ViewState(SPECS, lateness_ms=LATENESS)
    cut = FIXTURE["batches"][0]
    state.apply(events(FIXTURE["events"][:cut]))
    state.apply(events(FIXTURE["events"][cut:]))
    return state


def same(a: dict, b: dict, where: str) -> None:
    bad = [f"{s.name}: {a[s.name]!r} vs {b[s.name]!r}" for s in SPECS
           if not value_matches(a[s.name], b[s.name], 1.0, batch=False, function=s.function)]
    assert not bad, f"{where}: " + "; ".join(bad)


def test_fixture_is_format_1_and_current_format_differs() -> None:
    assert orjson.loads(FIXTURE["blob"])["v"] == 1
    assert FORMAT_VERSION != 1
    assert orjson.loads(fresh_state().to_bytes())["v"] == FORMAT_VERSION


def test_format_1_state_upgrades_to_the_same_values() -> None:
    expected = fresh_state()
    upgraded = ViewState.from_bytes(SPECS, FIXTURE["blob"].encode(), lateness_ms=LATENESS)
    assert upgraded.watermark == expected.watermark and upgraded.seq == expected.seq
    assert upgraded.valid_until() == expected.valid_until()
    read = compile_reader(SPECS, [s.name for s in SPECS])
    wm = expected.watermark
    for dt in (0, 1, 30 * M, H, 3 * H, D + 7, 3 * D, 8 * D, 40 * D):
        want = expected.evaluate(wm + dt)
        same(want, upgraded.evaluate(wm + dt), f"upgraded state at wm+{dt}")
        same(want, dict(zip([s.name for s in SPECS], read(FIXTURE["blob"].encode(), wm + dt))), f"reader at wm+{dt}")
    # more events, a redelivered id and a late one: the upgraded state applies the same rules
    more = [(wm + 2 * M, {"x": 7.5, "y": 1.5, "c": "z"}, "new1"), (wm - LATENESS - 1, {"x": 1.0}, "new2"),
            (wm + 3 * M, {"x": 2.0, "c": "a"}, FIXTURE["events"][-1][2]), (wm - M, {"x": -4.0, "y": None}, "new3")]
    r1 = [(r.index, r.reason) for r in expected.apply(more)]
    r2 = [(r.index, r.reason) for r in upgraded.apply(more)]
    assert r1 == r2 and {reason for _, reason in r1} == {REJECT_LATE, REJECT_DUPLICATE}
    again = ViewState.from_bytes(SPECS, upgraded.to_bytes(), lateness_ms=LATENESS)
    assert orjson.loads(upgraded.to_bytes())["v"] == FORMAT_VERSION
    for dt in (3 * M, 2 * H, 2 * D, 9 * D):
        same(expected.evaluate(wm + dt), upgraded.evaluate(wm + dt), f"after more events at wm+{dt}")
        same(expected.evaluate(wm + dt), again.evaluate(wm + dt), f"re-serialized at wm+{dt}")


def test_state_and_its_event_ids_apart_join_to_the_same_state() -> None:
    """``to_parts``: the state without its ids (what an online read fetches) and the ids; joined by
    ``from_bytes`` they behave as the whole state (``to_bytes``), redelivered ids refused alike."""
    whole = fresh_state()
    assert whole.ids  # the fixture's events carry ids within the lateness
    blob, ids = whole.to_parts()
    assert orjson.loads(blob)["ids"] == {} and orjson.loads(ids) == whole.ids
    joined = ViewState.from_bytes(SPECS, blob, lateness_ms=LATENESS, ids=ids)
    legacy = ViewState.from_bytes(SPECS, whole.to_bytes(), lateness_ms=LATENESS)  # ids inside the state
    read = compile_reader(SPECS, [s.name for s in SPECS])
    wm = whole.watermark
    for dt in (0, 30 * M, 3 * H, 3 * D):
        same(whole.evaluate(wm + dt), joined.evaluate(wm + dt), f"joined at wm+{dt}")
        same(whole.evaluate(wm + dt), dict(zip([s.name for s in SPECS], read(blob, wm + dt))), f"reader at wm+{dt}")
    redelivered = [(ts, {k: (math.nan if v == "nan" else v) for k, v in values.items()}, eid)
                   for ts, values, eid in FIXTURE["events"][-5:]]
    outcomes = [[(r.index, r.reason) for r in s.apply(redelivered)] for s in (whole, joined, legacy)]
    assert outcomes[0] == outcomes[1] == outcomes[2] and len(outcomes[0]) == 5
    assert REJECT_DUPLICATE in {reason for _, reason in outcomes[0]}
    assert ViewState(SPECS).to_parts()[1] == b""  # no ids: nothing beside the state
