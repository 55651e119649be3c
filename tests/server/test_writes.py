"""``/push`` and ``/materialize`` over real HTTP: what is pushed is read back, invalid rows write nothing,
redeliveries are refused as the worker refuses them, a running worker's topic is guarded, and
``--read-only`` switches both off."""

from __future__ import annotations

import pandas as pd
import pytest

from featurestore.client import FeatureStore
from featurestore.online import RedisOnlineStore
from tests.server.conftest import EXAMPLE
from tests.server.test_online import MIN, T0, transactions

pytestmark = pytest.mark.integration


def columns(frame) -> dict:
    return {name: frame[name].tolist() for name in frame.columns}


def read(server, customers: list[str], at: int, features: list[str]) -> dict:
    body = {"features": features, "entities": {"customer_id": customers}, "at": at}
    got = server.client.post("/get-online-features", json=body)
    assert got.status_code == 200, got.text
    doc = got.json()
    return {name: (r["values"], r["statuses"]) for name, r in zip(doc["metadata"]["feature_names"], doc["results"])}


def test_push_then_read(server, project) -> None:
    frame = transactions(8, ("W1", "W2"), T0 + 3 * 86_400_000, "w")
    at = int(frame["event_time"].max()) + MIN
    features = ["customer_stats:total_spend", "customer_stats:total_purchases", "transaction_stats:events_1h"]
    assert read(server, ["W1", "W2"], at, features)["total_spend"] == ([None, None], ["NOT_FOUND"] * 2)

    rows = [{**r, "event_time": int(r["event_time"])} for r in frame.head(6).to_dict("records")]
    got = server.client.post("/push", json={"source": "transactions", "rows": rows})  # to=online by default
    assert got.status_code == 200, got.text
    assert got.json() == {"rows": 6, "online_records": 4, "offline_rows": 0, "skipped_existing": 0, "refused": []}
    # Feast's shape: push_source_name and df (columns), event times as ISO strings; to both stores.
    rest = frame.tail(2).copy()
    rest["event_time"] = [pd.Timestamp(int(t), unit="ms", tz="UTC").isoformat() for t in rest["event_time"]]
    got = server.client.post("/push", json={"push_source_name": "transactions", "df": columns(rest),
                                            "to": "online_and_offline"})
    assert got.status_code == 200, got.text
    assert (got.json()["rows"], got.json()["offline_rows"]) == (2, 2)

    values = read(server, ["W1", "W2"], at, features)
    assert values["total_spend"] == ([sum(frame["amount"][0::2]), sum(frame["amount"][1::2])], ["PRESENT"] * 2)
    assert values["total_purchases"][0] == [4, 4]
    with FeatureStore.connect(EXAMPLE, project.settings, embedded=True) as store:  # the client reads the same
        local = store.get_online_features([{"customer_id": "W1"}, {"customer_id": "W2"}], features=features, at_ms=at)
        assert local.columns["total_spend"] == values["total_spend"][0]

    # A redelivery is refused by the states, as the worker dead-letters it; nothing changes.
    last = [{**r, "event_time": int(r["event_time"])} for r in frame.tail(2).to_dict("records")]
    again = server.client.post("/push", json={"source": "transactions", "rows": last})
    assert again.status_code == 200
    assert [r["reason"] for r in again.json()["refused"]] == ["duplicate_event_id"] * 2
    assert read(server, ["W1", "W2"], at, features) == values


def test_invalid_rows_write_nothing_and_are_named(server) -> None:
    frame = transactions(4, ("V1",), T0 + 5 * 86_400_000, "v")
    body = columns(frame)
    body["amount"][1] = "lots"
    body["customer_id"][3] = None
    got = server.client.post("/push", json={"source": "transactions", "df": body, "to": "online_and_offline"})
    assert got.status_code == 422
    error = got.json()["error"]
    assert error["code"] == "invalid_input" and "2 of 4 rows" in error["message"]
    assert [(r["row"], r["reason"]) for r in error["rejects"]] == [(1, "wrong_type"), (3, "missing_entity_key")]
    at = int(frame["event_time"].max()) + MIN
    assert read(server, ["V1"], at, ["customer_stats:total_spend"])["total_spend"] == ([None], ["NOT_FOUND"])
    unknown = server.client.post("/push", json={"source": "nosuch", "rows": []})
    assert unknown.status_code == 404 and "nosuch" in unknown.json()["error"]["message"]
    bad_to = server.client.post("/push", json={"source": "transactions", "rows": [], "to": "elsewhere"})
    assert bad_to.status_code == 422 and "to=" in bad_to.json()["error"]["message"]


def test_materialize_brings_offline_events_online(server) -> None:
    frame = transactions(6, ("M1", "M2"), T0 + 10 * 86_400_000, "m")
    got = server.client.post("/push", json={"source": "transactions", "df": columns(frame), "to": "offline"})
    assert got.status_code == 200 and got.json()["offline_rows"] == 6
    at = int(frame["event_time"].max()) + MIN
    assert read(server, ["M1"], at, ["customer_stats:total_spend"])["total_spend"][1] == ["NOT_FOUND"]
    start, end = int(frame["event_time"].min()), int(frame["event_time"].max())
    report = server.client.post("/materialize", json={"start_ts": start, "end_ts": end,
                                                      "feature_views": ["customer_stats"]})
    assert report.status_code == 200, report.text
    assert report.json()["views"]["customer_stats"]["entities"] == 2
    values = read(server, ["M1", "M2"], at, ["customer_stats:total_spend"])["total_spend"]
    assert values == ([sum(frame["amount"][0::2]), sum(frame["amount"][1::2])], ["PRESENT"] * 2)
    backwards = server.client.post("/materialize", json={"start": end, "end": start})
    assert backwards.status_code == 422 and "after end" in backwards.json()["error"]["message"]


def test_a_running_worker_guards_its_topic(server, project, servers) -> None:
    """The announcement a running worker renews in Redis makes push (online) and materialize refuse (409)."""
    online = RedisOnlineStore.from_url(servers.redis_url, project.name)
    online.announce_worker("featurestore-test", "w-1", ["transactions"], ttl_ms=60_000)
    try:
        frame = transactions(2, ("G1",), T0 + 20 * 86_400_000, "g")
        got = server.client.post("/push", json={"source": "transactions", "df": columns(frame)})
        assert got.status_code == 409 and got.json()["error"]["code"] == "worker_running"
        assert "w-1" in got.json()["error"]["message"]
        got = server.client.post("/materialize", json={"start": T0, "end": T0 + 1})
        assert got.status_code == 409
        offline_only = server.client.post("/push", json={"source": "transactions", "df": columns(frame),
                                                         "to": "offline"})
        assert offline_only.status_code == 200  # the event log is not the worker's cache
    finally:
        online.retire_worker("featurestore-test", "w-1")
        online.client.close()
    assert server.client.post("/push", json={"source": "transactions", "df": columns(frame)}).status_code == 200


def test_read_only_switches_push_and_materialize_off(project, serve) -> None:
    served = serve(project.env, "--read-only")
    frame = transactions(2, ("R1",), T0, "r")
    for path, body in (("/push", {"source": "transactions", "df": columns(frame)}),
                       ("/materialize", {"start": T0, "end": T0 + 1})):
        got = served.client.post(path, json=body)
        assert got.status_code == 403 and got.json()["error"]["code"] == "read_only", got.text
    got = served.client.post("/get-online-features", json={"features": ["customer_stats:total_spend"],
                                                           "entities": {"customer_id": ["R1"]}})
    assert got.status_code == 200
