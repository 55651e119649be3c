"""The offline store contract shared by the worker, the backfill, the client and historical reads.

``PostgresOfflineStore`` (``postgres/``) implements it.  Sources are ``EventSource`` objects or
names the store knows (from ``migrate`` or ``register_source``); times are epoch milliseconds;
event-log frames are shaped as ``load_events`` documents.  The registry shares a PostgreSQL
store's ``pool``, ``project`` and ``schema`` (``Registry.from_store``), which are not part of
this contract.
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Iterable, Mapping, Protocol, Sequence

import numpy as np
import pandas as pd

from ..definitions import EventSource, FeatureView


class OfflineStore(Protocol):
    """Event log, feature history, rejects and backfill progress of one project."""

    # -- lifecycle and tables -----------------------------------------------------------

    async def close(self) -> None:
        """Release the store's connections."""

    async def migrate(self, sources: Iterable[EventSource],
                      views: Iterable[FeatureView | tuple[FeatureView, int]] = ()) -> None:
        """Create the missing tables of ``sources`` and of ``views`` (or ``(view, version)`` pairs)."""

    def register_source(self, source: EventSource) -> None:
        """Remember ``source`` so writes and loads by its name know its schema."""

    def events_table(self, source: str) -> str:
        """Name of the event-log table of source ``source`` (unqualified)."""

    # -- event log: writes ----------------------------------------------------------------

    async def write_events(self, source: str | EventSource, df: pd.DataFrame) -> int:
        """Append a frame of valid events idempotently; returns the rows inserted (0 for a replay)."""

    async def write_valid_events(self, source: str | EventSource, events: Sequence[tuple[int, int, Any]]) -> int:
        """Append the worker's ``(partition, offset, ValidEvent)`` triples; returns the rows inserted."""

    async def forget_events(self, source: str | EventSource, positions: Sequence[tuple[int, int]]) -> int:
        """Delete the event-log rows at ``(partition, offset)`` positions; returns the rows deleted."""

    async def allocate_push_offsets(self, source: str | EventSource, n: int) -> np.ndarray:
        """``n`` increasing offsets, never handed out twice, for pushed events (partition -1)."""

    async def reset_source(self, source: str | EventSource) -> None:
        """Delete the event log (rows and segments) and the rejects of ``source``, atomically."""

    async def compact_events(self, source: str | EventSource, segment_rows: int | None = None,
                             rebuild: bool = False) -> dict:
        """Pack Kafka-partition rows not in a segment yet into segments; returns segments and events written."""

    # -- event log: lookups ---------------------------------------------------------------

    async def logged_fingerprint(self, source: str | EventSource, partition: int, upto: int) -> tuple[int, int] | None:
        """``(offset, reference time)`` of the last row of ``partition`` at or below ``upto`` that has one, or None."""

    async def last_logged_offset(self, source: str | EventSource, partition: int) -> int:
        """Highest logged offset of Kafka ``partition`` (rows and segments), -1 when none."""

    async def event_log_offsets(self, source: str | EventSource) -> dict[int, int]:
        """Last logged offset per Kafka partition (partitions >= 0)."""

    async def source_footprint(self, source: str | EventSource) -> dict[str, int]:
        """Counts of what ``reset_source`` would delete: event-log rows, segment rows, rejects."""

    async def count_events(self, source: str | EventSource) -> int:
        """Number of event-log rows of ``source``."""

    async def event_keys(self, source: str | EventSource, start_ms: int | None = None,
                         end_ms: int | None = None) -> list[Any]:
        """Distinct entity keys with events in ``[start_ms, end_ms]``, sorted."""

    async def existing_event_ids(self, source: str | EventSource, keys: Sequence[Any],
                                 event_ids: Sequence[Any], times: Sequence[int] | None = None) -> set[tuple]:
        """The ``(entity key, event id)`` pairs (with ``times``: ``(key, id, time)`` triples) already logged."""

    async def keys_on_kafka_partitions(self, source: str | EventSource, keys: Sequence[Any]) -> set:
        """Those of ``keys`` with at least one row from a Kafka partition (>= 0)."""

    # -- event log: reads -----------------------------------------------------------------

    async def load_events(self, source: str | EventSource, keys: Sequence[Any] | None = None,
                          start_ms: int | None = None, end_ms: int | None = None,
                          partitions: Sequence[int] | None = None, positions: bool = False,
                          fields: Sequence[str] | None = None) -> pd.DataFrame:
        """Events (of ``keys``, times and ``partitions`` when given) in arrival order, one column per field
        (of ``fields`` when given, plus the entity and timestamp fields); the store picks how to read them,
        and never returns a row ``forget_events`` deleted."""

    async def entity_events(self, source: str | EventSource, keys: Sequence[Any],
                            partitions: Sequence[int] | None = None) -> pd.DataFrame:
        """``load_events(positions=True)`` of ``keys``, cheap for keys with no row at all."""

    def iter_events_by_bucket(self, source: str | EventSource, n_buckets: int, buckets: Sequence[int],
                              end_ms: int | None = None, cut: Mapping[int, int] | None = None,
                              batch_rows: int = 100_000) -> AsyncIterator[pd.DataFrame]:
        """Frames of the events of entity ``buckets`` in arrival order, read in one pass (backfill)."""

    # -- history --------------------------------------------------------------------------

    async def write_history(self, view: FeatureView, version: int, df: pd.DataFrame) -> int:
        """Upsert feature values of a view version; returns the rows written."""

    def history_copy_payload(self, view: FeatureView, df: pd.DataFrame) -> tuple[list[str], bytes] | None:
        """``df`` as ``(columns, binary COPY payload)`` for ``copy_history``, or None when a type has no encoding."""

    async def copy_history(self, view: FeatureView, version: int, columns: list[str], payload: bytes) -> int:
        """Write a ``history_copy_payload`` idempotently; returns the rows inserted or changed."""

    # -- rejects and dead letters ---------------------------------------------------------

    async def write_rejects(self, rows: Iterable[Mapping[str, Any]] | pd.DataFrame) -> int:
        """Record refused records (kept when already recorded); returns the rows inserted."""

    async def record_dead_letters(self, rows: Sequence[tuple]) -> set[tuple[str, int, int]]:
        """Record dead letters before sending; returns the ``(source, partition, offset)`` already sent."""

    async def mark_dead_letters(
        self, source: str, positions: Sequence[tuple[int, int]], error: str | None = None
    ) -> None:
        """Mark recorded dead letters sent (``error`` None) or refused by their topic."""

    # -- backfill progress ----------------------------------------------------------------

    async def ensure_backfill_progress(self) -> None:
        """Create the backfill progress table when missing."""

    async def backfill_claim(self, view: str, version: int, run: str, chunk: str, info: Mapping[str, Any]) -> dict:
        """Record ``chunk`` of a run with ``info`` unless recorded; returns the stored info (first writer wins)."""

    async def backfill_progress(self, view: str, version: int, run: str) -> dict[str, dict]:
        """Chunks recorded for a run: chunk -> info."""

    async def backfill_reset(self, view: str, version: int, run: str) -> int:
        """Forget a run's recorded chunks; returns how many."""
