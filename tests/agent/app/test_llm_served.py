"""The served app's LLM side over HTTP: `cmw serve --llm URL` against an independent sse-starlette server.

Browsers (here raw queue-protocol clients, which may send any value to any event) reach the LLM only
through the provider and models the operator offers, with the operator's limits, and see a provider's
failure as a class and a status, never its text.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.loadtest.connection import Connection, Origin
from agent.loadtest.protocol import TurnResult, discover, reply_of, run_turn, user_texts
from tests.llm_server import SERVER_PATH, LLMServer, running_llm_server
from tests.servers import RunningServer, cmw_server, free_port

pytestmark = pytest.mark.server

OPENAI_KEY = "sk-openai-key-must-stay-home-42"
CUSTOM_KEY = "sk-custom-key-for-the-url-0042"
ALLOWED = ["echo", "status:500", "endless", "silent"]
BUDGET = 2_000  # llm.max_context_chars
REPLY_CAP = 3_000  # llm.max_reply_chars


@pytest.fixture(scope="module")
def llm() -> Iterator[LLMServer]:
    with running_llm_server(token_delay_s=0.05) as server:  # ~20 tokens a second: a reply streams visibly
        yield server


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, llm: LLMServer) -> Iterator[RunningServer]:
    models = ", ".join(f'"custom:{m}"' for m in ALLOWED)
    with cmw_server(
        tmp_path_factory.mktemp("llm-served"),
        f"llm.models=[{models}]", f"llm.max_context_chars={BUDGET}", f"llm.max_reply_chars={REPLY_CAP}",
        "llm.reply_deadline_s=3", "llm.max_retries=0",
        extra_args=("--llm", llm.base_url),
        env={"OPENAI_API_KEY": OPENAI_KEY, "CMW_LLM__CUSTOM_API_KEY": CUSTOM_KEY},
    ) as running:
        yield running
        # Every misbehaviour was a turn's failure, never the server's. (Gradio itself logs a traceback for
        # each value its Dropdown refuses: the not-offered providers sent above.)
        assert running.proc.poll() is None
        log = running.log()
        refused = log.count('gradio.exceptions.Error: "Value: ')
        assert log.count("Traceback") == refused, log[log.find("Traceback") - 300:][:4000]


class Browser:
    """One session speaking Gradio's queue protocol over its own connection, as a browser tab does."""

    def __init__(self, url: str):
        self.url = url
        self.session_hash = f"llm-{secrets.token_hex(8)}"

    async def call(self, api_name: str, value: Any) -> TurnResult:
        async with httpx.AsyncClient() as client:
            endpoint = await discover(client, self.url, api_name)
        conn = Connection(Origin.parse(self.url))
        try:
            return await run_turn(conn, endpoint, self.session_hash, value, timeout=60)
        finally:
            await conn.close()

    def chat(self, message: str) -> TurnResult:
        return asyncio.run(self.call("chat", message))

    def set(self, api_name: str, value: str) -> TurnResult:
        return asyncio.run(self.call(api_name, value))


def test_cmw_serve_llm_url_streams_a_reply_from_an_sse_starlette_server(served: RunningServer, llm: LLMServer) -> None:
    message = "please stream this reply to me word by word over sse starlette"
    result = Browser(served.url).chat(message)
    assert result.ok, result.detail
    assert user_texts(result.history or []) == [message]
    assert re.fullmatch(r"\[2 messages, \d+ chars\] " + message, reply_of(result.history or []))
    assert len(result.growth) >= 4  # several UI updates while the reply streamed, then the full text
    assert llm.last().headers["accept"] == "text/event-stream"


def test_the_dropdown_offers_the_configured_provider_alone(served: RunningServer) -> None:
    config = httpx.get(f"{served.url}/config", timeout=10).json()
    dropdowns = [c for c in config["components"] if c.get("type") == "dropdown"]
    assert [choice[1] for choice in dropdowns[0]["props"]["choices"]] == ["custom"]


@pytest.mark.parametrize("provider", ["openai", "openrouter", "sim", "gemini"])
def test_a_provider_not_offered_is_refused_and_the_chat_stays_on_the_offered_one(
    served: RunningServer, llm: LLMServer, provider: str
) -> None:
    browser = Browser(served.url)
    browser.set("set_provider", provider)  # Gradio or cmw refuses it: either way nothing changes
    before = len(llm.requests)
    result = browser.chat(f"still on custom after asking for {provider}")
    assert result.ok, result.detail
    assert len(llm.requests) == before + 1 and llm.last().body["model"] == "echo"


@pytest.mark.parametrize("model", ["gpt-4-32k", "o1-pro", "echo-lf", "x" * 300])
def test_a_model_off_the_allow_list_is_refused(served: RunningServer, llm: LLMServer, model: str) -> None:
    browser = Browser(served.url)
    assert browser.set("set_model", model).reply == "echo"  # the model box shows what the session uses
    result = browser.chat("which model answers?")
    assert result.ok and llm.last().body["model"] == "echo"


def test_the_openai_key_never_goes_to_the_custom_url(served: RunningServer, llm: LLMServer) -> None:
    assert Browser(served.url).chat("who holds which key?").ok
    assert llm.requests and {r.headers["authorization"] for r in llm.requests} == {f"Bearer {CUSTOM_KEY}"}
    assert not any(OPENAI_KEY in str(r.headers) + str(r.body) for r in llm.requests)


def test_llm_max_tokens_is_sent(served: RunningServer, llm: LLMServer) -> None:
    assert Browser(served.url).chat("how long may you answer?").ok
    assert llm.last().body["max_tokens"] == 4096


def test_the_history_sent_is_trimmed_to_the_budget_oldest_turns_first(served: RunningServer, llm: LLMServer) -> None:
    browser = Browser(served.url)
    sent = [f"turn {n} " + "w" * 480 for n in range(4)]
    for message in sent:
        assert browser.chat(message).ok
    received = llm.last().body["messages"]
    assert received[-1]["content"] == sent[-1]  # the newest message, whole
    assert [m["role"] for m in received] == ["system", "user", "assistant", "user"]
    assert received[1]["content"] == sent[-2]  # turns 0 and 1 were left out, oldest first
    assert sum(len(m["content"]) for m in received) <= BUDGET
    # The conversation itself keeps every turn.
    assert user_texts(browser.chat("and now?").history or [])[:4] == sent


def test_a_provider_error_shows_its_class_and_status_and_only_the_log_has_the_detail(
    served: RunningServer, llm: LLMServer
) -> None:
    browser = Browser(served.url)
    browser.set("set_model", "status:500")
    reply = reply_of(browser.chat("make it fail").history or [])
    assert "⚠️" in reply and "HTTP 500" in reply
    assert SERVER_PATH not in reply and "Incorrect API key" not in reply and CUSTOM_KEY not in reply
    log = served.log()
    assert log.count(SERVER_PATH) >= 1 and CUSTOM_KEY not in log and OPENAI_KEY not in log


def test_a_reply_that_never_ends_is_cut_at_max_reply_chars(served: RunningServer) -> None:
    browser = Browser(served.url)
    browser.set("set_model", "endless")
    result = browser.chat("talk forever")
    reply = reply_of(result.history or [])
    assert "llm.max_reply_chars" in reply
    assert len(reply.partition("\n\n⚠️")[0]) == REPLY_CAP
    stored = reply_of(browser.chat("after the flood").history or [])  # the session chats on
    assert "⚠️" in stored  # endless again: the model stays chosen


def test_a_silent_stream_ends_at_the_reply_deadline(served: RunningServer) -> None:
    browser = Browser(served.url)
    browser.set("set_model", "silent")
    reply = reply_of(browser.chat("say nothing").history or [])
    assert "⚠️" in reply and "llm.reply_deadline_s" in reply


# --------------------------------------------------------------------------- a session from an older configuration


@contextlib.contextmanager
def app_in_this_process(tmp_path: Path, llm: LLMServer) -> Iterator[tuple[str, Any]]:
    """create_app served by uvicorn in a thread: real HTTP, and the context at hand to age a session."""
    import uvicorn

    from agent.app.asgi import create_app
    from agent.settings import load_settings

    loaded = load_settings("balanced", ["llm.provider=custom", f"llm.base_url={llm.base_url}",
                                        "sessions.store=memory"], environ={}, env_file=None)
    app, ctx = create_app(loaded, sim_base_url=None, state_dir=tmp_path)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning",
                                           lifespan="on", timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the app did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.config.port}", ctx
    finally:
        server.should_exit = True
        thread.join(15)


def test_a_session_whose_provider_is_no_longer_offered_falls_back_to_the_default(
    tmp_path: Path, llm: LLMServer
) -> None:
    with app_in_this_process(tmp_path, llm) as (url, ctx):
        browser = Browser(url)
        assert browser.chat("first, under the old configuration").ok
        [session] = ctx.sessions.list()
        # As restored from the store after the operator dropped openrouter from llm.providers:
        session.provider, session.model = "openrouter", "anthropic/claude-opus"
        before = len(llm.requests)
        result = browser.chat("second, under the new one")
        assert result.ok, result.detail
        assert len(llm.requests) == before + 1 and llm.last().body["model"] == "default"
        assert (session.provider, session.model) == ("custom", "default")
        assert user_texts(result.history or []) == ["first, under the old configuration", "second, under the new one"]
