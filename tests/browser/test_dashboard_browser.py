"""The operator dashboard in Chromium: after a short real load its plots hold points and its sessions table lists
the load's sessions; a browser without the token sees the login form and nothing else.

One `cmw serve` for the module, a real `cmw loadtest --users 4 --turns 2` against it, two browser contexts (their
own cookie jars). Waits are Playwright's auto-waiting assertions. Writes docs/screenshots/dashboard.png.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers import RunningServer, cmw_server

try:
    from playwright.sync_api import Page, expect
except ImportError:  # the `browser` fixture skips these tests (under CI: fails them) and says why
    Page = expect = None  # type: ignore[assignment,misc]

WAIT_MS = 30_000
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "screenshots" / "dashboard.png"
PLOTS = ("queue", "replies", "latency", "errors", "sessions")
pytestmark = [pytest.mark.browser, pytest.mark.server, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def loaded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, list[str]]]:
    """A server that has served `cmw loadtest --users 4 --turns 2`, and the ids of the sessions it holds."""
    tmp = tmp_path_factory.mktemp("dashboard-browser")
    with cmw_server(tmp, "sim.ttft_ms=100", "sim.tokens_per_second=100", "sim.reply_tokens=40",
                    "sim.jitter=0") as server:
        load = subprocess.run(
            [sys.executable, "-m", "cmw_cli.main", "loadtest", "--url", server.url, "--users", "4", "--turns", "2",
             "-q", "--timeout", "60"],
            capture_output=True, text=True, timeout=180, env={**os.environ, "CMW_ADMIN_TOKEN": ""},
        )
        assert load.returncode == 0, load.stdout[-2000:] + load.stderr[-2000:]
        sessions = httpx.get(f"{server.url}/admin/api/sessions", headers={"Authorization": f"Bearer {token(server)}"},
                             timeout=10).json()
        ids = [s["id"] for s in sessions if s["turns"] >= 2]
        assert len(ids) >= 4, sessions
        yield server, ids


def token(server: RunningServer) -> str:
    return (server.state_dir / "admin.token").read_text().strip()


def new_page(browser: Any) -> Page:
    return browser.new_context(viewport={"width": 1200, "height": 800}).new_page()


def test_the_dashboard_plots_the_load_and_lists_its_sessions(browser: Any, loaded_server: Any) -> None:
    server, ids = loaded_server
    page = new_page(browser)
    page.goto(f"{server.url}/admin/")
    page.get_by_label("Admin token").fill(token(server))
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{server.url}/admin/dashboard/")
    for plot in PLOTS:  # Vega draws each series as an SVG path once the refresh brought points
        expect(page.locator(f"#dashboard-{plot} .mark-line path").first).to_have_attribute(
            "d", _drawn(), timeout=WAIT_MS)
    table = page.locator("#dashboard-session-table")
    for session_id in ids:
        expect(table).to_contain_text(session_id, timeout=WAIT_MS)
    expect(page.locator("#dashboard-workers")).to_contain_text("#0")
    page.locator("#dashboard-queue").scroll_into_view_if_needed()
    page.evaluate("window.scrollTo(0, 0)")
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT))
    page.context.close()


def test_a_browser_without_the_token_sees_only_the_login_form(browser: Any, loaded_server: Any) -> None:
    server, ids = loaded_server
    page = new_page(browser)
    page.goto(f"{server.url}/admin/dashboard/")
    expect(page.get_by_label("Admin token")).to_be_visible()
    assert page.url == f"{server.url}/admin/"
    page.get_by_label("Admin token").fill("a guess")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_have_text("Wrong token.")
    html = page.content()
    assert not any(session_id in html for session_id in ids) and "dashboard-" not in html
    assert page.locator("script").count() == 0  # the form is all there is: no app, no config
    for path in ("/admin/dashboard/config", "/admin/dashboard/gradio_api/info", "/admin/api/sessions"):
        assert page.request.get(f"{server.url}{path}").status in (401, 403)
    page.context.close()


def _drawn() -> Any:
    import re

    return re.compile(r"^M.+L")  # a moveto and at least one lineto: a line through two points or more
