"""Default feature repository of the demo: customers and their card transactions.

Load it with ``featurestore.repo.load_repo("examples/repo.py")``.  The history
file ``data/transactions.parquet`` (relative to this file) is written by the
demo data generator.
"""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd

from featurestore.definitions import (
    Activity,
    Aggregate,
    AllowedValues,
    BatchTransform,
    Embedding,
    Entity,
    EventSource,
    FeatureService,
    FeatureView,
    FileHistory,
    Latest,
    OnDemandFeatureView,
    Range,
    Relation,
)

customer = Entity(
    name="customer",
    join_key="customer_id",
    key_type="string",
    description="A card holder.",
)

transactions = EventSource(
    name="transactions",
    topic="transactions",
    schema={
        "transaction_id": "string",
        "customer_id": "string",
        "amount": "float64",
        "merchant_category": "string",
        "is_online": "bool",
        "event_time": "timestamp",
    },
    timestamp_field="event_time",
    entity_field="customer_id",
    event_id_field="transaction_id",
    allowed_lateness="5m",
    history=FileHistory(path="data/transactions.parquet", format="parquet"),
    description="Card transactions, one JSON event per purchase.",
)


def customer_segment_of(df: pd.DataFrame) -> np.ndarray:
    """Segment of each purchase by amount: premium >= 200, standard >= 50, else budget."""
    amount = pd.to_numeric(df["amount"], errors="coerce").fillna(0.0).to_numpy(dtype=float)
    return np.where(amount >= 200.0, "premium", np.where(amount >= 50.0, "standard", "budget")).astype(object)


EMBEDDING_DIM = 8


def transaction_embedding(df: pd.DataFrame) -> np.ndarray:
    """Deterministic 8-d vector per transaction: a hashed one-hot of the merchant
    category (crc32, stable across processes) scaled by log1p(amount), with the
    last component set to 1 for online purchases."""
    n = len(df)
    out = np.zeros((n, EMBEDDING_DIM), dtype=float)
    amount = pd.to_numeric(df["amount"], errors="coerce").fillna(0.0).clip(lower=0.0).to_numpy(dtype=float)
    scale = np.log1p(amount)
    for i, cat in enumerate(df["merchant_category"].tolist()):
        slot = zlib.crc32(str(cat).encode()) % (EMBEDDING_DIM - 1)
        out[i, slot] = scale[i]
    out[:, EMBEDDING_DIM - 1] = df["is_online"].fillna(False).astype(bool).to_numpy(dtype=float)
    return out


customer_stats = FeatureView(
    name="customer_stats",
    entity=customer,
    source=transactions,
    features=[
        Aggregate(name="total_purchases", column="transaction_id", function="count", window=None),
        Aggregate(name="total_spend", column="amount", function="sum", window=None),
        Aggregate(name="avg_amount_7d", column="amount", function="mean", window="7d"),
        Aggregate(name="purchases_24h", column="transaction_id", function="count", window="24h"),
        Aggregate(name="spend_1h", column="amount", function="sum", window="1h"),
        Aggregate(name="spend_24h", column="amount", function="sum", window="24h"),
        Aggregate(name="max_amount_7d", column="amount", function="max", window="7d"),
        Aggregate(name="min_amount_24h", column="amount", function="min", window="24h"),
        Aggregate(name="amount_stddev_7d", column="amount", function="stddev", window="7d"),
        Aggregate(name="distinct_categories_30d", column="merchant_category", function="count_distinct", window="30d"),
        Latest(name="last_category", column="merchant_category"),
        BatchTransform(
            name="customer_segment",
            inputs=["amount"],
            fn=customer_segment_of,
            dtype="string",
            description="Segment of the latest purchase: premium, standard or budget.",
        ),
        Aggregate(name="recent_amounts", column="amount", function="last_n", window="24h", n=5),
    ],
    ttl="90d",
    owner="risk-team",
    description="Purchase statistics per customer.",
    tags={"team": "risk", "domain": "payments"},
    expectations=[
        # a mean never exceeds the max of the same window (the tolerance absorbs float rounding)
        Relation("avg_amount_7d", "<=", "max_amount_7d", tolerance=1e-6),
        Range("total_spend", min=0, description="Amounts are positive."),
    ],
)

transaction_stats = FeatureView(
    name="transaction_stats",
    entity=customer,
    source=transactions,
    features=[
        Activity(name="events_1h", kind="count_events", window="1h"),
        Activity(name="events_per_minute_1h", kind="events_per_minute", window="1h"),
        Activity(name="seconds_since_last_txn", kind="seconds_since_last"),
        Aggregate(name="online_txn_24h", column="is_online", function="sum", window="24h"),
        Aggregate(name="first_amount_24h", column="amount", function="first", window="24h"),
        Aggregate(name="last_amount", column="amount", function="last", window="24h"),
        Aggregate(name="amount_var_24h", column="amount", function="var", window="24h"),
        BatchTransform(
            name="txn_embedding",
            inputs=["amount", "merchant_category", "is_online"],
            fn=transaction_embedding,
            dtype=Embedding(EMBEDDING_DIM),
            description="Embedding of the latest transaction.",
        ),
    ],
    ttl="30d",
    owner="risk-team",
    description="Transaction activity per customer.",
    tags={"team": "risk"},
)


def customer_derived(df: pd.DataFrame) -> pd.DataFrame:
    """purchase_frequency_score = purchases_24h / max(total_purchases, 1) (0 when
    unknown); high_value_customer = avg_amount_7d > 100 or current_amount > 500."""
    total = pd.to_numeric(df["total_purchases"], errors="coerce").fillna(0.0).clip(lower=1.0)
    recent = pd.to_numeric(df["purchases_24h"], errors="coerce").fillna(0.0)
    avg = pd.to_numeric(df["avg_amount_7d"], errors="coerce").fillna(0.0)
    current = pd.to_numeric(df["current_amount"], errors="coerce").fillna(0.0)
    return pd.DataFrame(
        {
            "purchase_frequency_score": (recent / total).astype(float),
            "high_value_customer": ((avg > 100.0) | (current > 500.0)).astype(bool),
        },
        index=df.index,
    )


customer_derived_features = OnDemandFeatureView(
    name="customer_derived_features",
    sources=[customer_stats[["total_purchases", "avg_amount_7d", "purchases_24h"]]],
    request_schema={"current_amount": "float64"},
    schema={"purchase_frequency_score": "float64", "high_value_customer": "bool"},
    fn=customer_derived,
    description="Request-time customer scores.",
)

fraud_detection = FeatureService(
    name="fraud_detection",
    features=[
        transaction_stats,
        customer_stats[["spend_1h", "max_amount_7d", "customer_segment"]],
        customer_derived_features,
    ],
    description="Features of the fraud model.",
    owner="risk-team",
)

recommendation = FeatureService(
    name="recommendation",
    features=[customer_stats[["total_purchases", "customer_segment", "distinct_categories_30d", "last_category"]]],
    description="Features of the recommendation model.",
    expectations=[AllowedValues("customer_segment", ["budget", "standard", "premium"])],
)
