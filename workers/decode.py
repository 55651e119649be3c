"""Decoding one Kafka record into a valid event, or a dead letter with its reason.

The checks of the record itself (an empty value, a value over the source's
``max_message_bytes``, not JSON), then the source's validation (``featurestore.schema``)
with the record's Kafka timestamp as the reference time of ``max_future`` (the worker's
clock, ``now_ms``, for a record without one).
"""

from __future__ import annotations

import orjson

from featurestore.schema import EventValidator, ValidEvent

from .dead_letters import DeadLetter


def decode_record(rec, max_message_bytes: int, validate: EventValidator, now_ms: int) -> ValidEvent | DeadLetter:
    """``rec`` (topic, partition, offset, timestamp, key, value) as a ``ValidEvent`` or a ``DeadLetter``."""
    raw = rec.value
    if not raw:
        return DeadLetter(rec, "empty_message", "the record has no value" if raw is None
                          else "the record's value is empty (0 bytes)")
    if len(raw) > max_message_bytes:
        return DeadLetter(rec, "oversize", f"message of {len(raw)} bytes exceeds the source's max_message_bytes "
                                           f"({max_message_bytes})")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return DeadLetter(rec, "malformed_json", str(exc))
    result = validate(obj, rec.timestamp if rec.timestamp is not None and rec.timestamp >= 0 else now_ms)
    if not result.ok:
        return DeadLetter(rec, result.reason, result.detail)
    return result
