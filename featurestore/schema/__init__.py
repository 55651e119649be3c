"""Validation of raw events against an ``EventSource``.

``validate_event`` checks one decoded JSON event (the Kafka worker and the push
path call it per event; it uses a validator precompiled per source, no
pydantic).  ``validate_frame`` does the same over a pandas DataFrame (backfill).

Rules, identical in both: the entity field must be present, non-null and not
``""`` (else ``missing_entity_key``); the timestamp field must be present
(``missing_field``) and an ISO-8601 string (naive = UTC), epoch-ms int or
datetime (else ``bad_timestamp``); every other schema field must be present and
non-null unless listed in ``optional_fields`` (``missing_field``) and of its
type (``wrong_type``; ints are accepted for floats, bools are not ints, NaN is a
valid float).  Checks run in that order and the first failure is reported.
Fields not in the schema are ignored.

Then the limits that keep every accepted event storable (PostgreSQL text holds no
NUL, a btree index entry has a size limit, ``bigint`` is int64, Redis states hold
finite numbers): a NUL character in the key or a string field is
``invalid_character``; an entity key or event id over the source's
``max_key_bytes`` (UTF-8) is ``key_too_long``; a string field over its limit
(``EventSource.string_limit``) is ``too_long``; an integer outside int64, a float
field of ±infinity, a NaN or infinity inside a float list, and a timestamp outside
[``TIMESTAMP_MIN_MS``, ``TIMESTAMP_MAX_MS``] (1900-01-01 to 2262-01-01 UTC: event
times in microseconds or nanoseconds, or year 9999, fall outside) are
``out_of_range``.  Last, with a reference time (the Kafka record's timestamp; the
push's or backfill's clock; a history's reference column), an event time more
than ``max_future`` after it is ``future_timestamp``: it never moves a watermark.

Frames only: in a float column NaN is a value, not a null (as in events); in
other columns NaN/None/NA/NaT are nulls, and integral floats are accepted for
int64 and timestamp fields (pandas turns ints with nulls into floats).
"""

from __future__ import annotations

from ..types import parse_timestamp
from .events import EventValidator, Rejection, ValidEvent, validate_event, validator_for
from .frames import typed_column, validate_frame
from .limits import REASONS, TIMESTAMP_MAX_MS, TIMESTAMP_MIN_MS

__all__ = [
    "REASONS",
    "TIMESTAMP_MAX_MS",
    "TIMESTAMP_MIN_MS",
    "EventValidator",
    "Rejection",
    "ValidEvent",
    "parse_timestamp",
    "typed_column",
    "validate_event",
    "validate_frame",
    "validator_for",
]
