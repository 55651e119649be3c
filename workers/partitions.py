"""How the worker names a Kafka partition in the online store's offsets and claims: ``topic:partition``."""

from __future__ import annotations


def partition_name(tp) -> str:
    """``tp`` (a kafka-python ``TopicPartition``) as the online store names it: ``topic:partition``."""
    return f"{tp.topic}:{tp.partition}"
