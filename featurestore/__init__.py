"""Streaming feature store: Kafka events -> windowed features -> Redis and PostgreSQL."""

__version__ = "0.1.0"

__all__ = ["__version__"]
