"""An OpenAI-compatible chat server built on sse-starlette, independent of cmw's own simulator.

Its SSE framing is sse-starlette's — CRLF line ends, ``: ping`` comments — as llama-cpp-python's
server sends it. The model name picks what the server does, so a test (or a browser typing a model
name through cmw) can ask for a misbehaviour:

- ``echo`` (any other name too): the reply ``[N messages, C chars] <last user message>``, word by word,
  every ``token_delay_s``; ``echo-lf`` / ``echo-cr`` frame it with LF / CR line ends instead;
- ``spread``: the same reply, each chunk's JSON spread over several ``data:`` lines, among comments,
  ``event: message``, ``id:``, ``retry:`` and a field without a value;
- ``huge``: one 16 MB chunk; ``endless``: tokens that never stop; ``silent``: pings, never a token;
- ``status:CODE``: that HTTP status, with an error body that echoes the request's key and a server path;
- ``retry:N:HEADER=VALUE``: the first N requests answer 429 carrying that header, then ``echo``;
- ``error-event``: a token, then an ``event: error`` whose message holds a secret; ``cut``: a token, then
  the connection drops.

Every request is recorded (headers and JSON body) in ``requests``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.servers import free_port

HUGE_BYTES = 16 * 1024 * 1024
SERVER_PATH = "/srv/llm/internal/worker-7.py"  # what an error body may leak


@dataclass
class Received:
    headers: dict[str, str]
    body: dict[str, Any]
    at: float  # time.monotonic() on arrival


@dataclass
class LLMServer:
    port: int
    token_delay_s: float = 0.02
    requests: list[Received] = field(default_factory=list)
    attempts: Counter[str] = field(default_factory=Counter)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def last(self, model: str | None = None) -> Received:
        return next(r for r in reversed(self.requests) if model is None or r.body.get("model") == model)


def reply_for(messages: list[dict[str, Any]]) -> str:
    """What ``echo`` answers: how much it received, then the last user message."""
    chars = sum(len(str(m.get("content") or "")) for m in messages)
    last_user = next((str(m["content"]) for m in reversed(messages) if m.get("role") == "user"), "")
    return f"[{len(messages)} messages, {chars} chars] {last_user}"


def _chunk(model: str, content: str | None, finish: str | None = None) -> dict[str, Any]:
    delta = {"content": content} if content is not None else {}
    return {"id": "chatcmpl-sse", "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def build_app(server: LLMServer) -> Starlette:
    async def completions(request: Request) -> Response:
        body = await request.json()
        server.requests.append(Received(dict(request.headers), body, time.monotonic()))
        model = str(body.get("model", "echo"))
        kind, _, arg = model.partition(":")
        server.attempts[model] += 1
        if kind == "status":
            key = request.headers.get("authorization", "")
            message = f"Incorrect API key provided: {key}. Raised in {SERVER_PATH}"
            return JSONResponse({"error": {"message": message, "type": "server_error"}}, status_code=int(arg))
        if kind == "retry":
            count, _, header = arg.partition(":")
            if server.attempts[model] <= int(count):
                name, _, value = header.partition("=")
                return JSONResponse({"error": {"message": "slow down"}}, status_code=429, headers={name: value})
        words = reply_for(body["messages"]).split(" ")
        sep = {"echo-lf": "\n", "echo-cr": "\r"}.get(model, "\r\n")
        return EventSourceResponse(_events(server, kind, model, words), sep=sep, ping=0.1 if kind == "silent" else 0)

    async def models(_: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": "echo", "object": "model"}]})

    return Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"]),
                             Route("/v1/models", models)])


async def _events(server: LLMServer, kind: str, model: str, words: list[str]) -> AsyncIterator[Any]:
    delay = server.token_delay_s
    if kind == "huge":
        yield json.dumps(_chunk(model, "x" * HUGE_BYTES))
    elif kind == "endless":
        while True:
            yield json.dumps(_chunk(model, "more " * 20))
            await asyncio.sleep(0.005)
    elif kind == "silent":
        await asyncio.sleep(3600)
    elif kind in ("error-event", "cut"):
        yield json.dumps(_chunk(model, words[0]))
        await asyncio.sleep(delay)
        if kind == "cut":
            raise ConnectionError("the server drops the connection mid-reply")
        secret = {"error": {"message": f"shard failed, key sk-leakedkey123456 at {SERVER_PATH}"}}
        yield ServerSentEvent(json.dumps(secret), event="error")
        await asyncio.sleep(3600)
    for n, word in enumerate(words):
        text = word if n == 0 else " " + word
        if kind == "spread" and n == 0:  # CR line ends mid-stream, a field without a value (data += "")
            yield b": raw\revent: message\rdata: " + json.dumps(_chunk(model, text)).encode() + b"\rdata\r\r"
        elif kind == "spread":
            data = json.dumps(_chunk(model, text), indent=1)  # newlines inside: one data: line each
            yield ServerSentEvent(data, event="message", id=str(n), retry=1000, comment="a comment")
            yield ServerSentEvent(comment="keep-alive")
        else:
            yield json.dumps(_chunk(model, text))
        await asyncio.sleep(delay)
    yield json.dumps(_chunk(model, None, "stop"))
    yield json.dumps({**_chunk(model, None), "choices": [], "usage": {"completion_tokens": len(words)}})
    yield "[DONE]"


@contextlib.contextmanager
def running_llm_server(token_delay_s: float = 0.02) -> Iterator[LLMServer]:
    """The server on a free loopback port, in a thread of this process, for the duration of the block."""
    server = LLMServer(free_port(), token_delay_s)
    config = uvicorn.Config(build_app(server), host="127.0.0.1", port=server.port, log_level="critical",
                            lifespan="off", timeout_graceful_shutdown=1)
    runner = uvicorn.Server(config)
    thread = threading.Thread(target=runner.run, name="sse-starlette-llm", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not runner.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the sse-starlette server did not start")
        time.sleep(0.02)
    try:
        yield server
    finally:
        runner.should_exit = True
        thread.join(15)
