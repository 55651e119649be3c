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

    def __post_init__(self) -> None:
        names = [s.name for s in self.specs]
        self.feature_idx = [names.index(f) for f in self.features]
        self.clock_idx = [i for i, s in enumerate(self.specs) if s.function == "seconds_since_last"]


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
    """``result[v][i]``: view ``reads[v]`` for entity ``keys_per_view[v][i]`` as of ``at_ms`` (default now).

    One round trip: the store returns ready values where they are exact at the request time and the
    state (evaluated here) where a window moved since the last event.
    """
    t = now_ms() if at_ms is None else at_ms
    items = [(r.view_key, k) for r, keys in zip(reads, keys_per_view) for k in keys]
    raw = store.read_at(items, t)
    out: list[list[ViewValues]] = []
    pos = 0
    for r, keys in zip(reads, keys_per_view):
        row_values, stale = [], []
        for i in range(len(keys)):
            row_values.append(_decode(r, raw[pos], t, stale, i))
            pos += 1
        if stale:  # windows moved since the last event: evaluate those states at the request time
            for i, blob, t_eval in stale:
                values = ViewState.from_bytes(r.specs, blob, r.lateness_ms).evaluate(t_eval)
                row_values[i] = ViewValues({f: values[f] for f in r.features}, PRESENT, row_values[i].event_time, True)
        out.append(row_values)
    return out


def _decode(r: ViewRead, hit, t: int, stale: list, i: int) -> ViewValues:
    if hit is None or hit[2] < 0:
        return ViewValues(dict(r.defaults), MISSING, None)
    kind, payload, wm, until = hit
    t_eval = max(t, wm)  # a clock behind the newest event time reads as of that event
    if r.ttl_ms is not None and t_eval - wm > r.ttl_ms:
        return ViewValues(dict(r.defaults), EXPIRED, wm)
    if kind == "s":
        stale.append((i, payload, t_eval))
        return ViewValues({}, PRESENT, wm, True)
    decoded = orjson.loads(payload)
    for j in r.clock_idx:
        decoded[j] = (t_eval - wm) / 1000
    return ViewValues(dict(zip(r.features, [decoded[j] for j in r.feature_idx])), PRESENT, wm)
