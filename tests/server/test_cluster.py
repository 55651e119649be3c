"""``featurestore serve`` on a Redis Cluster online store: ``/get-online-features`` answers what the
in-process client answers on the same cluster (values as of the last event and states re-evaluated
after windows emptied), and ``/push`` writes states a read then serves."""

from __future__ import annotations

import os
import uuid
from typing import Iterator

import pytest

from featurestore.client import FeatureStore
from featurestore.settings import Settings
from tests.server.conftest import EXAMPLE, Project
from tests.server.test_online import DAY, MIN, T0, feast_form, in_process, transactions
from tests.support import apply_repo, delete_project_keys, drop_project, ensure_topic

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def project(servers, redis_cluster_url) -> Iterator[Project]:
    """The example repository applied under a project of its own, its online store the Redis Cluster."""
    name = f"srv_{uuid.uuid4().hex[:12]}"
    apply_repo(servers, name, EXAMPLE)
    ensure_topic(servers, "transactions", partitions=3)  # the cluster places entities by their partition
    settings = Settings(project=name, redis_url=redis_cluster_url, postgres_dsn=servers.postgres_dsn,
                        kafka_bootstrap_servers=servers.kafka_bootstrap)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEATURESTORE_SERVER_")}
    env.update(FEATURESTORE_PROJECT=name, FEATURESTORE_REDIS_URL=redis_cluster_url,
               FEATURESTORE_POSTGRES_DSN=servers.postgres_dsn,
               FEATURESTORE_KAFKA_BOOTSTRAP_SERVERS=servers.kafka_bootstrap)
    yield Project(name, settings, env)
    drop_project(servers, name)
    delete_project_keys(redis_cluster_url, name)


@pytest.fixture(scope="module")
def store(project):
    with FeatureStore.connect(EXAMPLE, project.settings, embedded=True) as store:
        frame = transactions(60, tuple(f"K{i}" for i in range(12)), T0, "c")
        result = store.push("transactions", frame, to="online")
        assert result.online_records == 24 and len(result.refused) == 0
        store.last_event_ms = int(frame["event_time"].max())
        yield store


@pytest.mark.parametrize("days_later", [0, 45])
def test_reads_over_http_answer_as_the_client_on_the_cluster(server, store, days_later) -> None:
    at = store.last_event_ms + days_later * DAY + 5 * MIN
    ids = [f"K{i}" for i in range(12)] + ["nobody"]
    amounts = [10.0 * (i + 1) for i in range(len(ids))]
    expected = feast_form(in_process(store, entity_rows=[{"customer_id": c} for c in ids],
                                     feature_service="fraud_detection", request_data={"current_amount": amounts},
                                     at_ms=at))
    body = {"feature_service": "fraud_detection", "entities": {"customer_id": ids},
            "request_data": {"current_amount": amounts}, "at": at}
    got = server.client.post("/get-online-features", json=body)
    assert got.status_code == 200, got.text
    assert got.json() == expected
    statuses = dict(zip(expected["metadata"]["feature_names"], (r["statuses"] for r in expected["results"])))
    assert statuses["spend_1h"] == ["PRESENT"] * 12 + ["NOT_FOUND"]
    # the entities' states sit on every master: the request was answered by more than one
    keys = store.online.entity_keys(store.online.view_key("customer_stats", store.versions["customer_stats"]),
                                    ids[:12])
    assert len({store.online.client.get_node_from_key(k).name for k in keys}) >= 2


def test_push_over_http_then_read_on_the_cluster(server, store) -> None:
    frame = transactions(4, ("P1", "P2"), store.last_event_ms + MIN, "h")
    rows = [dict(r, event_time=int(r["event_time"])) for r in frame.to_dict("records")]
    got = server.client.post("/push", json={"source": "transactions", "rows": rows})
    assert got.status_code == 200, got.text
    body = {"features": ["customer_stats:total_spend"], "entities": {"customer_id": ["P1", "P2"]},
            "at": int(frame["event_time"].max()) + MIN}
    answer = server.client.post("/get-online-features", json=body).json()
    spend = dict(zip(answer["metadata"]["feature_names"], answer["results"]))["total_spend"]
    assert spend["values"] == [sum(frame["amount"][0::2]), sum(frame["amount"][1::2])]
    assert spend["statuses"] == ["PRESENT", "PRESENT"]
