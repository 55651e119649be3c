"""``PostgresOfflineStore``: the event log, feature history and rejects in PostgreSQL (asyncpg).

Tables (all in one schema, every identifier quoted, names prefixed by the project;
a name longer than PostgreSQL's 63 bytes is cut and suffixed with a hash):

* ``{project}__events__{source}`` — one row per valid event::

      partition int, "offset" bigint, entity_key text|bigint, event_time bigint (epoch ms),
      event_id text NULL, <one column per schema field except the timestamp field>,
      ingested_at timestamptz DEFAULT now(), __ref_time bigint NULL, PRIMARY KEY (partition, "offset")

  ``(partition, offset)`` identifies a Kafka record, so replaying a batch inserts nothing
  new (a plain INSERT in a savepoint, retried with ``ON CONFLICT DO NOTHING`` when a row
  already exists).  ``__ref_time`` is the reference time (epoch ms) the event time was judged
  against by the source's ``max_future`` (the Kafka record's timestamp; the clock of a push or
  of the backfill that read a file), NULL where none was recorded.
  Text entity keys use ``COLLATE "C"`` (byte order: faster index).  Files and pushes use ``partition = -1`` and a stable
  row number as offset.  Index on ``(entity_key, event_time)``.  Field columns keep the
  field name, except a field named like a system column (``partition``, ``offset``,
  ``entity_key``, ``event_time``, ``event_id``, ``ingested_at``) is stored as
  ``f__<name>`` (``field_column``).  Column types come from ``ValueType.pg_type`` except
  ``timestamp`` fields, stored as ``bigint`` epoch ms (as validated frames carry them),
  and float lists/embeddings, stored as ``double precision[]`` (``real[]`` would round
  values the online path sees unrounded).

* ``{project}__evseg__{source}`` — segments of the event log (``compact_events``)::

      partition int, first_offset bigint, last_offset bigint, n int, field text, data bytea,
      PRIMARY KEY (partition, first_offset, field)

  one row per (run of up to ``SEGMENT_ROWS`` events of a Kafka partition, column): the column's
  values packed as a full scan reads them (``_scan_columns``), ``data`` stored uncompressed.
  Event-log writers hold an advisory lock (``_log_lock``) shared until they commit.

* ``{project}__history__{view}__v{version}`` — feature values over time::

      entity_key, event_time bigint, seq int, <one typed column per feature>,
      written_at timestamptz, PRIMARY KEY (entity_key, event_time, seq)

  ``seq`` numbers rows of one entity with the same event time (0, 1, ... in the order
  given, i.e. arrival order); with the same input a rewrite hits the same keys, so
  ``write_history`` is an idempotent upsert.

* ``{project}__rejects`` — ``(source, partition, "offset", reason, detail, payload bytea,
  at timestamptz, key bytea, dead_letter_topic text, sent_at timestamptz, send_error text)``,
  PRIMARY KEY ``(source, partition, "offset")``: every record refused by a backfill or a worker.
  A worker records its dead letters here before sending them (``record_dead_letters``) and
  marks each sent (``sent_at``) or refused by the topic (``send_error``) before its commit.

The store is one class, ``PostgresOfflineStore`` (``store.py``), made of one part per job, all
sharing its asyncpg pool, project and schema:

* ``tables.py`` — names, DDL, ``migrate`` (the base of the other parts);
* ``event_log.py`` — event-log writes, key lookups, push offsets, forget and reset;
* ``scans.py`` — ``load_events``, which picks how to read: one ordered SELECT, a full scan (with
  ``scan_columns.py``: what a full scan reads and how it is decoded) or an ordered COPY (with
  ``copy_out.py``: what it selects and how its output is decoded);
* ``segments.py`` — ``compact_events`` and the segment reads of full scans;
* ``history.py`` — feature history writes and loads, binary COPY payloads (``copy_binary.py``);
* ``rejects.py`` — rejects and dead letters;
* ``buckets.py`` and ``progress.py`` — the backfill's hashed event reads and its progress.
"""

from .copy_binary import _COPY_HEADER as _COPY_HEADER
from .copy_binary import _FIXED as _FIXED
from .copy_binary import _chunks_of as _chunks_of
from .copy_binary import _encode_copy_scatter as _encode_copy_scatter
from .copy_binary import _fixed_column as _fixed_column
from .copy_binary import _scatter as _scatter
from .copy_binary import encode_copy_binary
from .scan_columns import SCAN_TYPES as SCAN_TYPES
from .scan_columns import TEXT as TEXT
from .scan_columns import _aggs_sql as _aggs_sql
from .scan_columns import _decode_texts as _decode_texts
from .scan_columns import _finish_scan as _finish_scan
from .scan_columns import _native as _native
from .scan_columns import _scan_columns as _scan_columns
from .scan_columns import _text_columns as _text_columns
from .scan_columns import _unpack_aggs as _unpack_aggs
from .scan_columns import _wire as _wire
from .sql import _create_stage as _create_stage
from .sql import _event_filter as _event_filter
from .store import PostgresOfflineStore
from .tables import _MAX_IDENT as _MAX_IDENT
from .tables import (
    PUSH_PARTITION,
    SYSTEM_COLUMNS,
    event_id_column,
    event_pg_type,
    feature_pg_type,
    field_column,
    qident,
    table_name,
)
from .values import _tidy as _tidy
from .values import _to_py as _to_py

# The names imported "as" themselves stay importable from ``featurestore.offline.postgres`` as
# they were (the backfill uses ``_tidy``, the benchmarks ``_chunks_of``); ``__all__`` is the API.
__all__ = [
    "PostgresOfflineStore",
    "PUSH_PARTITION",
    "SYSTEM_COLUMNS",
    "encode_copy_binary",
    "event_id_column",
    "event_pg_type",
    "feature_pg_type",
    "field_column",
    "qident",
    "table_name",
]
