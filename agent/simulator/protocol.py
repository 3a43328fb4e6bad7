"""The simulator's HTTP side: an asyncio protocol that parses requests, routes them, and paces replies.

Routes: ``POST /v1/chat/completions`` (SSE streaming and not), ``GET /v1/models``,
``GET /v1/models/{id}`` and ``GET /health``. It is a raw asyncio protocol (httptools parses
requests) rather than an ASGI app: during benchmarks it streams to hundreds of clients on a small
box, so each token is one timer callback and one ``transport.write`` of pre-encoded bytes, and
tokens that fall due together go out in a single write. With ``sim.capacity`` set, replies decode on
a shared virtual clock (:mod:`~agent.simulator.batch`) instead of the loop's, still one timer a reply.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import httptools

from agent.settings import SimSettings
from agent.simulator.batch import SharedRate
from agent.simulator.plan import DEFAULT_MODEL, Dice, Plan, RequestError, fault_token, parse_completion_request
from agent.simulator.wire import LAST_CHUNK, chunk, completion_body, error_body, json_head, model_card, stream_frames

MAX_BODY_BYTES = 16 * 1024 * 1024


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
    tool_calls: int = 0  # replies that are a tool call (HTTP errors aside)
    tool_results: int = 0  # text replies to a tool result
    faults: Counter[str] = field(default_factory=Counter)


class SimState:
    """What every connection of one simulator shares: settings, counters, dice and the open connections."""

    def __init__(self, settings: SimSettings):
        self.settings = settings
        self.counters = SimCounters()
        self.dice = Dice(settings)
        self.connections: set[Connection] = set()
        self._id_prefix = f"chatcmpl-sim{secrets.token_hex(4)}-"
        self._shared: SharedRate | None = None

    def shared_rate(self, loop: asyncio.AbstractEventLoop) -> SharedRate | None:
        """The clock a new reply decodes on: None without ``sim.capacity``, else the one pool all replies share.

        A new pool starts when the capacity changes (:meth:`Simulator.configure`); replies in flight keep theirs.
        """
        capacity = self.settings.capacity
        if not capacity:
            return None
        if self._shared is None or self._shared.capacity != capacity:
            self._shared = SharedRate(capacity, loop.time, loop.call_soon)
        return self._shared

    def next_id(self) -> str:
        """The id of the completion just counted."""
        return f"{self._id_prefix}{self.counters.completions:x}"


@dataclass
class _Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


class Connection(asyncio.Protocol):
    """One client connection: parses requests with httptools and answers them one at a time."""

    def __init__(self, state: SimState, loop: asyncio.AbstractEventLoop):
        self.state = state
        self.loop = loop
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
        self.state.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.connections.discard(self)
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

    # -- routes

    def _next(self) -> None:
        while self.reply is None and self.pending and self.transport is not None and not self.transport.is_closing():
            self._dispatch(self.pending.popleft())

    def _dispatch(self, req: _Request) -> None:
        counters = self.state.counters
        counters.requests += 1
        path = req.path.rstrip("/") or "/"
        if path == "/v1/chat/completions":
            if req.method != "POST":
                return self.send_json(req, 405, error_body(405, "Use POST for /v1/chat/completions."))
            try:
                plan = parse_completion_request(req.body, req.headers, self.state.settings.reply_tokens)
            except RequestError as exc:
                counters.bad_requests += 1
                return self.send_json(req, exc.status, error_body(exc.status, str(exc), exc.param))
            _Reply(self, req, plan).start()
        elif req.method != "GET":
            self.send_json(req, 405, error_body(405, f"Method {req.method} not allowed on {path}."))
        elif path == "/health":
            self.send_json(req, 200, b'{"status":"ok"}')
        elif path == "/v1/models":
            self.send_json(req, 200, json.dumps({"object": "list", "data": [model_card(DEFAULT_MODEL)]}).encode())
        elif path.startswith("/v1/models/"):
            self.send_json(req, 200, json.dumps(model_card(path.removeprefix("/v1/models/"))).encode())
        else:
            self.send_json(req, 404, error_body(404, f"Unknown path {path}."))

    # -- writing

    def send_json(self, req: _Request, status: int, body: bytes, extra: list[tuple[str, str]] | None = None) -> None:
        self.write(json_head(status, len(body), req.keep_alive, extra) + body)
        if not req.keep_alive:
            self.close()

    def _refuse(self, status: int, message: str) -> None:
        self.state.counters.bad_requests += 1
        body = error_body(status, message)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(json_head(status, len(body), keep_alive=False) + body)
            self.transport.close()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        """Close after what is buffered has been sent."""
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Cut the connection now, and the reply in flight with it (the simulator is stopping)."""
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


class _Reply:
    """One chat completion being generated: paced by timer callbacks against absolute deadlines.

    A tool call is paced like text: its events (the one naming it, then the argument pieces) are its
    tokens, so faults strike inside it as they strike inside text.

    With ``sim.capacity`` the reply joins the shared rate once its first token is out (the time to first
    token is not shared) and leaves it when it ends; ``next_at`` is then a virtual deadline.
    """

    def __init__(self, conn: Connection, req: _Request, plan: Plan):
        self.conn = conn
        self.req = req
        self.state = state = conn.state
        self.loop = conn.loop
        self.handle: asyncio.TimerHandle | None = None
        self.done = False
        counters = state.counters
        counters.completions += 1
        self.id = state.next_id()
        self.created = int(time.time())
        self.fault = state.dice.fault(plan.fault)
        if self.fault is not None:
            counters.faults[self.fault.kind] += 1
        self.plan = plan = plan.with_tool_call(state.dice.tool_call(plan))
        self.fault_at = fault_token(plan.tokens) if self.fault is not None else -1
        self.sent = 0
        self.next_at = self.loop.time() + state.dice.ttft_s()
        self.shared = state.shared_rate(self.loop)
        self.joined = False  # decoding on the shared rate: next_at is virtual
        self._due: Callable[[], None] | None = None  # what the armed timer calls, for retime()

    def start(self) -> None:
        counters = self.state.counters
        fault = self.fault
        if fault is not None and fault.kind == "error":
            status = fault.status or 500
            extra = [("retry-after", "0")] if status == 429 else []
            body = error_body(status, f"Simulated HTTP {status} (cmw sim fault injection).", code="sim_fault")
            self.done = True
            self.conn.send_json(self.req, status, body, extra)
            return
        self.conn.reply = self
        if self.plan.tool_call is not None:
            counters.tool_calls += 1
        elif self.plan.tool_result is not None:
            counters.tool_results += 1
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
        self._leave()
        counters = self.state.counters
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
            self.state.counters.client_disconnects += 1
        self._finish(completed=False)

    def _cut(self) -> None:
        """Drop the connection mid-reply: the client sees a body that never completes."""
        self.handle = None
        self._finish(completed=False)
        self.conn.reply = None
        self.conn.close()

    def _stall(self) -> None:
        """Go silent, then drop the connection; a silent reply takes no share of the rate."""
        self._leave()
        self.handle = self.loop.call_later(self.state.settings.stall_s, self._cut)

    # -- the shared rate (sim.capacity)

    def _join(self, exact: bool = False) -> float:
        """Start decoding on the shared rate; returns virtual now."""
        assert self.shared is not None
        self.joined = True
        return self.shared.join(self, exact=exact)

    def _leave(self) -> None:
        if self.joined and self.shared is not None:
            self.joined = False
            self._due = None
            self.shared.leave(self)

    def _arm(self, due: Callable[[], None]) -> None:
        """Arm the timer for ``next_at`` (virtual once joined)."""
        self._due = due
        shared = self.shared
        at = shared.real_time(self.next_at) if self.joined and shared is not None else self.next_at
        self.handle = self.loop.call_at(at, due)

    def retime(self) -> None:
        """The shared speed changed: re-arm the pending timer for the same virtual deadline."""
        if self.handle is not None and self._due is not None and self.joined:
            self.handle.cancel()
            self._arm(self._due)

    # -- non-streaming: one body after the whole reply's time

    def _start_whole(self) -> None:
        at = self.next_at
        for _ in range(self.plan.tokens - 1):  # drawn even for a stall, so the seeded sequence does not depend on it
            at += self.state.dice.gap_s()
        if self.fault is not None and self.fault.kind == "stall":
            self._stall()
        elif self.shared is None:
            self.handle = self.loop.call_at(at, self._send_whole)
        else:
            self.work = at - self.next_at  # seconds of decoding at full speed, after the first token
            self.handle = self.loop.call_at(self.next_at, self._join_whole)

    def _join_whole(self) -> None:
        """The first token is due: decode the rest at the shared rate, re-armed on every change of speed."""
        self.handle = None
        if self.plan.tokens <= 1:
            return self._send_whole()
        self.next_at = self._join(exact=True) + self.work
        self._arm(self._whole_due)

    def _whole_due(self) -> None:
        self.handle = None
        if self.shared is not None and not self.shared.due(self.next_at):
            return self._arm(self._whole_due)
        self._send_whole()

    def _send_whole(self) -> None:
        self.handle = None
        body = completion_body(self.plan, self.id, self.created)
        kind = self.fault.kind if self.fault is not None else None
        head = json_head(200, len(body), self.req.keep_alive)
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
        self.frames = stream_frames(self.plan, self.id, self.created, self.req.keep_alive)
        self.conn.write(self.frames.head)
        self.handle = self.loop.call_at(self.next_at, self._tick)

    def _tick(self) -> None:
        """Send every token now due (usually one) in one write, then wait for the next deadline."""
        self.handle = None
        if self.joined:
            shared = self.shared
            assert shared is not None
            if not shared.due(self.next_at, 1 / self.state.settings.tokens_per_second):
                return self._arm(self._tick)  # armed before the shared rate fell
            now = shared.now()
        else:
            now = self.loop.time()
        out: list[bytes] = []
        n = self.plan.tokens
        while True:
            i = self.sent
            if i == self.fault_at:
                kind = self.fault.kind  # type: ignore[union-attr]
                if kind == "malformed":
                    out.append(self.frames.malformed)
                    self.fault_at = -1
                    continue
                if out:
                    self.conn.write(chunk(b"".join(out)))
                if kind == "disconnect":
                    self._cut()
                else:
                    self._stall()
                return
            if i == n:
                out.append(self.frames.tail)
                self.conn.write(chunk(b"".join(out)) + LAST_CHUNK)
                self._finish(completed=True)
                self.conn.reply_done(self.req.keep_alive)
                return
            out.append(self.frames.token(i))
            self.sent = i + 1
            if self.sent < n:
                if i == 0 and self.shared is not None:  # decoding starts: from now on the clock is shared
                    now = self.next_at = self._join()
                self.next_at += self.state.dice.gap_s()
                if self.next_at > now:
                    break
        self.conn.write(chunk(b"".join(out)))
        if self.joined:
            self._arm(self._tick)
        else:
            self.handle = self.loop.call_at(self.next_at, self._tick)
