"""`cmw loadtest --html` from real runs, opened in Chromium with the network cut off: every section shows content.

Runs: ``--compare sequential,balanced`` (each spawned server gives the load tester its admin token, so the server's
in-flight and queue figures are there), and two ``--url`` runs against one `cmw serve`: with ``--token`` (figures)
and without (the report says there are none). Every request the page makes other than the file itself is aborted
and recorded; none may happen.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.app.admin import token_path
from agent.loadtest.html import SECTIONS
from tests.servers import cmw_server

try:
    from playwright.sync_api import Page, expect
except ImportError:  # the `browser` fixture skips these tests (under CI: fails them) and says why
    Page = expect = None  # type: ignore[assignment,misc]

pytestmark = [pytest.mark.browser, pytest.mark.server, pytest.mark.timeout(300)]
LOAD = ["--users", "3", "--turns", "1", "--quiet"]


@dataclass(frozen=True)
class Report:
    html: Path
    doc: dict[str, Any]  # the same run's --out JSON


def _loadtest(tmp: Path, name: str, *args: str) -> Report:
    """The command as a user runs it, in its own process (Playwright's loop owns this one's main thread)."""
    html, out = tmp / f"{name}.html", tmp / f"{name}.json"
    env = {k: v for k, v in os.environ.items() if k != "CMW_ADMIN_TOKEN"}
    done = subprocess.run([sys.executable, "-m", "cmw_cli.main", "loadtest", *args, *LOAD, "--html", str(html),
                           "--out", str(out)], env=env, cwd=tmp, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    return Report(html, json.loads(out.read_text()))


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Report]]:
    tmp = tmp_path_factory.mktemp("reports")
    made = {"compare": _loadtest(tmp, "compare", "--compare", "sequential,balanced")}
    with cmw_server(tmp / "server") as server:
        token = token_path(server.state_dir).read_text().strip()
        made["figures"] = _loadtest(tmp, "figures", "--url", server.url, "--token", token)
        made["blind"] = _loadtest(tmp, "blind", "--url", server.url)
    yield made


def open_offline(browser: Any, report: Report) -> tuple[Page, list[str]]:
    """The report in a fresh context where every request but the file itself is aborted (and recorded)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    url = report.html.resolve().as_uri()
    attempted: list[str] = []

    def guard(route: Any) -> None:
        if route.request.url == url:
            route.continue_()
        else:
            attempted.append(route.request.url)
            route.abort()

    context.route("**/*", guard)
    page = context.new_page()
    page.on("request", lambda request: request.url != url and attempted.append(request.url))
    page.goto(url)
    page.wait_for_load_state("load")
    return page, attempted


def runs_of(doc: dict[str, Any]) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = doc.get("runs", [doc])
    return runs


def dots(run: dict[str, Any]) -> int:
    """Points the latency-over-time chart must draw: queue wait, TTFT and end-to-end of each counted turn."""
    return sum(t[k] is not None for t in run["turns"] if t["error"] is None and not t["warmup"]
               for k in ("queue_wait", "ttft", "e2e"))


def check_sections(page: Page, doc: dict[str, Any]) -> None:
    """Every section visible under its heading, its tables with rows and its charts drawn from the run's data."""
    runs = runs_of(doc)
    expected = [ref for ref in SECTIONS if ref != "comparison" or len(runs) > 1]
    assert page.locator("section").evaluate_all("els => els.map(e => e.id)") == expected
    for ref in expected:
        section = page.locator(f"section#{ref}")
        expect(section).to_be_visible()
        expect(section.locator("h2")).to_have_text(SECTIONS[ref])
    assert page.locator("section#summary tbody tr").count() >= 12 + 4 * len(runs)
    over_time = page.locator("section#latency-over-time figure.chart")
    expect(over_time).to_have_count(len(runs))
    for i, run in enumerate(runs):
        expect(over_time.nth(i).locator("g.series circle")).to_have_count(dots(run))
        assert dots(run) > 0
    spread = page.locator("section#distributions")
    expect(spread.locator("figure.chart")).to_have_count(len(runs) + (1 if len(runs) == 1 else 2))
    assert spread.locator("g.series rect").count() > 0 and spread.locator("g.series path").count() >= 2
    expect(page.locator("section#errors tbody tr").first).to_be_visible()
    assert page.locator("section#errors tbody tr").count() >= 5  # the four classes and the total
    expect(page.locator("section#run dl")).to_have_count(len(runs))
    for svg in page.locator("svg").all():
        box = svg.bounding_box()
        assert box is not None and box["width"] > 200 and box["height"] > 80


def test_compare_report_offline(browser: Any, reports: dict[str, Report], artifacts: Path) -> None:
    report = reports["compare"]
    page, attempted = open_offline(browser, report)
    check_sections(page, report.doc)
    rows = page.locator("section#comparison tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_contain_text("sequential")
    expect(rows.nth(0)).to_contain_text("1.00×")
    expect(rows.nth(1)).to_contain_text("balanced")
    # Spawned servers hand the load tester their admin token: the server's own figures, per profile.
    queue = page.locator("section#server-queue figure.chart")
    expect(queue).to_have_count(2)
    for i in range(2):
        expect(queue.nth(i).locator("g.series[data-series='chat running'] path")).to_have_count(1)
    assert all(run["meta"]["admin"]["series"]["chat"] for run in report.doc["runs"])
    page.screenshot(path=str(artifacts / "loadtest-report-compare.png"), full_page=True)
    assert attempted == []


def test_report_with_the_servers_figures_draws_in_flight_and_queue(browser: Any, reports: dict[str, Report]) -> None:
    report = reports["figures"]
    page, attempted = open_offline(browser, report)
    check_sections(page, report.doc)
    chart = page.locator("section#server-queue figure.chart")
    expect(chart).to_have_count(1)
    for name in ("chat running", "chat waiting", "chat limit"):
        expect(chart.locator(f"g.series[data-series='{name}'] path")).to_have_count(1)
    series = report.doc["meta"]["admin"]["series"]["chat"]
    assert max(p["running"] for p in series) >= 1 and {p["limit"] for p in series} == {3}  # balanced: chat 3
    assert attempted == []


def test_report_without_a_token_says_there_are_no_server_figures(browser: Any, reports: dict[str, Report]) -> None:
    report = reports["blind"]
    page, attempted = open_offline(browser, report)
    check_sections(page, report.doc)
    queue = page.locator("section#server-queue")
    expect(queue).to_contain_text("no server figures (no token given)")
    expect(queue.locator("figure.chart")).to_have_count(0)
    assert "series" not in report.doc["meta"]["admin"]
    assert attempted == []
