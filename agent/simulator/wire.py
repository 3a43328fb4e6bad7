"""The bytes the simulator sends: HTTP/1.1 response heads, OpenAI JSON bodies and SSE events.

Pure functions of a :class:`~agent.simulator.plan.Plan`, so the framing is testable without a socket.
A stream's events are pre-encoded once per reply (:class:`StreamFrames`): sending a token is then
one concatenation of constant bytes, which is what lets one process feed hundreds of streams.

A tool call streams as OpenAI streams one (:class:`ToolCallFrames`): an event naming the call (id,
function name, empty arguments), then one event per piece of the arguments string, then the
``tool_calls`` finish, usage when asked for, and ``[DONE]``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from agent.simulator.plan import FILLER, Plan, reply_head, reply_text

# Filler tokens never change, so their JSON string literals are encoded once.
FILLER_JSON = [json.dumps(" " + word).encode() for word in FILLER]
MALFORMED_EVENT = b'data: {"id": "chatcmpl-malformed", "choices": [{"delta": {"content": \n\n'
MALFORMED_TOOL_EVENT = (b'data: {"id": "chatcmpl-malformed", "choices": [{"delta": {"tool_calls": '
                        b'[{"index": 0, "function": {"arguments": \n\n')
DONE_EVENT = b"data: [DONE]\n\n"
LAST_CHUNK = b"0\r\n\r\n"
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> bytes:
    """An OpenAI error object, typed by status as OpenAI types them."""
    kind = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return json.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}}).encode()


def response_head(status: int, headers: list[tuple[str, str]], keep_alive: bool) -> bytes:
    """Status line and headers; ``connection: close`` when the connection ends after this response."""
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    lines = [f"HTTP/1.1 {status} {reason}", "server: cmw-sim"]
    lines += [f"{name}: {value}" for name, value in headers]
    if not keep_alive:
        lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def json_head(status: int, length: int, keep_alive: bool, extra: list[tuple[str, str]] | None = None) -> bytes:
    """The head of a JSON response of ``length`` bytes."""
    headers = [("content-type", "application/json"), ("content-length", str(length)), *(extra or [])]
    return response_head(status, headers, keep_alive)


def chunk(payload: bytes) -> bytes:
    """One chunk of a ``transfer-encoding: chunked`` body."""
    return b"%x\r\n%b\r\n" % (len(payload), payload)


def model_card(model_id: str) -> dict[str, Any]:
    """A ``/v1/models`` entry."""
    return {"id": model_id, "object": "model", "created": 1_700_000_000, "owned_by": "cmw-sim"}


def completion_body(plan: Plan, reply_id: str, created: int) -> bytes:
    """The whole ``chat.completion`` object of a non-streaming reply: text, or the tool call."""
    message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None, "annotations": []}
    if plan.tool_call is not None:
        message["tool_calls"] = [plan.tool_call.openai()]
    else:
        message["content"] = reply_text(plan.user_texts, plan.tokens, plan.tool_result)
    return json.dumps({
        "id": reply_id, "object": "chat.completion", "created": created, "model": plan.model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": None, "finish_reason": plan.finish_reason,
        }],
        "usage": plan.usage(), "system_fingerprint": None,
    }).encode()


@dataclass(frozen=True)
class _Framing:
    """What every event of one stream shares: the head, and each event's bytes around its delta."""

    head: bytes
    prefix: bytes  # up to the delta's contents
    suffix: bytes  # after them
    tail: bytes

    @classmethod
    def build(cls, plan: Plan, reply_id: str, created: int, keep_alive: bool) -> _Framing:
        model = json.dumps(plan.model)
        base = f'{{"id":"{reply_id}","object":"chat.completion.chunk","created":{created},"model":{model},' \
               f'"system_fingerprint":null,"choices":['
        usage_null = ',"usage":null' if plan.include_usage else ""
        suffix = (f'}},"logprobs":null,"finish_reason":null}}]{usage_null}}}\n\n').encode()
        tail = f'data: {base}{{"index":0,"delta":{{}},"logprobs":null,"finish_reason":"{plan.finish_reason}"}}]' \
               f'{usage_null}}}\n\n'
        if plan.include_usage:
            tail += f"data: {base}],\"usage\":{json.dumps(plan.usage())}}}\n\n"
        head = response_head(200, [("content-type", "text/event-stream; charset=utf-8"),
                                   ("cache-control", "no-cache"), ("transfer-encoding", "chunked"),
                                   ("x-request-id", reply_id)], keep_alive)
        return cls(head, f'data: {base}{{"index":0,"delta":{{'.encode(), suffix, tail.encode() + DONE_EVENT)


@dataclass(frozen=True)
class StreamFrames:
    """A streamed text reply's bytes: the head, one SSE event per token, and the tail (finish, usage, [DONE])."""

    head: bytes
    first: bytes
    prefix: bytes
    suffix: bytes
    tail: bytes
    words: tuple[bytes, ...]  # the JSON strings of the reply's tokens before the filler
    malformed = MALFORMED_EVENT

    @classmethod
    def build(cls, plan: Plan, reply_id: str, created: int, keep_alive: bool) -> StreamFrames:
        """Encode everything but the token text once, and the reply's own words (a few dozen) up front."""
        f = _Framing.build(plan, reply_id, created, keep_alive)
        words = [json.dumps(word).encode() for word in reply_head(plan.user_texts, plan.tool_result)[:plan.tokens]]
        return cls(
            head=f.head,
            first=f.prefix + b'"role":"assistant","content":' + words[0] + f.suffix,
            prefix=f.prefix + b'"content":',
            suffix=f.suffix,
            tail=f.tail,
            words=tuple(words),
        )

    def token(self, i: int) -> bytes:
        """The SSE event of token ``i``: the reply's own words (the first carries the role), then filler."""
        if i == 0:
            return self.first
        n = len(self.words)
        word = self.words[i] if i < n else FILLER_JSON[(i - n) % len(FILLER_JSON)]
        return self.prefix + word + self.suffix


@dataclass(frozen=True)
class ToolCallFrames:
    """A streamed tool call's bytes: event 0 names the call, each later one carries a piece of its arguments."""

    head: bytes
    events: tuple[bytes, ...]
    tail: bytes
    malformed = MALFORMED_TOOL_EVENT

    @classmethod
    def build(cls, plan: Plan, reply_id: str, created: int, keep_alive: bool) -> ToolCallFrames:
        """Encode every event at once: a tool call is a few dozen of them."""
        call = plan.tool_call
        assert call is not None
        f = _Framing.build(plan, reply_id, created, keep_alive)
        opening = {"index": 0, "id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}}
        first = f.prefix + b'"role":"assistant","content":null,"tool_calls":' + _compact([opening]) + f.suffix
        pieces = [f.prefix + b'"tool_calls":' + _compact([{"index": 0, "function": {"arguments": piece}}]) + f.suffix
                  for piece in call.pieces]
        return cls(head=f.head, events=(first, *pieces), tail=f.tail)

    def token(self, i: int) -> bytes:
        """The SSE event of token ``i``."""
        return self.events[i]


def stream_frames(plan: Plan, reply_id: str, created: int, keep_alive: bool) -> StreamFrames | ToolCallFrames:
    """The frames of a streamed reply: a tool call's when the plan makes one, else text's."""
    kind = ToolCallFrames if plan.tool_call is not None else StreamFrames
    return kind.build(plan, reply_id, created, keep_alive)


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()
