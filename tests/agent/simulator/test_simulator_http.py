"""The simulator as OpenAI clients see it (openai, langchain-openai, raw HTTP): a real server, real sockets."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import openai
import pytest
from langchain_openai import ChatOpenAI

from agent.fingerprints import fingerprint, parse_reply_header, reply_header
from agent.settings import SimSettings
from agent.simulator import DEFAULT_MODEL, FAULT_HEADER, Simulator, reply_opening, reply_text, running_simulator

FAST = SimSettings(ttft_ms=0, tokens_per_second=5000, reply_tokens=12, jitter=0.2, seed=1, stall_s=0.05)
MESSAGES = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "first question"},
    {"role": "assistant", "content": "first answer"},
    {"role": "user", "content": "second question"},
]
USER_TEXTS = ["first question", "second question"]

# langchain-openai shares one cached httpx client between ChatOpenAI instances, so its tests run
# on one event loop, as an app does.
same_loop = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    with running_simulator(FAST, host="127.0.0.1", port=0) as simulator:
        yield simulator


@pytest.fixture(scope="module")
def roomy() -> Iterator[Simulator]:
    """Replies long enough to hold the whole readable part."""
    with running_simulator(FAST.model_copy(update={"reply_tokens": 60}), host="127.0.0.1", port=0) as simulator:
        yield simulator


def client(sim: Simulator, **headers: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=sim.base_url, api_key="sim", max_retries=0, timeout=10,
                              default_headers=headers or None)


async def stream_all(sim: Simulator, model: str = "my-model", **headers: str) -> list:
    stream = await client(sim, **headers).chat.completions.create(
        model=model, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    return [chunk async for chunk in stream]


# --------------------------------------------------------------------------- the openai client


async def test_stream_is_a_readable_reply_one_token_per_chunk(sim: Simulator) -> None:
    chunks = await stream_all(sim)
    content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert content[0] == reply_opening(USER_TEXTS) == "You"
    assert len(content) == FAST.reply_tokens
    assert "".join(content) == reply_text(USER_TEXTS, FAST.reply_tokens)
    assert parse_reply_header("".join(content)) is None  # no canary: no debug header


async def test_a_person_reads_what_the_simulator_is_and_their_own_words_back(roomy: Simulator) -> None:
    """Issue 16: a first reply worth reading — no fingerprint, the start of their message, their message count."""
    messages = [{"role": "user", "content": "What is the capital of France?"},
                {"role": "assistant", "content": "Paris."},
                {"role": "user", "content": "And of Italy? Please answer in one word, I am in a hurry, thanks"}]
    reply = await client(roomy).chat.completions.create(model="m", messages=messages)
    text = reply.choices[0].message.content
    assert text is not None and len(text.split()) == 60
    assert "[" not in text and fingerprint(messages[2]["content"]) not in text
    assert text.startswith("You said \u201cAnd of Italy? Please answer in one word, I am in a\u2026\u201d, "
                           "your 2nd message in this conversation. I'm cmw's built-in simulator, not a real model.")


async def test_a_load_test_message_gets_the_fingerprint_header_first(sim: Simulator) -> None:
    """A latest user message carrying a load-test canary is answered with the header the isolation checks read."""
    said = ["cw7-0a1b turn 1: tell me about load testing", "cw7-0a1b turn 2: tell me about load testing"]
    messages = [{"role": "user", "content": said[0]}, {"role": "assistant", "content": "ok"},
                {"role": "user", "content": said[1]}]
    chunks = [c async for c in await client(sim).chat.completions.create(model="m", messages=messages, stream=True)]
    content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert content[0] == reply_header(said)
    assert len(content) == FAST.reply_tokens and "".join(content) == reply_text(said, FAST.reply_tokens)
    assert parse_reply_header("".join(content)) == (2, [fingerprint(m) for m in said])


async def test_stream_ends_with_finish_reason_and_usage(sim: Simulator) -> None:
    chunks = await stream_all(sim)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == FAST.reply_tokens
    assert {c.model for c in chunks} == {"my-model"}


async def test_stream_without_include_usage_carries_no_usage(sim: Simulator) -> None:
    stream = await client(sim).chat.completions.create(model="m", messages=MESSAGES, stream=True)
    chunks = [chunk async for chunk in stream]
    assert all(c.usage is None for c in chunks)


async def test_non_streaming_reply_has_the_whole_text_and_usage(sim: Simulator) -> None:
    reply = await client(sim).chat.completions.create(model="echo-me", messages=MESSAGES)
    assert reply.model == "echo-me"
    assert reply.choices[0].message.content == reply_text(USER_TEXTS, FAST.reply_tokens)
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.completion_tokens == FAST.reply_tokens
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + FAST.reply_tokens


async def test_text_parts_of_a_user_message_are_joined(roomy: Simulator) -> None:
    parts = [{"type": "text", "text": "look at"}, {"type": "text", "text": "this"}]
    reply = await client(roomy).chat.completions.create(model="m", messages=[{"role": "user", "content": parts}])
    assert reply.choices[0].message.content == reply_text(["look at\nthis"], 60)
    assert "\u201clook at this\u201d" in reply.choices[0].message.content


async def test_max_tokens_shortens_the_reply_with_finish_reason_length(sim: Simulator) -> None:
    reply = await client(sim).chat.completions.create(model="m", messages=MESSAGES, max_tokens=3)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 3
    assert reply.choices[0].message.content == reply_text(USER_TEXTS, 3)


async def test_models_lists_the_simulator_model(sim: Simulator) -> None:
    models = await client(sim).models.list()
    assert [m.id for m in models.data] == [DEFAULT_MODEL]


# --------------------------------------------------------------------------- langchain-openai


def chat_model(sim: Simulator, model: str = DEFAULT_MODEL) -> ChatOpenAI:
    return ChatOpenAI(base_url=sim.base_url, api_key="sim", model=model, max_retries=0, timeout=10,
                      stream_usage=True)


@same_loop
async def test_chatopenai_astream_gets_the_header_tokens_and_usage(sim: Simulator) -> None:
    pieces = [chunk async for chunk in chat_model(sim).astream([(m["role"], m["content"]) for m in MESSAGES])]
    full = pieces[0]
    for piece in pieces[1:]:
        full += piece
    assert full.content == reply_text(USER_TEXTS, FAST.reply_tokens)
    assert full.usage_metadata is not None and full.usage_metadata["output_tokens"] == FAST.reply_tokens


@same_loop
async def test_chatopenai_ainvoke_gets_the_whole_reply(sim: Simulator) -> None:
    reply = await chat_model(sim).ainvoke("only turn")
    assert reply.content == reply_text(["only turn"], FAST.reply_tokens)
    assert reply.response_metadata["model_name"] == DEFAULT_MODEL


@same_loop
async def test_chatopenai_surfaces_a_forced_fault_as_an_error(sim: Simulator) -> None:
    with pytest.raises(openai.APIConnectionError):
        async for _ in chat_model(sim, f"{DEFAULT_MODEL}@disconnect").astream("hi"):
            pass


# --------------------------------------------------------------------------- request validation


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (b'{"model": "m"}', "messages"),
        (b'{"model": "m", "messages": []}', "messages"),
        (b'{"model": "m", "messages": ["hi"]}', "messages[0]"),
        (b'{"model": "m", "messages": [{"role": "user", "content": 5}]}', "messages[0].content"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}', "stream"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}', "max_tokens"),
        (b'{"model": "m@explode", "messages": [{"role": "user", "content": "x"}]}', FAULT_HEADER),
    ],
)
def test_a_bad_request_is_a_400_with_an_openai_error_body(sim: Simulator, body: bytes, param: str | None) -> None:
    response = httpx.post(f"{sim.base_url}/chat/completions", content=body, timeout=5)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert error["param"] == param


def test_openai_client_raises_bad_request_for_missing_messages(sim: Simulator) -> None:
    with pytest.raises(openai.BadRequestError):
        openai.OpenAI(base_url=sim.base_url, api_key="sim", max_retries=0).chat.completions.create(
            model="m", messages=[]
        )


def test_unknown_path_is_404_and_wrong_method_405(sim: Simulator) -> None:
    assert httpx.get(f"{sim.base_url}/nope", timeout=5).status_code == 404
    assert httpx.get(f"{sim.base_url}/chat/completions", timeout=5).status_code == 405


def test_health_answers_ok(sim: Simulator) -> None:
    root = sim.base_url.removesuffix("/v1")
    assert httpx.get(f"{root}/health", timeout=5).json() == {"status": "ok"}


def test_several_requests_share_one_keep_alive_connection(sim: Simulator) -> None:
    with httpx.Client(timeout=5, limits=httpx.Limits(max_connections=1)) as http:
        ports = set()
        for _ in range(3):
            response = http.post(f"{sim.base_url}/chat/completions",
                                 json={"model": "m", "stream": True, "messages": MESSAGES})
            assert response.text.endswith("data: [DONE]\n\n")
            ports.add(response.extensions["network_stream"].get_extra_info("client_addr")[1])
        assert len(ports) == 1


# --------------------------------------------------------------------------- faults


@pytest.mark.parametrize(("status", "error"), [(429, openai.RateLimitError), (500, openai.InternalServerError),
                                                (503, openai.InternalServerError)])
async def test_forced_error_is_that_http_status(sim: Simulator, status: int, error: type) -> None:
    with pytest.raises(error) as caught:
        await stream_all(sim, **{FAULT_HEADER: f"error:{status}"})
    assert caught.value.status_code == status
    assert caught.value.body["code"] == "sim_fault"  # type: ignore[index]
    if status == 429:
        assert caught.value.response.headers["retry-after"] == "0"


async def test_forced_fault_by_model_suffix(sim: Simulator) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        await client(sim).chat.completions.create(model=f"{DEFAULT_MODEL}@error:418", messages=MESSAGES)
    assert caught.value.status_code == 418


async def test_forced_disconnect_breaks_the_stream_after_the_first_tokens(sim: Simulator) -> None:
    seen: list[str] = []
    stream = await client(sim, **{FAULT_HEADER: "disconnect"}).chat.completions.create(
        model="m", messages=MESSAGES, stream=True
    )
    with pytest.raises(openai.APIConnectionError):
        async for chunk in stream:
            seen.append(chunk.choices[0].delta.content or "")
    assert seen and seen[0] == reply_opening(USER_TEXTS)
    assert len(seen) == FAST.reply_tokens // 2


async def test_forced_stall_goes_silent_then_drops(sim: Simulator) -> None:
    seen: list[str] = []
    stream = await client(sim, **{FAULT_HEADER: "stall"}).chat.completions.create(
        model="m", messages=MESSAGES, stream=True
    )
    with pytest.raises(openai.APIConnectionError):
        async for chunk in stream:
            seen.append(chunk.choices[0].delta.content or "")
    assert len(seen) == FAST.reply_tokens // 2


async def test_a_stall_longer_than_the_client_timeout_is_a_timeout() -> None:
    async with Simulator(FAST.model_copy(update={"stall_s": 30}), host="127.0.0.1", port=0) as sim:
        c = openai.AsyncOpenAI(base_url=sim.base_url, api_key="sim", max_retries=0, timeout=0.3,
                               default_headers={FAULT_HEADER: "stall"})
        stream = await c.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        with pytest.raises(openai.APITimeoutError):
            async for _ in stream:
                pass


async def test_forced_malformed_chunk_fails_json_parsing(sim: Simulator) -> None:
    with pytest.raises(json.JSONDecodeError):
        await stream_all(sim, **{FAULT_HEADER: "malformed"})


@pytest.mark.parametrize("fault", ["disconnect", "stall"])
async def test_forced_connection_faults_break_a_non_streaming_reply(sim: Simulator, fault: str) -> None:
    with pytest.raises(openai.APIConnectionError):
        await client(sim, **{FAULT_HEADER: fault}).chat.completions.create(model="m", messages=MESSAGES)


def test_forced_malformed_non_streaming_body_is_not_json(sim: Simulator) -> None:
    response = httpx.post(f"{sim.base_url}/chat/completions", headers={FAULT_HEADER: "malformed"},
                          json={"model": "m", "messages": MESSAGES}, timeout=5)
    assert response.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.content)


def test_fault_header_none_overrides_the_rates() -> None:
    with running_simulator(FAST.model_copy(update={"error_rate": 1.0}), port=0) as sim:
        ok = httpx.post(f"{sim.base_url}/chat/completions", headers={FAULT_HEADER: "none"},
                        json={"model": "m", "messages": MESSAGES}, timeout=5)
        assert ok.status_code == 200


def test_error_rate_one_answers_every_request_with_a_configured_status() -> None:
    settings = FAST.model_copy(update={"error_rate": 1.0, "error_statuses": [502, 429]})
    with running_simulator(settings, port=0) as sim, httpx.Client(base_url=sim.base_url, timeout=5) as http:
        statuses = {http.post("/chat/completions", json={"model": "m", "messages": MESSAGES}).status_code
                    for _ in range(12)}
        assert statuses == {502, 429}
        assert sim.counters.faults["error"] == 12


def test_seeded_fault_rates_repeat_exactly() -> None:
    settings = FAST.model_copy(update={"error_rate": 0.3, "disconnect_rate": 0.3, "seed": 7})

    def outcomes() -> list[str]:
        with running_simulator(settings, port=0) as sim, httpx.Client(base_url=sim.base_url, timeout=5) as http:
            results = []
            for _ in range(16):
                try:
                    r = http.post("/chat/completions", json={"model": "m", "messages": MESSAGES})
                    results.append(str(r.status_code))
                except httpx.RemoteProtocolError:
                    results.append("cut")
            return results

    first = outcomes()
    assert first == outcomes()
    assert {"200", "cut"} <= set(first) and len(set(first)) > 2

