"""Where a Redis Cluster holds an entity's states: by its view's topic partition count.

The cluster layout (``featurestore.online.cluster``) places each (view, entity) in the slot group of
the entity's home Kafka partition, so a writer needs the partition count of every view's topic.
The worker records it when it starts; ``place_views`` does it for the other writers (push,
materialize, the backfill), from Kafka's metadata, when no worker has yet.  One Redis places no
key by partition: there this does nothing.
"""

from __future__ import annotations

from .exceptions import ConfigurationError


def place_views(online, views, kafka_options: dict | None) -> None:
    """Record the partition count of each prepared view's topic in ``online`` (a cluster) where none is;
    ``kafka_options``: kafka-python client options (None or empty: Kafka not configured)."""
    if not online.places_by_partition:
        return
    missing = [pv for pv in views if online.partitions_of(pv.view_key) is None]
    if not missing:
        return
    if not kafka_options:
        raise ConfigurationError(
            f"the online store is a Redis Cluster, which places each entity by its Kafka partition, and no partition "
            f"count is recorded for {', '.join(sorted(pv.view_key for pv in missing))}: set "
            "FEATURESTORE_KAFKA_BOOTSTRAP_SERVERS (it is read from the topic), or start a worker of the source once")
    counts = topic_partition_counts(kafka_options, sorted({pv.view.source.topic for pv in missing}))
    online.use_partitions({pv.view_key: counts[pv.view.source.topic] for pv in missing})


def topic_partition_counts(kafka_options: dict, topics: list[str]) -> dict[str, int]:
    """The partition count of each of ``topics`` (``ConfigurationError`` for one the broker does not have)."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(group_id=None, enable_auto_commit=False, **kafka_options)
    try:
        out = {}
        for topic in topics:
            parts = consumer.partitions_for_topic(topic)
            if not parts:
                raise ConfigurationError(f"topic {topic!r} does not exist on the broker: create it first (a Redis "
                                         "Cluster places each entity by its partition of the topic)")
            out[topic] = len(parts)
        return out
    finally:
        consumer.close()
