"""Gradio's queue protocol (sse_v3, Gradio 6) spoken over plain HTTP/1.1, as the browser speaks it.

Checked against gradio 6.31's routes.py (queue_join, queue_data), queueing.py and blocks.handle_streaming_diffs,
and against real apps. One turn is ``POST {prefix}/queue/join`` → ``{"event_id"}``, then
``GET {prefix}/queue/data?session_hash=…``: server-sent events ``estimation``, ``process_starts``,
``process_generating`` (the first carries full output values, later ones a list of edits per output:
``[action, path, value]``), ``process_completed`` (full values), ``heartbeat`` and ``close_stream``. Gradio closes
the stream once the session has no pending event, so each turn opens its own stream. ``gradio_client`` is avoided
on purpose: each ``Client`` costs a config fetch, a heartbeat thread and a thread pool, which would make the
generator the bottleneck long before the server.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from agent.loadtest.connection import Connection, ConnectionLost

try:
    import orjson

    _loads = orjson.loads
    _dumps = orjson.dumps
except ImportError:  # pragma: no cover - orjson ships with gradio
    import json

    def _loads(data: bytes | str) -> Any:
        return json.loads(data)

    def _dumps(value: Any) -> bytes:
        return json.dumps(value).encode()


QUEUE_FULL = "queue_full"
TIMEOUT = "timeout"
APP_ERROR = "app_error"
DISCONNECT = "disconnect"
ERROR_CLASSES = (QUEUE_FULL, TIMEOUT, APP_ERROR, DISCONNECT)


class TargetError(Exception):
    """The target cannot be load-tested: unreachable, not a Gradio app, or without the endpoint."""

    def __init__(self, message: str, *, unreachable: bool = True):
        super().__init__(message)
        self.unreachable = unreachable


@dataclass(frozen=True)
class Endpoint:
    """The chat dependency of a Gradio app, as its ``/config`` describes it."""

    base_url: str
    api_prefix: str
    api_name: str
    fn_index: int
    trigger_id: int | None
    input_types: tuple[str, ...]
    defaults: tuple[Any, ...]
    output_types: tuple[str, ...]
    gradio_version: str
    protocol: str

    def payload(self, message: str, session_hash: str, history: list[dict[str, Any]] | None) -> dict[str, Any]:
        """The join body: the message first, what a fresh browser tab would send for the other inputs."""
        data: list[Any] = [message]
        for kind, default in zip(self.input_types[1:], self.defaults[1:], strict=True):
            # A chatbot input means the app keeps history in the browser: send back what it last showed us.
            data.append(list(history or []) if kind == "chatbot" else default)
        return {
            "data": data,
            "fn_index": self.fn_index,
            "session_hash": session_hash,
            "event_data": None,
            "trigger_id": self.trigger_id,
        }

    def describe(self) -> dict[str, Any]:
        return {
            "api_name": self.api_name,
            "fn_index": self.fn_index,
            "inputs": list(self.input_types),
            "outputs": list(self.output_types),
            "gradio_version": self.gradio_version,
            "protocol": self.protocol,
        }


TEXT_INPUTS = ("textbox", "multimodaltextbox")


def chat_endpoint(dependencies: list[dict[str, Any]], components: dict[Any, dict[str, Any]]) -> dict[str, Any]:
    """The app's chat endpoint when it names none ``chat``: the one public endpoint that takes a message first and
    returns a chatbot, else the one that takes a message first and returns anything (a ``ChatInterface``'s API).

    Several (or none) in the best tier is a TargetError listing them: the operator names one with --api-name.
    """
    def kinds(ids: list[Any]) -> list[str]:
        return [str(components.get(i, {}).get("type", "")) for i in ids]

    public = [d for d in dependencies if d.get("api_name") and d.get("api_visibility", "public") == "public"]
    takes_text = [d for d in public if kinds(d.get("inputs") or [])[:1] in ([t] for t in TEXT_INPUTS)]
    for tier in ([d for d in takes_text if "chatbot" in kinds(d.get("outputs") or [])],
                 [d for d in takes_text if d.get("outputs")]):
        if len(tier) == 1:
            return tier[0]
        if len(tier) > 1:
            names = ", ".join(sorted(str(d["api_name"]) for d in tier))
            raise TargetError(f"several endpoints take a message and answer ({names}): name one with --api-name",
                              unreachable=False)
    listing = ", ".join(sorted(str(d["api_name"]) for d in public)) or "none"
    raise TargetError(f"no endpoint takes a message and returns a chat (public endpoints: {listing}); name one with "
                      "--api-name", unreachable=False)


async def discover(client: httpx.AsyncClient, url: str, api_name: str | None = None) -> Endpoint:
    """Find the chat dependency in the app's ``/config``: ``api_name`` when given, else ``chat``, else the one
    endpoint that takes a message and returns a chat (:func:`chat_endpoint`)."""
    base = url.rstrip("/")
    try:
        response = await client.get(f"{base}/config", timeout=15.0)
    except httpx.HTTPError as exc:
        raise TargetError(f"cannot reach {url}: {_describe_http_error(exc)}") from None
    if response.status_code != 200:
        raise TargetError(f"{url} does not serve a Gradio app: GET /config answered HTTP {response.status_code}")
    try:
        config = response.json()
        components = {c["id"]: c for c in config["components"]}
        dependencies = config["dependencies"]
    except (ValueError, KeyError, TypeError):
        raise TargetError(f"{url} does not serve a Gradio app: GET /config is not a Gradio config") from None
    named = [d for d in dependencies if d.get("api_name") and d.get("api_visibility", "public") != "private"]
    wanted = api_name or "chat"
    match = next((d for d in named if d.get("api_name") == wanted), None)
    if match is None and api_name is None:
        try:
            match = chat_endpoint(dependencies, components)
        except TargetError as exc:
            raise TargetError(f"{url}: {exc}", unreachable=False) from None
    if match is None:
        listing = ", ".join(sorted({str(d["api_name"]) for d in named})) or "none"
        raise TargetError(f"{url} has no endpoint api_name={api_name!r}; it has: {listing}", unreachable=False)
    api_name = str(match["api_name"])
    if str(config.get("protocol", "")).startswith("ws"):
        raise TargetError(f"{url} speaks Gradio's old websocket protocol; cmw loadtest needs Gradio 4 or later",
                          unreachable=False)
    if not match.get("inputs"):
        raise TargetError(f"endpoint {api_name!r} of {url} takes no input to put a message in", unreachable=False)
    inputs = tuple(match["inputs"])
    outputs = tuple(match.get("outputs") or ())
    types_in = tuple(str(components.get(i, {}).get("type", "")) for i in inputs)
    defaults = tuple(None if t == "state" else components.get(i, {}).get("props", {}).get("value") for i, t in
                     zip(inputs, types_in, strict=True))
    targets = match.get("targets") or []
    trigger = targets[0][0] if targets and isinstance(targets[0], list | tuple) and targets[0] else None
    return Endpoint(
        base_url=base,
        api_prefix=str(config.get("api_prefix") or "/gradio_api"),
        api_name=api_name,
        fn_index=int(match.get("id", dependencies.index(match))),
        trigger_id=trigger,
        input_types=types_in,
        defaults=defaults,
        output_types=tuple(str(components.get(i, {}).get("type", "")) for i in outputs),
        gradio_version=str(config.get("version", "unknown")),
        protocol=str(config.get("protocol", "unknown")),
    )


def _describe_http_error(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.ConnectError):
        return "connection refused or host not found"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    return type(exc).__name__


# --------------------------------------------------------------------------- messages and output values


def apply_diff(value: Any, edits: list[list[Any]]) -> Any:
    """Apply Gradio's streaming edits in place (gradio_client deep-copies per update, which costs CPU)."""
    for action, path, new in edits:
        if not path:
            if action == "replace":
                value = new
            elif action == "append":
                value = value + new
            else:
                raise ValueError(f"unsupported edit {action!r} at the root")
            continue
        target = value
        for part in path[:-1]:
            target = target[part]
        last = path[-1]
        if action == "replace":
            target[last] = new
        elif action == "append":
            target[last] += new
        elif action == "add":
            if isinstance(target, list):
                target.insert(int(last), new)
            else:
                target[last] = new
        elif action == "delete":
            del target[int(last) if isinstance(target, list) else last]
        else:
            raise ValueError(f"unknown edit {action!r}")
    return value


def content_text(content: Any) -> str:
    """Text of a message's content: a string, a list of parts (Gradio 6) or a single part."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(content_text(part) for part in content)
    if isinstance(content, dict):
        if isinstance(content.get("text"), str):
            return content["text"]
        if "content" in content:
            return content_text(content["content"])
    return ""


def is_history(value: Any) -> bool:
    """A list in Gradio's messages format."""
    return isinstance(value, list) and all(isinstance(m, dict) and "role" in m for m in value)


def user_texts(history: list[dict[str, Any]]) -> list[str]:
    return [content_text(m.get("content")) for m in history if m.get("role") == "user"]


def is_step(message: dict[str, Any]) -> bool:
    """An agent's tool step (a Gradio message with a metadata title), not reply text."""
    metadata = message.get("metadata")
    return isinstance(metadata, dict) and bool(metadata.get("title"))


def _last_turn(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    last_user = max((i for i, m in enumerate(history) if m.get("role") == "user"), default=-1)
    return [m for m in history[last_user + 1:] if m.get("role") == "assistant"]


def reply_of(history: list[dict[str, Any]]) -> str:
    """The assistant text after the last user message (tool steps are not the reply)."""
    return "".join(content_text(m.get("content")) for m in _last_turn(history) if not is_step(m))


def steps_of(history: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The metadata of the last turn's tool steps."""
    return [m["metadata"] for m in _last_turn(history or []) if is_step(m)]


def read_outputs(endpoint: Endpoint, outputs: list[Any]) -> tuple[str, list[dict[str, Any]] | None]:
    """(reply text, conversation or None) from an event's output values."""
    history = next((v for v in outputs if v and is_history(v)), None)
    if history is None:
        # An empty chatbot still names the history output.
        history = next((v for v, t in zip(outputs, endpoint.output_types, strict=False)
                        if t == "chatbot" and isinstance(v, list)), None)
    if history is not None:
        return reply_of(history), history
    for value in outputs:
        text = content_text(value)
        if text:
            return text, None
    return "", None


# --------------------------------------------------------------------------- one turn


ERROR_MARK = "⚠️"  # how cmw's chat ends a turn the LLM failed: a last paragraph opening with it


@dataclass
class TurnResult:
    """What one request did, with perf_counter timestamps (the engine makes them relative)."""

    t_join: float
    t_start: float | None = None
    t_first: float | None = None
    t_end: float | None = None
    growth: list[tuple[float, int]] = field(default_factory=list)  # (time, words in reply so far)
    reply: str = ""
    history: list[dict[str, Any]] | None = None
    error: str | None = None
    detail: str | None = None
    chars: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def tokens(self) -> int:
        return self.growth[-1][1] if self.growth else 0

    def gaps(self) -> list[float]:
        """Inter-token gaps: each growth's gap spread over the words it brought (one sample per word)."""
        out: list[float] = []
        if not self.growth:
            return out
        since, count = self.growth[0]
        for t, n in self.growth[1:]:
            if n > count:  # a growth inside a word adds no token: its time counts towards the next word
                out.extend([(t - since) / (n - count)] * (n - count))
                since, count = t, n
        return out


class _TurnFailed(Exception):
    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


async def run_turn(
    conn: Connection,
    endpoint: Endpoint,
    session_hash: str,
    message: str,
    *,
    history: list[dict[str, Any]] | None = None,
    timeout: float = 120.0,
) -> TurnResult:
    """Submit one message and follow its event to the end; never raises for a failed turn."""
    result = TurnResult(t_join=time.perf_counter())
    try:
        async with asyncio.timeout(timeout):
            await _follow(conn, endpoint, session_hash, message, history, result)
    except TimeoutError:
        await conn.close()  # the turn was abandoned mid-request: the connection's framing is unknown
        result.error, result.detail = TIMEOUT, f"no completion within {timeout:g}s"
    except _TurnFailed as exc:
        result.error, result.detail = exc.kind, exc.detail
    except ConnectionLost as exc:
        result.error, result.detail = DISCONNECT, str(exc)[:300]
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        # A malformed event or an edit that does not fit what we hold: the app's stream is broken, not the run.
        await conn.close()
        result.error, result.detail = APP_ERROR, f"unreadable event stream: {type(exc).__name__}: {exc}"[:300]
    last_paragraph = result.reply.rstrip().rpartition("\n")[2].lstrip()
    if result.error is None and last_paragraph.startswith(ERROR_MARK):
        # cmw writes a failed turn into the chat (the user's message stays), so the event itself succeeds.
        result.error, result.detail = APP_ERROR, last_paragraph[:300]
    if result.t_end is None:
        result.t_end = time.perf_counter()
    return result


async def _follow(
    conn: Connection,
    endpoint: Endpoint,
    session_hash: str,
    message: str,
    history: list[dict[str, Any]] | None,
    result: TurnResult,
) -> None:
    body = _dumps(endpoint.payload(message, session_hash, history))
    status, answer = await conn.post_json(f"{endpoint.api_prefix}/queue/join", body)
    if status != 200:
        detail = _detail(answer)
        if status == 503 and "full" in detail.lower():
            raise _TurnFailed(QUEUE_FULL, detail)
        if status == 503:
            raise _TurnFailed(DISCONNECT, detail)
        raise _TurnFailed(APP_ERROR, f"join answered HTTP {status}: {detail}")
    try:
        event_id = _loads(answer).get("event_id")
    except (ValueError, AttributeError):
        raise _TurnFailed(APP_ERROR, f"join answered {answer[:100]!r}, not an event id") from None
    outputs: list[Any] | None = None
    async with conn.stream(f"{endpoint.api_prefix}/queue/data", {"session_hash": session_hash}) as (code, chunks):
        if code != 200:
            raise _TurnFailed(DISCONNECT, f"event stream answered HTTP {code}")
        buffer = b""
        async for chunk in chunks:
            buffer += chunk
            while b"\n\n" in buffer:
                block, buffer = buffer.split(b"\n\n", 1)
                msg = _parse_block(block)
                if msg is None:
                    continue
                kind = msg.get("msg")
                if msg.get("event_id") not in (None, event_id):
                    continue
                now = time.perf_counter()
                if kind == "process_starts":
                    result.t_start = now
                elif kind == "process_generating":
                    if not msg.get("success", True):
                        raise _TurnFailed(APP_ERROR, _error_text(msg.get("output")))
                    data = (msg.get("output") or {}).get("data") or []
                    if outputs is None:
                        outputs = list(data)
                    else:
                        for i, edits in enumerate(data):
                            if i >= len(outputs):
                                outputs.append(None)
                            outputs[i] = apply_diff(outputs[i], edits)
                    _observe(endpoint, outputs, result, now)
                elif kind == "process_completed":
                    if not msg.get("success", False):
                        raise _TurnFailed(APP_ERROR, _error_text(msg.get("output")))
                    final = (msg.get("output") or {}).get("data")
                    if final is not None:
                        outputs = list(final)
                    _observe(endpoint, outputs or [], result, now)
                    if result.t_start is None:
                        result.t_start = now
                    result.t_end = now
                    return
                elif kind == "queue_full":
                    raise _TurnFailed(QUEUE_FULL, "queue is full")
                elif kind == "unexpected_error":
                    text = str(msg.get("message", "unexpected error"))
                    lost = msg.get("session_not_found") or "stopped" in text.lower()
                    raise _TurnFailed(DISCONNECT if lost else APP_ERROR, text[:300])
                elif kind == "close_stream":
                    raise _TurnFailed(DISCONNECT, "stream closed before the reply completed")
    raise _TurnFailed(DISCONNECT, "stream ended before the reply completed")


def _observe(endpoint: Endpoint, outputs: list[Any], result: TurnResult, now: float) -> None:
    """Record a growth of the reply text; the first one is the time to first token."""
    reply, history = read_outputs(endpoint, outputs)
    result.reply, result.history = reply, history
    if len(reply) > result.chars:
        result.chars = len(reply)
        if result.t_first is None:
            result.t_first = now
        result.growth.append((now, len(reply.split())))


def _parse_block(block: bytes) -> dict[str, Any] | None:
    for line in block.split(b"\n"):
        if line.startswith(b"data:"):
            payload = line[5:].strip()
            if not payload:
                return None
            parsed = _loads(payload)
            return parsed if isinstance(parsed, dict) else None
    return None


def _detail(answer: bytes) -> str:
    try:
        body = _loads(answer)
    except ValueError:
        return answer[:300].decode("utf-8", "replace")
    detail = body.get("detail", body) if isinstance(body, dict) else body
    return str(detail)[:300]


def _error_text(output: Any) -> str:
    if isinstance(output, dict):
        for key in ("error", "title", "message"):
            if output.get(key):
                return str(output[key])[:300]
    return "the app reported an error"
