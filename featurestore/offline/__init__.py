"""Offline store: event log, feature history and rejects in PostgreSQL."""

from .base import OfflineStore
from .postgres import PostgresOfflineStore, field_column, qident, table_name

__all__ = ["OfflineStore", "PostgresOfflineStore", "field_column", "qident", "table_name"]
