"""``WorkerConfig``: the knobs of one worker process."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["WorkerConfig"]


@dataclass
class WorkerConfig:
    """Knobs of one worker process."""

    group: str
    dead_letter_topic: str = "features-dead-letter"
    batch_size: int = 20000
    poll_timeout_ms: int = 200
    metrics_port: int | None = 9108
    #: address of the metrics and probe server: loopback unless told (``"0.0.0.0"`` in a container)
    metrics_host: str = "127.0.0.1"
    session_timeout_ms: int = 6000
    heartbeat_interval_ms: int = 1000
    #: how long the broker may hold a fetch that found nothing new (bounds the wait of an event
    #: that arrives while a fetch is parked, if the broker does not answer it at once)
    fetch_max_wait_ms: int = 50
    kafka_options: dict = field(default_factory=dict)
    #: the consumer's Kafka library (``workers.kafka_client``): ``kafka-python`` or ``confluent`` (librdkafka,
    #: which parses records in C); ``kafka_options`` are kafka-python's keywords for both
    kafka_client: str = "kafka-python"
    #: Python's cyclic garbage collector, set when the worker starts: the cached states are millions of
    #: small long-lived lists, and with the default (700, 10, 10) the collector rescans them every few
    #: thousand allocations (measured: 40% of the time applying events).  None keeps the default.
    gc_threshold: tuple[int, int, int] | None = (50_000, 20, 100)
    #: States kept in memory per view (least recently used evicted after a commit; an evicted entity is
    #: loaded from Redis at its next event).  The default fits a worker in ~2 GB with the example
    #: repository's two views: bench_engine measured 2.7 KB allocated per cached (entity, view), its key
    #: included (200k events over 5k entities, 2026-12-01, bf9d114), so ~1.9 GB of states.
    max_cached_states: int | None = 350_000
    #: States per Redis commit script.  A script blocks every other client of the server while it runs
    #: (~4 us per state), so a batch is committed in chunks, each fenced, the offsets advanced by the
    #: last; a state records the offsets applied to it, so a batch re-run after a crash between chunks
    #: skips what a chunk already wrote.  None: one script per batch.
    commit_chunk: int | None = 250
    #: a partition the broker no longer holds our last applied record of (``workers.topic_reset``): ``fail``
    #: stops the worker (exit 3), ``reprocess`` clears the source and reads the topic from its start
    on_topic_reset: str = "fail"
