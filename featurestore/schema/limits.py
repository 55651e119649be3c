"""The limits that keep every accepted event storable: reason codes, the accepted time range, and the
per-type checks of a coerced value (see the package docstring for the rules)."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from typing import Any

from ..definitions import EventSource
from ..types import BOOL, FLOAT64, INT64, STRING, TIMESTAMP, ValueType

#: Rejection reason codes of validation.
REASONS = ("not_an_object", "missing_entity_key", "missing_field", "wrong_type", "bad_timestamp",
           "invalid_character", "key_too_long", "too_long", "out_of_range", "future_timestamp")

#: Accepted event times (epoch ms): 1900-01-01 to 2262-01-01 UTC, inside pandas' datetime64[ns] range.
TIMESTAMP_MIN_MS = -2_208_988_800_000
TIMESTAMP_MAX_MS = 9_214_646_400_000
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MS = timedelta(milliseconds=1)
_MISSING = object()


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fast_type(vt: ValueType) -> type | None:
    return {INT64: int, FLOAT64: float, STRING: str, BOOL: bool}.get(vt)


def show_time(ms: int) -> str:
    """Epoch ``ms`` as ISO-8601 when it is a date ``datetime`` can hold, else the number."""
    try:
        return (_EPOCH + ms * _MS).isoformat().replace("+00:00", "Z")
    except OverflowError:
        return f"{ms} ms"


def time_range_detail(what: str, ms: int) -> str:
    return (f"{what} {show_time(ms)} is outside the accepted range {show_time(TIMESTAMP_MIN_MS)} to "
            f"{show_time(TIMESTAMP_MAX_MS)} (epoch milliseconds {TIMESTAMP_MIN_MS} to {TIMESTAMP_MAX_MS}); "
            f"send event times in epoch milliseconds or ISO-8601, not seconds, microseconds or nanoseconds")


def future_detail(what: str, ts_ms: int, ref_ms: int, max_future: int) -> str:
    return (f"{what} {show_time(ts_ms)} is {(ts_ms - ref_ms) / 1000:.0f} s after the record's reference time "
            f"{show_time(ref_ms)}, more than max_future ({max_future // 1000} s); such an event would move the "
            f"entity's watermark into the future and make its later events late. Fix the producer's clock or "
            f"units, or raise the source's max_future")


def string_problem(what: str, name: str, value: str, limit: int, too_long: str) -> tuple[str, str] | None:
    """(reason, detail) when string ``value`` cannot be stored, else None."""
    if "\x00" in value:
        return ("invalid_character", f"{what} {name!r} holds a NUL character (\\u0000), which PostgreSQL text cannot "
                                     f"store; remove it from the producer's value")
    if not value.isascii() or len(value) > limit:
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            return ("invalid_character", f"{what} {name!r} holds a lone UTF-16 surrogate, which is not valid "
                                         f"Unicode text; send valid UTF-8")
        if size > limit:
            return (too_long, f"{what} {name!r} is {size} bytes in UTF-8, over its limit of {limit} bytes "
                              f"(EventSource max_key_bytes / max_string_bytes / string_limits)")
    return None


def _value_check(source: EventSource, name: str, vt: ValueType):
    """A function of a coerced non-null value returning (reason, detail) when the stores
    cannot hold it, or None when no check applies to the type."""
    if vt == STRING:
        limit = source.string_limit(name)
        too_long = "key_too_long" if name in (source.entity_field, source.event_id_field) else "too_long"
        what = "entity field" if name == source.entity_field else "field"
        return lambda v: string_problem(what, name, v, limit, too_long)
    if vt == INT64:
        def check_int(v: int) -> tuple[str, str] | None:
            if _INT64_MIN <= v <= _INT64_MAX:
                return None
            return ("out_of_range", f"field {name!r}: {_show(v)} is outside int64 (-2^63 to 2^63-1)")
        return check_int
    if vt == FLOAT64:
        def check_float(v: float) -> tuple[str, str] | None:
            if not math.isinf(v):
                return None
            return ("out_of_range", f"field {name!r}: {v} is not a finite number")
        return check_float
    if vt == TIMESTAMP:
        label = f"{'timestamp field' if name == source.timestamp_field else 'field'} {name!r}:"

        def check_time(v: int) -> tuple[str, str] | None:
            if TIMESTAMP_MIN_MS <= v <= TIMESTAMP_MAX_MS:
                return None
            return ("out_of_range", time_range_detail(label, v))
        return check_time
    if vt.is_list and vt.element == "int64":
        def check_ints(v: list) -> tuple[str, str] | None:
            for x in v:
                if not _INT64_MIN <= x <= _INT64_MAX:
                    return ("out_of_range", f"field {name!r}: element {_show(x)} is outside int64")
            return None
        return check_ints
    if vt.is_list and vt.element == "float64":
        def check_floats(v: list) -> tuple[str, str] | None:
            if all(map(math.isfinite, v)):
                return None
            return ("out_of_range", f"field {name!r}: holds a NaN or infinite element; list and embedding "
                                    f"elements must be finite")
        return check_floats
    return None
