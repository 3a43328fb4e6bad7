"""Tool calls as OpenAI clients see them (langchain-openai, openai, raw HTTP): a real simulator, real sockets."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated, Any, Literal

import httpx
import jsonschema_rs
import openai
import pytest
from langchain_core.messages import AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

from agent.settings import SimSettings
from agent.simulator import DEFAULT_MODEL, FAULT_HEADER, Simulator, reply_opening, reply_text, running_simulator

FAST = SimSettings(ttft_ms=0, tokens_per_second=5000, reply_tokens=8, jitter=0.2, seed=1, stall_s=0.05,
                   tool_call_rate=1.0)
QUESTION = "book a trip to Lisbon for two"


class Place(BaseModel):
    city: str
    country: str | None = None


@tool
def book_trip(destination: Place, nights: Annotated[int, Field(ge=1, le=14)], cabin: Literal["economy", "business"],
              travellers: list[str], flexible: bool = False) -> str:
    """Book a trip."""
    return "booked"


@tool
def weather(city: str) -> str:
    """Today's weather in a city."""
    return "sunny"


SCHEMAS = {t.name: convert_to_openai_tool(t)["function"]["parameters"] for t in (book_trip, weather)}
TOOLS = [convert_to_openai_tool(t) for t in (book_trip, weather)]
USER = {"role": "user", "content": QUESTION}

# langchain-openai shares one cached httpx client between ChatOpenAI instances, so its tests run on one loop.
same_loop = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    with running_simulator(FAST, host="127.0.0.1", port=0) as simulator:
        yield simulator


def chat_model(sim: Simulator, model: str = DEFAULT_MODEL) -> Any:
    return ChatOpenAI(base_url=sim.base_url, api_key="sim", model=model, max_retries=0, timeout=10,
                      stream_usage=True).bind_tools([book_trip, weather])


def client(sim: Simulator, **headers: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=sim.base_url, api_key="sim", max_retries=0, timeout=10,
                              default_headers=headers or None)


def assert_valid_call(call: dict[str, Any]) -> None:
    assert call["name"] in SCHEMAS
    assert jsonschema_rs.validator_for(SCHEMAS[call["name"]]).is_valid(call["args"]), call
    strings = [call["args"]["city"]] if call["name"] == "weather" else [call["args"]["destination"]["city"]]
    assert strings == ["book a trip"]  # strings are the first words of the user's message


def post(sim: Simulator, messages: list[dict[str, Any]], headers: dict[str, str] | None = None,
         **fields: Any) -> httpx.Response:
    body = {"model": "m", "messages": messages, **fields}
    return httpx.post(f"{sim.base_url}/chat/completions", json=body, headers=headers, timeout=5)


# --------------------------------------------------------------------------- langchain-openai


@same_loop
async def test_a_streamed_tool_call_assembles_into_valid_tool_calls(sim: Simulator) -> None:
    pieces = [chunk async for chunk in chat_model(sim).astream(QUESTION)]
    full = pieces[0]
    for piece in pieces[1:]:
        full += piece
    assert isinstance(full, AIMessageChunk) and full.content == ""
    assert len(full.tool_calls) == 1 and full.invalid_tool_calls == []
    assert_valid_call(full.tool_calls[0])
    assert full.tool_calls[0]["id"].startswith("call_")
    assert full.response_metadata["finish_reason"] == "tool_calls"
    arg_chunks = [p for p in pieces if p.tool_call_chunks and p.tool_call_chunks[0]["args"]]
    assert len(arg_chunks) >= 2  # the arguments arrive in pieces, as OpenAI streams them
    assert full.usage_metadata is not None and full.usage_metadata["output_tokens"] == 1 + len(arg_chunks)


@same_loop
async def test_a_whole_tool_call_reply_parses_into_tool_calls(sim: Simulator) -> None:
    reply = await chat_model(sim).ainvoke(QUESTION)
    assert reply.content == "" and len(reply.tool_calls) == 1
    assert_valid_call(reply.tool_calls[0])
    assert reply.response_metadata["finish_reason"] == "tool_calls"


@same_loop
async def test_the_turn_after_a_tool_result_is_text_naming_that_result(sim: Simulator) -> None:
    model = chat_model(sim)
    call = await model.ainvoke(QUESTION)
    history = [HumanMessage(QUESTION), call, ToolMessage("it is sunny, 24C", tool_call_id=call.tool_calls[0]["id"])]
    pieces = [chunk async for chunk in model.astream(history)]
    text = "".join(str(p.content) for p in pieces)
    assert text == reply_text([QUESTION], FAST.reply_tokens, (call.tool_calls[0]["name"], "it is sunny, 24C"))
    assert not any(p.tool_call_chunks for p in pieces)


@same_loop
async def test_forced_bad_arguments_arrive_as_an_invalid_tool_call(sim: Simulator) -> None:
    reply = await chat_model(sim, f"{DEFAULT_MODEL}@bad_arguments").ainvoke(QUESTION)
    assert reply.tool_calls == [] and len(reply.invalid_tool_calls) == 1
    bad = reply.invalid_tool_calls[0]
    assert bad["name"] in SCHEMAS and bad["args"] is not None
    with pytest.raises(json.JSONDecodeError):
        json.loads(bad["args"])
    pieces = [chunk async for chunk in chat_model(sim, f"{DEFAULT_MODEL}@bad_arguments").astream(QUESTION)]
    full = pieces[0]
    for piece in pieces[1:]:
        full += piece
    assert full.tool_calls == [] and len(full.invalid_tool_calls) == 1


@same_loop
async def test_a_stream_cut_inside_a_tool_call_is_a_connection_error(sim: Simulator) -> None:
    seen: list[AIMessageChunk] = []
    with pytest.raises(openai.APIConnectionError):
        async for chunk in chat_model(sim, f"{DEFAULT_MODEL}@tool_call,disconnect").astream(QUESTION):
            seen.append(chunk)
    assert seen and seen[0].tool_call_chunks and seen[0].tool_call_chunks[0]["name"] in SCHEMAS


# --------------------------------------------------------------------------- the openai client


async def test_a_streamed_tool_call_is_framed_as_openai_frames_it(sim: Simulator) -> None:
    stream = await client(sim).chat.completions.create(
        model="m", messages=[USER], tools=TOOLS, stream=True, stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    first = chunks[0].choices[0].delta
    assert first.role == "assistant" and first.content is None and first.tool_calls is not None
    opening = first.tool_calls[0]
    assert (opening.index, opening.type, opening.function.arguments) == (0, "function", "")
    assert opening.id.startswith("call_") and opening.function.name in SCHEMAS
    rest = [c.choices[0].delta.tool_calls[0] for c in chunks[1:] if c.choices and c.choices[0].delta.tool_calls]
    assert all(t.index == 0 and t.id is None and t.function.name is None for t in rest)
    arguments = json.loads("".join(t.function.arguments for t in rest))
    assert jsonschema_rs.validator_for(SCHEMAS[opening.function.name]).is_valid(arguments)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 1 + len(rest)


@pytest.mark.parametrize("fault", ["disconnect", "stall"])
async def test_a_connection_fault_strikes_inside_the_tool_calls_arguments(sim: Simulator, fault: str) -> None:
    stream = await client(sim, **{FAULT_HEADER: f"tool_call,{fault}"}).chat.completions.create(
        model="m", messages=[USER], tools=TOOLS, stream=True)
    seen = []
    with pytest.raises(openai.APIConnectionError):
        async for c in stream:
            seen.append(c.choices[0].delta.tool_calls[0])
    assert seen[0].function.name in SCHEMAS  # the call was named before the cut ...
    with pytest.raises(json.JSONDecodeError):  # ... and its arguments never completed
        json.loads("".join(t.function.arguments for t in seen))


async def test_a_malformed_chunk_inside_a_tool_call_fails_json_parsing(sim: Simulator) -> None:
    stream = await client(sim, **{FAULT_HEADER: "tool_call,malformed"}).chat.completions.create(
        model="m", messages=[USER], tools=TOOLS, stream=True)
    with pytest.raises(json.JSONDecodeError):
        async for _ in stream:
            pass


async def test_an_error_fault_comes_before_any_tool_call(sim: Simulator) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        await client(sim, **{FAULT_HEADER: "tool_call,error:503"}).chat.completions.create(
            model="m", messages=[USER], tools=TOOLS, stream=True)
    assert caught.value.status_code == 503


# --------------------------------------------------------------------------- raw HTTP: when a tool is called


def test_a_tool_result_turn_names_the_tool_by_its_call_id_or_as_unknown(sim: Simulator) -> None:
    call = {"id": "call_7", "type": "function", "function": {"name": "weather", "arguments": '{"city": "x"}'}}
    history = [USER, {"role": "assistant", "content": None, "tool_calls": [call]}]
    named = post(sim, [*history, {"role": "tool", "tool_call_id": "call_7", "content": "sunny"}], tools=TOOLS).json()
    assert named["choices"][0]["message"]["content"].startswith(reply_opening([QUESTION], ("weather", "sunny")))
    assert named["choices"][0]["finish_reason"] == "stop"
    unknown = post(sim, [*history, {"role": "tool", "tool_call_id": "call_8", "content": "rain"}]).json()
    assert unknown["choices"][0]["message"]["content"].startswith(reply_opening([QUESTION], (None, "rain")))


def test_rate_zero_never_calls_a_tool_and_rate_one_always_does_on_a_user_turn(sim: Simulator) -> None:
    with running_simulator(FAST.model_copy(update={"tool_call_rate": 0.0}), port=0) as never:
        replies = [post(never, [USER], tools=TOOLS).json()["choices"][0] for _ in range(10)]
        assert {r["finish_reason"] for r in replies} == {"stop"}
        assert post(never, [USER], {FAULT_HEADER: "tool_call"}, tools=TOOLS).json()["choices"][0][
            "finish_reason"] == "tool_calls"  # forced, whatever the rate
        assert never.counters.tool_calls == 1
    replies = [post(sim, [USER], tools=TOOLS).json()["choices"][0] for _ in range(10)]
    assert {r["finish_reason"] for r in replies} == {"tool_calls"}
    assert {r["message"]["tool_calls"][0]["function"]["name"] for r in replies} == set(SCHEMAS)
    assert post(sim, [USER]).json()["choices"][0]["finish_reason"] == "stop"  # no tools offered
    assert post(sim, [USER], tools=TOOLS, tool_choice="none").json()["choices"][0]["finish_reason"] == "stop"


def test_a_named_tool_choice_calls_that_tool() -> None:
    with running_simulator(FAST.model_copy(update={"tool_call_rate": 0.0}), port=0) as sim:
        choice = {"type": "function", "function": {"name": "weather"}}
        for _ in range(4):
            message = post(sim, [USER], tools=TOOLS, tool_choice=choice).json()["choices"][0]["message"]
            assert message["tool_calls"][0]["function"]["name"] == "weather"


def test_seeded_tool_calls_repeat_exactly() -> None:
    settings = FAST.model_copy(update={"tool_call_rate": 0.5, "seed": 11})

    def outcomes() -> list[tuple[str, str] | None]:
        with running_simulator(settings, port=0) as sim:
            out = []
            for _ in range(16):
                message = post(sim, [USER], tools=TOOLS).json()["choices"][0]["message"]
                calls = message.get("tool_calls")
                out.append((calls[0]["function"]["name"], calls[0]["function"]["arguments"]) if calls else None)
            return out

    first = outcomes()
    assert first == outcomes()
    assert None in first and {c[0] for c in first if c} == set(SCHEMAS)


@pytest.mark.parametrize(("fields", "param"), [
    ({"tools": "weather"}, "tools"),
    ({"tools": [{"type": "function", "function": {"parameters": {}}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "code_interpreter"}]}, "tools[0]"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "fly"}}}, "tool_choice"),
])
def test_invalid_tools_are_a_400_with_an_openai_error_body(sim: Simulator, fields: dict[str, Any], param: str) -> None:
    response = post(sim, [USER], **fields)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]


def test_openai_client_raises_bad_request_for_invalid_tools(sim: Simulator) -> None:
    with pytest.raises(openai.BadRequestError):
        openai.OpenAI(base_url=sim.base_url, api_key="sim", max_retries=0).chat.completions.create(
            model="m", messages=[USER], tools=[{"type": "function", "function": {"name": "bad name"}}])


def test_the_counters_count_tool_calls_and_tool_results() -> None:
    with running_simulator(FAST, port=0) as sim:
        call = post(sim, [USER], tools=TOOLS).json()["choices"][0]["message"]
        result = {"role": "tool", "tool_call_id": call["tool_calls"][0]["id"], "content": "done"}
        post(sim, [USER, call, result], tools=TOOLS)
        assert (sim.counters.tool_calls, sim.counters.tool_results) == (1, 1)

