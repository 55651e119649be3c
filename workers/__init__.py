"""The worker side: where Kafka meets the processing core (worker, backfill, producer)."""
