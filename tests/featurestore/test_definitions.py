"""Definitions: compilation to AggSpecs, validation errors, fingerprints, selections."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from featurestore.definitions import (
    Activity,
    Aggregate,
    BatchTransform,
    Embedding,
    Entity,
    EventSource,
    FeatureSelection,
    FeatureService,
    FeatureView,
    FileHistory,
    Latest,
    OnDemandFeatureView,
    TableHistory,
)
from featurestore.exceptions import DefinitionError, InvalidInputError, UnknownNameError
from featurestore.types import (
    BOOL,
    FLOAT64,
    INT64,
    LIST_FLOAT64,
    LIST_INT64,
    STRING,
    TIMESTAMP,
    ValueType,
)
from transforms.specs import AggSpec
from transforms.windows import DAY, HOUR, MINUTE

SCHEMA = {
    "transaction_id": "string",
    "customer_id": "string",
    "amount": "float64",
    "quantity": "int64",
    "merchant_category": "string",
    "is_online": "bool",
    "event_time": "timestamp",
}


@pytest.fixture
def customer() -> Entity:
    return Entity(name="customer", join_key="customer_id")


@pytest.fixture
def source() -> EventSource:
    return EventSource(
        name="transactions",
        topic="transactions",
        schema=SCHEMA,
        timestamp_field="event_time",
        entity_field="customer_id",
        event_id_field="transaction_id",
        allowed_lateness="5m",
    )


def make_view(customer, source, features, **kw) -> FeatureView:
    return FeatureView(name=kw.pop("name", "customer_stats"), entity=customer, source=source, features=features, **kw)


# -- value types -----------------------------------------------------------------------


def test_value_type_names_roundtrip_and_pg_types():
    expected = {
        "int64": "bigint",
        "float64": "double precision",
        "string": "text",
        "bool": "boolean",
        "list<int64>": "bigint[]",
        "list<float64>": "double precision[]",
        "embedding<128>": "real[]",
        "timestamp": "timestamptz",
    }
    for name, pg in expected.items():
        t = ValueType.parse(name)
        assert t.name == name
        assert t.pg_type == pg
        assert ValueType.parse(t.name) == t
    assert ValueType.parse("embedding<128>") == Embedding(128)
    assert Embedding(4).dim == 4
    with pytest.raises(ValueError, match="unknown type 'decimal'"):
        ValueType.parse("decimal")


def test_value_type_coerce_rules():
    assert INT64.coerce(5) == 5
    assert INT64.coerce(np.int32(7)) == 7
    with pytest.raises(ValueError, match="expected int64, got bool True"):
        INT64.coerce(True)
    with pytest.raises(ValueError, match="expected int64, got float 1.5"):
        INT64.coerce(1.5)
    assert FLOAT64.coerce(3) == 3.0 and type(FLOAT64.coerce(3)) is float
    assert math.isnan(FLOAT64.coerce(float("nan")))
    with pytest.raises(ValueError, match="expected float64, got bool"):
        FLOAT64.coerce(False)
    with pytest.raises(ValueError, match="expected float64, got str"):
        FLOAT64.coerce("1.0")
    assert BOOL.coerce(np.bool_(True)) is True
    with pytest.raises(ValueError, match="expected bool, got int 1"):
        BOOL.coerce(1)
    assert STRING.coerce("x") == "x"
    with pytest.raises(ValueError, match="expected string"):
        STRING.coerce(3)
    assert LIST_INT64.coerce((1, 2)) == [1, 2]
    with pytest.raises(ValueError, match="element expected int64"):
        LIST_INT64.coerce([1, 2.5])
    assert LIST_FLOAT64.coerce([1, 2.5]) == [1.0, 2.5]
    assert Embedding(3).coerce(np.array([1, 2, 3])) == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match=r"expected embedding<3>, got 2 values"):
        Embedding(3).coerce([1.0, 2.0])
    assert TIMESTAMP.coerce("1970-01-01T00:00:01Z") == 1000


# -- valid definitions compile -----------------------------------------------------------


def test_features_compile_to_aggspecs(customer, source):
    view = make_view(
        customer,
        source,
        [
            Aggregate(name="total_purchases", column="transaction_id", function="count"),
            Aggregate(name="spend_1h", column="amount", function="sum", window="1h"),
            Aggregate(name="spend_1h_exact", column="amount", function="sum", window="1h", hop=1),
            Aggregate(name="recent_amounts", column="amount", function="last_n", window="24h", n=5),
            Aggregate("qty_max_7d", "quantity", "max", "7d", "1d"),
            Activity(name="events_1h", kind="count_events", window="1h"),
            Activity(name="seconds_since_last", kind="seconds_since_last"),
            Latest(name="last_category", column="merchant_category"),
        ],
    )
    assert view.agg_specs() == [
        AggSpec("total_purchases", "count", "transaction_id", None, None, 0),
        AggSpec("spend_1h", "sum", "amount", HOUR, MINUTE, 0),
        AggSpec("spend_1h_exact", "sum", "amount", HOUR, 1, 0),
        AggSpec("recent_amounts", "last_n", "amount", DAY, 15 * MINUTE, 5),
        AggSpec("qty_max_7d", "max", "quantity", 7 * DAY, DAY, 0),
        AggSpec("events_1h", "count_events", None, HOUR, MINUTE, 0),
        AggSpec("seconds_since_last", "seconds_since_last", None, None, None, 0),
        AggSpec("last_category", "last", "merchant_category", None, None, 0),
    ]
    dtypes = {f.name: f.dtype for f in view.features}
    assert dtypes == {
        "total_purchases": INT64,
        "spend_1h": FLOAT64,
        "spend_1h_exact": FLOAT64,
        "recent_amounts": LIST_FLOAT64,
        "qty_max_7d": FLOAT64,
        "events_1h": INT64,
        "seconds_since_last": FLOAT64,
        "last_category": STRING,
    }
    assert source.allowed_lateness == 5 * MINUTE


def test_output_dtypes_follow_function_and_column(customer, source):
    view = make_view(
        customer,
        source,
        [
            Aggregate(name="q_last_n", column="quantity", function="last_n", n=3, window="1h"),
            Aggregate(name="q_first", column="quantity", function="first", window="1h"),
            Aggregate(name="online_sum", column="is_online", function="sum", window="1h"),
            Aggregate(name="cats", column="merchant_category", function="count_distinct", window="1d"),
            Activity(name="epm", kind="events_per_minute", window="10m"),
        ],
    )
    assert [view.dtype(n) for n in view.feature_names] == [LIST_INT64, INT64, FLOAT64, INT64, FLOAT64]


def test_batch_transform_compiles_and_applies(customer, source):
    def double(df: pd.DataFrame) -> pd.Series:
        return df["amount"] * 2

    def embed(df: pd.DataFrame) -> np.ndarray:
        return np.column_stack([df["amount"], df["quantity"]])

    view = make_view(
        customer,
        source,
        [
            BatchTransform(name="double_amount", inputs=["amount"], fn=double, dtype="float64"),
            BatchTransform(name="vec", inputs=["amount", "quantity"], fn=embed, dtype=Embedding(2)),
        ],
    )
    assert view.agg_specs() == [
        AggSpec("double_amount", "last", "__bt_double_amount"),
        AggSpec("vec", "last", "__bt_vec"),
    ]
    assert [bt.name for bt in view.batch_transforms()] == ["double_amount", "vec"]
    df = pd.DataFrame({"amount": [1.5, 2.0], "quantity": [3, 4]}, index=[10, 11])
    out = view.feature("double_amount").apply(df)
    assert out.name == "__bt_double_amount"
    assert out.to_dict() == {10: 3.0, 11: 4.0}
    vecs = view.feature("vec").apply(df)
    assert vecs.tolist() == [[1.5, 3.0], [2.0, 4.0]]
    assert view.to_json()["features"][1]["fn"] == "test_batch_transform_compiles_and_applies.<locals>.embed"


def test_batch_transform_apply_rejects_bad_output():
    wrong_dim = BatchTransform(name="vec", inputs=["a"], fn=lambda df: np.zeros((len(df), 3)), dtype=Embedding(4))
    df = pd.DataFrame({"a": [1.0, 2.0]})
    with pytest.raises(InvalidInputError, match=(
        r"BatchTransform 'vec': output is not embedding<4>: row 0: expected embedding<4>, got 3 values"
    )):
        wrong_dim.apply(df)
    short = BatchTransform(name="short", inputs=["a"], fn=lambda df: [1.0], dtype="float64")
    with pytest.raises(InvalidInputError, match=(
        "BatchTransform 'short': output is not float64: got 1 values for 2 rows"
    )):
        short.apply(df)
    strings = BatchTransform(name="s", inputs=["a"], fn=lambda df: ["x", "y"], dtype="int64")
    with pytest.raises(InvalidInputError, match="BatchTransform 's'.*expected int64, got str 'x'"):
        strings.apply(df)
    with pytest.raises(InvalidInputError, match=r"BatchTransform 'short': input frame lacks columns \['a'\]"):
        short.apply(pd.DataFrame({"b": [1]}))


def test_positional_and_history_arguments():
    assert Aggregate("s", "amount", "sum", "1h").window == HOUR
    assert FileHistory("x/events.csv").format == "csv"
    assert TableHistory("public.events").table == "public.events"
    with pytest.raises(DefinitionError, match="cannot infer the format"):
        FileHistory(path="events.json")


# -- invalid definitions ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"name": "Customer", "join_key": "customer_id"},
         "Entity 'Customer': field 'name': name 'Customer' is not a valid name"),
        ({"name": "customer", "join_key": "select"},
         "Entity 'customer': field 'join_key': join_key 'select' is an SQL reserved word"),
        ({"name": "__customer", "join_key": "id"}, "names starting with '__' are internal"),
        ({"name": "customer", "join_key": "id", "key_type": "float64"}, "Entity 'customer': field 'key_type'"),
        ({"name": "customer", "join_key": "id", "colour": "red"}, "Entity 'customer': unknown field 'colour'"),
        ({"name": "customer"}, "Entity 'customer': field 'join_key' is required"),
    ],
)
def test_bad_entity(kwargs, fragment):
    with pytest.raises(DefinitionError) as info:
        Entity(**kwargs)
    assert fragment in str(info.value)


def test_bad_source_fields():
    base = dict(name="tx", topic="tx", schema=SCHEMA, timestamp_field="event_time", entity_field="customer_id")
    with pytest.raises(DefinitionError, match=(
        r"EventSource 'tx': field 'timestamp_field': 'ts' is not in the schema \(fields: transaction_id, "
    )):
        EventSource(**{**base, "timestamp_field": "ts"})
    with pytest.raises(DefinitionError, match=(
        "EventSource 'tx': field 'timestamp_field': 'amount' has type float64, expected timestamp"
    )):
        EventSource(**{**base, "timestamp_field": "amount"})
    with pytest.raises(DefinitionError, match=(
        "EventSource 'tx': field 'schema.amount': unknown type 'money'; choose from int64, float64"
    )):
        EventSource(**{**base, "schema": {**SCHEMA, "amount": "money"}})
    with pytest.raises(DefinitionError, match=(
        "EventSource 'tx': field 'schema': field 'order' is an SQL reserved word"
    )):
        EventSource(**{**base, "schema": {**SCHEMA, "order": "string"}})
    with pytest.raises(DefinitionError, match=(
        "EventSource 'tx': field 'allowed_lateness': cannot parse duration 'soon'"
    )):
        EventSource(**{**base, "allowed_lateness": "soon"})
    with pytest.raises(DefinitionError, match="EventSource 'tx': field 'topic'"):
        EventSource(**{**base, "topic": "bad topic!"})
    with pytest.raises(DefinitionError, match=(
        "EventSource 'tx': field 'optional_fields': 'customer_id' is the timestamp or entity field"
    )):
        EventSource(**{**base, "optional_fields": ["customer_id"]})


def test_unknown_column_names_view_feature_and_fields(customer, source):
    with pytest.raises(DefinitionError) as info:
        make_view(customer, source, [Aggregate(name="amount_sum_1h", column="amout", function="sum", window="1h")])
    assert str(info.value) == (
        "FeatureView 'customer_stats': feature 'amount_sum_1h': column 'amout' is not in source 'transactions' "
        "(fields: transaction_id, customer_id, amount, quantity, merchant_category, is_online, event_time)"
    )


def test_numeric_function_on_string_column(customer, source):
    with pytest.raises(DefinitionError, match=(
        "FeatureView 'customer_stats': feature 'cat_sum': function 'sum' needs a numeric column "
        r"\(int64, float64 or bool\), got string"
    )):
        make_view(customer, source,
                  [Aggregate(name="cat_sum", column="merchant_category", function="sum", window="1h")])


def test_last_n_on_strings_is_rejected(customer, source):
    with pytest.raises(DefinitionError, match=(
        "FeatureView 'customer_stats': feature 'cats': function 'last_n' needs an int64 or float64 column, "
        "got string"
    )):
        make_view(customer, source,
                  [Aggregate(name="cats", column="merchant_category", function="last_n", n=3, window="1h")])


def test_hop_must_divide_window(customer, source):
    with pytest.raises(DefinitionError, match=(
        "FeatureView 'customer_stats': feature 'spend_1h': aggregation 'spend_1h': "
        "hop 420000 ms must be positive and divide the window 3600000 ms"
    )):
        make_view(customer, source,
                  [Aggregate(name="spend_1h", column="amount", function="sum", window="1h", hop="7m")])


def test_window_longer_than_90_days(customer, source):
    with pytest.raises(DefinitionError, match=(
        r"FeatureView 'customer_stats': feature 'spend_100d': .*outside \[1 s, 90 d\]"
    )):
        make_view(customer, source, [Aggregate(name="spend_100d", column="amount", function="sum", window="100d")])
    with pytest.raises(DefinitionError, match=r"feature 'tiny': .*outside \[1 s, 90 d\]"):
        make_view(customer, source, [Activity(name="tiny", kind="count_events", window="500ms")])


def test_duplicate_feature_names(customer, source):
    with pytest.raises(DefinitionError, match="FeatureView 'customer_stats': feature 'spend': duplicate feature name"):
        make_view(
            customer,
            source,
            [
                Aggregate(name="spend", column="amount", function="sum", window="1h"),
                Aggregate(name="spend", column="amount", function="sum", window="24h"),
            ],
        )


def test_feature_level_errors():
    with pytest.raises(DefinitionError, match="Aggregate 'last_amounts': field 'n': function 'last_n' needs n"):
        Aggregate(name="last_amounts", column="amount", function="last_n")
    with pytest.raises(DefinitionError, match="Aggregate 'x': field 'function': Input should be 'sum'"):
        Aggregate(name="x", column="amount", function="median")
    with pytest.raises(DefinitionError, match="Aggregate 'x': field 'hop': a lifetime aggregation"):
        Aggregate(name="x", column="amount", function="sum", hop="1m")
    with pytest.raises(DefinitionError, match="Activity 'x': field 'window': events_per_minute needs a window"):
        Activity(name="x", kind="events_per_minute")
    with pytest.raises(DefinitionError, match="Latest 'from': field 'name': name 'from' is an SQL reserved word"):
        Latest(name="from", column="amount")
    with pytest.raises(DefinitionError, match="Latest '__x': field 'name'.*reserved"):
        Latest(name="__x", column="amount")


def test_view_level_errors(customer, source):
    with pytest.raises(DefinitionError, match=(
        "FeatureView 'v': field 'features': a feature view needs at least one feature"
    )):
        make_view(customer, source, [], name="v")
    with pytest.raises(DefinitionError, match="FeatureView 'v': field 'features': item 0 is str"):
        make_view(customer, source, ["amount"], name="v")
    with pytest.raises(DefinitionError, match="feature 'customer_id': name clashes with the entity join key"):
        make_view(customer, source, [Latest(name="customer_id", column="customer_id")])
    with pytest.raises(DefinitionError, match=(
        "FeatureView 'customer_stats': field 'entity': entity 'card' has key_type int64"
    )):
        make_view(Entity(name="card", join_key="card_id", key_type="int64"), source,
                  [Latest(name="a", column="amount")])
    with pytest.raises(DefinitionError, match="feature 'a': dtype int64 does not match the computed type float64"):
        make_view(customer, source, [Latest(name="a", column="amount", dtype="int64")])
    with pytest.raises(DefinitionError, match="feature 'a': default 'zero' is not float64"):
        make_view(customer, source, [Latest(name="a", column="amount", default="zero")])
    with pytest.raises(DefinitionError, match=r"feature 'bt': inputs 'nope' is not in source 'transactions'"):
        make_view(customer, source, [BatchTransform(name="bt", inputs=["nope"], fn=len, dtype="int64")])


NUL = "remove the NUL character"


@pytest.mark.parametrize(("build", "message"), [
    (lambda c, s: Entity(name="customer", join_key="customer_id", description="A card\x00holder."),
     "Entity 'customer': field 'description': has a NUL character"),
    (lambda c, s: EventSource(name="tx", topic="tx", schema=SCHEMA, timestamp_field="event_time",
                              entity_field="customer_id", description="events\x00"),
     "EventSource 'tx': field 'description': has a NUL character"),
    (lambda c, s: make_view(c, s, [Latest(name="a", column="amount")], description="\x00stats"),
     "FeatureView 'customer_stats': field 'description': has a NUL character"),
    (lambda c, s: make_view(c, s, [Latest(name="a", column="amount")], owner="risk\x00"),
     "FeatureView 'customer_stats': field 'owner': has a NUL character"),
    (lambda c, s: make_view(c, s, [Latest(name="a", column="amount")], tags={"team": "ri\x00sk"}),
     r"FeatureView 'customer_stats': field 'tags': has a NUL character \('\\x00'\) at \['team'\]"),
    (lambda c, s: make_view(c, s, [Latest(name="a", column="amount")], tags={"te\x00am": "risk"}),
     r"FeatureView 'customer_stats': field 'tags': has a NUL character \('\\x00'\) at key 'te\\x00am'"),
    (lambda c, s: Latest(name="a", column="amount", description="last\x00"),
     "Latest 'a': field 'description': has a NUL character"),
    (lambda c, s: FeatureService(name="svc", features=[make_view(c, s, [Latest(name="a", column="amount")])],
                                 description="\x00"),
     "FeatureService 'svc': field 'description': has a NUL character"),
], ids=["entity", "source", "view", "owner", "tag-value", "tag-key", "feature", "service"])
def test_nul_character_in_any_string_is_rejected(customer, source, build, message):
    """PostgreSQL text cannot hold NUL: `apply` would fail half way with an asyncpg error."""
    with pytest.raises(DefinitionError, match=message) as info:
        build(customer, source)
    assert str(info.value).endswith(NUL)


# -- fingerprints ------------------------------------------------------------------------------


def test_fingerprint_tracks_computation_only(customer, source):
    def view(window="1h", **kw):
        feats = [Aggregate(name="spend", column="amount", function="sum", window=window,
                           description=kw.pop("fdesc", ""))]
        return make_view(customer, source, feats, **kw)

    base = view().fingerprint()
    assert len(base) == 64 and int(base, 16) >= 0
    assert view().fingerprint() == base
    assert view(description="new words", owner="me", tags={"a": "b"}, ttl="30d", fdesc="x").fingerprint() == base
    assert view(window="2h").fingerprint() != base
    assert view(window="60m").fingerprint() == base  # same duration, same computation
    later = source.model_copy(update={"allowed_lateness": 10 * MINUTE})
    assert make_view(customer, later,
                     [Aggregate(name="spend", column="amount", function="sum", window="1h")]).fingerprint() != base


def test_fingerprint_of_batch_transform_follows_source_code(customer, source):
    def seg_a(df):
        return df["amount"] > 1

    def seg_b(df):
        return df["amount"] > 2

    fa = make_view(customer, source,
                   [BatchTransform(name="seg", inputs=["amount"], fn=seg_a, dtype="bool")]).fingerprint()
    fb = make_view(customer, source,
                   [BatchTransform(name="seg", inputs=["amount"], fn=seg_b, dtype="bool")]).fingerprint()
    assert fa != fb


def test_to_json_has_no_callables(customer, source):
    import json

    view = make_view(
        customer,
        source,
        [BatchTransform(name="seg", inputs=["amount"], fn=lambda df: df["amount"] > 1, dtype="bool"),
         Aggregate(name="spend", column="amount", function="sum", window="1h")],
        ttl="30d",
    )
    doc = json.loads(json.dumps(view.to_json()))
    assert doc["ttl"] == "30d" and doc["ttl_ms"] == 30 * DAY
    assert doc["features"][0]["fn"].endswith("<lambda>")
    assert doc["features"][1] == {
        "name": "spend", "kind": "Aggregate", "column": "amount", "function": "sum", "window": "1h",
        "hop": None, "n": None, "dtype": "float64", "description": "", "default": None,
    }
    assert doc["source"]["schema"]["event_time"] == "timestamp"
    assert doc["fingerprint"] == view.fingerprint()


# -- selections, services, on-demand views ---------------------------------------------------


@pytest.fixture
def views(customer, source):
    stats = make_view(
        customer,
        source,
        [
            Aggregate(name="total_purchases", column="transaction_id", function="count"),
            Aggregate(name="avg_amount_7d", column="amount", function="mean", window="7d"),
            Aggregate(name="purchases_24h", column="transaction_id", function="count", window="24h"),
        ],
    )
    activity = make_view(customer, source, [Activity(name="events_1h", kind="count_events", window="1h")],
                         name="activity")
    return stats, activity


def scores(df: pd.DataFrame) -> pd.DataFrame:
    total = pd.to_numeric(df["total_purchases"], errors="coerce").fillna(0).clip(lower=1)
    recent = pd.to_numeric(df["purchases_24h"], errors="coerce").fillna(0)
    avg = pd.to_numeric(df["avg_amount_7d"], errors="coerce").fillna(0)
    return pd.DataFrame({"frequency": recent / total, "high_value": (avg > 100) | (df["current_amount"] > 500)})


def test_selection_and_service_resolution(views):
    stats, activity = views
    sel = stats[["avg_amount_7d", "total_purchases"]]
    assert isinstance(sel, FeatureSelection)
    assert sel.resolve() == [("customer_stats", "avg_amount_7d"), ("customer_stats", "total_purchases")]
    with pytest.raises(UnknownNameError, match=(
        "FeatureView 'customer_stats' has no feature 'nope' .features: total_purchases, avg_amount_7d, purchases_24h."
    )):
        stats[["nope"]]
    with pytest.raises(UnknownNameError, match="has no feature 'x'"):
        stats.feature("x")
    odfv = OnDemandFeatureView(
        name="derived",
        sources=[stats[["total_purchases", "purchases_24h", "avg_amount_7d"]]],
        request_schema={"current_amount": "float64"},
        schema={"frequency": "float64", "high_value": "bool"},
        fn=scores,
    )
    service = FeatureService(name="fraud", features=[activity, sel, odfv, stats[["total_purchases"]]])
    assert service.resolve() == [
        ("activity", "events_1h"),
        ("customer_stats", "avg_amount_7d"),
        ("customer_stats", "total_purchases"),
        ("derived", "frequency"),
        ("derived", "high_value"),
    ]
    assert [v.name for v in service.views()] == ["activity", "customer_stats"]
    assert service.to_json()["features"][2] == {"odfv": "derived", "features": ["frequency", "high_value"]}
    with pytest.raises(DefinitionError, match="FeatureService 'empty': field 'features'"):
        FeatureService(name="empty", features=[])


def test_odfv_compute(views):
    stats, _ = views
    odfv = OnDemandFeatureView(
        name="derived",
        sources=[stats],
        request_schema={"current_amount": "float64"},
        schema={"frequency": "float64", "high_value": "bool"},
        fn=scores,
    )
    assert odfv.input_columns() == ["total_purchases", "avg_amount_7d", "purchases_24h", "current_amount"]
    df = pd.DataFrame(
        {
            "total_purchases": [10, None, 4],
            "avg_amount_7d": [150.0, np.nan, 20.0],
            "purchases_24h": [2, None, 4],
            "current_amount": [10.0, 600.0, 5.0],
            "unrelated": ["a", "b", "c"],
        },
        index=["c1", "c2", "c3"],
    )
    out = odfv.compute(df)
    assert list(out.columns) == ["frequency", "high_value"]
    assert list(out.index) == ["c1", "c2", "c3"]
    assert out["frequency"].tolist() == [0.2, 0.0, 1.0]
    assert out["high_value"].tolist() == [True, True, False]
    assert out["frequency"].dtype == np.float64 and out["high_value"].dtype == bool
    with pytest.raises(InvalidInputError, match=(
        r"OnDemandFeatureView 'derived': input frame lacks columns \['current_amount'\]"
    )):
        odfv.compute(df.drop(columns=["current_amount"]))


def test_odfv_compute_checks_output():
    ent = Entity(name="customer", join_key="customer_id")
    src = EventSource(name="tx", topic="tx", schema=SCHEMA, timestamp_field="event_time", entity_field="customer_id")
    view = FeatureView(name="v", entity=ent, source=src, features=[Latest(name="amount", column="amount")])
    df = pd.DataFrame({"amount": [1.0, 2.0]})

    def odfv(fn, schema=None):
        return OnDemandFeatureView(name="o", sources=[view], schema=schema or {"x": "float64"}, fn=fn)

    with pytest.raises(InvalidInputError, match=(
        r"OnDemandFeatureView 'o': fn returned columns \['y'\], expected \['x'\] "
        r"\(missing \['x'\], unexpected \['y'\]\)"
    )):
        odfv(lambda d: pd.DataFrame({"y": d["amount"]})).compute(df)
    with pytest.raises(InvalidInputError, match="OnDemandFeatureView 'o': fn returned 1 rows for 2 input rows"):
        odfv(lambda d: pd.DataFrame({"x": [1.0]})).compute(df)
    with pytest.raises(InvalidInputError, match=(
        "OnDemandFeatureView 'o': output 'x' is not float64: row 1: expected float64, got str 'b'"
    )):
        odfv(lambda d: pd.DataFrame({"x": [1.0, "b"]})).compute(df)
    with pytest.raises(InvalidInputError, match="OnDemandFeatureView 'o': fn returned Series"):
        odfv(lambda d: d["amount"]).compute(df)
    with pytest.raises(InvalidInputError, match="OnDemandFeatureView 'o': fn raised ZeroDivisionError"):
        odfv(lambda d: 1 / 0).compute(df)
    out = odfv(lambda d: pd.DataFrame({"x": [1, None]}, dtype=object), {"x": "int64"}).compute(df)
    assert out["x"].tolist() == [1, pd.NA] and str(out["x"].dtype) == "Int64"


def test_odfv_rejects_ambiguous_inputs(views):
    stats, activity = views
    clash = make_view(
        Entity(name="customer", join_key="customer_id"),
        stats.source,
        [Aggregate(name="total_purchases", column="transaction_id", function="count", window="1h")],
        name="other_stats",
    )
    with pytest.raises(DefinitionError, match=(
        "OnDemandFeatureView 'o': field 'sources': feature 'total_purchases' is in both 'customer_stats' "
        "and 'other_stats'"
    )):
        OnDemandFeatureView(name="o", sources=[stats, clash], schema={"x": "float64"}, fn=scores)
    with pytest.raises(DefinitionError, match=(
        "OnDemandFeatureView 'o': field 'request_schema': 'events_1h' is also a feature of 'activity'"
    )):
        OnDemandFeatureView(name="o", sources=[activity], request_schema={"events_1h": "int64"},
                            schema={"x": "float64"}, fn=scores)
    with pytest.raises(DefinitionError, match=(
        "OnDemandFeatureView 'o': field 'schema': field 'Bad' is not a valid name"
    )):
        OnDemandFeatureView(name="o", sources=[activity], schema={"Bad": "float64"}, fn=scores)
