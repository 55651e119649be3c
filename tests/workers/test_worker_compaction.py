"""Compaction beside a running worker (real broker, Redis, PostgreSQL): segments written while the
worker appends to the event log, plus the rows after them, give exactly the log's rows."""

from __future__ import annotations

import asyncio

import pandas as pd
import pytest

from featurestore.offline.postgres import PostgresOfflineStore
from tests.workers.support import build_worker, make_events, make_view, run_until, send

pytestmark = pytest.mark.integration


def _no_block_scan(*_args, **_kwargs):
    raise AssertionError("the block scan ran: the segments were not read")


def test_compaction_while_the_worker_writes(servers, topic_factory, unique_name, pg_schema):
    topic = topic_factory(partitions=3)
    view = make_view(topic)
    events = make_events(1500, customers=40)
    send(servers, topic, events)
    project = unique_name("p")
    worker = build_worker(servers, view, project, unique_name("g"), pg_schema, batch_size=40)
    loop = asyncio.new_event_loop()
    store = loop.run_until_complete(PostgresOfflineStore.create(servers.postgres_dsn, project, pg_schema))
    try:
        loop.run_until_complete(store.migrate([view.source], [view]))
        thread = run_until(worker, len(events), timeout=90)
        runs = []  # (records the worker had done before the run, events the run compacted)
        while thread.is_alive():  # compact again and again while batches are being logged
            done = worker.records_done
            runs.append((done, loop.run_until_complete(store.compact_events(view.source, segment_rows=64))["events"]))
        thread.join(5)
        assert worker.records_done == len(events)
        assert any(n and done < len(events) for done, n in runs), runs  # compacted while the worker wrote
        runs.append((len(events),
                     loop.run_until_complete(store.compact_events(view.source, segment_rows=64))["events"]))
        assert sum(n for _, n in runs) == len(events)  # every row once, none twice
        rows = loop.run_until_complete(store._select_events(view.source))
        store._block_scan = _no_block_scan
        packed = loop.run_until_complete(store.load_events(view.source))
        pd.testing.assert_frame_equal(packed, rows)
        assert len(rows) == len(events)
    finally:
        loop.run_until_complete(store.close())
        loop.close()
