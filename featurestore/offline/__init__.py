"""Offline store: event log, feature history and rejects in PostgreSQL."""

from .postgres import PostgresOfflineStore, field_column, qident, table_name

__all__ = ["PostgresOfflineStore", "field_column", "qident", "table_name"]
