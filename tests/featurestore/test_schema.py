"""Event validation: validate_event per rejection reason, validate_frame, parse_timestamp."""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from featurestore.definitions import EventSource
from featurestore.schema import REASONS, Rejection, ValidEvent, parse_timestamp, validate_event, validate_frame

T0 = 1714564800000  # 2024-05-01T12:00:00Z


@pytest.fixture(scope="module")
def source() -> EventSource:
    return EventSource(
        name="transactions",
        topic="transactions",
        schema={
            "transaction_id": "string",
            "customer_id": "string",
            "amount": "float64",
            "quantity": "int64",
            "is_online": "bool",
            "event_time": "timestamp",
            "coupon": "string",
        },
        timestamp_field="event_time",
        entity_field="customer_id",
        event_id_field="transaction_id",
        optional_fields=["coupon"],
    )


def event(**overrides):
    ev = {
        "transaction_id": "t1",
        "customer_id": "c1",
        "amount": 12.5,
        "quantity": 2,
        "is_online": True,
        "event_time": "2024-05-01T12:00:00Z",
        "coupon": None,
    }
    ev.update(overrides)
    return {k: v for k, v in ev.items() if v is not ...}


def test_parse_timestamp_forms():
    assert parse_timestamp("2024-05-01T12:00:00Z") == T0
    assert parse_timestamp("2024-05-01T12:00:00") == T0  # naive = UTC
    assert parse_timestamp("2024-05-01T14:00:00+02:00") == T0
    assert parse_timestamp("2024-05-01T07:00:00-05:00") == T0
    assert parse_timestamp("2024-05-01T12:00:00.123456Z") == T0 + 123
    assert parse_timestamp(T0) == T0
    assert parse_timestamp(np.int64(T0)) == T0
    assert parse_timestamp(datetime(2024, 5, 1, 12, tzinfo=timezone.utc)) == T0
    assert parse_timestamp(datetime(2024, 5, 1, 12)) == T0
    assert parse_timestamp(datetime(2024, 5, 1, 13, tzinfo=timezone(timedelta(hours=1)))) == T0
    assert parse_timestamp(pd.Timestamp("2024-05-01T12:00:00.5Z")) == T0 + 500
    for bad in (1714564800.0, True, None, "yesterday", "", [T0]):
        with pytest.raises(ValueError):
            parse_timestamp(bad)


def test_good_event(source):
    r = validate_event(source, event())
    assert isinstance(r, ValidEvent) and r.ok
    assert r.key == "c1"
    assert r.ts_ms == T0
    assert r.event_id == "t1"
    assert r.values == {
        "customer_id": "c1",
        "event_time": T0,
        "transaction_id": "t1",
        "amount": 12.5,
        "quantity": 2,
        "is_online": True,
        "coupon": None,
    }


@pytest.mark.parametrize(
    "ts",
    ["2024-05-01T12:00:00Z", "2024-05-01T12:00:00+00:00", "2024-05-01T13:30:00+01:30", "2024-05-01T12:00:00", T0],
)
def test_timestamp_forms_in_events(source, ts):
    assert validate_event(source, event(event_time=ts)).ts_ms == T0


def test_coercions_and_ignored_fields(source):
    r = validate_event(source, event(amount=3, coupon="SPRING", extra={"nested": 1}, coupon_missing=None))
    assert r.values["amount"] == 3.0 and type(r.values["amount"]) is float
    assert r.values["coupon"] == "SPRING"
    assert "extra" not in r.values
    r = validate_event(source, event(amount=float("nan"), coupon=...))
    assert math.isnan(r.values["amount"]) and r.values["coupon"] is None


@pytest.mark.parametrize(
    "ev, reason, detail",
    [
        ([1, 2], "not_an_object", "event is list [1, 2], expected a JSON object"),
        ("text", "not_an_object", "event is str 'text', expected a JSON object"),
        (event(customer_id=...), "missing_entity_key", "entity field 'customer_id' is missing or empty"),
        (event(customer_id=None), "missing_entity_key", "entity field 'customer_id' is missing or empty"),
        (event(customer_id=""), "missing_entity_key", "entity field 'customer_id' is missing or empty"),
        (event(customer_id=42), "wrong_type", "entity field 'customer_id': expected string, got int 42"),
        (event(event_time=...), "missing_field", "timestamp field 'event_time' is missing or null"),
        (event(event_time="last tuesday"), "bad_timestamp",
         "timestamp field 'event_time': cannot parse 'last tuesday' as ISO-8601"),
        (event(event_time=1714564800.5), "bad_timestamp",
         "timestamp field 'event_time': expected an ISO-8601 timestamp, epoch ms int or datetime, "
         "got float 1714564800.5"),
        (event(event_time=True), "bad_timestamp",
         "timestamp field 'event_time': expected an ISO-8601 timestamp, epoch ms int or datetime, got bool True"),
        (event(amount=...), "missing_field", "field 'amount' is missing"),
        (event(amount=None), "missing_field", "field 'amount' is null"),
        (event(amount="12.5"), "wrong_type", "field 'amount': expected float64, got str '12.5'"),
        (event(quantity=True), "wrong_type", "field 'quantity': expected int64, got bool True"),
        (event(quantity=2.0), "wrong_type", "field 'quantity': expected int64, got float 2.0"),
        (event(is_online=1), "wrong_type", "field 'is_online': expected bool, got int 1"),
        (event(coupon=7), "wrong_type", "field 'coupon': expected string, got int 7"),
    ],
)
def test_rejections(source, ev, reason, detail):
    r = validate_event(source, ev)
    assert isinstance(r, Rejection) and not r.ok
    assert r.reason in REASONS
    assert (r.reason, r.detail) == (reason, detail)


def test_int_entity_and_event_id():
    src = EventSource(
        name="cards",
        topic="cards",
        schema={"card_id": "int64", "seq": "int64", "ts": "timestamp"},
        timestamp_field="ts",
        entity_field="card_id",
        event_id_field="seq",
    )
    r = validate_event(src, {"card_id": 7, "seq": 99, "ts": 5})
    assert (r.key, r.ts_ms, r.event_id) == (7, 5, "99")
    assert validate_event(src, {"card_id": "7", "seq": 1, "ts": 5}).reason == "wrong_type"
    assert validate_event(src, {"card_id": 0, "seq": 1, "ts": 5}).key == 0


def test_validate_frame_keeps_valid_rows_and_reports_bad_ones(source):
    df = pd.DataFrame(
        {
            "transaction_id": ["t0", "t1", "t2", "t3", "t4", "t5", None],
            "customer_id": ["c0", None, "c2", "c3", "c4", "", "c6"],
            "amount": [1.0, 2.0, 3.0, np.nan, 5.0, 6.0, 7.0],
            "quantity": [1, 2, 3, 4, 5, 6, 7],
            "is_online": [True, False, True, False, True, False, True],
            "event_time": ["2024-05-01T12:00:00Z", "2024-05-01T12:00:00Z", "bad", T0 + 3, "2024-05-01T14:00:04+02:00",
                           T0, T0],
        },
        index=[100, 101, 102, 103, 104, 105, 106],
    )
    valid, rejects = validate_frame(source, df)
    assert list(valid.index) == [100, 103, 104]
    assert list(valid.columns) == ["__key", "__ts", "__event_id", "transaction_id", "customer_id", "amount",
                                   "quantity", "is_online", "event_time", "coupon"]
    assert valid["__key"].tolist() == ["c0", "c3", "c4"]
    assert valid["__ts"].tolist() == [T0, T0 + 3, T0 + 4000]
    assert valid["__ts"].dtype == np.int64
    assert valid["__event_id"].tolist() == ["t0", "t3", "t4"]
    assert math.isnan(valid.loc[103, "amount"])  # NaN is a float value
    assert valid["quantity"].tolist() == [1, 4, 5] and valid["quantity"].dtype == np.int64
    assert valid["is_online"].tolist() == [True, False, True]
    assert valid["coupon"].tolist() == [None, None, None]  # optional column absent
    assert rejects.to_dict("records") == [
        {"row": 101, "reason": "missing_entity_key", "detail": "entity field 'customer_id' is missing or empty"},
        {"row": 102, "reason": "bad_timestamp",
         "detail": "timestamp field 'event_time': expected an ISO-8601 timestamp or epoch ms, got str 'bad'"},
        {"row": 105, "reason": "missing_entity_key", "detail": "entity field 'customer_id' is missing or empty"},
        {"row": 106, "reason": "missing_field", "detail": "field 'transaction_id' is null"},
    ]


def test_validate_frame_typed_columns(source):
    df = pd.DataFrame(
        {
            "transaction_id": ["a", "b", "c"],
            "customer_id": ["c1", "c2", "c3"],
            "amount": [1, 2, 3],  # ints are fine for float64
            "quantity": [1.0, 2.5, np.nan],  # ints with nulls arrive as floats
            "is_online": [True, False, True],
            "event_time": pd.to_datetime(["2024-05-01T12:00:00Z", "2024-05-01T12:00:01Z", None], utc=True),
            "coupon": ["x", None, "z"],
        }
    )
    valid, rejects = validate_frame(source, df)
    assert valid.index.tolist() == [0]
    assert valid["amount"].tolist() == [1.0] and valid["amount"].dtype == np.float64
    assert valid["quantity"].tolist() == [1] and valid["__ts"].tolist() == [T0]
    assert rejects[["row", "reason"]].values.tolist() == [[1, "wrong_type"], [2, "missing_field"]]
    assert rejects["detail"].tolist()[0] == "field 'quantity': expected int64, got float 2.5"


def test_validate_frame_missing_required_column(source):
    df = pd.DataFrame({"transaction_id": ["a"], "customer_id": ["c"], "amount": [1.0], "quantity": [1],
                       "event_time": [T0]})
    valid, rejects = validate_frame(source, df)
    assert valid.empty
    assert rejects.to_dict("records") == [
        {"row": 0, "reason": "missing_field", "detail": "field 'is_online' is missing"}
    ]


def test_validate_frame_agrees_with_validate_event(source):
    rng = random.Random(7)
    choices = {
        "transaction_id": ["t", None, 5],
        "customer_id": ["c1", "c2", None, "", 3],
        "amount": [1.5, 2, None, "x", True, float("nan")],
        "quantity": [1, None, 2.5, False],
        "is_online": [True, False, None, 0],
        "event_time": ["2024-05-01T12:00:00Z", T0, None, "nope", 1.5, "2024-05-01T12:00:00+02:00"],
        "coupon": [None, "c", 3],
    }
    events = [{k: rng.choice(v) for k, v in choices.items()} for _ in range(400)]
    df = pd.DataFrame({k: pd.Series([e[k] for e in events], dtype=object) for k in choices})
    valid, rejects = validate_frame(source, df)
    by_row = dict(zip(rejects["row"], rejects["reason"]))
    n_valid = 0
    for i, ev in enumerate(events):
        r = validate_event(source, ev)
        if r.ok:
            n_valid += 1
            assert i in valid.index
            row = valid.loc[i]
            assert row["__key"] == r.key and row["__ts"] == r.ts_ms and row["__event_id"] == r.event_id
        else:
            assert by_row[i] == r.reason, (i, ev, r)
    assert len(valid) == n_valid and len(valid) + len(rejects) == len(events)
    assert n_valid > 0


def test_validate_event_is_fast(source):
    import time

    ev = event(event_time=T0)
    validate_event(source, ev)
    n = 20_000
    start = time.perf_counter()
    for _ in range(n):
        validate_event(source, ev)
    per_event = (time.perf_counter() - start) / n
    assert per_event < 20e-6  # ~1-2 µs on a laptop; loose bound for slow CI
