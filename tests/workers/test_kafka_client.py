"""The worker's consumer over both Kafka clients (``workers.kafka_client``), on the real broker: the same
records, the same positions after seeks and pauses inside and outside the assignment callback, the same
offsets and metadata; and the ``kafka_client`` setting from the environment and the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata
from pydantic import ValidationError

from featurestore.exceptions import ConfigurationError
from featurestore.settings import Settings
from tests.support import drop_project
from workers.config import WorkerConfig
from workers.kafka_client import KAFKA_CLIENTS, ConfluentConsumer, check_client, librdkafka_options, open_consumer

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
N_PER_PARTITION = 20
T = 1_700_000_000_000


def produce_mixed(servers, topic: str) -> list[tuple]:
    """``N_PER_PARTITION`` records on each of partitions 0 and 1 (some without key, some with headers, explicit
    timestamps), then a record without value on partition 0: ``(partition, offset, key, value, ts, headers)``."""
    producer = KafkaProducer(bootstrap_servers=servers.kafka_bootstrap, linger_ms=5)
    sent = []
    for i in range(2 * N_PER_PARTITION):
        key = None if i % 7 == 0 else f"k{i}".encode()
        headers = [("trace", f"t{i}".encode()), ("n", b"")] if i % 5 == 0 else []
        future = producer.send(topic, key=key, value=orjson.dumps({"i": i}), partition=i % 2, headers=headers or None,
                               timestamp_ms=T + i)
        sent.append((future, key, orjson.dumps({"i": i}), T + i, headers))
    tombstone = producer.send(topic, key=b"gone", value=None, partition=0, timestamp_ms=T + 999)
    producer.flush()
    producer.close()
    out = [(f.get(10).partition, f.get(10).offset, k, v, ts, h) for f, k, v, ts, h in sent]
    meta = tombstone.get(10)
    return sorted(out + [(meta.partition, meta.offset, b"gone", None, T + 999, [])])


def config(client: str, group: str, servers, **knobs) -> WorkerConfig:
    return WorkerConfig(group=group, kafka_client=client, kafka_options={"bootstrap_servers": servers.kafka_bootstrap},
                        **knobs)


def drain(consumer, want: int, seconds: float = 30.0) -> list[tuple]:
    """Poll until ``want`` records came (then half a second more, to see that nothing else comes)."""
    got: list[tuple] = []
    deadline, settle = time.monotonic() + seconds, None
    while time.monotonic() < (settle or deadline):
        for tp, records in consumer.poll(timeout_ms=100).items():
            assert type(tp) is TopicPartition and [r.offset for r in records] == sorted(r.offset for r in records)
            got += [(r.partition, r.offset, r.key, r.value, r.timestamp, list(r.headers)) for r in records
                    if (r.topic, r.partition) == (tp.topic, tp.partition)]
        if settle is None and len(got) >= want:
            settle = time.monotonic() + 0.5
    return got


def test_both_clients_return_the_same_records(servers, topic_factory, unique_name):
    topic = topic_factory(partitions=2)
    expected = produce_mixed(servers, topic)
    for client in KAFKA_CLIENTS:
        consumer = open_consumer(config(client, unique_name("g"), servers), [topic], lambda tps: None,
                                 lambda tps: None)
        try:
            assert sorted(drain(consumer, len(expected))) == expected, client
        finally:
            consumer.close(autocommit=False)


@pytest.mark.parametrize("client", KAFKA_CLIENTS)
def test_seeks_pauses_offsets_and_metadata(client, servers, topic_factory, unique_name):
    """``seek`` and ``pause`` inside ``on_assigned`` apply before anything is fetched; outside it, a seek moves a
    paused partition and ``resume`` reads on from there; committed and end offsets, partition counts and the
    revocation at ``close`` are kafka-python's."""
    topic = topic_factory(partitions=2)
    expected = produce_mixed(servers, topic)
    tp0, tp1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    calls: list[tuple] = []
    holder: dict = {}

    def on_assigned(tps):
        consumer = holder["consumer"]
        calls.append(("assigned", set(tps), consumer.assignment()))
        consumer.seek(tp0, 5)
        consumer.pause(tp1)

    consumer = holder["consumer"] = open_consumer(config(client, unique_name("g"), servers), [topic],
                                                  lambda tps: calls.append(("revoked", set(tps))), on_assigned)
    assert isinstance(consumer, ConfluentConsumer) == (client == "confluent")
    try:
        got = drain(consumer, N_PER_PARTITION + 1 - 5)
        assert got == [r for r in expected if r[0] == 0 and r[1] >= 5]  # nothing of the paused partition
        assert ("assigned", {tp0, tp1}, {tp0, tp1}) in calls  # assignment() inside the callback: the new one
        consumer.seek(tp1, 12)
        consumer.resume(tp1)
        assert drain(consumer, N_PER_PARTITION - 12) == [r for r in expected if r[0] == 1 and r[1] >= 12]
        consumer.seek_to_beginning(tp0)
        assert drain(consumer, N_PER_PARTITION + 1) == [r for r in expected if r[0] == 0]

        assert consumer.committed(tp0) is None
        consumer.commit({tp0: OffsetAndMetadata(7, "", -1)})
        assert consumer.committed(tp0) == 7
        consumer.commit_async({tp0: OffsetAndMetadata(9, "", -1), tp1: OffsetAndMetadata(3, "", -1)})
        deadline = time.monotonic() + 10
        while consumer.committed(tp1) != 3:
            assert time.monotonic() < deadline, "the asynchronous commit did not land"
            consumer.poll(timeout_ms=50)
        assert consumer.committed(tp0) == 9
        reference = KafkaConsumer(bootstrap_servers=servers.kafka_bootstrap)
        try:
            assert consumer.end_offsets([tp0, tp1]) == reference.end_offsets([tp0, tp1])
        finally:
            reference.close()
        assert consumer.partitions_for_topic(topic) == {0, 1}
        assert not consumer.partitions_for_topic(unique_name("absent"))
    finally:
        consumer.close(autocommit=False)
    assert calls[-1] == ("revoked", {tp0, tp1})  # closing gives the partitions back through the callback


def test_unknown_client_and_options_librdkafka_lacks_are_refused():
    from workers.worker import Worker

    with pytest.raises(ConfigurationError, match="kafka_client must be one of kafka-python, confluent"):
        Worker([], None, None, WorkerConfig(group="g", kafka_client="librdkafka"))
    with pytest.raises(ConfigurationError, match="api_version have no librdkafka equivalent"):
        check_client(WorkerConfig(group="g", kafka_client="confluent",
                                  kafka_options={"bootstrap_servers": "h:9092", "api_version": (2, 8)}))
    check_client(WorkerConfig(group="g", kafka_options={"api_version": (2, 8)}))  # kafka-python takes it
    settings = Settings(kafka_bootstrap_servers="a:9092,b:9092", kafka_security_protocol="SASL_SSL",
                        kafka_sasl_mechanism="SCRAM-SHA-256", kafka_sasl_username="u", kafka_sasl_password="pw",
                        kafka_ssl_cafile="/etc/ca.pem")
    assert librdkafka_options(settings.kafka_client_options()) == {
        "bootstrap.servers": "a:9092,b:9092", "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": "u", "sasl.password": "pw", "ssl.ca.location": "/etc/ca.pem"}


def test_the_setting_comes_from_the_environment(monkeypatch):
    assert Settings().kafka_client == os.environ.get("FEATURESTORE_KAFKA_CLIENT", "kafka-python")
    monkeypatch.setenv("FEATURESTORE_KAFKA_CLIENT", "confluent")
    assert Settings().kafka_client == "confluent"
    monkeypatch.setenv("FEATURESTORE_KAFKA_CLIENT", "rdkafka")
    with pytest.raises(ValidationError, match="kafka-python"):
        Settings()


REPO = '''
from featurestore.definitions import Aggregate, Entity, EventSource, FeatureView

customer = Entity(name="customer", join_key="customer_id")
txns = EventSource(name="txns", topic={topic!r}, timestamp_field="event_time", entity_field="customer_id",
                   schema={{"transaction_id": "string", "customer_id": "string", "amount": "float64",
                           "event_time": "timestamp"}})
stats = FeatureView(name="stats", entity=customer, source=txns, ttl="30d",
                    features=[Aggregate("total", "amount", "sum")])
'''


@pytest.mark.slow
def test_featurestore_worker_consumes_with_the_client_it_is_given(servers, topic_factory, unique_name, tmp_path):
    """``--kafka-client`` wins over ``FEATURESTORE_KAFKA_CLIENT`` (read by ``Settings``, tested above)."""
    topic, project = topic_factory(partitions=2), unique_name("p")
    repo, events = tmp_path / "repo.py", tmp_path / "events.jsonl"
    repo.write_text(REPO.format(topic=topic))
    start = int(time.time() * 1000) - 3_600_000
    rows = [{"transaction_id": f"t{i}", "customer_id": f"C{i % 3}", "amount": float(i + 1),
             "event_time": start + i * 1000} for i in range(30)]
    events.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = {k: v for k, v in os.environ.items() if not k.startswith("FEATURESTORE_")}
    base.update(PYTHONPATH=str(REPO_ROOT), FEATURESTORE_PROJECT=project, FEATURESTORE_STATE_DIR=str(tmp_path / "st"),
                FEATURESTORE_KAFKA_BOOTSTRAP_SERVERS=servers.kafka_bootstrap,
                FEATURESTORE_REDIS_URL=servers.redis_url, FEATURESTORE_POSTGRES_DSN=servers.postgres_dsn)

    def cli(*args, extra=None, timeout=120):
        done = subprocess.run([sys.executable, "-m", "featurestore", *args], capture_output=True, timeout=timeout,
                              env={**base, **(extra or {})}, cwd=REPO_ROOT)
        assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
        return done

    try:
        cli("apply", "--repo", str(repo))
        cli("produce", "--repo", str(repo), "--source", "txns", "--file", str(events), "--partitions", "2")
        worker = cli("--log-level", "INFO", "worker", "--repo", str(repo), "--metrics-port", "0",
                     "--exit-when-idle", "6", "--kafka-client", "confluent",
                     extra={"FEATURESTORE_KAFKA_CLIENT": "kafka-python"})
        assert json.loads(worker.stdout.decode().splitlines()[-1])["records"] == len(rows)
        assert "Kafka client confluent; joining the group" in worker.stderr.decode()
        got = cli("get", "--repo", str(repo), "--entity", "customer_id=C1", "--features", "stats:total")
        assert json.loads(got.stdout)["total"]["value"] == sum(r["amount"] for r in rows[1::3])
    finally:
        drop_project(servers, project)
