"""The simulator's bytes without a socket: HTTP heads, OpenAI bodies and the SSE events of a stream."""

from __future__ import annotations

import json

import pytest

from agent.simulator.plan import parse_completion_request, reply_text
from agent.simulator.wire import (
    DONE_EVENT,
    MALFORMED_EVENT,
    StreamFrames,
    chunk,
    completion_body,
    error_body,
    json_head,
    response_head,
)

MESSAGES = [{"role": "user", "content": "one"}, {"role": "assistant", "content": "x"},
            {"role": "user", "content": "two"}]


def plan(**fields: object):
    body = json.dumps({"model": "my-model", "messages": MESSAGES, **fields}).encode()
    return parse_completion_request(body, {}, 6)


def events(data: bytes) -> list[str]:
    assert data.endswith(b"\n\n")
    parts = data.decode().split("\n\n")[:-1]
    assert all(p.startswith("data: ") for p in parts)
    return [p.removeprefix("data: ") for p in parts]


@pytest.mark.parametrize("include_usage", [True, False])
def test_a_streams_events_are_openai_chunks_that_spell_the_reply(include_usage: bool) -> None:
    p = plan(stream=True, stream_options={"include_usage": include_usage})
    frames = StreamFrames.build(p, "chatcmpl-1", 7, keep_alive=True)
    chunks = [json.loads(e) for i in range(p.tokens) for e in events(frames.token(i))]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks) == reply_text(["one", "two"], 6)
    assert {(c["id"], c["model"], c["created"], c["object"]) for c in chunks} == {
        ("chatcmpl-1", "my-model", 7, "chat.completion.chunk")}
    assert all(("usage" in c) == include_usage for c in chunks)
    tail = events(frames.tail)
    assert tail[-1] == "[DONE]" and frames.tail.endswith(DONE_EVENT)
    finish = json.loads(tail[0])
    assert finish["choices"][0]["finish_reason"] == "stop" and finish["choices"][0]["delta"] == {}
    if include_usage:
        assert json.loads(tail[1])["choices"] == [] and json.loads(tail[1])["usage"] == p.usage()
    else:
        assert len(tail) == 2


def test_a_stream_head_is_chunked_sse_with_the_request_id() -> None:
    head = StreamFrames.build(plan(stream=True), "chatcmpl-9", 0, keep_alive=False).head.decode()
    assert head.startswith("HTTP/1.1 200 OK\r\n") and head.endswith("\r\n\r\n")
    for line in ("content-type: text/event-stream; charset=utf-8", "transfer-encoding: chunked",
                 "x-request-id: chatcmpl-9", "connection: close"):
        assert f"\r\n{line}\r\n" in head


def test_a_model_name_is_json_escaped_in_every_event() -> None:
    p = plan(stream=True, model='quote"me\\')
    frames = StreamFrames.build(p, "id", 0, keep_alive=True)
    assert json.loads(events(frames.token(1))[0])["model"] == 'quote"me\\'


def test_the_malformed_event_is_not_json() -> None:
    with pytest.raises(json.JSONDecodeError):
        json.loads(events(MALFORMED_EVENT)[0])


def test_a_whole_completion_carries_the_reply_and_usage() -> None:
    p = plan(max_tokens=3)
    body = json.loads(completion_body(p, "chatcmpl-2", 5))
    assert body["choices"][0]["message"]["content"] == reply_text(["one", "two"], 3)
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == p.usage() and body["id"] == "chatcmpl-2"


@pytest.mark.parametrize(("status", "kind"), [(400, "invalid_request_error"), (401, "authentication_error"),
                                              (429, "rate_limit_error"), (418, "invalid_request_error"),
                                              (503, "server_error")])
def test_error_bodies_are_typed_as_openai_types_them(status: int, kind: str) -> None:
    error = json.loads(error_body(status, "no", "messages", "sim_fault"))["error"]
    assert error == {"message": "no", "type": kind, "param": "messages", "code": "sim_fault"}


def test_heads_name_the_status_and_close_only_when_asked() -> None:
    assert response_head(599, [], keep_alive=True) == b"HTTP/1.1 599 Error\r\nserver: cmw-sim\r\n\r\n"
    head = json_head(429, 12, keep_alive=False, extra=[("retry-after", "0")])
    assert head == (b"HTTP/1.1 429 Too Many Requests\r\nserver: cmw-sim\r\ncontent-type: application/json\r\n"
                    b"content-length: 12\r\nretry-after: 0\r\nconnection: close\r\n\r\n")


def test_a_chunk_is_its_hex_length_then_the_payload() -> None:
    assert chunk(b"x" * 26) == b"1a\r\n" + b"x" * 26 + b"\r\n"
