"""Local development helpers: the embedded stack of real Kafka-protocol, Redis and PostgreSQL servers."""

from featurestore.dev.stack import EmbeddedStack, StackInfo, resolve_servers

__all__ = ["EmbeddedStack", "StackInfo", "resolve_servers"]
