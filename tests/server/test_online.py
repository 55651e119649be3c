"""``/get-online-features`` over real HTTP answers what the in-process asyncio client answers (values,
statuses, event times) on the same entities and times, in Feast's response shape; ``/metrics`` counts it."""

from __future__ import annotations

import asyncio
import math
import re
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest

from featurestore.client import FeatureStore
from tests.server.conftest import EXAMPLE

pytestmark = pytest.mark.integration

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MIN, DAY = 60_000, 86_400_000
FEAST_STATUS = {"present": "PRESENT", "missing": "NOT_FOUND", "expired": "OUTSIDE_MAX_AGE"}


def transactions(n: int, customers: tuple[str, ...], start: int, prefix: str) -> pd.DataFrame:
    """``n`` purchases spread over ``customers``, 7 min 250 ms apart (event times with milliseconds)."""
    return pd.DataFrame({
        "transaction_id": [f"{prefix}{i}" for i in range(n)],
        "customer_id": [customers[i % len(customers)] for i in range(n)],
        "amount": [round(3.5 + 11.25 * i, 2) for i in range(n)],
        "merchant_category": [["grocery", "travel", "fuel", "books"][i % 4] for i in range(n)],
        "is_online": [i % 3 == 0 for i in range(n)],
        "event_time": [start + i * (7 * MIN + 250) for i in range(n)],
    })


@pytest.fixture(scope="module")
def store(project):
    """The in-process client of the module's project, with three customers pushed online."""
    with FeatureStore.connect(EXAMPLE, project.settings, embedded=True) as store:
        frame = transactions(30, ("A1", "A2", "A3"), T0, "p")
        result = store.push("transactions", frame, to="online")
        assert result.online_records == 6 and len(result.refused) == 0
        store.last_event_ms = int(frame["event_time"].max())
        yield store


def in_process(store: FeatureStore, **kwargs):
    async def read():
        try:
            return await store.aget_online_features(**kwargs)
        finally:
            await store.aclose()

    return asyncio.run(read())


def rfc3339(ms: int | None) -> str:
    if ms is None:
        return "1970-01-01T00:00:00Z"
    text = datetime.fromtimestamp(ms // 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{ms % 1000:03d}Z" if ms % 1000 else f"{text}Z"


def plain(value):
    """A value as JSON carries it: arrays as lists, NaN as null."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def feast_form(response) -> dict:
    """The in-process response written in Feast's shape, independently of the server's code."""
    results = []
    for name, values in response.columns.items():
        n = len(values)
        if name in response.statuses:
            statuses = [FEAST_STATUS[s] for s in response.statuses[name]]
            times = [rfc3339(t) for t in response.event_times[name]]
        else:  # a join key
            statuses, times = ["PRESENT"] * n, [rfc3339(None)] * n
        results.append({"values": plain(values), "statuses": statuses, "event_timestamps": times})
    return {"metadata": {"feature_names": list(response.columns)}, "results": results}


def test_a_feature_service_with_request_data_answers_as_the_client(server, store) -> None:
    at = store.last_event_ms + 5 * MIN
    ids = ["A1", "A2", "nobody", "A3"]
    amounts = [250.0, 900.0, 12.5, 40.0]
    expected = feast_form(in_process(store, entity_rows=[{"customer_id": c} for c in ids],
                                     feature_service="fraud_detection", request_data={"current_amount": amounts},
                                     at_ms=at))
    body = {"feature_service": "fraud_detection", "entities": {"customer_id": ids},
            "request_data": {"current_amount": amounts}, "at": at}
    got = server.client.post("/get-online-features", json=body)
    assert got.status_code == 200 and got.headers["content-type"] == "application/json"
    assert got.json() == expected
    names = expected["metadata"]["feature_names"]
    assert names[0] == "customer_id" and "purchase_frequency_score" in names
    assert len(got.json()["results"]) == len(names)
    statuses = dict(zip(names, (r["statuses"] for r in got.json()["results"])))
    assert statuses["spend_1h"] == ["PRESENT", "PRESENT", "NOT_FOUND", "PRESENT"]
    assert any(re.fullmatch(r"2026-01-0\dT\d\d:\d\d:\d\d\.\d{3}Z", t) for r in got.json()["results"]
               for t in r["event_timestamps"])  # event times carry their milliseconds
    # Feast clients send request data among the entities: the same answer.
    feast_body = {"feature_service": "fraud_detection", "at": at,
                  "entities": {"customer_id": ids, "current_amount": amounts}}
    assert server.client.post("/get-online-features", json=feast_body).json() == expected


@pytest.mark.parametrize("days_later, full_names", [(0, False), (45, True)])
def test_a_feature_list_answers_as_the_client_ready_and_expired(server, store, days_later, full_names) -> None:
    """45 days on, ``transaction_stats`` (ttl 30 d) is expired and ``customer_stats`` (90 d) is not; its
    windows emptied, so the client re-evaluates states: both read paths of the client."""
    at = store.last_event_ms + days_later * DAY + MIN
    features = ["customer_stats:total_spend", "customer_stats:spend_24h", "customer_stats:recent_amounts",
                "customer_stats:last_category", "transaction_stats:txn_embedding", "transaction_stats:events_1h",
                "transaction_stats:seconds_since_last_txn", "customer_stats:customer_segment"]
    ids = ["A3", "A1", "nobody"]
    expected = feast_form(in_process(store, entity_rows=[{"customer_id": c} for c in ids], features=features,
                                     at_ms=at, full_names=full_names))
    iso_at = datetime.fromtimestamp(at / 1000, tz=timezone.utc).isoformat()
    body = {"features": features, "entities": {"customer_id": ids}, "at": iso_at, "full_feature_names": full_names}
    got = server.client.post("/get-online-features", json=body).json()
    assert got == expected
    statuses = {n: r["statuses"] for n, r in zip(got["metadata"]["feature_names"], got["results"])}
    embedding = "transaction_stats__txn_embedding" if full_names else "txn_embedding"
    assert statuses[embedding] == (["OUTSIDE_MAX_AGE"] * 2 if days_later else ["PRESENT"] * 2) + ["NOT_FOUND"]
    total = "customer_stats__total_spend" if full_names else "total_spend"
    assert statuses[total] == ["PRESENT", "PRESENT", "NOT_FOUND"]


def test_no_entity_rows_get_empty_results(server, store) -> None:
    expected = feast_form(in_process(store, entity_rows=[], features=["customer_stats:total_spend"], at_ms=T0))
    got = server.client.post("/get-online-features", json={"features": ["customer_stats:total_spend"],
                                                             "entities": {"customer_id": []}, "at": T0})
    assert got.status_code == 200 and got.json() == expected
    assert got.json()["results"] == [{"values": [], "statuses": [], "event_timestamps": []}] * 2


def test_metrics_count_requests_rows_and_errors_by_endpoint_and_service(server, store) -> None:
    body = {"feature_service": "recommendation", "entities": {"customer_id": ["A1", "A2"]}}
    for _ in range(3):
        assert server.client.post("/get-online-features", json=body).status_code == 200
    assert server.client.post("/get-online-features", json={"feature_service": "nosuch",
                                                             "entities": {"customer_id": ["A1"]}}).status_code == 404
    text = server.client.get("/metrics").text

    def value(sample: str) -> float:
        match = re.search(r"^" + re.escape(sample) + r" (\S+)$", text, re.MULTILINE)
        assert match, sample
        return float(match.group(1))

    base = 'endpoint="/get-online-features",service="recommendation"'
    assert value(f'featurestore_server_requests_total{{code="200",{base}}}') >= 3
    assert value(f'featurestore_server_request_seconds_count{{{base}}}') >= 3
    assert value('featurestore_server_rows_served_total{service="recommendation"}') >= 6
    assert value('featurestore_server_feature_values_served_total{service="recommendation"}') >= 6 * 4
    assert value('featurestore_server_errors_total{endpoint="/get-online-features",error="unknown_name",'
                 'service="unknown"}') >= 1


def test_kernels_loaded_before_the_first_request(project, serve) -> None:
    """The server loads the state engine's kernels at start-up (the reads of stale states use them), and says so."""
    served = serve(project.env, "--log-level", "INFO")
    assert "state engine ready in" in served.log_text()
