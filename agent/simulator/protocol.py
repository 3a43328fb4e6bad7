"""The embedded OpenAI-compatible simulator: a real HTTP server standing in for an LLM.

It serves ``POST /v1/chat/completions`` (SSE streaming and not), ``GET /v1/models`` and
``GET /health`` on loopback, with a latency model (time to first token, tokens/s, reply length,
jitter) and fault injection (HTTP errors, cut streams, stalls, malformed chunks) from
:class:`agent.settings.SimSettings`. Every reply opens with
:func:`agent.fingerprints.reply_header` of the user turns it received, so a client can prove
which history the "LLM" saw.

It is a raw asyncio protocol (httptools parses requests) rather than an ASGI app: during
benchmarks it streams to hundreds of clients on a small box, so each token is one timer callback
and one ``transport.write`` of pre-encoded bytes, and tokens that fall due together go out in a
single write.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import secrets
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import httptools

from agent.fingerprints import reply_header
from agent.settings import Settings, SimSettings

DEFAULT_MODEL = "cmw-sim"
FAULT_HEADER = "x-sim-fault"
# A model name may carry a forced fault too, e.g. "cmw-sim@disconnect" or "cmw-sim@error:429",
# so a client that cannot set headers (a chat UI's model box) can still pick one.
MODEL_FAULT_SEP = "@"
FAULT_KINDS = ("error", "disconnect", "stall", "malformed")
MAX_BODY_BYTES = 16 * 1024 * 1024

_FILLER = (
    "lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit", "sed", "do", "eiusmod", "tempor",
    "incididunt", "ut", "labore", "et", "dolore", "magna", "aliqua", "ut", "enim", "ad", "minim", "veniam", "quis",
    "nostrud", "exercitation", "ullamco", "laboris", "nisi", "ut", "aliquip", "ex", "ea", "commodo",
)
# Filler tokens never change, so their JSON string literals are encoded once.
_FILLER_JSON = [json.dumps(" " + word).encode() for word in _FILLER]
_MALFORMED_EVENT = b'data: {"id": "chatcmpl-malformed", "choices": [{"delta": {"content": \n\n'
_DONE_EVENT = b"data: [DONE]\n\n"
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def nominal_reply_s(sim: SimSettings) -> float:
    """Seconds a reply takes without jitter: the simulator's single-user service time."""
    return sim.ttft_ms / 1000 + (sim.reply_tokens - 1) / sim.tokens_per_second


def reply_text(user_texts: list[str], tokens: int) -> str:
    """The full reply to a conversation with these user turns, as streamed token by token."""
    return reply_header(user_texts) + "".join(" " + _FILLER[i % len(_FILLER)] for i in range(tokens - 1))


@dataclass(frozen=True)
class Fault:
    """One injected fault: its kind, and for ``error`` the HTTP status (None = pick from settings)."""

    kind: str
    status: int | None = None

    @classmethod
    def parse(cls, spec: str) -> Fault | None:
        """``error``, ``error:503``, ``disconnect``, ``stall``, ``malformed`` or ``none``; ValueError otherwise."""
        kind, _, arg = spec.strip().lower().partition(":")
        if kind == "none" and not arg:
            return None
        if kind not in FAULT_KINDS or (arg and kind != "error"):
            raise ValueError(f"unknown fault {spec!r}; allowed: none, {', '.join(FAULT_KINDS)}, error:<status>")
        if not arg:
            return cls(kind)
        if not arg.isdigit() or not 400 <= int(arg) < 600:
            raise ValueError(f"fault {spec!r}: the status must be 400-599")
        return cls(kind, int(arg))


# Sentinel: no fault was forced, so the settings' rates decide.
_NOT_FORCED = Fault("unforced")


@dataclass
class SimCounters:
    """What the simulator has done so far; tests and the app read it (from any thread)."""

    requests: int = 0
    completions: int = 0
    active_requests: int = 0
    active_streams: int = 0
    peak_active_requests: int = 0
    completed: int = 0
    bad_requests: int = 0
    client_disconnects: int = 0
    faults: Counter[str] = field(default_factory=Counter)


class RequestError(Exception):
    """A request the simulator refuses with an OpenAI-style error body."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.param = param


@dataclass
class _Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


@dataclass
class _Plan:
    """Everything a completion needs, decided when the request arrives."""

    model: str
    user_texts: list[str]
    prompt_tokens: int
    tokens: int
    finish_reason: str
    stream: bool
    include_usage: bool
    fault: Fault | None


def parse_completion_request(body: bytes, headers: dict[str, str], reply_tokens: int) -> _Plan:
    """Validate a chat completion request the way OpenAI does; RequestError names what is wrong."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(400, f"We could not parse the JSON body of your request: {exc}") from None
    if not isinstance(data, dict):
        raise RequestError(400, "The request body must be a JSON object.")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' is required and must be a non-empty array.", "messages")
    user_texts: list[str] = []
    words = 0
    for n, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise RequestError(400, f"messages[{n}] must be an object with a string 'role'.", f"messages[{n}]")
        text = _content_text(message.get("content"), n)
        words += len(text.split()) + 4  # a few tokens of per-message framing, as real tokenizers add
        if message["role"] == "user":
            user_texts.append(text)
    model = data.get("model", DEFAULT_MODEL)
    if not isinstance(model, str) or not model:
        raise RequestError(400, "'model' must be a non-empty string.", "model")
    stream = data.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise RequestError(400, "'stream' must be a boolean.", "stream")
    options = data.get("stream_options") or {}
    if not isinstance(options, dict):
        raise RequestError(400, "'stream_options' must be an object.", "stream_options")
    tokens, finish = reply_tokens, "stop"
    for name in ("max_completion_tokens", "max_tokens"):
        cap = data.get(name)
        if cap is None:
            continue
        if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
            raise RequestError(400, f"'{name}' must be a positive integer.", name)
        if cap < tokens:
            tokens, finish = cap, "length"
    fault_spec = headers.get(FAULT_HEADER)
    if fault_spec is None and MODEL_FAULT_SEP in model:
        fault_spec = model.rpartition(MODEL_FAULT_SEP)[2]
    try:
        fault = Fault.parse(fault_spec) if fault_spec is not None else None
    except ValueError as exc:
        raise RequestError(400, str(exc), FAULT_HEADER) from None
    return _Plan(
        model=model,
        user_texts=user_texts,
        prompt_tokens=words,
        tokens=tokens,
        finish_reason=finish,
        stream=bool(stream),
        include_usage=bool(options.get("include_usage")),
        fault=fault if fault_spec is not None else _NOT_FORCED,
    )


def _content_text(content: Any, n: int) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "\n".join(parts)
    raise RequestError(400, f"messages[{n}].content must be a string or an array of parts.", f"messages[{n}].content")


def _error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> bytes:
    kind = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return json.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}}).encode()


def _response_head(status: int, headers: list[tuple[str, str]], keep_alive: bool) -> bytes:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    lines = [f"HTTP/1.1 {status} {reason}", "server: cmw-sim"]
    lines += [f"{name}: {value}" for name, value in headers]
    if not keep_alive:
        lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class Simulator:
    """The simulator server; start it inside a running event loop, or use :func:`running_simulator`."""

    def __init__(self, settings: SimSettings | Settings | None = None, *, host: str | None = None,
                 port: int | None = None):
        sim = settings.sim if isinstance(settings, Settings) else settings or SimSettings()
        self.settings = sim
        self.host = host if host is not None else sim.host
        self.port = port if port is not None else sim.port
        self.counters = SimCounters()
        self._rng = random.Random(sim.seed)
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._id_prefix = f"chatcmpl-sim{secrets.token_hex(4)}-"
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def base_url(self) -> str:
        """The OpenAI base URL clients are given, ending in ``/v1``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    async def start(self) -> None:
        """Bind and start serving; with port 0 the chosen port is in ``.port`` afterwards."""
        self._loop = asyncio.get_running_loop()
        self._server = await self._loop.create_server(lambda: _Connection(self), self.host, self.port, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and drop every open connection (streams in flight are cut)."""
        if self._server is None:
            return
        self._server.close()
        for conn in list(self._connections):
            conn.abort()
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- what each request gets; draws happen in arrival order so a seeded run repeats

    def _choose_fault(self, forced: Fault | None) -> Fault | None:
        if forced is not _NOT_FORCED:
            fault = forced
        else:
            s = self.settings
            # One draw split into consecutive bands, so each rate is exactly that share of requests.
            u = self._rng.random()
            fault = None
            for kind, rate in (("error", s.error_rate), ("disconnect", s.disconnect_rate),
                               ("stall", s.stall_rate), ("malformed", s.malformed_rate)):
                if u < rate:
                    fault = Fault(kind)
                    break
                u -= rate
        if fault is not None and fault.kind == "error" and fault.status is None:
            fault = Fault("error", self._rng.choice(self.settings.error_statuses))
        return fault

    def _factor(self) -> float:
        jitter = self.settings.jitter
        return 1.0 + jitter * (2.0 * self._rng.random() - 1.0) if jitter else 1.0

    def _next_id(self) -> str:
        return f"{self._id_prefix}{self.counters.completions:x}"


class _Connection(asyncio.Protocol):
    """One client connection: parses requests with httptools and answers them one at a time."""

    def __init__(self, sim: Simulator):
        self.sim = sim
        self.loop = sim._loop or asyncio.get_event_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.pending: deque[_Request] = deque()
        self.reply: _Reply | None = None
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._body_size = 0

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.sim._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.sim._connections.discard(self)
        self.pending.clear()
        if self.reply is not None:
            self.reply.cancel(by_client=True)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(400, "Protocol upgrades are not supported.")
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, RequestError):  # raised by one of our callbacks
                self._refuse(exc.__context__.status, str(exc.__context__))
            else:
                self._refuse(400, f"Malformed HTTP request: {exc}")

    # -- httptools callbacks

    def on_message_begin(self) -> None:
        self._url, self._headers, self._body, self._body_size = b"", {}, [], 0

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > MAX_BODY_BYTES:
            raise RequestError(413, f"Request body exceeds {MAX_BODY_BYTES} bytes.")
        self._body.append(body)

    def on_message_complete(self) -> None:
        path = httptools.parse_url(self._url).path.decode("latin-1") if self._url else "/"
        self.pending.append(_Request(
            self.parser.get_method().decode("latin-1"), path, self._headers, b"".join(self._body),
            self.parser.should_keep_alive(),
        ))
        if self.reply is None:
            self._next()

    # -- responses

    def _next(self) -> None:
        while self.reply is None and self.pending and self.transport is not None and not self.transport.is_closing():
            self._dispatch(self.pending.popleft())

    def _dispatch(self, req: _Request) -> None:
        counters = self.sim.counters
        counters.requests += 1
        path = req.path.rstrip("/") or "/"
        if path == "/v1/chat/completions":
            if req.method != "POST":
                return self._json(req, 405, _error_body(405, "Use POST for /v1/chat/completions."))
            try:
                plan = parse_completion_request(req.body, req.headers, self.sim.settings.reply_tokens)
            except RequestError as exc:
                counters.bad_requests += 1
                return self._json(req, exc.status, _error_body(exc.status, str(exc), exc.param))
            _Reply(self, req, plan).start()
        elif req.method != "GET":
            self._json(req, 405, _error_body(405, f"Method {req.method} not allowed on {path}."))
        elif path == "/health":
            self._json(req, 200, b'{"status":"ok"}')
        elif path == "/v1/models":
            self._json(req, 200, json.dumps({"object": "list", "data": [_model_card(DEFAULT_MODEL)]}).encode())
        elif path.startswith("/v1/models/"):
            self._json(req, 200, json.dumps(_model_card(path.removeprefix("/v1/models/"))).encode())
        else:
            self._json(req, 404, _error_body(404, f"Unknown path {path}."))

    def _json(self, req: _Request, status: int, body: bytes, extra: list[tuple[str, str]] | None = None) -> None:
        headers = [("content-type", "application/json"), ("content-length", str(len(body))), *(extra or [])]
        self.write(_response_head(status, headers, req.keep_alive) + body)
        if not req.keep_alive:
            self.close()

    def _refuse(self, status: int, message: str) -> None:
        self.sim.counters.bad_requests += 1
        body = _error_body(status, message)
        if self.transport is not None and not self.transport.is_closing():
            head = _response_head(status, [("content-type", "application/json"),
                                           ("content-length", str(len(body)))], keep_alive=False)
            self.transport.write(head + body)
            self.transport.close()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        """Close after what is buffered has been sent."""
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.reply is not None:
            self.reply.cancel(by_client=False)
            self.reply = None
        if self.transport is not None:
            self.transport.abort()

    def reply_done(self, keep_alive: bool) -> None:
        self.reply = None
        if keep_alive:
            self._next()
        else:
            self.close()


def _model_card(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 1_700_000_000, "owned_by": "cmw-sim"}


class _Reply:
    """One chat completion being generated: paced by timer callbacks against absolute deadlines."""

    def __init__(self, conn: _Connection, req: _Request, plan: _Plan):
        self.conn = conn
        self.req = req
        self.plan = plan
        self.sim = sim = conn.sim
        self.loop = conn.loop
        self.handle: asyncio.TimerHandle | None = None
        self.done = False
        counters = sim.counters
        counters.completions += 1
        self.id = sim._next_id()
        self.created = int(time.time())
        self.fault = sim._choose_fault(plan.fault)
        if self.fault is not None:
            counters.faults[self.fault.kind] += 1
        # The fault strikes after half the reply (always after the first token, so TTFT is seen).
        self.fault_at = max(1, plan.tokens // 2) if self.fault is not None else -1
        self.sent = 0
        settings = sim.settings
        self.interval = 1.0 / settings.tokens_per_second
        self.next_at = self.loop.time() + settings.ttft_ms / 1000 * sim._factor()

    def start(self) -> None:
        counters = self.sim.counters
        fault = self.fault
        if fault is not None and fault.kind == "error":
            status = fault.status or 500
            extra = [("retry-after", "0")] if status == 429 else []
            body = _error_body(status, f"Simulated HTTP {status} (cmw sim fault injection).", code="sim_fault")
            self.done = True
            self.conn._json(self.req, status, body, extra)
            return
        self.conn.reply = self
        counters.active_requests += 1
        counters.peak_active_requests = max(counters.peak_active_requests, counters.active_requests)
        if self.plan.stream:
            counters.active_streams += 1
            self._start_stream()
        else:
            self._start_whole()

    def _finish(self, completed: bool) -> None:
        if self.done:
            return
        self.done = True
        counters = self.sim.counters
        counters.active_requests -= 1
        if self.plan.stream:
            counters.active_streams -= 1
        if completed:
            counters.completed += 1

    def cancel(self, by_client: bool) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        if by_client and not self.done:
            self.sim.counters.client_disconnects += 1
        self._finish(completed=False)

    def _cut(self) -> None:
        """Drop the connection mid-reply: the client sees a body that never completes."""
        self.handle = None
        self._finish(completed=False)
        self.conn.reply = None
        self.conn.close()

    def _usage(self) -> dict[str, int]:
        p, c = self.plan.prompt_tokens, self.plan.tokens
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    # -- non-streaming: one body after the whole reply's time

    def _start_whole(self) -> None:
        at = self.next_at
        for _ in range(self.plan.tokens - 1):
            at += self.interval * self.sim._factor()
        kind = self.fault.kind if self.fault is not None else None
        if kind == "stall":
            self.handle = self.loop.call_later(self.sim.settings.stall_s, self._cut)
        else:
            self.handle = self.loop.call_at(at, self._send_whole)

    def _send_whole(self) -> None:
        self.handle = None
        plan = self.plan
        body = json.dumps({
            "id": self.id, "object": "chat.completion", "created": self.created, "model": plan.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": reply_text(plan.user_texts, plan.tokens),
                            "refusal": None, "annotations": []},
                "logprobs": None, "finish_reason": plan.finish_reason,
            }],
            "usage": self._usage(), "system_fingerprint": None,
        }).encode()
        kind = self.fault.kind if self.fault is not None else None
        head = _response_head(200, [("content-type", "application/json"), ("content-length", str(len(body)))],
                              self.req.keep_alive)
        if kind == "disconnect":
            self.conn.write(head + body[: len(body) // 2])
            self._cut()
            return
        if kind == "malformed":
            body = body[: len(body) // 2] + b" " * (len(body) - len(body) // 2)
        self.conn.write(head + body)
        self._finish(completed=True)
        self.conn.reply_done(self.req.keep_alive)

    # -- streaming: one SSE event per token

    def _start_stream(self) -> None:
        plan = self.plan
        model = json.dumps(plan.model)
        base = f'{{"id":"{self.id}","object":"chat.completion.chunk","created":{self.created},"model":{model},' \
               f'"system_fingerprint":null,"choices":['
        usage_null = ',"usage":null' if plan.include_usage else ""
        self.prefix = (f'data: {base}{{"index":0,"delta":{{"content":').encode()
        self.suffix = (f'}},"logprobs":null,"finish_reason":null}}]{usage_null}}}\n\n').encode()
        first = json.dumps(reply_header(plan.user_texts)).encode()
        self.first = (f'data: {base}{{"index":0,"delta":{{"role":"assistant","content":').encode() + first + self.suffix
        tail = f'data: {base}{{"index":0,"delta":{{}},"logprobs":null,"finish_reason":"{plan.finish_reason}"}}]' \
               f'{usage_null}}}\n\n'
        if plan.include_usage:
            tail += f"data: {base}],\"usage\":{json.dumps(self._usage())}}}\n\n"
        self.tail = tail.encode() + _DONE_EVENT
        head = _response_head(200, [("content-type", "text/event-stream; charset=utf-8"),
                                    ("cache-control", "no-cache"), ("transfer-encoding", "chunked"),
                                    ("x-request-id", self.id)], self.req.keep_alive)
        self.conn.write(head)
        self.handle = self.loop.call_at(self.next_at, self._tick)

    def _tick(self) -> None:
        """Send every token now due (usually one) in one write, then wait for the next deadline."""
        self.handle = None
        now = self.loop.time()
        out: list[bytes] = []
        n = self.plan.tokens
        while True:
            i = self.sent
            if i == self.fault_at:
                kind = self.fault.kind  # type: ignore[union-attr]
                if kind == "malformed":
                    out.append(_MALFORMED_EVENT)
                    self.fault_at = -1
                    continue
                if out:
                    self._write_chunk(b"".join(out))
                if kind == "disconnect":
                    self._cut()
                else:  # stall: silence, then the connection drops
                    self.handle = self.loop.call_later(self.sim.settings.stall_s, self._cut)
                return
            if i == n:
                out.append(self.tail)
                payload = b"".join(out)
                self.conn.write(b"%x\r\n%b\r\n0\r\n\r\n" % (len(payload), payload))
                self._finish(completed=True)
                self.conn.reply_done(self.req.keep_alive)
                return
            out.append(self.first if i == 0 else self.prefix + _FILLER_JSON[(i - 1) % len(_FILLER_JSON)] + self.suffix)
            self.sent = i + 1
            if self.sent < n:
                self.next_at += self.interval * self.sim._factor()
                if self.next_at > now:
                    break
        self._write_chunk(b"".join(out))
        self.handle = self.loop.call_at(self.next_at, self._tick)

    def _write_chunk(self, payload: bytes) -> None:
        self.conn.write(b"%x\r\n%b\r\n" % (len(payload), payload))


# --------------------------------------------------------------------------- running it


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return asyncio.new_event_loop
    return uvloop.new_event_loop


@contextlib.contextmanager
def running_simulator(settings: SimSettings | Settings | None = None, *, host: str | None = None,
                      port: int | None = None) -> Iterator[Simulator]:
    """Run a simulator on its own event loop in a background thread for the duration of the block.

    This is how the app starts it: the app's loop never spends time on the simulator's timers.
    """
    sim = Simulator(settings, host=host, port=port)
    ready = threading.Event()
    failure: list[BaseException] = []
    stop_box: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    async def main() -> None:
        stop = asyncio.Event()
        try:
            await sim.start()
        except BaseException as exc:
            failure.append(exc)
            ready.set()
            return
        stop_box.append((asyncio.get_running_loop(), stop))
        ready.set()
        await stop.wait()
        await sim.stop()

    def run() -> None:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(main())

    thread = threading.Thread(target=run, name="cmw-sim", daemon=True)
    thread.start()
    ready.wait()
    if failure:
        thread.join()
        raise failure[0]
    try:
        yield sim
    finally:
        loop, stop = stop_box[0]
        loop.call_soon_threadsafe(stop.set)
        thread.join()


def serve(settings: SimSettings | Settings | None = None, *, host: str | None = None, port: int | None = None,
          on_ready: Callable[[Simulator], None] | None = None) -> None:
    """Run a simulator in the foreground until SIGINT or SIGTERM (what ``cmw sim`` does)."""
    sim = Simulator(settings, host=host, port=port)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await sim.start()
        try:
            if on_ready is not None:
                on_ready(sim)
            await stop.wait()
        finally:
            await sim.stop()

    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(main())


@dataclass
class SimulatorProcess:
    """A simulator running in a child process: its URL and the process, for ``cmw serve``."""

    base_url: str
    pid: int


def _child_main(sim_settings: dict[str, Any], conn: Any) -> None:
    """Child process: serve until the parent says stop or goes away (its end of the pipe closes)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in a terminal is the parent's to handle
    sim = Simulator(SimSettings(**sim_settings))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        try:
            await sim.start()
        except OSError as exc:
            conn.send(("error", str(exc)))
            return
        conn.send(("ready", sim.base_url))
        loop.add_reader(conn.fileno(), stop.set)  # readable = a message or EOF: either way, stop
        await stop.wait()
        await sim.stop()

    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(main())


@contextlib.contextmanager
def simulator_process(settings: SimSettings, start_timeout: float = 30.0) -> Iterator[SimulatorProcess]:
    """Run the simulator in its own process for the duration of the block.

    ``cmw serve`` uses this rather than a thread: the simulator's timers and writes then never take
    the GIL from the app's event loop. The child exits on its own if this process dies (kill -9).
    """
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    parent_end, child_end = ctx.Pipe()
    proc = ctx.Process(target=_child_main, args=(settings.model_dump(), child_end), name="cmw-sim", daemon=True)
    proc.start()
    child_end.close()
    try:
        if not parent_end.poll(start_timeout):
            raise OSError(f"the simulator did not start within {start_timeout:g} s")
        kind, value = parent_end.recv()
        if kind != "ready":
            raise OSError(f"the simulator could not start: {value}")
        yield SimulatorProcess(value, proc.pid or 0)
    finally:
        parent_end.close()
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
