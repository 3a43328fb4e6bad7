"""The UI in English and Russian, and the Stats and Logs tabs, in Chromium.

Two users (browser contexts) share one `cmw serve`: an English browser chats and reads its Stats, a Russian one gets
the whole page in Russian, Gradio's own strings included, and its failed turn told in Russian. A second server forces
``ui.language=ru`` for an English browser. Waits are Playwright's auto-waiting assertions; the screenshots go to
docs/screenshots/ (chat.png, stats.png, chat-ru.png).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.app import i18n
from agent.simulator import reply_text
from tests.servers import RunningServer, cmw_server

try:
    from playwright.sync_api import Page, expect
except ImportError:  # the `browser` fixture skips these tests (under CI: fails them) and says why
    Page = expect = None  # type: ignore[assignment,misc]

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
VIEWPORT = {"width": 1200, "height": 800}
# ~3.3 s a reply: longer than 1.5 refresh intervals, so a timer left running would tick during one.
REPLY_TOKENS = 45
SIM = ("sim.ttft_ms=300", "sim.tokens_per_second=15", f"sim.reply_tokens={REPLY_TOKENS}", "sim.jitter=0",
       "llm.max_retries=0")
FAULT_MODEL = "cmw-sim@error:500"  # the simulator answers this model name with HTTP 500
WAIT_MS = 30_000
RU_NOTICE = "⚠️ sim ответил ошибкой; подробности — в журнале сервера."
# Latin words a Russian page may show: names (provider, model, profile, the app, Gradio's footer link), percentiles.
NAMES = {"sim", "cmw", "error", "API", "Gradio", "balanced", "p50", "p95"}
ASKED = ["first question", "second question", "third question", "fourth question", "fifth question"]
pytestmark = [pytest.mark.browser, pytest.mark.server, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with cmw_server(tmp_path_factory.mktemp("languages"), *SIM) as running:
        yield running


@pytest.fixture(scope="module")
def forced_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with cmw_server(tmp_path_factory.mktemp("forced-ru"), *SIM, "sim.error_rate=1", "ui.language=ru") as running:
        yield running


@dataclass
class Joins:
    """The queue joins a page sends, by api name (read from each request's fn_index)."""

    names: dict[int, str]
    seen: list[str] = field(default_factory=list)

    def watch(self, page: Page) -> None:
        def record(request: Any) -> None:
            if request.url.split("?")[0].endswith("/gradio_api/queue/join") and request.post_data:
                self.seen.append(self.names.get(json.loads(request.post_data)["fn_index"], "?"))

        page.on("request", record)

    def count(self, *names: str) -> int:
        return sum(1 for name in self.seen if name in names)


def api_names(server: RunningServer) -> dict[int, str]:
    config = httpx.get(f"{server.url}/config", timeout=10).json()
    return {dep["id"]: dep["api_name"] for dep in config["dependencies"]}


def open_page(browser: Any, server: RunningServer, locale: str) -> Page:
    context = browser.new_context(locale=locale, viewport=VIEWPORT)
    page = context.new_page()
    page.goto(server.url)
    # The page-load event has restored the session (it writes the files line): a chat sent before it finished
    # could have its reply overwritten by the restored (empty) history.
    loaded = re.compile("|".join(re.escape(i18n.text("files.list", lang, names="")) for lang in i18n.LANGUAGES))
    expect(page.get_by_test_id("markdown").filter(has_text=loaded)).to_be_visible(timeout=WAIT_MS)
    return page


def say(page: Page, text: str, language: str) -> None:
    page.get_by_placeholder(i18n.text("chat.placeholder", language)).fill(text)
    page.get_by_role("button", name=i18n.text("chat.send", language), exact=True).click()


def replies(page: Page) -> Any:
    return page.locator('[data-testid="bot"]')


def expect_reply(page: Page, turn: int) -> None:
    """The English conversation's reply to its ``turn``-th question, complete."""
    expect(replies(page)).to_have_count(turn, timeout=WAIT_MS)
    expect(replies(page).last).to_have_text(reply_text(ASKED[:turn], REPLY_TOKENS), timeout=WAIT_MS)


def tab(page: Page, key: str, language: str) -> None:
    page.get_by_role("tab", name=i18n.text(key, language), exact=True).click()


def figure(page: Page, name: str) -> Any:
    return page.locator(f'[role=tabpanel]:visible [data-figure="{name}"] .value')


def english_ui_strings() -> list[str]:
    """The English strings of the app's tables that Russian says differently, cut at their placeholders."""
    tables = i18n.tables()
    pieces = set()
    for key, english in tables["en"].items():
        if key.startswith("dashboard.") or english == tables["ru"][key]:
            continue
        pieces.update(part.strip() for part in re.split(r"\{[^}]*\}", english)
                      if len(part.strip()) >= 4 and part.strip() not in tables["ru"][key])
    return sorted(pieces)


def shown_text(page: Page) -> str:
    """What the page shows: its visible text and its placeholders."""
    placeholders = page.evaluate("[...document.querySelectorAll('[placeholder]')].map(e => e.placeholder)")
    return page.locator("body").inner_text() + "\n" + "\n".join(placeholders)


def assert_russian(page: Page) -> None:
    text = shown_text(page)
    leaked = [piece for piece in english_ui_strings() if piece in text]
    assert not leaked, f"English UI strings on a Russian page: {leaked}"
    words = set(re.findall(r"[A-Za-z][A-Za-z0-9]{2,}", text)) - NAMES
    assert not words, f"Latin words on a Russian page: {sorted(words)}\n{text}"


@pytest.fixture(scope="module")
def english(browser: Any, server: RunningServer) -> Iterator[Page]:
    """An English browser after two turns."""
    page = open_page(browser, server, "en-US")
    try:
        for turn in (1, 2):
            say(page, ASKED[turn - 1], "en")
            expect_reply(page, turn)
        yield page
    finally:
        page.context.close()


@pytest.fixture(scope="module")
def russian(browser: Any, server: RunningServer) -> Iterator[Page]:
    """A Russian browser whose session uses a model the simulator fails."""
    page = open_page(browser, server, "ru-RU")
    try:
        yield page
    finally:
        page.context.close()


def test_an_english_browser_gets_the_english_ui(english: Page) -> None:
    for name in ("Chat", "Stats", "Logs"):
        expect(english.get_by_role("tab", name=name, exact=True)).to_be_visible()
    expect(english.get_by_placeholder("Message the agent…")).to_be_visible()
    expect(english.get_by_text("Drop File Here")).to_be_visible()  # Gradio's own strings: English too
    english.screenshot(path=str(SCREENSHOTS / "chat.png"), animations="disabled")


def test_the_stats_tab_shows_this_sessions_turns_as_cards_not_json(english: Page, russian: Page) -> None:
    tab(english, "stats.tab", "en")
    expect(figure(english, "turns")).to_have_text("2", timeout=WAIT_MS)
    expect(figure(english, "model")).to_have_text("sim / cmw-sim")
    expect(figure(english, "chats_running")).to_have_text(re.compile(r"^\d+ of 3$"))
    panel = english.locator("[role=tabpanel]:visible")
    expect(panel.locator(".card")).to_have_count(10)
    expect(panel).to_contain_text("Recent turns of this conversation")
    expect(panel).to_contain_text(re.compile(r"Seconds[\s\S]*Reply time"), timeout=WAIT_MS)  # the plot, drawn
    assert not re.search(r'[{}]|"\w+"\s*:', panel.inner_text())  # no raw JSON
    english.screenshot(path=str(SCREENSHOTS / "stats.png"), animations="disabled")

    tab(russian, "stats.tab", "ru")  # the other user: none of the first one's turns
    expect(russian.locator('[role=tabpanel]:visible [data-figure="no_turns"]')).to_have_text(
        i18n.text("stats.no_turns", "ru"), timeout=WAIT_MS)
    tab(russian, "chat.tab", "ru")
    tab(english, "chat.tab", "en")


def test_stats_and_logs_refresh_themselves_only_while_their_tab_is_open(
    browser: Any, server: RunningServer, english: Page
) -> None:
    """A second tab of the same browser continues its conversation: the first tab's open Stats and Logs follow
    its turns without a click, and once the first tab is back on Chat it sends no refresh at all."""
    joins = Joins(api_names(server))
    joins.watch(english)
    other = english.context.new_page()
    try:
        other.goto(server.url)
        expect(other.locator('[data-testid="user"]')).to_have_count(2, timeout=WAIT_MS)  # the same conversation

        tab(english, "stats.tab", "en")
        expect(figure(english, "turns")).to_have_text("2", timeout=WAIT_MS)
        say(other, ASKED[2], "en")
        expect(figure(english, "turns")).to_have_text("3", timeout=WAIT_MS)

        tab(english, "logs.tab", "en")
        logs = english.get_by_role("textbox", name="Logs")
        expect(logs).to_have_value(re.compile(r"chat: turn 3 done"), timeout=WAIT_MS)
        say(other, ASKED[3], "en")
        expect(logs).to_have_value(re.compile(r"chat: turn 4 done"), timeout=WAIT_MS)
        assert joins.count("stats_view") >= 2 and joins.count("logs") >= 2

        tab(english, "chat.tab", "en")
        expect(english.get_by_role("tab", name="Chat", exact=True)).to_have_attribute("aria-selected", "true")
        before = joins.count("stats_view", "logs")
        say(english, ASKED[4], "en")  # a ~3.3 s reply: more than a refresh interval and a half
        expect_reply(english, 5)  # the reply brings the whole conversation, the other tab's turns too
        assert joins.count("stats_view", "logs") == before, joins.seen
    finally:
        other.close()


def test_a_russian_browser_gets_the_russian_ui_and_a_russian_error_notice(russian: Page) -> None:
    for key in ("chat.tab", "stats.tab", "logs.tab"):
        expect(russian.get_by_role("tab", name=i18n.text(key, "ru"), exact=True)).to_be_visible()
    for key in ("chat.send", "chat.stop", "chat.clear"):
        expect(russian.get_by_role("button", name=i18n.text(key, "ru"), exact=True)).to_be_visible()
    expect(russian.get_by_placeholder("Сообщение агенту…")).to_be_visible()
    expect(russian.get_by_text("Перетащите файл сюда")).to_be_visible()  # Gradio's own upload widget
    expect(russian.get_by_text("Файлы в этой беседе: нет")).to_be_visible()  # made on the server, per request

    model = russian.get_by_role("textbox", name="Модель", exact=True)
    model.fill(FAULT_MODEL)
    model.blur()
    tab(russian, "logs.tab", "ru")  # the session's log says when the server has taken the model
    log = russian.get_by_role("textbox", name="Журнал")
    expect(log).to_have_value(re.compile(f"model set to {re.escape(FAULT_MODEL)}"), timeout=WAIT_MS)
    assert log.input_value().startswith("# запуск")
    tab(russian, "chat.tab", "ru")

    say(russian, "привет", "ru")
    expect(replies(russian).last).to_have_text(RU_NOTICE, timeout=WAIT_MS)
    assert_russian(russian)
    russian.screenshot(path=str(SCREENSHOTS / "chat-ru.png"), animations="disabled")

    tab(russian, "stats.tab", "ru")
    expect(figure(russian, "turns")).to_have_text("1", timeout=WAIT_MS)
    expect(russian.locator("[role=tabpanel]:visible")).to_contain_text("Чаты в работе")
    assert_russian(russian)
    tab(russian, "chat.tab", "ru")


def test_ui_language_ru_wins_over_an_english_browser(browser: Any, forced_server: RunningServer) -> None:
    page = open_page(browser, forced_server, "en-US")
    try:
        assert page.evaluate("document.documentElement.lang") == "ru"  # Gradio's frontend runs in Russian
        for key in ("chat.tab", "stats.tab", "logs.tab"):
            expect(page.get_by_role("tab", name=i18n.text(key, "ru"), exact=True)).to_be_visible()
        expect(page.get_by_text("Перетащите файл сюда")).to_be_visible()
        say(page, "привет", "ru")
        expect(replies(page).last).to_have_text(RU_NOTICE, timeout=WAIT_MS)
        assert_russian(page)
    finally:
        page.context.close()
