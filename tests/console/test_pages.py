"""The console's pages over real HTTP (uvicorn) against the embedded servers: catalog, versions and their
diff, definition source, lineage JSON, search, monitoring from the worker's announcement, dead letters,
cost, and escaping."""

from __future__ import annotations

import html
import re

import httpx
import pytest

from tests.console.conftest import BAD_RECORDS, N_EVENTS, XSS

pytestmark = pytest.mark.integration


def _table(page: str, cls: str) -> str:
    """The table of class ``cls`` in ``page`` (the start of the page in the error when there is none)."""
    assert f'class="{cls}"' in page, page[-3000:]
    return page.split(f'class="{cls}"')[1].split("</table>")[0]


@pytest.fixture(scope="module")
def client(stack):
    with httpx.Client(base_url=stack.url, timeout=30) as c:
        yield c


def test_home_shows_counts_health_and_the_live_worker(client, stack):
    page = client.get("/").text
    assert f"Project {stack.project}" in page
    assert "<b>2</b> feature views" in page and "<b>1</b> on-demand views" in page
    for store in ("redis", "postgres", "kafka"):
        assert f'id="health-{store}">ok<' in page
    assert 'id="health-workers">1<' in page
    assert stack.worker.worker_id in page


@pytest.mark.parametrize("path,expected", [
    ("/entities", ["customer", "join key customer_id"]),
    ("/sources", ["payments", "Card payments, one event per purchase."]),
    ("/views", ["spend", "activity", "risk-team", "team=risk"]),
    ("/on-demand", ["amount_ratio", "1 request fields"]),
    ("/services", ["fraud", "model=fraud-v3"]),
])
def test_listings(client, path, expected):
    answer = client.get(path)
    assert answer.status_code == 200
    for text in expected:
        assert html.escape(text, quote=False) in answer.text


def test_view_detail_has_windows_versions_and_source(client):
    page = client.get("/views/spend").text
    assert 'id="feature-spend_24h"' in page and "<td>1d</td><td>15m</td>" in page  # window and hop of v2
    assert "<td>v1</td>" in page and "<td>v2</td>" in page
    assert "v2 served" in page
    assert 'name="spend", entity=customer, source=payments' in html.unescape(page)  # the Python statement
    assert "diff with v1" in page


def test_version_diff_shows_the_changed_window(client):
    page = html.unescape(client.get("/views/spend", params={"old": 1, "new": 2}).text)
    diff = page.split('id="diff"')[1].split("</pre>")[0]
    assert '<span class="del">-      "window": "12h",</span>' in diff, diff
    assert '<span class="add">+      "window": "1d",</span>' in diff


def test_unknown_version_and_name_are_explained(client):
    page = client.get("/views/spend", params={"old": 7, "new": 2}).text
    assert "cannot compare these versions" in page and "has no version 7" in page
    answer = client.get("/views/nope")
    assert answer.status_code == 404
    assert "unknown FeatureView 'nope' (known: activity, spend)" in html.unescape(answer.text)


def test_lineage_json_is_the_graph(client, stack):
    graph = client.get("/lineage.json").json()
    ids = {n["id"] for n in graph["nodes"]}
    assert {f"topic:{stack.topic}", "source:payments", "view:spend", "view:activity", "odfv:amount_ratio",
            "request:amount_ratio", "service:fraud"} <= ids
    edges = {(e["from"], e["to"]): e["features"] for e in graph["edges"]}
    assert (f"topic:{stack.topic}", "source:payments") in edges
    assert edges[("view:spend", "odfv:amount_ratio")] == ["spend_24h"]
    assert edges[("request:amount_ratio", "odfv:amount_ratio")] == ["current_amount"]
    assert edges[("view:activity", "service:fraud")] == ["payments_1h"]
    assert edges[("odfv:amount_ratio", "service:fraud")] == ["amount_ratio"]
    page = client.get("/lineage").text
    assert page.count('<g class="node') == len(graph["nodes"]) and page.count('class="edge"') == len(graph["edges"])


def test_search_finds_names_descriptions_tags_and_features(client):
    assert "fraud-v3" in client.get("/search", params={"q": "FRAUD-V3"}).text
    page = client.get("/search", params={"q": "newest purchase"}).text
    assert 'id="hit-count">1 result' in page and "spend:last_amount" in page
    page = client.get("/search", params={"q": "gold"}).text
    assert "tier=gold" in page
    assert 'id="hit-count">0 results' in client.get("/search", params={"q": "no-such-thing"}).text


def test_monitoring_reads_the_worker_status(client, stack):
    page = client.get("/monitoring").text
    for view in ("spend", "activity"):
        row = page.split(f'id="monitor-{view}"')[1].split("</tr>")[0]
        assert f'class="applied">{N_EVENTS:,}<' in row
        assert f"{stack.topic}:0" in row and f"{stack.topic}:1" in row
        assert 'class="freshness">-<' not in row  # an event time was applied
    assert stack.worker.worker_id in page


def test_dead_letters_by_reason_with_positions(client, stack):
    page = client.get("/monitoring").text
    reasons = _table(page, "dead-reasons")
    assert f"<td>payments</td><td>malformed_json</td><td>{BAD_RECORDS}</td>" in reasons
    assert f"malformed_json: {BAD_RECORDS}<br>" in _table(page, "workers")  # as the worker announced them
    latest = _table(page, "dead-latest")
    assert latest.count("<tr>") == 1 + BAD_RECORDS


def test_each_view_publishes_the_dead_letters_of_its_source(stack):
    """The worker's status names, per view, the dead letters of the view's source by reason."""
    views = stack.worker._status()["views"]
    assert len(views) == 2
    assert all(doc["dead_letters"] == {"malformed_json": BAD_RECORDS} for doc in views.values()), views


def test_cost_measures_redis_and_postgres(client, stack):
    page = client.get("/cost").text
    redis_rows = _table(page, "cost-redis")
    assert "<td>25</td>" in redis_rows  # 25 customers per view
    pg = _table(page, "cost-pg")
    assert f"{stack.project}__history__spend__v2" in pg and "event log" in pg
    cpu = _table(page, "cost-cpu")
    assert f"<td>{N_EVENTS:,}</td>" in cpu


def test_descriptions_are_escaped(client):
    for path in ("/views", "/views/spend", "/search?q=script"):
        page = client.get(path).text
        assert XSS not in page
        assert "&lt;script&gt;window.__xss = 1&lt;/script&gt;&lt;img src=x onerror=" in page
        assert XSS in html.unescape(page)


def test_statistics_through_the_training_set_path(client):
    from tests.console.conftest import STATS_AT, last_amounts

    listing = client.get("/statistics").text
    assert 'href="/statistics/spend"' in listing and "#2 (" in listing
    page = client.get("/statistics/spend").text
    assert "Run #" in page and "of 2: as of" in page and "25 entities" in page
    assert 'id="stats-last_amount"' in page, page[-3000:]
    row = page.split('id="stats-last_amount"')[1].split("</tr>")[0]
    amounts = last_amounts(STATS_AT[1])
    cells = re.findall(r"<td[^>]*>(?:<a [^>]*>)?([^<]*)", row)
    assert cells[1:4] == ["numeric", "25", "0.0%"]
    assert cells[6] == f"{min(amounts):g}" and cells[11] == f"{max(amounts):g}"
    assert cells[13] != "" and cells[14] in ("stable", "moderate", "significant")  # drift against run 1
    assert page.count('<figure id="histogram-') == 3
    assert page.count("<polyline") == 4  # the PSI of each feature over the runs
    row = page.split('id="stats-last_payment"')[1].split("</tr>")[0]
    cells = re.findall(r"<td[^>]*>(?:<a [^>]*>)?([^<]*)", row)
    assert cells[1:4] == ["string", "25", "0.0%"] and cells[12] == "25"  # distinct: one payment id each
    assert "last_payment: most frequent values" in page


def test_failed_expectations_are_red_with_their_counts(client):
    """The fixture's second run of ``spend`` (after the last event): ``max_7d in [1, 390]`` fails for the
    customers whose largest purchase is above 390; the relation and the service's not-null check hold."""
    from tests.console.conftest import MAX_AMOUNT, STATS_AT, max_amounts

    over = sorted(k for k, v in max_amounts(STATS_AT[1]).items() if v > MAX_AMOUNT)
    listing = client.get("/statistics").text
    row = listing.split('href="/statistics/spend"')[1].split("</tr>")[0]
    assert '<td class="bad">1 of 3</td>' in row  # checks failed
    page = client.get("/statistics/spend").text
    assert 'id="checks-summary" class="bad">2 of 3 checks passed' in page
    checks = _table(page, "checks")
    failed = [r for r in checks.split("<tr")[1:] if r.startswith(' class="check-failed"')]
    assert len(failed) == 1 and f"max_7d in [1, {MAX_AMOUNT}]" in failed[0]
    cells = re.findall(r"<td[^>]*>(?:<code>)?([^<]*)", failed[0])
    assert cells[1:5] == ["max_7d", "view spend", "25", str(len(over))]
    assert '<td class="bad">FAILED</td>' in failed[0] and ", ".join(over[:5]) in failed[0]
    assert f"A purchase is at most {MAX_AMOUNT}." in failed[0]
    passed = [r for r in checks.split("<tr")[1:] if r.startswith(' class="check-ok"')]
    assert [("last_amount &lt;= max_7d" in r or "spend_24h not null" in r) for r in passed] == [True, True]
    assert "service fraud" in passed[1]
