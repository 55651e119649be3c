"""Sends events to a source's topic, keyed by entity so one entity stays on one partition."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import orjson
import pandas as pd
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError
from tqdm import tqdm

from featurestore.definitions import EventSource
from featurestore.exceptions import InvalidInputError

logger = logging.getLogger(__name__)

CATEGORIES = ("grocery", "electronics", "travel", "restaurants", "fashion", "fuel", "health", "entertainment")


def generate_transactions(n: int, customers: int = 1000, days: float = 7.0, end_ms: int | None = None,
                          seed: int = 42) -> pd.DataFrame:
    """The demo's card transactions: skewed customer activity, lognormal amounts, in time order.

    Times end at ``end_ms`` (default: now) and span ``days``; ISO-8601 UTC strings.
    """
    rng = np.random.default_rng(seed)
    end = end_ms if end_ms is not None else time.time_ns() // 1_000_000
    start = end - int(days * 86_400_000)
    weights = 1.0 / np.arange(1, customers + 1) ** 0.7
    cust = rng.choice(customers, size=n, p=weights / weights.sum())
    ts = np.sort(rng.integers(start, end, size=n))
    amount = np.round(rng.lognormal(3.6, 1.1, size=n), 2)
    category = rng.choice(CATEGORIES, size=n)
    online = rng.random(n) < 0.4
    iso = pd.to_datetime(ts, unit="ms", utc=True).strftime("%Y-%m-%dT%H:%M:%S.%f").str[:-3] + "Z"
    return pd.DataFrame({
        "transaction_id": [f"T{seed:02d}{i:09d}" for i in range(n)],
        "customer_id": [f"C{c:05d}" for c in cust],
        "amount": amount,
        "merchant_category": category,
        "is_online": online,
        "event_time": iso,
    })


def read_events(path: str | Path) -> pd.DataFrame:
    """Events from a .jsonl, .csv or .parquet file."""
    p = Path(path)
    if not p.exists():
        raise InvalidInputError(f"events file {p} does not exist")
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return pd.read_json(p, lines=True, dtype=False)
    if suffix == ".csv":
        return pd.read_csv(p, keep_default_na=False, na_values=[""])
    if suffix == ".parquet":
        return pd.read_parquet(p)
    raise InvalidInputError(f"events file {p}: unknown format {suffix!r} (use .jsonl, .csv or .parquet)")


def _records(df: pd.DataFrame) -> Iterator[dict]:
    for rec in df.to_dict("records"):
        yield {k: (v.isoformat() if isinstance(v, (pd.Timestamp, datetime)) else v) for k, v in rec.items()}


def ensure_topic(bootstrap, topic: str, partitions: int = 4, **kafka_options) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, **kafka_options)
    try:
        if topic not in admin.list_topics():
            admin.create_topics([NewTopic(topic, partitions, 1)])
    except TopicAlreadyExistsError:
        pass
    finally:
        admin.close()


def produce(source: EventSource, events: pd.DataFrame | Iterable[dict], kafka_options: dict,
            rate: float | None = None, progress: bool = True, topic: str | None = None) -> int:
    """Send ``events`` as JSON to the source's topic keyed by the entity field; returns the count.

    ``rate`` (events/s) paces sending in steps of 1/50 s.
    """
    records = list(_records(events)) if isinstance(events, pd.DataFrame) else list(events)
    producer = KafkaProducer(linger_ms=10, batch_size=256 * 1024, acks="all", **kafka_options)
    key_field = source.entity_field
    started = time.perf_counter()
    bar = tqdm(total=len(records), unit="ev", disable=not progress, desc=f"produce {source.topic}")
    try:
        for i, rec in enumerate(records):
            key = rec.get(key_field)
            producer.send(topic or source.topic, value=orjson.dumps(rec, option=orjson.OPT_SERIALIZE_NUMPY),
                          key=None if key is None else str(key).encode())
            if rate and i % max(1, int(rate / 50)) == 0:
                ahead = i / rate - (time.perf_counter() - started)
                if ahead > 0:
                    time.sleep(ahead)
            if i % 1000 == 999:
                bar.update(1000)
        producer.flush()
        bar.update(len(records) - bar.n)
    finally:
        bar.close()
        producer.close()
    return len(records)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()
