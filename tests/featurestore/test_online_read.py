"""Online read path: the packed Lua read, the state reader (``transforms.compile_reader``) and the columnar client
assembly, checked against ``ViewState`` evaluating the stored states (real Redis, no mocks)."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pandas as pd
import pytest

from featurestore.client import FeatureStore
from featurestore.exceptions import ConfigurationError
from featurestore.online import RedisOnlineStore
from featurestore.online.reader import (
    EXPIRED,
    MISSING,
    PRESENT,
    ViewRead,
    read_rows,
    read_views,
)
from featurestore.repo import load_repo
from featurestore.schema import validator_for
from transforms import FORMAT_VERSION, AggSpec, ViewState, compile_reader
from transforms.engine import StateFormatError
from featurestore.processing import SourceProcessor, prepare_view

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "repo.py"
T0 = 1_767_225_600_000
SEC, MIN, HOUR, DAY = 1_000, 60_000, 3_600_000, 86_400_000

FUNCTIONS = ("sum", "count", "mean", "min", "max", "var", "stddev", "first", "last", "count_distinct", "last_n",
             "count_events", "events_per_minute", "seconds_since_last")
WINDOWS = ((None, None), (HOUR, None), (10 * MIN, MIN), (10 * MIN, 1), (DAY, 2 * HOUR), (7 * DAY, None))


def random_specs(rng: random.Random) -> tuple[AggSpec, ...]:
    specs = []
    for i in range(rng.randint(1, 12)):
        fn = rng.choice(FUNCTIONS)
        window, hop = rng.choice(WINDOWS)
        if fn == "events_per_minute" and window is None:
            window, hop = HOUR, None
        column = None if fn in ("count_events", "events_per_minute", "seconds_since_last") else (
            "cat" if fn in ("count_distinct", "first", "last", "last_n") and rng.random() < 0.5 else "x")
        specs.append(AggSpec(f"f{i}_{fn}", fn, column, window_ms=window, hop_ms=hop,
                             n=rng.randint(1, 4) if fn == "last_n" else 0))
    return tuple(specs)


def random_events(rng: random.Random, n: int) -> list[tuple[int, dict, str | None]]:
    t, out = T0, []
    for i in range(n):
        t += rng.choice((0, 1, 999, 30 * SEC, 7 * MIN, 2 * HOUR, 30 * HOUR))
        ts = t - rng.choice((0, 0, 0, 40 * SEC, 3 * MIN))  # some late events
        x = rng.choice((None, float("nan"), 1.5, -2.25, 1e9, 3.0, 0.1 * i, rng.gauss(0, 1e3), 7))
        out.append((ts, {"x": x, "cat": rng.choice((None, "a", "b", "c", 1, 2.0))}, rng.choice((None, f"e{i}"))))
    return out


def test_state_reader_equals_viewstate() -> None:
    """Every function, window and hop, any subset and order of features, times at the watermark,
    inside and past every window: ``compile_reader`` returns exactly ``ViewState.evaluate``."""
    rng = random.Random(20260101)
    checked = 0
    for _ in range(300):
        specs = random_specs(rng)
        lateness = rng.choice((0, 5 * MIN))
        state = ViewState(specs, lateness)
        for lo in range(0, rng.randint(0, 40), 7):
            state.apply(random_events(rng, 7))
        blob = state.to_bytes()
        names = [s.name for s in specs]
        features = rng.sample(names, rng.randint(1, len(names)))
        evaluator = compile_reader(specs, features)
        wm = state.watermark if state.watermark is not None else T0
        for dt in (0, 1, 59 * SEC, MIN, 10 * MIN + 1, HOUR, 3 * HOUR, DAY + 1, 8 * DAY, 100 * DAY):
            want = ViewState.from_bytes(specs, blob, lateness).evaluate(wm + dt)
            got = evaluator(blob, wm + dt)
            assert got == [want[f] for f in features], (specs, features, dt)
            assert [type(v) for v in got] == [type(want[f]) for f in features]
            checked += 1
    assert checked == 3000


def test_state_reader_refuses_what_viewstate_refuses() -> None:
    """A state of an unknown (newer) format, one laid out for other features, and a damaged one are
    refused by the reader and by ``ViewState`` alike, with an error that says to rebuild it."""
    specs = (AggSpec("s", "sum", "x", window_ms=HOUR),)
    state = ViewState(specs)
    state.apply([(T0, {"x": 1.0}, None)])
    blob, _ = state.to_parts()
    assert FORMAT_VERSION == 3 and blob[:4] == b"SFS\x03"
    evaluator = compile_reader(specs, ["s"])
    newer = b"SFS\x04" + blob[4:]
    other = ViewState((AggSpec("s", "sum", "y", window_ms=HOUR),))
    other.apply([(T0, {"y": 1.0}, None)])
    cases = {newer: "not format 3", other.to_parts()[0]: "laid out as", blob[:-8]: "damaged",
             blob[:8] + (10**6).to_bytes(8, "little") + blob[16:]: "damaged", b"\x00" * 40: "not format 3"}
    for bad, match in cases.items():
        with pytest.raises(StateFormatError, match=match) as raised:
            evaluator(bad, T0)
        assert "rebuild" in str(raised.value)
        with pytest.raises(StateFormatError, match=match):
            ViewState.from_bytes(specs, bad)
    with pytest.raises(ValueError, match="watermark"):
        evaluator(blob, T0 - 1)
    assert evaluator(blob, T0 + HOUR - 1) == [1.0]


@pytest.fixture
def example(servers, unique_name):
    """The example repository with 40 customers' events committed online as the worker does."""
    project = unique_name("rd")
    online = RedisOnlineStore.from_url(servers.redis_url, project)
    repo = load_repo(EXAMPLE)
    prepared = [prepare_view(v, 1, project) for v in repo.views.values()]
    processor = SourceProcessor(prepared, online)
    validate = validator_for(repo.source("transactions"))
    rng = random.Random(7)
    t, events = T0, []
    for i in range(1500):
        t += rng.choice((1 * SEC, 40 * SEC, 9 * MIN, 50 * MIN, 5 * HOUR))
        events.append(validate({"transaction_id": f"t{i}", "customer_id": f"C{rng.randrange(40)}",
                                "amount": round(rng.lognormvariate(3, 1), 2), "merchant_category": rng.choice("abcde"),
                                "is_online": rng.random() < 0.5, "event_time": t}))
    for lo in range(0, len(events), 300):
        records, _ = processor.apply(events[lo:lo + 300])
        assert online.commit(records, None, {}) == 1
    store = FeatureStore(repo, online, {name: 1 for name in repo.views}, project)
    yield store, online, prepared, t
    keys = list(online.client.scan_iter(match=f"fs:{project}*", count=1000))
    if keys:
        online.client.delete(*keys)


def expected(online, pv, key: str, t: int):
    """(status, event time, {feature: value}) from the stored state, evaluated by ``ViewState``."""
    blob = online.load_state(pv.view_key, key)
    defaults = {f.name: f.default for f in pv.view.features}
    if blob is None:
        return MISSING, None, defaults
    state = ViewState.from_bytes(pv.specs, blob, pv.lateness_ms)
    t_eval = max(t, state.watermark)
    if pv.ttl_ms is not None and t_eval - state.watermark > pv.ttl_ms:
        return EXPIRED, state.watermark, defaults
    return PRESENT, state.watermark, state.evaluate(t_eval)


def test_many_entities_at_many_times_equal_viewstate(example) -> None:
    """One request for 41 entities (one unknown) and every feature of both views, at times before
    the last event, past windows and past each TTL: values (and their types), statuses and event
    times equal the stored states evaluated by ``ViewState`` (ready values and stale states alike)."""
    store, online, prepared, last = example
    keys = [f"C{i}" for i in range(40)] + ["nobody"]
    rows = [{"customer_id": k} for k in keys]
    features = [f"{pv.view.name}:{f}" for pv in prepared for f in pv.view.feature_names]
    kinds = set()
    for t in (T0, last - DAY, last, last + 1, last + 2 * HOUR, last + 2 * DAY, last + 10 * DAY, last + 40 * DAY,
              last + 100 * DAY):
        resp = store.get_online_features(rows, features=features, at_ms=t, full_names=True)
        assert list(resp.columns) == ["customer_id"] + [f.replace(":", "__") for f in features]
        for pv in prepared:
            for i, key in enumerate(keys):
                status, event_time, values = expected(online, pv, key, t)
                kinds.add(status)
                for name in pv.view.feature_names:
                    label = f"{pv.view.name}__{name}"
                    got = resp.columns[label][i]
                    assert got == values[name] and type(got) is type(values[name]), (t, key, label)
                    assert resp.statuses[label][i] == status and resp.event_times[label][i] == event_time
    assert kinds == {PRESENT, MISSING, EXPIRED}
    # both paths were taken: ready values and states re-evaluated past valid_until
    reads = next(iter(store._plans.values())).reads
    items = [online.entity_key(r.view_key, k) for r in reads for k in keys]
    ready = stale = 0
    for t in (last, last + 2 * HOUR):
        out, states = online.read_packed(items, t)
        ready += sum(v is not None for v in out) - len(states) // 2
        stale += len(states) // 2
        # the states a read fetches are format 3 states, without their event ids (stored beside them)
        specs_of = {online.entity_key(r.view_key, k): pv.specs for r in reads for pv in prepared
                    if pv.view_key == r.view_key for k in keys}
        for i, blob in zip(states[0::2], states[1::2]):
            assert blob[:4] == b"SFS\x03"
            assert ViewState.from_bytes(specs_of[items[i]], blob).ids == {}
    assert ready and stale


def test_service_objects_read_their_own_features(example) -> None:
    """FeatureService objects made and dropped one after another (Python may give a new object the
    identity of a dropped one) each read their own features, never a plan compiled for another."""
    from featurestore.definitions import FeatureService

    store, online, prepared, last = example
    view = next(iter(store.repo.views.values()))
    names = [f.name for f in view.features]
    row = [{view.entity.join_key: "C3"}]
    for i in range(60):
        picked = names[i % len(names)]
        service = FeatureService(f"one_{i}", [view[[picked]]])
        resp = store.get_online_features(row, feature_service=service, at_ms=last + HOUR)
        assert list(resp.columns) == [view.entity.join_key, picked]
        del service, resp


def test_response_forms_services_and_on_demand(example) -> None:
    store, online, prepared, last = example
    at = last + 3 * HOUR
    rows = pd.DataFrame({"customer_id": ["C3", "nobody", "C5"]})
    resp = store.get_online_features(rows, feature_service="fraud_detection",
                                     request_data={"current_amount": [10.0, 900.0, 50.0]}, at_ms=at)
    service = store.repo.service("fraud_detection").resolve()
    assert list(resp.columns) == ["customer_id"] + [f for _, f in service]
    assert resp.to_dict()["customer_id"] == ["C3", "nobody", "C5"]
    # an on-demand view computed from an entity with no data is missing, not computed from blanks
    assert resp.statuses["high_value_customer"] == [PRESENT, MISSING, PRESENT]
    assert resp.columns["high_value_customer"][1] is None and resp.columns["purchase_frequency_score"][1] is None
    assert resp.event_times["purchase_frequency_score"] == [None] * 3
    hv = store.get_online_features(pd.DataFrame({"customer_id": ["C3", "C3"]}),
                                   features=["customer_derived_features:high_value_customer"],
                                   request_data={"current_amount": [10.0, 900.0]}, at_ms=at)
    assert hv.columns["high_value_customer"][1] is True  # request data reaches the on-demand view
    assert resp.statuses["spend_1h"][1] == MISSING and resp.event_times["spend_1h"][1] is None
    want = expected(online, prepared[0], "C3", at)
    assert resp.columns["spend_1h"][0] == want[2]["spend_1h"] and resp.event_times["spend_1h"][0] == want[1]
    df = resp.to_df(statuses=True, event_times=True)
    assert list(df.columns[:4]) == ["customer_id", "events_1h", "events_1h__status", "events_1h__event_time"]
    assert str(df["spend_1h__event_time"].dtype) == "Int64"
    # a subset, out of spec order, with a repeated feature (labelled view__feature); then the full names
    refs = ["customer_stats:spend_24h", "transaction_stats:last_amount", "customer_stats:total_spend",
            "customer_stats:spend_24h"]
    sub = store.get_online_features([{"customer_id": "C3"}], features=refs, at_ms=at)
    assert list(sub.columns) == ["customer_id", "customer_stats__spend_24h", "last_amount", "total_spend"]
    full = store.get_online_features([{"customer_id": "C3"}], features=refs, at_ms=at, full_names=True)
    assert list(full.columns)[1:] == ["customer_stats__spend_24h", "transaction_stats__last_amount",
                                      "customer_stats__total_spend"]
    assert full.columns["transaction_stats__last_amount"] == sub.columns["last_amount"]
    # columns are independent lists
    sub.statuses["customer_stats__spend_24h"].append("x")
    assert sub.statuses["total_spend"] == [PRESENT]
    # no entity rows: empty columns
    empty = store.get_online_features([], features=refs, at_ms=at)
    assert empty.columns == {"customer_id": [], "customer_stats__spend_24h": [], "last_amount": [], "total_spend": []}
    assert empty.to_df(statuses=True).shape == (0, 7)


def test_many_entities_read_together_equal_each_read_alone(example, monkeypatch) -> None:
    """The rows of one request for many entities (a view whose rows are all present, unexpired and
    exact is decoded in one pass) equal those of each entity read alone, row type included, at times
    before the events, at the last one, past windows and past a TTL."""
    from featurestore.online import reader

    _, online, prepared, last = example
    original, plain = reader._plain_rows, []

    def spy(*args):
        done = original(*args)
        plain.append(done is not None)
        return done

    monkeypatch.setattr(reader, "_plain_rows", spy)
    keys = [f"C{i}" for i in range(40)]
    reads = [ViewRead(pv.view_key, pv.specs, pv.lateness_ms, pv.ttl_ms, list(reversed(pv.view.feature_names)),
                      {f.name: f.default for f in pv.view.features}) for pv in prepared]
    for t in (T0, last, last + 1, last + 2 * HOUR, last + 40 * DAY):
        together = read_rows(online, reads, [keys] * len(reads), t)
        alone = [read_rows(online, reads, [[k]] * len(reads), t) for k in keys]
        for v, (rows, statuses, times, from_state) in enumerate(together):
            want = [a[v][0][0] for a in alone]
            assert rows == want and [type(r) for r in rows] == [type(r) for r in want]
            assert [[type(x) for x in r] for r in rows] == [[type(x) for x in r] for r in want]
            assert statuses == [a[v][1][0] for a in alone] and times == [a[v][2][0] for a in alone]
            assert from_state == [a[v][3][0] for a in alone]
    assert any(plain)  # the one pass taken


def test_read_views_and_script_reload(example) -> None:
    """``read_views`` (per-entity form) agrees with the columnar rows; a flushed script cache reloads."""
    _, online, prepared, last = example
    pv = prepared[1]
    read = ViewRead(pv.view_key, pv.specs, pv.lateness_ms, pv.ttl_ms, ["seconds_since_last_txn", "events_1h"],
                    {"seconds_since_last_txn": None, "events_1h": -1})
    keys = ["C1", "C2", "nobody"]
    at = last + 30 * MIN
    (rows, statuses, times, _), = read_rows(online, [read], [keys], at)
    values = read_views(online, [read], [keys], at)[0]
    assert [list(r) for r in rows] == [[v.values[f] for f in read.features] for v in values]
    assert statuses == [v.status for v in values] and times == [v.event_time for v in values]
    assert values[2].values == {"seconds_since_last_txn": None, "events_1h": -1} and values[2].status == MISSING
    assert rows[0][0] == (at - times[0]) / 1000
    online.client.script_flush()
    assert read_rows(online, [read], [keys], at)[0][0] == rows


def test_asyncio_read_equals_the_sync_read(example) -> None:
    """``aget_online_features`` (redis-py's asyncio client) answers exactly as ``get_online_features``:
    every feature of both views and the service's on-demand ones, at times where values are ready,
    re-evaluated from states, expired and missing; also many reads in flight at once."""
    store, online, prepared, last = example
    rows = [{"customer_id": f"C{i}"} for i in range(40)] + [{"customer_id": "nobody"}]
    features = [f"{pv.view.name}:{f}" for pv in prepared for f in pv.view.feature_names]
    times = (last, last + 2 * HOUR, last + 2 * DAY, last + 100 * DAY)

    def same(a, b) -> None:
        assert a.to_dict() == b.to_dict() and a.statuses == b.statuses and a.event_times == b.event_times

    async def main() -> None:
        online.client.script_flush()  # the first read finds no script: loaded again, the read retried
        try:
            for t in times:
                same(await store.aget_online_features(rows, features=features, at_ms=t),
                     store.get_online_features(rows, features=features, at_ms=t))
            request = {"current_amount": [5.0] * len(rows)}
            same(await store.aget_online_features(rows, feature_service="fraud_detection", request_data=request,
                                                  at_ms=last + HOUR),
                 store.get_online_features(rows, feature_service="fraud_detection", request_data=request,
                                           at_ms=last + HOUR))
            together = await asyncio.gather(*(store.aget_online_features([row], features=features, at_ms=last + HOUR)
                                              for row in rows))
            for row, got in zip(rows, together):
                same(got, store.get_online_features([row], features=features, at_ms=last + HOUR))
        finally:
            await store.aclose()
        assert not online._async_clients  # closed and forgotten

    asyncio.run(main())


def test_asyncio_read_needs_the_store_url(servers, unique_name) -> None:
    import redis

    online = RedisOnlineStore(redis.Redis.from_url(servers.redis_url), unique_name("p"))
    with pytest.raises(ConfigurationError, match="from_url"):
        asyncio.run(online.aread_packed(["k"], T0))


def test_on_demand_opting_in_computes_on_missing_inputs(example) -> None:
    store, _, _, last = example
    odfv = store.repo.odfvs["customer_derived_features"]
    store.repo.odfvs["customer_derived_features"] = odfv.model_copy(update={"compute_on_missing": True})
    store._plans.clear()
    try:
        resp = store.get_online_features(pd.DataFrame({"customer_id": ["nobody"]}),
                                         features=["customer_derived_features:high_value_customer"],
                                         request_data={"current_amount": [900.0]}, at_ms=last)
    finally:
        store.repo.odfvs["customer_derived_features"] = odfv
        store._plans.clear()
    assert resp.statuses["high_value_customer"] == [PRESENT] and resp.columns["high_value_customer"] == [True]
