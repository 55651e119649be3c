"""Backfill: the same transforms over historical events, into the offline (and online) store.

Events come from the source's history files (Parquet/CSV) or the PostgreSQL
event log; ``compute_batch`` gives the values as of each accepted event
(written idempotently to the view's history table), and with ``online=True``
each entity's final ``ViewState`` goes to the online store.
"""

from __future__ import annotations

import logging
import time
import zlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from featurestore.definitions import EventSource, FeatureView, FileHistory
from featurestore.exceptions import InvalidInputError
from featurestore.schema import validate_frame
from transforms import ViewState, compute_batch

from .processor import PreparedView, SourceProcessor

logger = logging.getLogger(__name__)


@dataclass
class BackfillReport:
    """What a backfill read, wrote and refused."""

    events_read: int = 0
    rows_written: int = 0
    entities_online: int = 0
    rejects: list = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        reasons: dict[str, int] = {}
        for r in self.rejects:
            reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
        return {"events_read": self.events_read, "rows_written": self.rows_written,
                "entities_online": self.entities_online, "rejected": len(self.rejects), "rejected_by_reason": reasons,
                "seconds": round(self.seconds, 3),
                "events_per_s": round(self.events_read / self.seconds) if self.seconds else None}


def read_file_history(source: EventSource) -> tuple[pd.DataFrame, list[dict]]:
    """Validated events of the source's history file, as the event log stores them."""
    history = source.history
    if not isinstance(history, FileHistory):
        raise InvalidInputError(f"event source {source.name!r} has no history file (history={history!r})")
    path = history.path
    raw = pd.read_parquet(path) if history.format == "parquet" else pd.read_csv(path)
    valid, rejects = validate_frame(source, raw.reset_index(drop=True))
    events = valid.rename(columns={"__key": "key", "__ts": "ts", "__event_id": "event_id"})
    bad = [{"location": f"{path}:row {r.row}", "reason": r.reason, "detail": r.detail} for r in rejects.itertuples()]
    return events, bad


def shard_mask(keys: pd.Series, shards: int, shard: int) -> np.ndarray:
    """Stable split of entities across ``shards`` processes (crc32 of the key's text)."""
    if shards == 1:
        return np.ones(len(keys), dtype=bool)
    codes, uniques = pd.factorize(keys)
    owner = np.array([zlib.crc32(str(k).encode()) % shards for k in uniques], dtype="int64")
    return owner[codes] == shard


def add_batch_transforms(view: FeatureView, events: pd.DataFrame) -> pd.DataFrame:
    for bt in view.batch_transforms():
        events[bt.column] = bt.apply(events).to_numpy()
    return events


def compute_history(view: FeatureView, events: pd.DataFrame, start_ms: int | None = None):
    """Values as of each accepted event (rows with ts >= start_ms) and the refused rows."""
    result = compute_batch(view.agg_specs(), events, None, view.source.allowed_lateness,
                           id_column="event_id" if "event_id" in events.columns else None)
    values = result.values
    if start_ms is not None:
        values = values[values["ts"] >= start_ms]
    refused = [{"location": f"event row {int(r.row)}", "reason": r.reason, "detail": r.detail}
               for r in result.rejects.itertuples()]
    return values, refused, result.accepted


def final_states(pv: PreparedView, events: pd.DataFrame) -> list:
    """Each entity's state after all its events (arrival order), as online records."""
    records = []
    cols = [c for c in events.columns if c not in ("key", "ts", "event_id")]
    for key, group in events.groupby("key", sort=False):
        state = ViewState(pv.specs, pv.lateness_ms)
        ids = group["event_id"].tolist() if "event_id" in group.columns else [None] * len(group)
        rows = group[cols].to_dict("records")
        state.apply(list(zip(group["ts"].tolist(), rows, ids)))
        records.append(SourceProcessor.record(pv, str(key), state))
    return records


async def run_backfill(pv: PreparedView, offline, online, source_kind: str = "files", start_ms=None, end_ms=None,
                       shards: int = 1, shard: int = 0, write_online: bool = False) -> BackfillReport:
    report = BackfillReport()
    started = time.perf_counter()
    view = pv.view
    if source_kind == "files":
        events, bad = read_file_history(view.source)
        report.rejects += bad
    elif source_kind == "postgres":
        events = await offline.load_events(view.source, end_ms=end_ms)
    else:
        raise InvalidInputError(f"unknown backfill source {source_kind!r}: use files or postgres")
    if end_ms is not None:
        events = events[events["ts"] <= end_ms]
    events = events[shard_mask(events["key"], shards, shard)].reset_index(drop=True)
    report.events_read = len(events)
    events = add_batch_transforms(view, events)
    values, refused, accepted = compute_history(view, events, start_ms)
    report.rejects += refused
    report.rows_written = await offline.write_history(view, pv.version, values)
    if write_online:
        records = final_states(pv, events[accepted])
        for lo in range(0, len(records), 2000):
            online.commit(records[lo:lo + 2000], None, {})
        report.entities_online = len(records)
    report.seconds = time.perf_counter() - started
    return report
