"""Tool calls without a socket: arguments made up from schemas, tool requests parsed, the dice, the frames."""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from typing import Any

import jsonschema_rs
import pytest

from agent.fingerprints import fingerprint, parse_reply_header, reply_header
from agent.settings import SimSettings
from agent.simulator import reply_opening, reply_text, tool_result_header
from agent.simulator.plan import NOT_FORCED, Dice, Fault, RequestError, parse_completion_request, parse_faults
from agent.simulator.tools import ToolCall, ToolSpec, bad_arguments, draw_tool_call, sample_arguments, split_arguments
from agent.simulator.wire import MALFORMED_TOOL_EVENT, completion_body, stream_frames

HINT = "find cheap flights"
PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 18}},
          "required": ["name", "age"]}
SCHEMAS: list[dict[str, Any]] = [
    {"type": "object", "properties": {}},
    {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
    {"type": "object", "properties": {"unit": {"type": "string", "enum": ["c", "f"]}}, "required": ["unit"]},
    {"type": "object", "properties": {"n": {"type": "integer", "minimum": 5, "maximum": 7}}, "required": ["n"]},
    {"type": "object", "properties": {"n": {"type": "integer", "exclusiveMinimum": 5, "exclusiveMaximum": 7}},
     "required": ["n"]},
    {"type": "object", "properties": {"n": {"type": "integer", "maximum": -20}}, "required": ["n"]},
    {"type": "object", "properties": {"x": {"type": "number", "minimum": 0.1, "maximum": 0.2}}, "required": ["x"]},
    {"$schema": "http://json-schema.org/draft-04/schema#", "type": "object",
     "properties": {"x": {"type": "number", "minimum": 3, "exclusiveMinimum": True, "maximum": 4}}, "required": ["x"]},
    {"type": "object", "properties": {"flag": {"type": "boolean"}, "none": {"type": "null"}},
     "required": ["flag", "none"]},
    {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"}, "minItems": 2}},
     "required": ["tags"]},
    {"type": "object", "properties": {"tags": {"type": "array", "maxItems": 0}}, "required": ["tags"]},
    {"type": "object", "properties": {"when": {"type": "string", "format": "date-time"},
                                      "mail": {"type": "string", "format": "email"}}, "required": ["when", "mail"]},
    {"type": "object", "properties": {"code": {"type": "string", "minLength": 30, "maxLength": 40},
                                      "short": {"type": "string", "maxLength": 2}}, "required": ["code", "short"]},
    {"type": "object", "properties": {"v": {"type": ["null", "integer"]}, "w": {"anyOf": [{"type": "null"},
                                                                                         {"type": "boolean"}]}},
     "required": ["v", "w"]},
    {"type": "object", "required": ["who", "crowd"], "$defs": {"Person": PERSON},
     "properties": {"who": {"$ref": "#/$defs/Person"},
                    "crowd": {"type": "array", "items": {"$ref": "#/$defs/Person"}}}},
    {"type": "object", "properties": {"deep": {"type": "object", "properties": {"deeper": PERSON},
                                               "required": ["deeper"]}, "optional": {"type": "string"}},
     "required": ["deep"]},
    {"type": "object", "properties": {"c": {"const": "fixed"}, "anything": {}}, "required": ["c", "anything"]},
]


def valid(schema: dict[str, Any], value: Any) -> bool:
    return jsonschema_rs.validator_for(schema).is_valid(value)


# --------------------------------------------------------------------------- arguments from a schema


@pytest.mark.parametrize("schema", SCHEMAS)
def test_sampled_arguments_are_valid_against_their_schema(schema: dict[str, Any]) -> None:
    for seed in range(20):
        args = sample_arguments(schema, random.Random(seed), HINT)
        assert valid(schema, args), args
        assert set(args) == set(schema.get("required", []))  # optional properties are left out


def test_strings_come_from_the_users_message_and_enums_pick_among_their_values() -> None:
    rng = random.Random(0)
    assert sample_arguments(SCHEMAS[1], rng, HINT) == {"q": HINT}
    assert {sample_arguments(SCHEMAS[2], rng, HINT)["unit"] for _ in range(40)} == {"c", "f"}


@pytest.mark.parametrize("schema", [None, "x", {"type": "string"}, {"type": "array"}, {"$ref": "#/nowhere"}])
def test_an_absent_or_unusable_schema_gives_an_empty_object(schema: Any) -> None:
    assert sample_arguments(schema, random.Random(0), HINT) == {}


def test_a_schema_that_requires_itself_still_ends() -> None:
    node = {"type": "object", "properties": {"child": {"$ref": "#"}}, "required": ["child"]}
    assert 1 <= json.dumps(sample_arguments(node, random.Random(0), HINT)).count("child") <= 8


def test_a_drawn_call_repeats_with_its_seed_and_bad_arguments_are_not_json() -> None:
    tools = [ToolSpec("a", SCHEMAS[3]), ToolSpec("b", SCHEMAS[1])]
    calls = [draw_tool_call(tools, random.Random(5), HINT) for _ in range(2)]
    assert calls[0] == calls[1] and re.fullmatch(r"call_[0-9a-f]{24}", calls[0].id)
    bad = draw_tool_call(tools, random.Random(5), HINT, bad=True)
    assert (bad.id, bad.name) == (calls[0].id, calls[0].name)
    with pytest.raises(json.JSONDecodeError):
        json.loads(bad.arguments)
    for text in ("{}", '{"a": {"b": 1}}', '{"q": "}"}'):
        with pytest.raises(json.JSONDecodeError):
            json.loads(bad_arguments(text))


@pytest.mark.parametrize("arguments", ["{}", '{"q":"x"}', '{"query": "find cheap flights", "n": 3}', "{"])
def test_arguments_stream_in_pieces_of_a_few_characters(arguments: str) -> None:
    pieces = split_arguments(arguments)
    assert "".join(pieces) == arguments and all(1 <= len(p) <= 4 for p in pieces)
    assert len(pieces) >= 2 or len(arguments) < 2
    assert ToolCall("call_1", "t", arguments).events == 1 + len(pieces)


# --------------------------------------------------------------------------- tool results


def test_the_tool_result_header_names_the_tool_and_fingerprints_the_result() -> None:
    assert tool_result_header("calc", "4") == f"[tool name=calc result_fp={fingerprint('4')}]"
    assert tool_result_header(None, "") == f"[tool name=? result_fp={fingerprint('')}]"
    opening = reply_opening(["cw1-abcd q"], ("calc", "4"))  # the load tester's message: headers first
    assert opening == f"{reply_header(['cw1-abcd q'])} {tool_result_header('calc', '4')}"
    assert reply_text(["cw1-abcd q"], 3, ("calc", "4")).startswith(opening + " ")
    assert parse_reply_header(opening) == (1, [fingerprint("cw1-abcd q")])  # the isolation checks still read it


def test_a_person_reads_the_tool_result_quoted_and_no_header() -> None:
    text = reply_text(["what is 6*7?"], 40, ("calc", "42"))
    assert text.startswith("The calc tool returned \u201c42\u201d. You said \u201cwhat is 6*7?\u201d, your first "
                           "message in this conversation. I'm cmw's built-in simulator, not a real model.")
    assert "[" not in text and reply_opening(["what is 6*7?"], ("calc", "42")) == "The"
    assert "The tool returned nothing." in reply_text(["q"], 40, (None, ""))


# --------------------------------------------------------------------------- requests


TOOL = {"type": "function", "function": {"name": "search", "description": "d", "parameters": SCHEMAS[1]}}
CALL = {"id": "call_1", "type": "function", "function": {"name": "search", "arguments": '{"q": "x"}'}}
TOOL_TURN = [{"role": "user", "content": "look it up"}, {"role": "assistant", "content": None, "tool_calls": [CALL]},
             {"role": "tool", "tool_call_id": "call_1", "content": "found it"}]


def parse(messages: list[dict[str, Any]] | None = None, headers: dict[str, str] | None = None, **fields: Any):
    body = {"messages": messages or [{"role": "user", "content": "hello there"}], **fields}
    return parse_completion_request(json.dumps(body).encode(), headers or {}, 10)


def test_a_request_with_tools_on_a_user_turn_may_call_them() -> None:
    plan = parse(tools=[TOOL])
    assert plan.tools == (ToolSpec("search", SCHEMAS[1]),) and plan.user_turn and plan.tool_result is None
    assert (plan.tool_required, plan.tool_fault, plan.tool_call) == (False, None, None)
    assert parse().tools == () and parse(tools=[]).tools == ()


def test_a_conversation_ending_with_a_tool_result_names_the_tool_it_answers() -> None:
    plan = parse(TOOL_TURN, tools=[TOOL])
    assert not plan.user_turn and plan.tool_result == ("search", "found it")
    assert plan.user_texts == ["look it up"]
    unknown = [*TOOL_TURN[:2], {"role": "tool", "tool_call_id": "call_9", "content": [{"type": "text", "text": "a"}]}]
    assert parse(unknown).tool_result == (None, "a")
    assert parse([*TOOL_TURN, {"role": "user", "content": "thanks"}]).tool_result is None


def test_tool_choice_narrows_or_forces_the_call() -> None:
    assert parse(tools=[TOOL], tool_choice="none").tools == ()
    assert parse(tools=[TOOL], tool_choice="required").tool_required
    other = {"type": "function", "function": {"name": "other"}}
    named = parse(tools=[TOOL, other], tool_choice={"type": "function", "function": {"name": "other"}})
    assert (named.tools, named.tool_required) == ((ToolSpec("other"),), True)


@pytest.mark.parametrize(("fields", "messages", "param"), [
    ({"tools": {"a": 1}}, None, "tools"),
    ({"tools": ["search"]}, None, "tools[0]"),
    ({"tools": [{"type": "retrieval"}]}, None, "tools[0]"),
    ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, None, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, None, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "x" * 65}}]}, None, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "{}"}}]}, None,
     "tools[0].function.parameters"),
    ({"tools": [TOOL], "tool_choice": "always"}, None, "tool_choice"),
    ({"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, None, "tool_choice"),
    ({"tool_choice": "required"}, None, "tool_choice"),
    ({}, [{"role": "tool", "content": "x"}], "messages[0].tool_call_id"),
    ({}, [{"role": "tool", "tool_call_id": "c"}], "messages[0].content"),
    ({}, [{"role": "assistant", "tool_calls": {"id": "c"}}], "messages[0].tool_calls"),
    ({}, [{"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f"}}]}], "messages[0].tool_calls[0]"),
])
def test_invalid_tools_and_tool_messages_name_their_param(fields: dict[str, Any], messages: Any, param: str) -> None:
    with pytest.raises(RequestError) as caught:
        parse(messages, **fields)
    assert (caught.value.status, caught.value.param) == (400, param)


@pytest.mark.parametrize(("spec", "fault", "tool"), [
    ("tool_call", NOT_FORCED, "tool_call"), ("bad_arguments", NOT_FORCED, "bad_arguments"),
    ("tool_call, disconnect", Fault("disconnect"), "tool_call"),
    ("malformed,TOOL_CALL", Fault("malformed"), "tool_call"),
    ("none,bad_arguments", None, "bad_arguments"), ("error:503", Fault("error", 503), None), ("none", None, None),
])
def test_fault_specs_combine_one_fault_with_one_tool_fault(spec: str, fault: Fault | None, tool: str | None) -> None:
    assert parse_faults(spec) == (fault, tool)


@pytest.mark.parametrize("spec", ["tool_call,bad_arguments", "stall,disconnect", "tool_call,", "tool_call,boom"])
def test_bad_fault_combinations_are_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="fault"):
        parse_faults(spec)


def test_a_model_suffix_forces_tool_faults_too() -> None:
    plan = parse(model="cmw-sim@tool_call,disconnect", tools=[TOOL])
    assert (plan.fault, plan.tool_fault) == (Fault("disconnect"), "tool_call")


# --------------------------------------------------------------------------- the dice


def test_the_rate_decides_a_user_turn_and_a_seed_repeats_it() -> None:
    settings = SimSettings(seed=4, tool_call_rate=0.3)
    plan = parse(tools=[TOOL, {"type": "function", "function": {"name": "other"}}])
    dice, again = Dice(settings), Dice(settings)
    calls = [dice.tool_call(plan) for _ in range(2000)]
    assert calls == [again.tool_call(plan) for _ in range(2000)]
    assert sum(c is not None for c in calls) / 2000 == pytest.approx(0.3, abs=0.04)
    assert Counter(c.name for c in calls if c).keys() == {"search", "other"}


def test_no_call_without_tools_or_after_a_tool_result_and_always_when_forced() -> None:
    always = Dice(SimSettings(seed=1, tool_call_rate=1.0))
    assert always.tool_call(parse()) is None and always.tool_call(parse(TOOL_TURN, tools=[TOOL])) is None
    never = Dice(SimSettings(seed=1, tool_call_rate=0.0))
    assert never.tool_call(parse(tools=[TOOL])) is None
    for forced in (parse(None, {"x-sim-fault": "tool_call"}, tools=[TOOL]),
                   parse(tools=[TOOL], tool_choice="required")):
        call = never.tool_call(forced)
        assert call is not None and json.loads(call.arguments) == {"q": "hello there"}


# --------------------------------------------------------------------------- the bytes


def tool_plan(**fields: Any):
    plan = parse(tools=[TOOL], model="my-model", **fields)
    return plan.with_tool_call(ToolCall("call_abc", "search", '{"q": "hello there"}'))


def events(data: bytes) -> list[str]:
    return [p.removeprefix("data: ") for p in data.decode().split("\n\n")[:-1]]


@pytest.mark.parametrize("include_usage", [True, False])
def test_a_streamed_tool_call_is_openais_chunks(include_usage: bool) -> None:
    plan = tool_plan(stream=True, stream_options={"include_usage": include_usage})
    frames = stream_frames(plan, "chatcmpl-1", 7, keep_alive=True)
    chunks = [json.loads(e) for i in range(plan.tokens) for e in events(frames.token(i))]
    first = chunks[0]["choices"][0]["delta"]
    assert first == {"role": "assistant", "content": None, "tool_calls": [
        {"index": 0, "id": "call_abc", "type": "function", "function": {"name": "search", "arguments": ""}}]}
    rest = [c["choices"][0]["delta"]["tool_calls"] for c in chunks[1:]]
    assert all(len(t) == 1 and t[0]["index"] == 0 and set(t[0]) == {"index", "function"} for t in rest)
    assert "".join(t[0]["function"]["arguments"] for t in rest) == '{"q": "hello there"}' and len(rest) >= 2
    assert all(("usage" in c) == include_usage for c in chunks)
    tail = events(frames.tail)
    assert json.loads(tail[0])["choices"][0] == {"index": 0, "delta": {}, "logprobs": None,
                                                  "finish_reason": "tool_calls"}
    assert tail[-1] == "[DONE]"
    if include_usage:
        assert json.loads(tail[1])["usage"]["completion_tokens"] == plan.tokens == 1 + len(rest)
    with pytest.raises(json.JSONDecodeError):
        json.loads(events(frames.malformed)[0])
    assert frames.malformed == MALFORMED_TOOL_EVENT


def test_a_whole_tool_call_reply_has_the_call_and_no_content() -> None:
    body = json.loads(completion_body(tool_plan(), "chatcmpl-2", 5))
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None and choice["message"]["role"] == "assistant"
    assert choice["message"]["tool_calls"] == [
        {"id": "call_abc", "type": "function", "function": {"name": "search", "arguments": '{"q": "hello there"}'}}]


def test_a_reply_to_a_tool_result_opens_with_both_headers() -> None:
    plan = parse(TOOL_TURN, tools=[TOOL], stream=True)
    text = json.loads(completion_body(plan, "c", 0))["choices"][0]["message"]["content"]
    assert text == reply_text(["look it up"], 10, ("search", "found it"))
    first = json.loads(events(stream_frames(plan, "c", 0, True).token(0))[0])
    assert first["choices"][0]["delta"]["content"] == reply_opening(["look it up"], ("search", "found it"))
