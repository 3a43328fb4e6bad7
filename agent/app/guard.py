"""The HTTP edge: bodies capped, new sessions and messages rate-limited, a client's mistake one log line.

:class:`RequestGuard` is ASGI middleware in front of Gradio. It reads the body of every queue join and
``/gradio_api/call`` request itself, up to ``server.max_request_bytes``, so a refused request is answered
(413 too large, 429 too many, 422 not an event of this app) before Gradio parses or queues anything; an
accepted body is handed to Gradio unchanged. Uploads (``/gradio_api/upload``) are capped in bytes and in
files while they stream, without buffering: Gradio's own multipart parser stops at the first part too many
and deletes what it had written.

Rate limits are token buckets of ``rate_limits.*`` per minute (a full minute's worth may come at once):
new sessions per client address (a session hash not seen before; a ``/call`` without one is a new session
each time, as Gradio makes one up), chat messages per client address, and chat messages per session. The
client address is what uvicorn puts in the ASGI scope: the peer, or the ``X-Forwarded-For`` client when the
peer is one of ``server.trusted_proxies`` (uvicorn's ``forwarded_allow_ips``). IPv6 clients are counted per
/64, the block one subscriber usually holds. Clients on loopback are exempt by default
(``rate_limits.exempt_loopback``): they are this host's own tools (``cmw loadtest``, ``smoke``, benches)
or a proxy on this host, which must then be a trusted proxy so its clients are told apart.

Every structure here is bounded (:data:`MAX_TRACKED` keys, least recently used dropped first): dropping a
key only forgets that it was seen, so the worst a flood of addresses or hashes achieves is a fresh bucket.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson

from agent.settings import Settings

log = logging.getLogger("cmw.guard")

JOIN = re.compile(r"/gradio_api/queue/join/?$")
CALL = re.compile(r"/gradio_api/call/(?:v2/)?(?P<api_name>[^/]+)/?$")
UPLOAD = re.compile(r"/gradio_api/upload/?$")
MAX_TRACKED = 50_000
MULTIPART_SLACK = 16_384  # a part's headers and delimiters on top of its file's bytes
LOG_EVERY_S = 10.0

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class RateLimiter:
    """``per_minute`` events per key and minute, a minute's worth at once; 0 = unlimited."""

    def __init__(self, per_minute: int, max_keys: int = MAX_TRACKED, clock: Callable[[], float] = time.monotonic):
        self.per_minute = per_minute
        self.rate = per_minute / 60.0
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key → (tokens, at)

    def _tokens(self, key: str, now: float) -> float:
        tokens, at = self._buckets.get(key, (float(self.per_minute), now))
        return min(float(self.per_minute), tokens + (now - at) * self.rate)

    def wait_s(self, key: str) -> float:
        """Seconds until ``key`` may go again; 0 when it may now."""
        if not self.per_minute:
            return 0.0
        missing = 1.0 - self._tokens(key, self.clock())
        return 0.0 if missing <= 0 else missing / self.rate

    def take(self, key: str) -> None:
        if not self.per_minute:
            return
        now = self.clock()
        self._buckets[key] = (self._tokens(key, now) - 1.0, now)
        self._buckets.move_to_end(key)
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)


class SeenSessions:
    """Session hashes seen lately, at most ``max_keys`` (the least recently used forgotten first)."""

    def __init__(self, max_keys: int = MAX_TRACKED):
        self.max_keys = max_keys
        self._seen: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, session_hash: str) -> bool:
        if session_hash in self._seen:
            self._seen.move_to_end(session_hash)
            return True
        return False

    def add(self, session_hash: str) -> None:
        self._seen[session_hash] = None
        if len(self._seen) > self.max_keys:
            self._seen.popitem(last=False)

    def __len__(self) -> int:
        return len(self._seen)


@lru_cache(maxsize=4096)
def client_key(host: str) -> tuple[str, bool]:
    """(the key a client address is limited under, whether it is loopback): IPv6 per /64."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host[:100], False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if isinstance(address, ipaddress.IPv6Address) and not address.is_loopback:
        return str(ipaddress.IPv6Network(f"{address}/64", strict=False)), False
    return str(address), address.is_loopback


@dataclass(frozen=True)
class Refusal:
    status: int
    reason: str  # the metrics label and the log's word for it
    detail: str  # shown to the client (the Gradio front end shows it in the chat)
    retry_after_s: float = 0.0


class _ClientGone(Exception):
    """The client disconnected while its body was being read: nothing to answer."""


class RequestGuard:
    """ASGI middleware: see the module docstring."""

    def __init__(
        self,
        app: Any,
        *,
        settings: Settings,
        fns: Mapping[int, Any],
        message_api_names: frozenset[str] = frozenset({"chat"}),
        on_refused: Callable[[str], None] | None = None,
        skip_prefix: str | None = None,
    ):
        self.app = app
        self.skip_prefix = skip_prefix  # a mounted app with its own events (the dashboard), guarded by its own gate
        self.max_body = settings.server.max_request_bytes
        self.max_files = settings.sessions.max_files_per_upload
        self.max_upload = self.max_files * (settings.sessions.max_upload_bytes + MULTIPART_SLACK)
        limits = settings.rate_limits
        self.exempt_loopback = limits.exempt_loopback
        self.new_sessions = RateLimiter(limits.new_sessions_per_minute)
        self.client_messages = RateLimiter(limits.messages_per_minute)
        self.session_messages = RateLimiter(limits.session_messages_per_minute)
        self.seen = SeenSessions()
        self.fns = fns
        self.message_api_names = message_api_names
        self.on_refused = on_refused
        self._last_logged: dict[str, tuple[float, int]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (self.skip_prefix and scope["path"].startswith(self.skip_prefix)):
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        try:
            if scope["method"] == "POST":
                call = CALL.search(path)
                if call is not None or JOIN.search(path):
                    await self._queue_request(scope, receive, send, call["api_name"] if call else None)
                    return
                if UPLOAD.search(path):
                    await self.app(scope, self._counted_upload(scope, receive), send)
                    return
            await self.app(scope, receive, send)
        except RuntimeError as exc:
            # Starlette's word for an HTTPException raised after a streamed response began: Gradio's event
            # stream refuses an unknown session hash that way. The client already has its answer.
            if not _http_exception_after_start(exc):
                raise
            self._log("late_refusal", scope, f"{exc.__cause__}")
            with contextlib.suppress(OSError, RuntimeError):  # end the stream; the client may be gone already
                await send({"type": "http.response.body", "body": b"", "more_body": False})

    # ------------------------------------------------------------------ queue joins and /call

    async def _queue_request(self, scope: Scope, receive: Receive, send: Send, api_name: str | None) -> None:
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body:
            await self._refuse(scope, send, self._too_large(declared))
            return
        try:
            body = await _read_body(receive, self.max_body)
        except _ClientGone:
            return
        if body is None:
            await self._refuse(scope, send, self._too_large(None))
            return
        refusal = self._check(scope, body, api_name)
        if refusal is not None:
            await self._refuse(scope, send, refusal)
            return
        await self.app(scope, _replay(body, receive), send)

    def _too_large(self, size: int | None) -> Refusal:
        told = f"{size:,} bytes is" if size is not None else "it is"
        return Refusal(413, "body_too_large", f"The request is too large: {told} over the {self.max_body:,}-byte "
                       "limit (server.max_request_bytes).")

    def _check(self, scope: Scope, body: bytes, api_name: str | None) -> Refusal | None:
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None  # Gradio answers malformed JSON itself (422), quietly
        if not isinstance(payload, dict):
            return None
        session_hash = payload.get("session_hash")
        session_hash = session_hash if isinstance(session_hash, str) else None
        if api_name is None:
            fn_index = payload.get("fn_index")
            fn = self.fns.get(fn_index) if type(fn_index) is int else None
            if fn is None:
                return Refusal(422, "unknown_event", f"fn_index {_shown(fn_index)} is not an event of this app.")
        else:
            fn = next((f for f in self.fns.values() if f.api_name == api_name), None)
            if fn is None:
                return Refusal(404, "unknown_event", f"This app has no endpoint named {_shown(api_name)}.")
        data = payload.get("data")
        if isinstance(data, list) and len(data) < len(fn.inputs):
            return Refusal(422, "missing_inputs", f"This event takes {len(fn.inputs)} input value(s); "
                           f"the request has {len(data)}.")
        is_message = fn.api_name in self.message_api_names
        return self._rate_limit(scope, session_hash, is_message)

    def _rate_limit(self, scope: Scope, session_hash: str | None, is_message: bool) -> Refusal | None:
        client, loopback = client_key((scope.get("client") or ("",))[0] or "")
        if loopback and self.exempt_loopback:
            return None
        new = session_hash is None or session_hash not in self.seen
        checks: list[tuple[RateLimiter, str, str, str]] = []
        if new:
            checks.append((self.new_sessions, client, "rate_new_sessions", "Too many new sessions from your address"))
        if is_message:
            checks.append((self.client_messages, client, "rate_messages", "Too many messages from your address"))
            if session_hash is not None:
                checks.append((self.session_messages, session_hash, "rate_session_messages",
                               "You are sending messages too fast"))
        for limiter, key, reason, what in checks:
            wait = limiter.wait_s(key)
            if wait > 0:
                seconds = max(1, math.ceil(wait))
                return Refusal(429, reason, f"{what} (limit {limiter.per_minute:,} a minute); try again in "
                               f"{seconds} s.", seconds)
        for limiter, key, _reason, _what in checks:
            limiter.take(key)
        if new and session_hash is not None:
            self.seen.add(session_hash)
        return None

    # ------------------------------------------------------------------ uploads

    def _counted_upload(self, scope: Scope, receive: Receive) -> Receive:
        """``receive`` that stops an upload at its first byte or part over the caps, via Gradio's own error."""
        declared = _content_length(scope)
        boundary = _boundary(scope)
        delimiter = b"--" + boundary if boundary else None
        state = {"bytes": 0, "delimiters": 0, "tail": b""}

        async def counted() -> dict[str, Any]:
            from agent.app.gradio_compat import upload_refusal

            message = await receive()
            chunk = message.get("body", b"") if message["type"] == "http.request" else b""
            state["bytes"] += len(chunk)
            if (declared or 0) > self.max_upload or state["bytes"] > self.max_upload:
                self._log("upload_too_large", scope, f"upload over {self.max_upload:,} bytes")
                # Gradio answers this message with 413 and deletes the files it had begun.
                raise upload_refusal(f"The upload is over the maximum allowed size of {self.max_upload:,} "
                                         f"bytes ({self.max_files} files of sessions.max_upload_bytes).")
            if delimiter is not None and chunk:
                window = state["tail"] + chunk
                state["delimiters"] += window.count(delimiter)
                state["tail"] = window[-(len(delimiter) - 1):]
                if state["delimiters"] - 1 > self.max_files:  # the last delimiter closes the final part
                    self._log("upload_too_many_files", scope, f"more than {self.max_files} files in one upload")
                    raise upload_refusal(f"Too many files in one upload: at most {self.max_files} "
                                             "(sessions.max_files_per_upload).")
            return message

        return counted

    # ------------------------------------------------------------------ answers and the log

    async def _refuse(self, scope: Scope, send: Send, refusal: Refusal) -> None:
        if self.on_refused is not None:
            self.on_refused(refusal.reason)
        self._log(refusal.reason, scope, refusal.detail)
        body = orjson.dumps({"detail": refusal.detail})
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if refusal.retry_after_s:
            headers.append((b"retry-after", str(int(refusal.retry_after_s)).encode()))
        await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _log(self, reason: str, scope: Scope, detail: str) -> None:
        """One line per refusal, at most one per reason every LOG_EVERY_S (with a count of the rest)."""
        now = time.monotonic()
        last, suppressed = self._last_logged.get(reason, (-math.inf, 0))
        if now - last < LOG_EVERY_S:
            self._last_logged[reason] = (last, suppressed + 1)
            return
        self._last_logged[reason] = (now, 0)
        client = (scope.get("client") or ("?",))[0]
        more = f" (and {suppressed} more since the last line)" if suppressed else ""
        log.warning("refused %s %s from %s: %s%s", scope["method"], scope["path"][:200], client, detail, more)


def _http_exception_after_start(exc: RuntimeError) -> bool:
    from starlette.exceptions import HTTPException

    return isinstance(exc.__cause__, HTTPException) and "response already started" in str(exc)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def _boundary(scope: Scope) -> bytes | None:
    for name, value in scope["headers"]:
        if name == b"content-type":
            match = re.search(rb'boundary="?([^";]+)"?', value)
            return match[1] if match else None
    return None


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole body, or None as soon as it passes ``limit`` (chunked bodies are counted as they come)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None  # uvicorn discards the rest of the body once the answer is sent
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the app the body already read, then the connection's own messages."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> dict[str, Any]:
        return pending.pop() if pending else await receive()

    return replay


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
