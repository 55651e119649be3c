"""The worker never runs in silence: it says when it started and what it computes, what it waits
for, and its progress, at INFO."""

from __future__ import annotations

import logging
import threading

import pytest

from tests.workers.support import build_worker, make_events, make_view
from tests.workers.test_worker_faults import run_in_thread, send_events, wait_for
from workers import reporting

pytestmark = pytest.mark.integration


def test_start_progress_and_waiting_lines(servers, topic_factory, unique_name, project, pg_schema, caplog,
                                          monkeypatch):
    monkeypatch.setattr(reporting, "PROGRESS_PERIOD_S", 0.5)
    topic = topic_factory(partitions=2)
    view = make_view(topic)
    events = make_events(120, seed=31)
    send_events(servers, topic, events)
    group = unique_name("g")
    worker = build_worker(servers, view, project, group, pg_schema, batch_size=40)
    stop = threading.Event()
    with caplog.at_level(logging.INFO, logger="workers.worker"):
        thread, outcome = run_in_thread(worker, stop)
        try:
            wait_for(lambda: worker.records_done >= len(events), 60, "every record committed", interval=0.05)
            wait_for(lambda: any("progress over" in r.getMessage() and "records committed since start" in r.getMessage()
                                 and f"{len(events)} records committed" in r.getMessage() for r in caplog.records),
                     10, "a progress line after the stream")
        finally:
            stop.set()
            thread.join(30)
    assert "error" not in outcome, outcome
    text = [r.getMessage() for r in caplog.records]
    started = [t for t in text if "started: consumer group" in t]
    assert started and repr(group) in started[0] and topic in started[0] and f"{project}:stats:v1" in started[0]
    assert any(t.startswith("assigned [") and f"{topic}:0" in t for t in text)
