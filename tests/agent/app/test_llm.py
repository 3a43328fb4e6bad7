"""agent.app.llm and agent.app.streaming against real servers that misbehave.

The servers are an independent OpenAI-compatible one built on sse-starlette (tests/llm_server.py: CRLF
framing, as llama-cpp-python's server) and cmw's own simulator. Each test drives a real reply through
:class:`Providers` and :class:`ReplyStream`, as the chat handler does.
"""

from __future__ import annotations

import logging
import random
import socket
import time
from collections.abc import Iterator
from email.utils import formatdate
from typing import Any

import pytest

from agent.app.llm import MAX_EVENT_BYTES, MAX_RETRY_WAIT_S, LLMError, Providers, fit_to_budget, retry_delay
from agent.app.streaming import ReplyStream, UpdatePacer
from agent.fingerprints import fingerprint, parse_reply_header
from agent.settings import Settings, SimSettings
from agent.simulator import Simulator, running_simulator
from tests.llm_server import HUGE_BYTES, SERVER_PATH, LLMServer, reply_for, running_llm_server

# langchain-openai shares one cached HTTP client per base URL between ChatOpenAI instances, so these
# tests run on one event loop, as an app does.
same_loop = pytest.mark.asyncio(loop_scope="module")

CUSTOM_KEY = "sk-custom-key-0123456789"
OPENAI_KEY = "sk-openai-key-must-stay-home"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello over sse-starlette"}]


@pytest.fixture(scope="module")
def server() -> Iterator[LLMServer]:
    with running_llm_server(token_delay_s=0.005) as running:
        yield running


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    with running_simulator(SimSettings(ttft_ms=0, tokens_per_second=1000, reply_tokens=8, jitter=0), port=0) as s:
        yield s


def providers(base_url: str, **llm: Any) -> Providers:
    settings = Settings(
        llm={"provider": "custom", "base_url": base_url, "max_retries": 0, "timeout_s": 5,
             "api_key": OPENAI_KEY, "custom_api_key": CUSTOM_KEY, **llm},
    )
    return Providers(settings)


async def reply(
    p: Providers, model: str, messages: list[dict[str, str]] = MESSAGES, **limits: Any
) -> tuple[str, LLMError | None, int]:
    """(text, error or None, UI updates) of one reply read as the chat handler reads it."""
    stream = ReplyStream(p.stream("custom", model, messages), UpdatePacer(0, 10_000), **limits)
    updates = 0
    try:
        async for _ in stream.updates():
            updates += 1
    except LLMError as exc:
        return stream.text, exc, updates
    return stream.text, None, updates


@same_loop
@pytest.mark.parametrize("model", ["echo", "echo-lf", "echo-cr", "spread"])
async def test_a_reply_streams_from_sse_starlette_in_every_framing(server: LLMServer, model: str) -> None:
    text, error, updates = await reply(providers(server.base_url), model)
    assert error is None
    assert text == reply_for(MESSAGES)
    assert updates > 3  # token by token, not one lump at the end


@same_loop
async def test_the_custom_provider_gets_its_own_key_and_llm_max_tokens(server: LLMServer) -> None:
    await reply(providers(server.base_url, max_tokens=321), "echo")
    received = server.last("echo")
    assert received.headers["authorization"] == f"Bearer {CUSTOM_KEY}"
    assert received.body["max_tokens"] == 321
    assert OPENAI_KEY not in str(received.headers) + str(received.body)


def test_max_tokens_goes_by_the_name_each_api_reads() -> None:
    p = providers("http://127.0.0.1:9/v1", max_tokens=100)
    assert p._max_tokens("openai") == {"max_completion_tokens": 100}
    assert p._max_tokens("custom") == p._max_tokens("openrouter") == {"max_tokens": 100}
    assert providers("http://127.0.0.1:9/v1", max_tokens=None)._max_tokens("custom") == {}


@same_loop
async def test_an_http_error_shows_its_class_and_status_and_logs_the_body_masked(
    server: LLMServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "cmw.llm"):
        text, error, _ = await reply(providers(server.base_url), "status:500")
    assert error is not None and error.kind == "http_error"
    assert "HTTP 500" in error.message
    assert SERVER_PATH not in error.message and CUSTOM_KEY not in error.message
    logged = [r.getMessage() for r in caplog.records if r.name == "cmw.llm"]
    assert len(logged) == 1 and SERVER_PATH in logged[0]  # the detail, once, for the operator
    assert CUSTOM_KEY not in logged[0] and "Bearer ****" in logged[0]


@same_loop
async def test_a_refused_key_is_an_auth_error(server: LLMServer) -> None:
    _, error, _ = await reply(providers(server.base_url), "status:401")
    assert error is not None and error.kind == "auth" and "HTTP 401" in error.message


@same_loop
async def test_an_error_event_mid_reply_keeps_the_text_and_hides_the_detail(
    server: LLMServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "cmw.llm"):
        text, error, _ = await reply(providers(server.base_url), "error-event")
    assert text == reply_for(MESSAGES).split(" ")[0]
    assert error is not None and error.kind == "http_error" and "mid-reply" in error.message
    assert "sk-leaked" not in error.message and SERVER_PATH not in error.message
    logged = " ".join(r.getMessage() for r in caplog.records if r.name == "cmw.llm")
    assert SERVER_PATH in logged and "sk-leakedkey" not in logged


@same_loop
async def test_a_connection_cut_mid_reply_is_a_disconnect(server: LLMServer) -> None:
    text, error, _ = await reply(providers(server.base_url), "cut")
    assert error is not None and error.kind == "disconnect"
    assert text == reply_for(MESSAGES).split(" ")[0]


@same_loop
async def test_a_16_mb_event_is_never_stored(server: LLMServer) -> None:
    text, error, _ = await reply(providers(server.base_url), "huge", max_chars=10_000)
    assert error is not None and error.kind == "too_large"
    assert text == "" and "bytes" in error.message  # refused past 1 MiB, never buffered whole
    assert HUGE_BYTES > MAX_EVENT_BYTES


@same_loop
async def test_a_reply_that_never_ends_stops_at_max_reply_chars(server: LLMServer) -> None:
    text, error, _ = await reply(providers(server.base_url), "endless", max_chars=2_000)
    assert error is not None and error.kind == "too_large" and "llm.max_reply_chars" in error.message
    assert len(text) == 2_000


@same_loop
@pytest.mark.parametrize("model", ["silent", "endless"])
async def test_the_reply_deadline_stops_a_silent_or_endless_stream(server: LLMServer, model: str) -> None:
    # "silent" sends keep-alive comments, so llm.timeout_s (a read timeout) never fires: only the deadline does.
    text, error, _ = await reply(providers(server.base_url), model, deadline_s=0.5)
    assert error is not None and error.kind == "timeout" and "llm.reply_deadline_s" in error.message


@same_loop
@pytest.mark.parametrize("header", ["retry-after-ms=400", "retry-after=1"])
async def test_a_429_is_retried_no_sooner_than_the_provider_asks(server: LLMServer, header: str) -> None:
    model = f"retry:1:{header}"  # a model name of its own: the server counts attempts per name
    text, error, _ = await reply(providers(server.base_url, max_retries=1), model)
    assert error is None and text == reply_for(MESSAGES)
    first, second = [r.at for r in server.requests if r.body.get("model") == model]
    asked = 0.4 if header.endswith("ms=400") else 1.0
    assert second - first >= asked


@same_loop
async def test_a_wait_longer_than_the_retry_cap_fails_the_turn_at_once(server: LLMServer) -> None:
    model = "retry:1:retry-after=3600"
    assert MAX_RETRY_WAIT_S < 3600
    _, error, _ = await reply(providers(server.base_url, max_retries=2), model)
    assert error is not None and "HTTP 429" in error.message
    assert server.attempts[model] == 1  # not retried: an hour's wait is not waited out


def test_retry_delays_honour_the_headers_with_jitter_and_bounds() -> None:
    rng = random.Random(1)
    backoffs = {round(retry_delay(0, {}, rng), 3) for _ in range(20)}
    assert len(backoffs) > 10 and all(0.375 <= b <= 0.5 for b in backoffs)  # jittered, never in step
    assert 0.25 <= retry_delay(3, {"retry-after-ms": "250", "retry-after": "9"}, rng) <= 0.3125
    assert 3 <= retry_delay(0, {"retry-after": "3"}, rng) <= 3.75
    in_two_s = formatdate(time.time() + 2, usegmt=True)
    assert 0.5 <= retry_delay(0, {"retry-after": in_two_s}, rng) <= 2.5
    assert retry_delay(0, {"retry-after": "3600"}, rng) is None
    for junk in ("soon", "nan", "inf", "-5"):
        delay = retry_delay(0, {"retry-after": junk}, rng)
        assert delay is not None and 0 <= delay <= 0.5


@same_loop
async def test_a_password_in_the_base_url_never_reaches_a_message_or_the_log(
    caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    p = providers(f"http://admin:hunter2-secret@127.0.0.1:{port}/v1")
    with caplog.at_level(logging.DEBUG):
        _, error, _ = await reply(p, "echo")
    assert error is not None and error.kind == "disconnect"
    assert "hunter2" not in error.message
    assert "hunter2" not in caplog.text
    assert p.redact("GET http://admin:hunter2-secret@host/v1 failed") == "GET http://admin:****@host/v1 failed"


@same_loop
async def test_the_simulators_reply_and_faults_read_as_their_classes(sim: Simulator) -> None:
    p = providers(sim.base_url)
    said = "cw0-0000 hi"  # a load-test canary: the reply opens with the fingerprints header
    text, error, _ = await reply(p, "cmw-sim", [{"role": "system", "content": "s"}, {"role": "user", "content": said}])
    assert error is None and parse_reply_header(text) == (1, [fingerprint(said)])
    for fault, kind in (("error:503", "http_error"), ("disconnect", "disconnect"), ("malformed", "malformed")):
        _, error, _ = await reply(p, f"cmw-sim@{fault}")
        assert error is not None and error.kind == kind, fault


@same_loop
async def test_one_client_per_provider_however_many_model_names_are_typed(server: LLMServer) -> None:
    p = providers(server.base_url)
    for n in range(40):
        _, error, _ = await reply(p, f"echo-{n}")  # an unknown name: the server echoes
        assert error is None
    assert len(p._clients) == 1
    assert {r.body["model"] for r in server.requests[-40:]} == {f"echo-{n}" for n in range(40)}


def test_only_offered_providers_and_allowed_models_are_used() -> None:
    p = providers("http://127.0.0.1:9/v1", providers=["sim"], models=["custom:echo", "custom:spread"])
    assert p.offered == ["custom", "sim"]
    assert p.allows("custom", "echo") and not p.allows("custom", "gpt-4-32k") and p.allows("sim", "anything")
    assert not p.allows("openai", "gpt-4o-mini")
    assert p.default_model("custom") == "echo"  # the first allowed one
    assert p.choice("openrouter", "x") == ("custom", "echo")  # a stale session falls back to the defaults
    assert p.choice("custom", "gpt-4-32k") == ("custom", "echo")
    assert p.choice("sim", "cmw-sim@disconnect") == ("sim", "cmw-sim@disconnect")
    assert providers("http://127.0.0.1:9/v1").offered == ["custom"]  # llm.providers empty: the default alone


@same_loop
async def test_a_provider_or_model_not_offered_is_refused_before_any_request(server: LLMServer) -> None:
    p = providers(server.base_url, models=["custom:echo"])
    before = len(server.requests)
    for provider, model in (("custom", "status:500"), ("openai", "gpt-4o")):
        with pytest.raises(LLMError, match="not offered"):
            async for _ in p.stream(provider, model, MESSAGES):
                pass
    assert len(server.requests) == before


def turns(n: int, size: int) -> list[dict[str, str]]:
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": f"{i:03d}" + "x" * (size - 3)}
            for i in range(n)]


def test_the_oldest_turns_are_left_out_first_to_fit_the_budget() -> None:
    system = {"role": "system", "content": "s" * 100}
    history = turns(9, 100)  # user, assistant, ... user: 900 characters
    assert fit_to_budget([system, *history], 10_000) == [system, *history]
    assert fit_to_budget([system, *history], 1_000) == [system, *history]  # exactly the budget
    fitted = fit_to_budget([system, *history], 950)  # room for 8 of 9 turns; the first kept must be a user's
    assert fitted == [system, *history[2:]]


def tool_round(call_id: str, result: str) -> list[dict[str, Any]]:
    call = {"id": call_id, "type": "function", "function": {"name": "calculator", "arguments": '{"expression":"1"}'}}
    return [{"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call_id, "content": result}]


def test_trimming_never_separates_a_tool_call_from_its_result() -> None:
    system = {"role": "system", "content": "s" * 10}
    old = [{"role": "user", "content": "u" * 50}, *tool_round("a", "r" * 50), {"role": "assistant", "content": "x"}]
    new = [{"role": "user", "content": "now"}, *tool_round("b", "r" * 40)]  # the turn in flight, mid-loop
    messages = [system, *old, *new]
    for budget in range(0, 400, 7):
        try:
            fitted = fit_to_budget(messages, budget)
        except LLMError:
            continue
        kept_ids = {m["tool_call_id"] for m in fitted if m["role"] == "tool"}
        called = {c["id"] for m in fitted for c in m.get("tool_calls") or []}
        assert kept_ids == called, budget  # every call kept has its result and every result its call
        assert fitted[-len(new):] == new  # the turn in flight is sent whole
        assert fitted[1]["role"] == "user"  # a conversation opens with a user's message


def test_files_too_big_for_the_budget_are_cut_and_the_new_message_kept_whole() -> None:
    system = {"role": "system", "content": "instructions. " + "f" * 5_000}
    history = turns(5, 300)
    fitted = fit_to_budget([system, *history], 2_000)
    assert fitted[1:] == history[-1:]
    assert fitted[0]["content"].startswith("instructions. ") and "left out" in fitted[0]["content"]
    assert sum(len(m["content"]) for m in fitted) <= 2_000


def test_a_message_that_leaves_no_room_for_the_instructions_fails_the_turn_clearly() -> None:
    with pytest.raises(LLMError, match="llm.max_context_chars") as caught:
        fit_to_budget([{"role": "system", "content": "s" * 600}, {"role": "user", "content": "u" * 1_800}], 2_000)
    assert caught.value.kind == "too_large"
