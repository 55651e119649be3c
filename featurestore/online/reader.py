"""Online reads evaluated at the request time.

One pipelined round trip fetches, for every (entity, view), the values as of
the entity's last event, its watermark and ``valid_until``.  A value is exact
for any request time before ``valid_until``; past it (a tile left a window
since the last event) the reader fetches the state in a second round trip and
evaluates it at the request time, so windows that emptied read as empty.
Expiry is decided in event time: a view whose latest event is older than its
TTL at the request time reads as expired.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import orjson

from transforms import ViewState

PRESENT, MISSING, EXPIRED = "present", "missing", "expired"


@dataclass
class ViewRead:
    """What to read for one view: its key prefix, specs and the features wanted."""

    view_key: str
    specs: tuple
    lateness_ms: int
    ttl_ms: int | None
    features: list[str]
    defaults: dict[str, object]


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


def read_views(store, reads: list[ViewRead], keys_per_view: list[list[str]], at_ms: int | None = None) -> list[list[ViewValues]]:
    """``result[v][i]``: view ``reads[v]`` for entity ``keys_per_view[v][i]`` as of ``at_ms`` (default now)."""
    t = now_ms() if at_ms is None else at_ms
    items = [(r.view_key, k) for r, keys in zip(reads, keys_per_view) for k in keys]
    raw = store.read_values(items)
    out: list[list[ViewValues]] = []
    stale: list[tuple[int, int, int]] = []  # (view index, row index, request time)
    pos = 0
    for v, (r, keys) in enumerate(zip(reads, keys_per_view)):
        row_values = []
        for i in range(len(keys)):
            values, wm, until = raw[pos]
            pos += 1
            row_values.append(_decode(r, values, wm, until, t, stale, v, i))
        out.append(row_values)
    if stale:
        pipe_items = [(reads[v].view_key, keys_per_view[v][i]) for v, i, _ in stale]
        blobs = [store.load_state(vk, k) for vk, k in pipe_items] if not hasattr(store, "load_state_many") \
            else store.load_state_many(pipe_items)
        for (v, i, t_eval), blob in zip(stale, blobs):
            r = reads[v]
            if blob is None:  # expired between the two round trips
                out[v][i] = ViewValues(dict(r.defaults), MISSING, None)
                continue
            state = ViewState.from_bytes(r.specs, blob, r.lateness_ms)
            values = state.evaluate(t_eval)
            out[v][i] = ViewValues({f: values[f] for f in r.features}, PRESENT, state.watermark, True)
    return out


def _decode(r: ViewRead, values, wm, until, t, stale, v, i) -> ViewValues:
    if values is None or wm is None or wm < 0:
        return ViewValues(dict(r.defaults), MISSING, None)
    t_eval = max(t, wm)  # a clock behind the newest event time reads as of that event
    if r.ttl_ms is not None and t_eval - wm > r.ttl_ms:
        return ViewValues(dict(r.defaults), EXPIRED, wm)
    if until is not None and t_eval >= until:
        stale.append((v, i, t_eval))
        return ViewValues({}, PRESENT, wm)
    decoded = dict(zip((s.name for s in r.specs), orjson.loads(values)))
    for s in r.specs:
        if s.function == "seconds_since_last":
            decoded[s.name] = (t_eval - wm) / 1000
    return ViewValues({f: decoded[f] for f in r.features}, PRESENT, wm)
