"""The client's writes: ``push`` (events computed elsewhere, through the worker's path),
``materialize`` (the offline event log into online states) and ``compact`` (the event log into
segments).  Mixed into ``featurestore.client.FeatureStore``."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pandas as pd

from .definitions import EventSource, FeatureView
from .exceptions import InvalidInputError, StoreUnavailableError, UnknownNameError
from .offline.postgres import PUSH_PARTITION
from .responses import PushResult
from .placement import place_views

PUSH_TARGETS = ("online", "offline", "online_and_offline")


class WritesMixin:
    """``push``, ``materialize`` and ``compact`` of ``FeatureStore``."""

    def push(self, source_name: str, df: pd.DataFrame, to: str = "online", force: bool = False) -> PushResult:
        """Write events computed elsewhere (a PushSource) for source ``source_name``.

        ``df``: one event per row with the source's schema fields.  Every row is validated
        (``featurestore.schema.validate_frame``) first; if any is invalid, ``InvalidInputError``
        lists each bad row (index label, reason, detail) and NOTHING is written.

        ``to="online"``: the events go through the worker's path (``SourceProcessor``: states
        loaded from Redis, lateness and duplicate ids decided per entity, one atomic commit of
        every touched (view, entity) state).  ``to="offline"``: appended to the PostgreSQL event
        log (partition -1, offsets from a per-source sequence, so arrival order is push order);
        ``materialize`` or a later push brings them online.  ``to="online_and_offline"``: as the
        worker does, states are computed first, the events the states accepted are appended to
        the event log, then the states are committed.  Pushing to one store only makes the two
        diverge until the other is written (``materialize`` re-derives online from offline).

        Pushing online to a source whose topic a running worker consumes raises
        ``WorkerRunningError`` before anything is written (the worker's cached states would
        overwrite the pushed ones); ``force=True`` skips that check.
        """
        return self._run(self.apush(source_name, df, to, force))

    async def apush(self, source_name: str, df: pd.DataFrame, to: str = "online", force: bool = False) -> PushResult:
        """``push`` on the running event loop."""
        from .schema import validate_frame

        if to not in PUSH_TARGETS:
            raise InvalidInputError(f"push(to={to!r}): expected one of {', '.join(PUSH_TARGETS)}")
        if not isinstance(df, pd.DataFrame):
            raise InvalidInputError(f"push: df must be a pandas DataFrame, got {type(df).__name__}")
        source = self.repo.source(source_name)
        valid, rejects = validate_frame(source, df, ref_ms=int(time.time() * 1000))  # max_future: the push's clock
        if len(rejects):
            raise _invalid_rows(source, rejects, len(df))
        result = PushResult(rows=len(valid))
        if not len(valid):
            return result
        processor = None
        if to != "offline":
            processor = self._processor(source)  # raises before anything is written
            if not force:
                self.online.refuse_if_consumed([source.topic], f"push to {source.name!r} online")
        # the offline store where rows go, and wherever there is one: it holds the history of entities gone from Redis
        has_offline = self._dsn is not None or self.offline is not None
        offline = (await self._stores())[0] if to != "online" or has_offline else None

        records: list = []
        keep = np.ones(len(valid), dtype=bool)
        if processor is not None:
            records, keep = await self._push_states(source, valid, processor, offline, result)
        if offline is not None and to != "online":
            await self._push_offline(source, valid[keep], offline, result)
        if processor is not None and records:
            self._push_commit(source, records, result)
        return result

    async def _push_states(self, source: EventSource, valid: pd.DataFrame, processor, offline,
                           result: PushResult) -> tuple[list, np.ndarray]:
        """The online records of the pushed ``valid`` rows applied to their entities' states (the
        worker's path), and the mask of the rows the states accepted; ``result.refused`` lists the
        others.  With an ``offline`` store, entities absent from Redis are rebuilt from its event log."""
        from .schema import ValidEvent

        events = [ValidEvent(k, int(t), e, v) for k, t, e, v in zip(
            valid["__key"].tolist(), valid["__ts"].tolist(),
            valid["__event_id"].tolist() if "__event_id" in valid.columns else [None] * len(valid),
            _records(valid[list(source.schema)]))]
        if offline is not None:
            processor.history = self._history_of(source, processor.views, offline)
            # in a thread: the history lookup of entities absent from Redis awaits on this loop
            records, refused = await asyncio.get_running_loop().run_in_executor(None, processor.apply, events)
        else:
            records, refused = processor.apply(events)
        keep = np.ones(len(valid), dtype=bool)
        if refused:
            idx = sorted(refused)
            keep[idx] = False
            result.refused = pd.DataFrame({"row": valid.index[idx], "reason": [refused[i].reason for i in idx],
                                           "detail": [refused[i].detail for i in idx]})
        return records, keep

    @staticmethod
    async def _push_offline(source: EventSource, frame: pd.DataFrame, offline, result: PushResult) -> None:
        """Append the pushed rows of ``frame`` to the event log (partition -1, offsets from the source's
        sequence), but those already logged with the same (key, event id, time): a redelivery."""
        if "__event_id" in frame.columns and len(frame):
            keys, ids, times = frame["__key"].tolist(), frame["__event_id"].tolist(), frame["__ts"].tolist()
            seen = await offline.existing_event_ids(source, keys, ids, times)  # a redelivery: same time
            if seen:
                dup = np.array([(k, None if i is None else str(i), int(t)) in seen
                                for k, i, t in zip(keys, ids, times)], dtype=bool)
                result.skipped_existing = int(dup.sum())
                frame = frame[~dup]
        if len(frame):
            frame = frame.copy()
            frame["__partition"] = PUSH_PARTITION
            frame["__offset"] = await offline.allocate_push_offsets(source, len(frame))
            result.offline_rows = await offline.write_events(source, frame)

    def _push_commit(self, source: EventSource, records: list, result: PushResult) -> None:
        """Commit the pushed states to the online store; ``StoreUnavailableError`` saying what the event
        log already holds when the commit fails or is refused."""
        try:
            status = self.online.commit(records, None, {})
        except Exception as exc:  # noqa: BLE001 - reraised with what was written
            written = (f"; {result.offline_rows} row(s) were appended to the event log (re-pushing the same rows "
                       f"skips them when the source has an event id field)") if result.offline_rows else ""
            raise StoreUnavailableError(f"push to {source.name!r}: online commit failed: {exc}{written}") from exc
        if status != 1:
            raise StoreUnavailableError(f"push to {source.name!r}: online commit refused (status {status})")
        result.online_records = len(records)

    def _prepared(self, views: list[FeatureView]) -> list:
        from featurestore.processing import prepare_view

        missing = [v.name for v in views if v.name not in self.versions]
        if missing:
            raise UnknownNameError(f"feature view(s) {', '.join(missing)} not applied: run `featurestore apply`")
        return [prepare_view(v, self.versions[v.name], self.project) for v in views]

    @staticmethod
    def _history_of(source: EventSource, views: list, offline):
        """``SourceProcessor.history`` for ``push``: every logged event of the entities whose state the
        online store does not hold (no worker consumes the topic while a push writes states), asked
        from a thread running ``SourceProcessor.apply`` on the running loop."""
        from featurestore.processing import log_batches

        from .offline.postgres import event_id_column

        loop = asyncio.get_running_loop()

        def history(keys: list[str]) -> dict:
            events = asyncio.run_coroutine_threadsafe(offline.entity_events(source, keys), loop).result()
            return log_batches(views, events, event_id_column(source))

        return history

    def _processor(self, source: EventSource):
        from featurestore.processing import SourceProcessor

        views = [v for v in self.repo.views.values() if v.source.name == source.name]
        prepared = self._prepared(views)
        place_views(self.online, prepared, self.kafka_options)
        return SourceProcessor(prepared, self.online)

    def compact(self, sources: list[str] | None = None, rebuild: bool = False) -> dict:
        """Compact the event logs of ``sources`` (default: every source of the repository) into
        segments, so full scans (training sets over many entities) read packed columns instead of
        every row (``PostgresOfflineStore.compact_events``).  Returns a report per source; a source
        that cannot have segments (an entity key neither int64 nor string) reports why and is left
        alone unless named in ``sources`` (then ``InvalidInputError``)."""
        return self._run(self.acompact(sources, rebuild))

    async def acompact(self, sources: list[str] | None = None, rebuild: bool = False) -> dict:
        """``compact`` on the running event loop."""
        offline, _ = await self._stores()
        names = list(self.repo.sources) if sources is None else list(sources)
        report: dict = {}
        for name in names:
            source = self.repo.source(name)
            try:
                report[name] = await offline.compact_events(source, rebuild=rebuild)
            except InvalidInputError as exc:
                if sources is not None:
                    raise
                report[name] = {"skipped": str(exc)}
        return report

    def materialize(self, start, end, views: list[str] | None = None, force: bool = False) -> dict:
        """Load offline values into the online store (Feast ``materialize``).

        For each view (default: all with a registered version), every entity with events in
        the event log with ``start <= ts <= end`` gets its state recomputed from ALL its logged
        events with ``ts <= end`` (windows reach back before ``start``), in arrival order with
        the stream's lateness and duplicate rules, and committed online.  An entity whose
        online state already holds an event after ``end`` is left alone (``skipped_newer``):
        materialize never moves a state back in time.  ``start``/``end``: epoch ms, ISO-8601 or
        datetime.  Returns a report per view.  Raises ``WorkerRunningError`` before writing when a
        running worker consumes one of the views' topics (``force=True`` skips that check)."""
        return self._run(self.amaterialize(start, end, views, force=force))

    async def amaterialize(self, start, end, views: list[str] | None = None, chunk_keys: int = 20_000,
                           force: bool = False) -> dict:
        """``materialize`` on the running event loop."""
        from featurestore.processing import add_derived, derived_transforms, rebuild_records

        from .offline.postgres import event_id_column
        from .types import parse_timestamp

        start_ms, end_ms = _as_ms(start, "start", parse_timestamp), _as_ms(end, "end", parse_timestamp)
        if start_ms > end_ms:
            raise InvalidInputError(f"materialize: start {start_ms} is after end {end_ms}")
        names = list(views) if views is not None else [n for n in self.repo.views if n in self.versions]
        prepared = self._prepared([self.repo.view(n) for n in names])
        place_views(self.online, prepared, self.kafka_options)
        if not force:
            self.online.refuse_if_consumed({pv.view.source.topic for pv in prepared}, "materialize")
        offline = (await self._stores())[0]
        by_source: dict[str, list] = {}
        for pv in prepared:
            by_source.setdefault(pv.view.source.name, []).append(pv)
        report: dict = {"start_ms": start_ms, "end_ms": end_ms, "views": {}}
        started = time.perf_counter()
        for source_name, pvs in by_source.items():
            source = self.repo.source(source_name)
            keys = await offline.event_keys(source, start_ms, end_ms)
            for pv in pvs:
                report["views"][pv.view.name] = {"version": pv.version, "entities": 0, "skipped_newer": 0, "events": 0}
            id_col = event_id_column(source) if source.event_id_field is not None else None
            for lo in range(0, len(keys), chunk_keys):
                chunk = keys[lo:lo + chunk_keys]
                events = await offline.load_events(source, keys=chunk, end_ms=end_ms)
                add_derived(derived_transforms(pvs), events)
                values = _records(events.drop(columns=["key", "ts"]))
                groups = events.groupby("key", sort=False).indices
                ts_list = events["ts"].tolist()
                id_list = events[id_col].tolist() if id_col else None
                for pv in pvs:
                    entity_keys = [str(k) for k in groups]
                    current = self.online.read_values([(pv.view_key, k) for k in entity_keys])
                    batches = {}
                    rep = report["views"][pv.view.name]
                    for (key, rows), (_, wm, _) in zip(groups.items(), current):
                        if wm is not None and wm > end_ms:
                            rep["skipped_newer"] += 1
                            continue
                        batches[str(key)] = [(ts_list[i], values[i], id_list[i] if id_list else None) for i in rows]
                        rep["events"] += len(rows)
                    records = rebuild_records(pv, batches)
                    for b in range(0, len(records), 2000):
                        if self.online.commit(records[b:b + 2000], None, {}) != 1:
                            raise StoreUnavailableError(f"materialize {pv.view.name!r}: online commit refused")
                    rep["entities"] += len(records)
        report["seconds"] = round(time.perf_counter() - started, 3)
        return report


def _records(frame: pd.DataFrame) -> list[dict]:
    """Rows as dicts of Python values, nullable-dtype nulls (pd.NA) as None."""
    frame = frame.copy()
    for c in frame.columns:
        if pd.api.types.is_extension_array_dtype(frame[c].dtype):
            frame[c] = frame[c].astype(object).where(frame[c].notna(), None)
    return frame.to_dict("records")


def _invalid_rows(source: EventSource, rejects: pd.DataFrame, n: int, show: int = 20) -> InvalidInputError:
    lines = [f"row {r.row}: {r.reason}: {r.detail}" for r in rejects.head(show).itertuples()]
    more = f"; ... and {len(rejects) - show} more" if len(rejects) > show else ""
    exc = InvalidInputError(f"push to source {source.name!r}: {len(rejects)} of {n} rows are invalid, nothing was "
                            f"written: " + "; ".join(lines) + more)
    exc.rejects = rejects  # type: ignore[attr-defined]
    return exc


def _as_ms(value, what: str, parse) -> int:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    try:
        return int(parse(value))
    except (ValueError, TypeError) as exc:
        raise InvalidInputError(f"{what}: expected epoch ms, ISO-8601 or a datetime, got {value!r} ({exc})") from None
