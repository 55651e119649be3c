"""Which events the batch path accepts: in arrival order per entity, an event is late when older
than the entity's watermark (the latest accepted time) minus the lateness, and a duplicate when its
id is that of an accepted event still within the lateness horizon (the streaming rules)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..state import REJECT_DUPLICATE, REJECT_LATE

__all__ = ["accept_events", "rejects_frame"]


def accept_events(codes: np.ndarray, ts: np.ndarray, ids: np.ndarray | None,
                  lateness_ms: int) -> tuple[np.ndarray, np.ndarray]:
    """Arrival-order acceptance per entity: returns (accepted mask, reasons array: None or a reason).

    Where every event carrying a given (entity, id) has the same time (redeliveries), the first one
    not late is accepted and the others are duplicates: decided by hashing.  The entities where an
    id comes back with another time are decided event by event (``_accept_in_order``)."""
    n = len(ts)
    frame = pd.DataFrame({"c": codes, "ts": ts})
    prev_max = frame.groupby("c", sort=False)["ts"].cummax().groupby(frame["c"], sort=False).shift(1)
    late = (ts < (prev_max.to_numpy(dtype="float64") - lateness_ms))  # NaN compares False
    reasons = np.full(n, None, dtype=object)
    reasons[late] = REJECT_LATE
    if ids is None:
        return reasons == None, reasons  # noqa: E711 (elementwise)
    id_codes, id_uniques = pd.factorize(pd.Series(ids, dtype=object))  # -1: no id
    rows = np.flatnonzero(id_codes >= 0)
    if len(rows) < 2:
        return reasons == None, reasons  # noqa: E711
    pair = (codes[rows].astype(np.int64) + 1) * len(id_uniques) + id_codes[rows]  # (entity, id), codes >= -1
    repeated = pd.Series(pair).duplicated(keep=False).to_numpy()
    if not repeated.any():
        return reasons == None, reasons  # noqa: E711
    rows, pair = rows[repeated], pair[repeated]  # arrival order
    fresh = ~late[rows]
    reasons[rows[fresh][pd.Series(pair[fresh]).duplicated().to_numpy()]] = REJECT_DUPLICATE  # all but the first
    times = pd.DataFrame({"pair": pair, "ts": ts[rows]}).drop_duplicates()["pair"]
    moved = times[times.duplicated()].to_numpy()
    if len(moved):
        entities = np.unique(moved // len(id_uniques)) - 1
        again = np.flatnonzero(np.isin(codes, entities))
        reasons[again] = _accept_in_order(codes[again].tolist(), ts[again].tolist(), id_codes[again].tolist(),
                                          lateness_ms)
    return reasons == None, reasons  # noqa: E711 (elementwise)


def _accept_in_order(codes: list[int], ts: list[int], ids: list[int], lateness_ms: int) -> list[str | None]:
    """The reason (None: accepted) of each event, decided one at a time in arrival order (``ids``:
    codes of the event ids, -1 for none)."""
    watermark: dict[int, int] = {}
    seen: dict[tuple[int, int], int] = {}  # (entity, id) -> time of the latest accepted event with that id
    out: list[str | None] = []
    for c, t, event_id in zip(codes, ts, ids):
        wm = watermark.get(c)
        if wm is not None and t < wm - lateness_ms:
            out.append(REJECT_LATE)
            continue
        if event_id >= 0:
            last = seen.get((c, event_id))
            # an id seen for the entity means an accepted event of it: wm is set
            if last is not None and wm is not None and last >= wm - lateness_ms:
                out.append(REJECT_DUPLICATE)
                continue
            seen[(c, event_id)] = t
        out.append(None)
        if wm is None or t > wm:
            watermark[c] = t
    return out


def rejects_frame(rows: np.ndarray, reasons: np.ndarray, ev_ts: np.ndarray, keys: pd.Series) -> pd.DataFrame:
    """The refused input ``rows``: row, reason and a sentence naming the event time and entity."""
    detail: list[Any] = [f"{reason}: event time {ev_ts[r]} of entity {keys.iat[r]!r}"
                         for r, reason in zip(rows, reasons)]
    return pd.DataFrame({"row": rows, "reason": reasons, "detail": detail})
