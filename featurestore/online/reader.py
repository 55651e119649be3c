"""Online reads evaluated at the request time.

One round trip (``RedisOnlineStore.read_packed``, a Lua read) returns, for every
(view, entity), the values row (the values as of the entity's last event, its
watermark and ``valid_until``) and, when the values are not exact at the request
time (at or past ``valid_until``: a tile left a window since the last event),
the state too, evaluated here at the request time so windows that emptied read
as empty.  Expiry is decided in
event time: a view whose latest event is older than its TTL at the request
time reads as expired.

The hot path is columnar: ``read_rows`` gives, per view, one row of values (in
the requested feature order) per entity, with a status and an event time; the
client transposes the rows into response columns.  The stale states of one request
are evaluated together by ``transforms.compile_reader(...).read_many``: decoded into a
scratch arena of the compiled engine and evaluated in one compiled call.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from dataclasses import dataclass, field
from operator import itemgetter

import orjson

from featurestore.exceptions import StateFormatError
from transforms import compile_reader
from transforms.engine.codec import StateFormatError as EngineStateFormatError

from .redis import OFFSET, ROW_HEADER

PRESENT, MISSING, EXPIRED = "present", "missing", "expired"

#: ``payload -> values`` (spec order) of a stored values row, ``payload`` its bytes after the
#: ``ROW_HEADER`` (``redis.pack_row``: JSON).  The one place that knows how values are encoded.
decode_values = orjson.loads

_NEVER_EXPIRED, _ALL_EXPIRED = float("-inf"), float("inf")  # the oldest unexpired watermark: no TTL, a TTL below 0


def picker(indices: list[int]):
    """``items -> tuple(items[i] for i in indices)`` in C (``itemgetter``; also for 0 or 1 index)."""
    if len(indices) == 1:
        i = indices[0]
        return lambda items: (items[i],)
    if not indices:
        return lambda items: ()
    return itemgetter(*indices)


@dataclass
class ViewRead:
    """What to read for one view: its key prefix, specs and the features wanted (compiled once per request shape)."""

    view_key: str
    specs: tuple
    lateness_ms: int
    ttl_ms: int | None
    features: list[str]
    defaults: dict[str, object]

    def __post_init__(self) -> None:
        names = [s.name for s in self.specs]
        self.feature_idx = [names.index(f) for f in self.features]
        self.clock_idx = [i for i, s in enumerate(self.specs) if s.function == "seconds_since_last"]
        #: stored values (spec order) -> requested values (feature order); None when they are the same
        if self.feature_idx == list(range(len(names))):
            self.pick = None
        else:
            self.pick = picker(self.feature_idx)
        self.default_row = tuple(self.defaults[f] for f in self.features)
        #: (state blob, t) -> values in feature order; ``read_many`` evaluates a request's stale states in one call
        self.evaluate = compile_reader(self.specs, self.features)


@dataclass
class ViewValues:
    """Values of one view for one entity, at one request time."""

    values: dict[str, object]
    status: str
    event_time: int | None
    evaluated_from_state: bool = False
    extra: dict = field(default_factory=dict)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def read_rows(store, reads: list[ViewRead], keys_per_view: list[list[str]], at_ms: int | None = None
              ) -> list[tuple[list, list[str], list[int | None], list[bool]]]:
    """Per view ``reads[v]``: ``(rows, statuses, event_times, from_state)`` for the entities
    ``keys_per_view[v]`` as of ``at_ms`` (default now); ``rows[i]`` holds the values of
    ``reads[v].features`` in that order (the defaults when missing or expired)."""
    t = now_ms() if at_ms is None else at_ms
    full = _full_keys(store, reads, keys_per_view)
    flat, stale = store.read_packed(full, t) if full else ([], [])
    return decode_rows(reads, keys_per_view, t, flat, stale)


async def aread_rows(store, reads: list[ViewRead], keys_per_view: list[list[str]], at_ms: int | None = None
                     ) -> list[tuple[list, list[str], list[int | None], list[bool]]]:
    """``read_rows`` with the round trip awaited (``RedisOnlineStore.aread_packed``, redis-py's
    asyncio client); the decoding is the same code."""
    t = now_ms() if at_ms is None else at_ms
    full = _full_keys(store, reads, keys_per_view)
    flat, stale = (await store.aread_packed(full, t)) if full else ([], [])
    return decode_rows(reads, keys_per_view, t, flat, stale)


def _full_keys(store, reads: list[ViewRead], keys_per_view: list[list[str]]) -> list[str]:
    full: list[str] = []
    for r, keys in zip(reads, keys_per_view):
        full += store.entity_keys(r.view_key, keys)
    return full


def decode_rows(reads: list[ViewRead], keys_per_view: list[list[str]], t: int, flat: list, stale: list
                ) -> list[tuple[list, list[str], list[int | None], list[bool]]]:
    """``read_rows`` of the read script's reply ``[flat, stale]`` (``RedisOnlineStore.read_packed``)."""
    states = dict(zip(stale[::2], stale[1::2])) if stale else {}
    marks = sorted(states)
    decode = decode_values
    out = []
    pos = 0
    for r, keys in zip(reads, keys_per_view):
        n = len(keys)
        ttl, pick, clock, default = r.ttl_ms, r.pick, r.clock_idx, r.default_row
        # expired: (t if t > wm else wm) - wm > ttl, that is wm < t - ttl (every row when ttl < 0)
        oldest = _NEVER_EXPIRED if ttl is None else t - ttl if ttl >= 0 else _ALL_EXPIRED
        if n > 8 and not clock and _none_within(marks, pos, pos + n):
            done = _plain_rows(flat[pos:pos + n], oldest, pick)
            if done is not None:
                out.append(done)
                pos += n
                continue
        rows: list = [None] * n
        statuses = [PRESENT] * n
        times: list = [None] * n
        from_state = [False] * n
        pending: list[int] = []  # rows to re-evaluate from their states
        for i in range(n):
            row = flat[pos + i]
            if row is None:
                rows[i] = default
                statuses[i] = MISSING
                continue
            times[i] = wm = int(row[16:ROW_HEADER]) - OFFSET  # redis.row_watermark, inlined
            if wm < oldest:
                rows[i] = default
                statuses[i] = EXPIRED
            elif states and pos + i in states:  # a window moved since the last event: evaluated below, in one call
                pending.append(i)
                from_state[i] = True
            else:
                values = decode(row[ROW_HEADER:])
                for j in clock:  # a clock behind the newest event time reads as of that event
                    values[j] = ((t if t > wm else wm) - wm) / 1000
                rows[i] = values if pick is None else pick(values)
        if pending:
            try:
                evaluated = r.evaluate.read_many([states[pos + i] for i in pending],
                                                 [t if t > times[i] else times[i] for i in pending])
            except EngineStateFormatError as exc:
                raise StateFormatError(f"{r.view_key}: a stored state of one of entities "
                                       f"{[keys[i] for i in pending][:5]} cannot be read: {exc}") from None
            for i, values in zip(pending, evaluated):
                rows[i] = values
        out.append((rows, statuses, times, from_state))
        pos += n
    return out


def _none_within(marks: list[int], lo: int, hi: int) -> bool:
    """Whether no number of the sorted ``marks`` is in ``[lo, hi)``."""
    k = bisect_left(marks, lo)
    return k == len(marks) or marks[k] >= hi


def _plain_rows(chunk: list, oldest: float, pick):
    """``decode_rows``' answer for one view's rows ``chunk`` when each is present, unexpired (a
    watermark from ``oldest`` on) and exact at the request time (with no clock feature), else None."""
    times = [None if row is None else int(row[16:ROW_HEADER]) - OFFSET for row in chunk]
    if None in times or min(times) < oldest:
        return None
    decode = decode_values
    rows = [decode(row[ROW_HEADER:]) for row in chunk]
    n = len(chunk)
    return rows if pick is None else list(map(pick, rows)), [PRESENT] * n, times, [False] * n


def read_views(store, reads: list[ViewRead], keys_per_view: list[list[str]],
               at_ms: int | None = None) -> list[list[ViewValues]]:
    """``result[v][i]``: view ``reads[v]`` for entity ``keys_per_view[v][i]`` as of ``at_ms`` (default now),
    one ``ViewValues`` each (``read_rows`` is the columnar form the client uses)."""
    out = []
    for r, (rows, statuses, times, from_state) in zip(reads, read_rows(store, reads, keys_per_view, at_ms)):
        out.append([ViewValues(dict(zip(r.features, row)), status, et, fs)
                    for row, status, et, fs in zip(rows, statuses, times, from_state)])
    return out
