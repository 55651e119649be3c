"""The pages' data without servers: lineage, search, definition source, diffs, charts, the monitoring rows
built from announcements, and the worker's per-view status book."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from featurestore.console import catalog, charts, monitoring
from featurestore.console.lineage import lineage_graph, lineage_svg
from featurestore.console.search import search
from featurestore.console.versions import definition_diff
from featurestore.repo import load_repo
from workers.reporting import StatusBook, ViewStatus

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "repo.py"


@pytest.fixture(scope="module")
def repo():
    return load_repo(EXAMPLE)


def test_lineage_of_the_example(repo):
    graph = lineage_graph(repo, "/ui")
    nodes = {n["id"]: n for n in graph["nodes"]}
    assert set(nodes) == {"topic:transactions", "source:transactions", "view:customer_stats", "view:transaction_stats",
                          "odfv:customer_derived_features", "request:customer_derived_features",
                          "service:fraud_detection", "service:recommendation"}
    assert nodes["view:customer_stats"]["url"] == "/ui/views/customer_stats"
    assert nodes["topic:transactions"]["url"] is None
    edges = {(e["from"], e["to"]): e["features"] for e in graph["edges"]}
    assert edges[("view:customer_stats", "odfv:customer_derived_features")] == [
        "total_purchases", "avg_amount_7d", "purchases_24h"]
    assert edges[("view:customer_stats", "service:fraud_detection")] == ["spend_1h", "max_amount_7d",
                                                                         "customer_segment"]
    assert ("view:transaction_stats", "service:recommendation") not in edges
    svg = str(lineage_svg(graph))
    assert svg.count("<g class=\"node") == len(nodes) and svg.count('class="edge"') == len(edges)


@pytest.mark.parametrize("query,expected", [
    ("fraud", {("service", "fraud_detection", None)}),
    ("PAYMENTS", {("view", "customer_stats", None)}),  # the tag domain=payments
    ("embedding", {("feature", "transaction_stats", "txn_embedding")}),  # a feature's description
    ("risk-team", {("view", "customer_stats", None), ("view", "transaction_stats", None),
                   ("service", "fraud_detection", None)}),
    ("   ", set()),
])
def test_search(repo, query, expected):
    assert {(h["kind"], h["name"], h["feature"]) for h in search(repo, query)} == expected


def test_definition_source_is_the_statement(repo):
    found = catalog.definition_source(repo, "view", "customer_stats")
    assert found is not None and found["code"].startswith("customer_stats = FeatureView(")
    assert found["code"].rstrip().endswith(")") and 'name="customer_stats"' in found["code"]
    assert "transaction_stats = " not in found["code"]
    odfv = catalog.definition_source(repo, "odfv", "customer_derived_features")
    assert odfv is not None and "fn=customer_derived" in odfv["code"]


def test_detail_of_a_view_and_its_users(repo):
    page = catalog.detail(repo, "view", "customer_stats")
    assert page["used_by"] == [("odfv", "customer_derived_features"), ("service", "fraud_detection"),
                               ("service", "recommendation")]
    by_name = {f["name"]: f for f in page["features"]}
    assert by_name["total_purchases"]["window"] == "lifetime"
    assert (by_name["spend_24h"]["window"], by_name["spend_24h"]["function"]) == ("1d", "sum")
    assert catalog.catalog_counts(repo)["view"] == 2


def test_definition_diff():
    assert definition_diff({"a": 1}, {"a": 1}, "v1", "v2") == []
    lines = definition_diff({"a": 1, "b": "x"}, {"a": 2, "b": "x"}, "v1", "v2")
    assert [(line["kind"], line["text"].strip()) for line in lines if line["kind"] in ("add", "del")] == [
        ("del", '-  "a": 1,'), ("add", '+  "a": 2,')]


def test_charts_escape_labels_and_check_their_input():
    svg = str(charts.bar_chart([("<b>x</b>", 3.0), ("y", 1.0)], "s"))
    assert "<b>" not in svg and "&lt;b&gt;x&lt;/b&gt;" in svg and svg.count("<rect") == 2
    assert "no data" in charts.bar_chart([])
    assert "no data" in charts.histogram([0, 1], [1, 2])  # edges must be one more than the counts
    hist = str(charts.histogram([0, 1, 2, 4], [5, 0, 2]))
    assert hist.count("<rect") == 3 and "[2, 4): 2" in hist
    line = str(charts.line_chart({"a": [(0, 1.0), (60_000, 3.0)], "b": [(0, 2.0)]}))
    assert line.count("<polyline") == 2 and line.count("<circle") == 3
    assert [charts.fmt_number(v) for v in (None, 1234, 12.0, 3.14159, 0.000012, 1234.5)] == [
        "-", "1,234", "12", "3.14", "1.2e-05", "1,234.5"]


def _announcement(worker: str, view_status: dict, partitions: list[str], at_ms: int) -> dict:
    return {"group": "g", "worker": worker, "host": "h", "pid": 1, "at_ms": at_ms, "ttl_ms": 30_000,
            "started_ms": at_ms - 60_000, "views": ["p:spend:v2"],
            "status": {"views": {"p:spend:v2": view_status}, "partitions": partitions,
                       "lag": {p: 5 for p in partitions}, "dead_letters": {"late": 2}, "records_done": 10,
                       "cpu_s": 1.5}}


def test_view_monitoring_adds_up_workers(repo):
    now = 1_000_000_000
    base = {"view": "customer_stats", "version": 2, "topic": "transactions", "lag": 5, "cached_states": 7,
            "cpu_s": 0.5, "events_per_s": 10.0}
    live = [_announcement("a", {**base, "applied": 100, "last_event_ms": now - 4000, "last_commit_ms": now - 1000},
                          ["transactions:0"], now),
            _announcement("b", {**base, "applied": 50, "last_event_ms": now - 9000, "last_commit_ms": now - 500},
                          ["transactions:1"], now),
            _announcement("c", {**base, "version": 1, "applied": 999, "last_event_ms": now, "last_commit_ms": now},
                          ["transactions:2"], now)]  # another version: not counted for the version read
    rows = {r["view"]: r for r in monitoring.view_monitoring(repo, {"customer_stats": 2}, live, now)}
    row = rows["customer_stats"]
    assert (row["applied"], row["lag"], row["cached_states"], row["events_per_s"]) == (150, 10, 14, 20.0)
    assert (row["freshness_s"], row["commit_age_s"]) == (4.0, 0.5)
    assert row["partitions"] == ["transactions:0", "transactions:1"] and row["workers"] == ["a", "b"]
    assert rows["transaction_stats"]["freshness_s"] is None
    workers = monitoring.worker_rows(live, now + 2000)
    assert workers[0]["dead_letters"] == {"late": 2} and workers[0]["renewed_s"] == 2.0


def test_status_book_splits_cpu_by_events_times_features():
    book = StatusBook(views={"a": ViewStatus(features=1), "b": ViewStatus(features=3)})
    book.cpu_at = time.process_time() - 4.0  # as if the batch took 4 s of CPU
    book.record({"a": (10, 500), "b": (10, None)}, now_ms=1234)
    a, b = book.views["a"], book.views["b"]
    assert (a.applied, a.last_event_ms, a.last_commit_ms) == (10, 500, 1234)
    assert b.last_event_ms is None
    assert b.cpu_s == pytest.approx(3 * a.cpu_s) and a.cpu_s + b.cpu_s >= 4.0
    book.record({"a": (5, 300)}, now_ms=2000)  # an older event time does not move the newest back
    assert (a.applied, a.last_event_ms) == (15, 500)
    doc = a.to_json()
    assert doc["applied"] == 15 and doc["events_per_s"] > 0 and a.to_json()["events_per_s"] == 0.0
