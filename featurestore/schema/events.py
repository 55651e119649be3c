"""Validation of one decoded event (the Kafka worker and the push path call it per event), with a
validator precompiled per source, no pydantic."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Callable, NamedTuple

from ..definitions import EventSource
from ..types import STRING, parse_timestamp
from .limits import (_EPOCH, _INT64_MAX, _INT64_MIN, _MISSING, _MS, TIMESTAMP_MAX_MS, TIMESTAMP_MIN_MS, _fast_type,
                     _show, _value_check, future_detail, time_range_detail)

class ValidEvent(NamedTuple):
    """A valid event: entity ``key``, event time ``ts_ms``, ``event_id`` (as str, or
    None), ``values`` of every schema field (the timestamp field as epoch ms;
    missing optional fields as None) and ``ref_ms``, the reference time its event
    time was judged against (``max_future``), or None."""

    key: str | int
    ts_ms: int
    event_id: str | None
    values: dict[str, Any]
    ref_ms: int | None = None

    @property
    def ok(self) -> bool:
        return True


class Rejection(NamedTuple):
    """An invalid event: ``reason`` (one of ``REASONS``) and a sentence ``detail``."""

    reason: str
    detail: str

    @property
    def ok(self) -> bool:
        return False


class EventValidator:
    """Validator of one source's events, precompiled; call it with a decoded event and,
    where there is one, the reference time of ``max_future`` (epoch ms)."""

    __slots__ = ("source", "_key", "_key_type", "_key_fast", "_key_check", "_key_quick", "_ts", "_id", "_fields",
                 "_max_future")

    def __init__(self, source: EventSource) -> None:
        self.source = source
        self._key = source.entity_field
        self._key_type = source.schema[self._key]
        self._key_fast = _fast_type(self._key_type)
        self._key_check = _value_check(source, self._key, self._key_type)
        self._key_quick = source.max_key_bytes  # an ASCII key without NUL within it passes without a call
        self._ts = source.timestamp_field
        self._id = source.event_id_field
        self._max_future = source.max_future
        optional = set(source.optional_fields)
        self._fields = tuple(
            (name, vt, _fast_type(vt), name in optional, _value_check(source, name, vt),
             source.string_limit(name) if vt == STRING else 0)  # an ASCII string's length is its size
            for name, vt in source.schema.items()
            if name not in (self._key, self._ts)
        )

    def __call__(self, event: Any, ref_ms: int | None = None) -> ValidEvent | Rejection:
        """``event`` as a ``ValidEvent``, or the ``Rejection`` of the first rule it breaks."""
        if type(event) is not dict:
            if not isinstance(event, dict):
                return Rejection("not_an_object",
                                 f"event is {type(event).__name__} {_show(event)}, expected a JSON object")
        get = event.get
        key = self._entity_key(get(self._key))
        if isinstance(key, Rejection):
            return key
        tf = self._ts
        ts_ms = self._event_time(get(tf))
        if isinstance(ts_ms, Rejection):
            return ts_ms
        values = {self._key: key, tf: ts_ms}
        rejected = self._field_values(get, values)
        if rejected is not None:
            return rejected
        if ref_ms is not None and self._max_future is not None and ts_ms > ref_ms + self._max_future:
            return Rejection("future_timestamp",
                             future_detail(f"timestamp field {tf!r}:", ts_ms, ref_ms, self._max_future))
        eid: str | None = None
        if self._id is not None:
            raw_id = values[self._id]
            eid = raw_id if raw_id is None or type(raw_id) is str else str(raw_id)
        return ValidEvent(key, ts_ms, eid, values, ref_ms)

    def _entity_key(self, key: Any) -> str | int | Rejection:
        """The entity field's value as a key of the schema's type, or why it is refused."""
        kf = self._key
        if key is None or key == "":
            return Rejection("missing_entity_key", f"entity field {kf!r} is missing or empty")
        if type(key) is not self._key_fast:
            try:
                key = self._key_type.coerce(key)
            except ValueError as exc:
                return Rejection("wrong_type", f"entity field {kf!r}: {exc}")
        if not (type(key) is str and len(key) <= self._key_quick and key.isascii() and "\x00" not in key):
            problem = self._key_check(key)
            if problem is not None:
                return Rejection(*problem)
        return key

    def _event_time(self, ts: Any) -> int | Rejection:
        """The timestamp field's value as epoch ms (ints as they are, ISO-8601 strings naive = UTC), or
        why it is refused."""
        tf = self._ts
        if ts is None:
            return Rejection("missing_field", f"timestamp field {tf!r} is missing or null")
        if type(ts) is int:
            ts_ms = ts
        elif type(ts) is str:
            try:
                dt = datetime.fromisoformat(ts)
            except ValueError:
                return Rejection("bad_timestamp", f"timestamp field {tf!r}: cannot parse {_show(ts)} as ISO-8601")
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=timezone.utc)
            ts_ms = (dt - _EPOCH) // _MS
        else:
            try:
                ts_ms = parse_timestamp(ts)
            except ValueError as exc:
                return Rejection("bad_timestamp", f"timestamp field {tf!r}: {exc}")
        if not TIMESTAMP_MIN_MS <= ts_ms <= TIMESTAMP_MAX_MS:
            return Rejection("out_of_range", time_range_detail(f"timestamp field {tf!r}:", ts_ms))
        return ts_ms

    def _field_values(self, get: Callable[[str, Any], Any], values: dict[str, Any]) -> Rejection | None:
        """Put every other field's value into ``values`` (None for a missing optional field); the
        rejection of the first field refused, else None.  Common values (short ASCII strings, finite
        floats, int64 ints, bools) pass without a call."""
        for name, vt, fast, optional, check, quick in self._fields:
            v = get(name, _MISSING)
            if v is _MISSING or v is None:
                if optional:
                    values[name] = None
                    continue
                return Rejection("missing_field", f"field {name!r} is {'missing' if v is _MISSING else 'null'}")
            t = type(v)
            if t is not fast:
                try:
                    v = vt.coerce(v)
                except ValueError as exc:
                    return Rejection("wrong_type", f"field {name!r}: {exc}")
            elif t is str:  # the common string passes without a call: short, ASCII, no NUL
                if len(v) <= quick and v.isascii() and "\x00" not in v:
                    values[name] = v
                    continue
            elif t is float:  # finite (v - v is 0.0); NaN is a value
                if v - v == 0.0 or v != v:
                    values[name] = v
                    continue
            elif t is int:
                if _INT64_MIN <= v <= _INT64_MAX:
                    values[name] = v
                    continue
            elif t is bool:
                values[name] = v
                continue
            if check is not None:
                problem = check(v)
                if problem is not None:
                    return Rejection(*problem)
            values[name] = v
        return None


_VALIDATORS: dict[int, tuple[EventSource, EventValidator]] = {}


def validator_for(source: EventSource) -> EventValidator:
    """The cached ``EventValidator`` of ``source`` (hold it in hot loops)."""
    hit = _VALIDATORS.get(id(source))
    if hit is not None and hit[0] is source:
        return hit[1]
    v = EventValidator(source)
    _VALIDATORS[id(source)] = (source, v)
    return v


def validate_event(source: EventSource, event: Any, ref_ms: int | None = None) -> ValidEvent | Rejection:
    """Validate one decoded event (``ref_ms``: the reference time of ``max_future``); see the
    module docstring for the rules."""
    return validator_for(source)(event, ref_ms)
