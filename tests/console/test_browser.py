"""The console in a real browser: Debian's Chromium, driven by Playwright, against the console of the
package's stack (a worker's data, dead letters, two versions of a view).  Every page opens without a
console error or a failed request, links lead from a service to a view to a source, search and a
version diff work, a description holding a script runs nothing.  Screenshots of every page are saved
under ``build/test-artifacts/console/``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from featurestore.console.pages import NAV

pytestmark = pytest.mark.integration

CHROMIUM = os.environ.get("FEATURESTORE_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "build" / "test-artifacts" / "console"
ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is missing: `apt-get install chromium` (./dev test installs it when run as root)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, stack):
    """A fresh page that records console errors, page errors and failed or off-site requests."""
    context = browser.new_context(base_url=stack.url, viewport={"width": 1400, "height": 900})
    context.set_default_timeout(10_000)
    page = context.new_page()
    page.problems = []
    page.on("console", lambda m: m.type == "error" and page.problems.append(f"console: {m.text}"))
    page.on("pageerror", lambda e: page.problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: page.problems.append(f"failed request: {r.url}"))
    page.on("request", lambda r: r.url.startswith(stack.url) or page.problems.append(f"off-site request: {r.url}"))
    yield page
    context.close()


def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_every_page_opens_cleanly(page):
    for href, label in NAV:
        answer = page.goto(href)
        assert answer is not None and answer.status == 200, href
        assert page.locator("h1").first.inner_text(), href
        _shot(page, "home" if href == "/" else href.strip("/"))
    assert page.problems == []


def test_links_lead_from_service_to_view_to_source(page):
    page.goto("/services")
    page.click("text=fraud")
    assert page.locator("h1").inner_text().startswith("FeatureService")
    page.click("table.features >> text=activity")
    assert page.locator("h1").inner_text().startswith("FeatureView activity")
    page.click("table.fields >> text=payments")
    assert page.url.endswith("/sources/payments")
    assert page.locator("table.schema").inner_text().count("entity key") == 1
    page.goto("/lineage")
    page.click('svg.lineage g[data-id="odfv:amount_ratio"]')  # the on-demand view's box in the graph
    assert page.url.endswith("/on-demand/amount_ratio")
    assert page.problems == []


def test_search_box_and_version_diff(page):
    page.goto("/")
    page.fill("header input[name=q]", "fraud-v3")
    page.keyboard.press("Enter")
    page.wait_for_url("**/search?q=fraud-v3")
    assert page.locator("#hit-count").inner_text() == "1 result for “fraud-v3”"
    with page.expect_navigation():  # the service page loads before the next goto (no aborted request)
        page.click("table.hits >> text=fraud")
    page.goto("/views/spend")
    with page.expect_navigation():
        page.click("a.diff-link")
    diff = page.locator("pre.diff")
    diff.wait_for()
    assert "window" in diff.locator("span.add").all_inner_texts()[-1] or diff.locator("span.add").count() > 1
    assert diff.locator("span.del").count() >= 1
    _shot(page, "version-diff")
    assert page.problems == []


def test_a_description_with_a_script_is_text(page):
    page.goto("/views/spend")
    assert page.evaluate("window.__xss === undefined")
    assert "<script>window.__xss = 1</script>" in page.locator("#description").inner_text()
    assert page.problems == []


def test_statistics_histograms(page):
    page.goto("/statistics")
    page.click("table.stats-runs >> text=spend")
    page.click("table.stats >> text=spend_24h")
    assert page.url.endswith("#histogram-spend_24h")
    bars = page.locator("#histogram-spend_24h svg rect")
    assert bars.count() == 20
    titles = page.locator("#histogram-spend_24h svg rect title").all_text_contents()
    assert sum(int(t.rsplit(": ", 1)[1].replace(",", "")) for t in titles) == 25  # one value per entity
    _shot(page, "statistics-spend")
    assert page.problems == []


def test_monitoring_and_cost_charts_render(page):
    page.goto("/monitoring")
    assert page.locator("svg.chart.bars rect").count() == 2  # the freshness of both views
    _shot(page, "monitoring")
    page.goto("/cost")
    assert page.locator("svg.chart").count() == 3
    assert page.problems == []


def test_a_failed_expectation_is_red(page):
    page.goto("/statistics/spend")
    failed = page.locator("table.checks tr.check-failed")
    assert failed.count() == 1 and "max_7d in [1, 390]" in failed.inner_text()
    result = failed.locator("td.bad")
    assert result.inner_text() == "FAILED"
    assert result.evaluate("e => getComputedStyle(e).color") == "rgb(180, 35, 24)"  # #b42318
    assert page.locator("#checks-summary").evaluate("e => getComputedStyle(e).color") == "rgb(180, 35, 24)"
    failed.scroll_into_view_if_needed()
    _shot(page, "statistics-checks")
    assert page.problems == []
