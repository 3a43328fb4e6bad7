"""The UI in a real browser: two Chromium contexts against one `cmw serve` with a slow-ish simulator.

Everything waits with Playwright's auto-waiting assertions (``expect``); streaming is proven by a
MutationObserver in the page that records every text the latest reply showed on its way to the end.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from gradio_client import Client

from agent.loadtest.connection import Connection, Origin
from agent.loadtest.protocol import TurnResult, discover, run_turn
from agent.simulator import reply_text
from tests.servers import RunningServer, cmw_server

try:
    from playwright.sync_api import Page, expect
except ImportError:  # the `browser` fixture skips these tests (under CI: fails them) and says why
    Page = expect = None  # type: ignore[assignment,misc]

REPLY_TOKENS = 30  # at 15 tokens/s: ~2 s of streaming, so the two chats overlap
MAX_SIZE = 4
CHAT_LIMIT = 3  # balanced
STALL_S = 6  # a stalled reply holds its chat slot this long, so a full queue stays full while the browser joins
WAIT_MS = 30_000
pytestmark = [pytest.mark.browser, pytest.mark.server, pytest.mark.timeout(180)]

RECORD_REPLIES = """() => {
  window.__replies = [];
  new MutationObserver(() => {
    const bots = document.querySelectorAll('[data-testid="bot"]');
    if (!bots.length) return;
    const text = bots[bots.length - 1].innerText.trim();
    if (window.__replies[window.__replies.length - 1] !== text) window.__replies.push(text);
  }).observe(document.body, {subtree: true, childList: true, characterData: true});
}"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with cmw_server(
        tmp_path_factory.mktemp("browser"),
        f"queue.max_size={MAX_SIZE}",
        "sim.ttft_ms=300", "sim.tokens_per_second=15", f"sim.reply_tokens={REPLY_TOKENS}", "sim.jitter=0",
        f"sim.stall_s={STALL_S}", "llm.max_retries=0",
    ) as running:
        yield running


@dataclass
class User:
    name: str
    page: Page
    said: list[str] = field(default_factory=list)
    streamed: list[str] = field(default_factory=list)  # every text the first reply showed, in order


def open_app(browser: Any, server: RunningServer, name: str) -> User:
    page = browser.new_context(viewport={"width": 1100, "height": 900}).new_page()
    page.goto(server.url)
    expect(message_box(page)).to_be_editable(timeout=WAIT_MS)
    return User(name, page)


def message_box(page: Page) -> Any:
    return page.get_by_placeholder("Message the agent…")


def send(user: User, text: str) -> None:
    user.said.append(text)
    message_box(user.page).fill(text)
    user.page.get_by_role("button", name="Send", exact=True).click()


def expect_reply(user: User) -> None:
    """The latest reply is the simulator's full answer to exactly this user's messages."""
    expected = reply_text(user.said, REPLY_TOKENS)
    expect(user.page.locator('[data-testid="bot"]').last).to_have_text(expected, timeout=WAIT_MS)


def user_messages(page: Page) -> list[str]:
    return [text.strip() for text in page.locator('[data-testid="user"]').all_inner_texts()]


def refresh_tab(page: Page, tab: str) -> None:
    page.get_by_role("tab", name=tab).click()
    page.locator("button:visible", has_text="Refresh").click()


@pytest.fixture(scope="module")
def users(browser: Any, server: RunningServer, artifacts: Path) -> Iterator[tuple[User, User]]:
    """Two browsers chat at the same time; then A sends a second message and B attaches a file."""
    a, b = open_app(browser, server, "a"), open_app(browser, server, "b")
    try:
        for user in (a, b):
            user.page.evaluate(RECORD_REPLIES)
        send(a, "alpha from the first browser")
        send(b, "bravo from the second browser")
        expect_reply(a)
        expect_reply(b)
        for user in (a, b):
            user.streamed = user.page.evaluate("window.__replies")
        send(a, "alpha again")
        expect_reply(a)
        note = artifacts / "b-notes.txt"
        note.write_text("notes of the second browser")
        b.page.locator("input[type=file]").set_input_files(str(note))
        expect(b.page.get_by_text("b-notes.txt attached")).to_be_visible(timeout=WAIT_MS)
        for user in (a, b):
            shot = artifacts / f"browser-{user.name}.png"
            user.page.screenshot(path=str(shot), full_page=True, animations="disabled")
        yield a, b
    finally:
        a.page.context.close()
        b.page.context.close()


def test_each_browser_sees_its_own_reply_stream_in(users: tuple[User, User]) -> None:
    for user in users:
        streamed = user.streamed
        final = reply_text(user.said[:1], REPLY_TOKENS)
        partial = [text for text in streamed if text and text != final]
        assert len(partial) >= 2, f"{user.name}: the reply arrived in one piece: {streamed}"
        assert all(final.startswith(text) for text in partial), f"{user.name} saw another reply: {streamed}"


def test_each_browser_shows_only_its_own_history(users: tuple[User, User]) -> None:
    a, b = users
    assert user_messages(a.page) == a.said == ["alpha from the first browser", "alpha again"]
    assert user_messages(b.page) == b.said == ["bravo from the second browser"]
    expect(a.page.get_by_text("bravo")).to_have_count(0)
    expect(b.page.get_by_text("alpha")).to_have_count(0)


def test_stats_tab_counts_this_browsers_turns(users: tuple[User, User]) -> None:
    for user, turns in zip(users, (2, 1), strict=True):
        refresh_tab(user.page, "Stats")
        card = user.page.locator('[role=tabpanel]:visible [data-figure="turns"] .value')  # the Stats tab's cards
        expect(card).to_have_text(str(turns), timeout=WAIT_MS)
        user.page.get_by_role("tab", name="Chat").click()


def test_logs_tab_shows_this_browsers_events_only(users: tuple[User, User]) -> None:
    a, b = users
    for user in users:
        refresh_tab(user.page, "Logs")
    logs_a, logs_b = (user.page.get_by_role("textbox", name="Logs") for user in users)
    expect(logs_a).to_have_value(re.compile(r"chat: turn 2 done"), timeout=WAIT_MS)
    expect(logs_b).to_have_value(re.compile(r"file attached: b-notes\.txt"), timeout=WAIT_MS)
    assert "b-notes.txt" not in logs_a.input_value()
    assert "turn 2" not in logs_b.input_value()
    for user in users:
        user.page.get_by_role("tab", name="Chat").click()


def test_a_reload_keeps_the_conversation(users: tuple[User, User]) -> None:
    a, _ = users
    a.page.reload()
    expect(a.page.locator('[data-testid="user"]')).to_have_count(2, timeout=WAIT_MS)
    assert user_messages(a.page) == a.said
    expect(a.page.locator('[data-testid="bot"]').last).to_have_text(reply_text(a.said, REPLY_TOKENS))
    send(a, "after the reload")
    expect_reply(a)  # the reply ("..., your 3rd message in this conversation") proves the server still holds all three


def test_a_full_queue_shows_a_clear_busy_message_and_keeps_the_text(
    browser: Any, server: RunningServer, artifacts: Path
) -> None:
    user = open_app(browser, server, "busy")
    holders = [Client(server.url, verbose=False) for _ in range(CHAT_LIMIT)]
    for holder in holders:
        holder.predict("cmw-sim@stall", api_name="/set_model")
    held = [holder.submit("hold a chat slot", api_name="/chat") for holder in holders]
    waiting = Burst(server.url, "wait", MAX_SIZE)
    try:
        wait_for_queue(server, lambda queue: queue["in_flight"] >= CHAT_LIMIT)  # every chat slot is held
        waiting.start()
        wait_for_queue(server, lambda queue: queue["waiting_total"] >= MAX_SIZE)  # full for ~STALL_S seconds
        message_box(user.page).fill("are you there?")
        user.page.get_by_role("button", name="Send", exact=True).click()
        # Gradio 6 answers a refused join with an error toast of its own wording.
        notice = user.page.get_by_test_id("toast-text").filter(has_text="This application is currently busy")
        expect(notice).to_be_visible(timeout=WAIT_MS)
        expect(message_box(user.page)).to_have_value("are you there?")  # nothing the user typed is lost
        user.page.screenshot(path=str(artifacts / "browser-busy.png"), animations="disabled")
    finally:
        for job in held:
            job.result(timeout=60)
        if waiting.is_alive():
            waiting.join(60)
        user.page.context.close()
    assert waiting.results and all(result.ok for result in waiting.results)  # the queued users were all served


class Burst(threading.Thread):
    """Raw-protocol users joined at once from a thread of their own (the test thread drives the browser)."""

    def __init__(self, url: str, label: str, users: int):
        super().__init__(daemon=True)
        self.url, self.label, self.users = url, label, users
        self.results: list[TurnResult] = []

    def run(self) -> None:
        self.results = asyncio.run(self._burst())

    async def _burst(self) -> list[TurnResult]:
        async with httpx.AsyncClient(timeout=15) as client:
            endpoint = await discover(client, self.url)
        conns = [Connection(Origin.parse(self.url)) for _ in range(self.users)]
        try:
            return await asyncio.gather(*(
                run_turn(conn, endpoint, f"{self.label}-{i:04d}", f"{self.label} {i}", timeout=60)
                for i, conn in enumerate(conns)
            ))
        finally:
            await asyncio.gather(*(conn.close() for conn in conns))


def wait_for_queue(server: RunningServer, condition: Callable[[dict[str, Any]], bool], bound_s: float = 30) -> None:
    """Poll the admin API's live queue figures until ``condition`` holds (bounded)."""
    token = (server.state_dir / "admin.token").read_text().strip()
    deadline = time.monotonic() + bound_s
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=5) as client:
        while time.monotonic() < deadline:
            queue = client.get("/admin/api/queue").json()
            if condition(queue):
                return
            time.sleep(0.02)  # poll interval
    raise AssertionError(f"the queue never reached the expected state within {bound_s} s: {queue}")


def test_admin_docs_render_from_this_server_alone_under_its_csp(browser: Any, server: RunningServer) -> None:
    """Swagger UI, where the admin token is typed, loads nothing from another origin and breaks no CSP rule."""
    page = browser.new_context().new_page()
    requested: list[str] = []
    problems: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    try:
        page.goto(f"{server.url}/admin/docs")
        expect(page.locator(".swagger-ui .info .title")).to_contain_text("cmw", timeout=WAIT_MS)
        expect(page.locator(".opblock").first).to_be_visible(timeout=WAIT_MS)
        assert requested and all(url.startswith(server.url + "/admin/") for url in requested), requested
        assert not problems, problems
    finally:
        page.context.close()
