"""A tool step in Chromium: a collapsible step above the streamed answer (the agent with the simulator's tool calls)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from agent.simulator import reply_text
from tests.servers import RunningServer, cmw_server

try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` fixture skips these tests (under CI: fails them) and says why
    expect = None  # type: ignore[assignment]

REPLY_TOKENS = 20  # at 20 tokens/s: a second of streaming after the step
WAIT_MS = 30_000
pytestmark = [pytest.mark.browser, pytest.mark.server, pytest.mark.timeout(180)]

RECORD_ANSWERS = """() => {
  window.__answers = [];
  new MutationObserver(() => {
    const bots = document.querySelectorAll('.message:not(:has(.thought-group)) > [data-testid="bot"]');
    if (!bots.length) return;
    const text = bots[bots.length - 1].innerText.trim();
    if (window.__answers[window.__answers.length - 1] !== text) window.__answers.push(text);
  }).observe(document.body, {subtree: true, childList: true, characterData: true});
}"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with cmw_server(
        tmp_path_factory.mktemp("browser-steps"), "sim.tool_call_rate=1", 'agent.tools=["calculator"]',
        "sim.ttft_ms=200", "sim.tokens_per_second=20", f"sim.reply_tokens={REPLY_TOKENS}", "sim.jitter=0",
    ) as running:
        yield running


def test_a_tool_step_is_a_collapsible_step_above_the_streamed_answer(browser: Any, server: RunningServer) -> None:
    page = browser.new_context(viewport={"width": 1100, "height": 900}).new_page()
    page.goto(server.url)
    box = page.get_by_placeholder("Message the agent…")
    expect(box).to_be_editable(timeout=WAIT_MS)
    page.evaluate(RECORD_ANSWERS)
    box.fill("6*7")
    page.get_by_role("button", name="Send", exact=True).click()

    answer = page.locator('[data-testid="bot"]', has_text="The calculator tool returned").last
    expect(answer).to_have_text(reply_text(["6*7"], REPLY_TOKENS, ("calculator", "42")), timeout=WAIT_MS)
    step = page.locator(".thought-group").last
    title = step.locator('[role="button"]').first
    expect(title).to_contain_text("🛠️ calculator")
    expect(title).to_contain_text('{"expression": "6*7"}')  # the arguments, in the step's header
    assert step.bounding_box()["y"] < answer.bounding_box()["y"]  # the step sits above the answer

    result = step.locator("p").filter(has_text=re.compile(r"^\s*42\s*$"))
    expect(result).to_have_count(0)  # a finished step is folded …
    title.click()
    expect(result).to_be_visible()  # … and opens to show the tool's result
    title.click()
    expect(result).to_have_count(0)

    streamed = page.evaluate("window.__answers")
    assert len(streamed) > 2, streamed  # the answer grew in several updates after the step
