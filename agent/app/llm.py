"""LLM providers: langchain-openai `ChatOpenAI` is the one place a provider is configured.

Replies are read as server-sent events (:mod:`agent.app.sse`) on the HTTP client of the OpenAI client that
``ChatOpenAI`` holds (same base URL, key and timeout): one path, with a fraction of the CPU per chunk of
``astream`` or the openai SDK's objects — see bench/llm_client.py.
Every failure becomes an :class:`LLMError` with a class and a message fit for the chat; what the
provider said about it goes to the server log, with secrets masked, never to the user.

What a browser can make the server spend is bounded here: only the offered providers and allowed
models are used, the history sent is trimmed to ``llm.max_context_chars``, ``llm.max_tokens`` is
sent, and an SSE event over :data:`MAX_EVENT_BYTES` stops the reply.
"""

from __future__ import annotations

import asyncio
import email.utils
import http
import logging
import math
import random
import re
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from agent.app.sse import Event, EventTooLarge, SSEDecoder
from agent.settings import REGISTRY, Settings
from agent.settings.providers import PROVIDERS

log = logging.getLogger("cmw.llm")

# A streamed chunk is well under a kilobyte; an event this big is a broken or hostile server.
MAX_EVENT_BYTES = 1 << 20
MAX_ERROR_BODY_BYTES = 64 * 1024  # of an HTTP error body, read only to be logged
# A wait the provider asks for beyond this is not waited out: the turn fails now rather than hang.
MAX_RETRY_WAIT_S = 20.0
# Characters of the system message (the instructions, the start of any files) every request keeps.
SYSTEM_FLOOR = 500
_FILES_CUT = "\n[… the rest of the attached files is left out to fit llm.max_context_chars]"
_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^/\s:@]*:)[^@\s/]+@", re.IGNORECASE)
_TOKENS = re.compile(r"\b(Bearer\s+|Basic\s+|sk-)[A-Za-z0-9._~+/=-]{4,}", re.IGNORECASE)


class LLMError(Exception):
    """A failed turn: ``kind`` is its class (http_error, auth, timeout, disconnect, malformed, too_large, config)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class Endpoint:
    provider: str
    base_url: str
    model: str


@dataclass
class Delta:
    """What one streamed chunk added: text, pieces of tool calls (LangChain ``ToolCallChunk`` dicts, joined by
    LangChain's ``AIMessageChunk`` addition), and the completion token count once the stream reports it."""

    text: str = ""
    completion_tokens: int | None = None
    tool_call_chunks: list[dict[str, Any]] | None = None


class Providers:
    """The offered providers and their models; one ``ChatOpenAI`` per provider; replies streamed through it.

    The model is a field of each request, so a browser typing model names creates nothing here:
    the cache holds at most one client per provider.
    """

    def __init__(self, settings: Settings, sim_base_url: str | None = None):
        self.settings = settings
        self.sim_base_url = sim_base_url
        self._clients: dict[str, Any] = {}
        self._allowed: dict[str, list[str]] = {}
        for entry in settings.llm.models:
            provider, _, model = entry.partition(":")
            self._allowed.setdefault(provider, []).append(model)
        self._secrets = _secrets_of(settings)

    @property
    def offered(self) -> list[str]:
        """The providers a browser may use: the default one first, then ``llm.providers``."""
        llm = self.settings.llm
        return list(dict.fromkeys([llm.provider, *llm.providers]))

    def default_model(self, provider: str) -> str:
        llm = self.settings.llm
        known = PROVIDERS.get(provider)
        preferred = llm.model if provider == llm.provider and llm.model else known.default_model if known else "default"
        allowed = self._allowed.get(provider)
        return allowed[0] if allowed and preferred not in allowed else preferred

    def allows(self, provider: str, model: str) -> bool:
        """Whether a session may use this provider and model (``llm.providers``, ``llm.models``)."""
        allowed = self._allowed.get(provider)
        return provider in self.offered and bool(model) and (not allowed or model in allowed)

    def choice(self, provider: str, model: str) -> tuple[str, str]:
        """What a session's (provider, model) comes to now: itself when allowed, else the defaults.

        A session restored from the store keeps the choice it made under an earlier configuration.
        """
        if provider not in self.offered:
            provider = self.settings.llm.provider
            return provider, self.default_model(provider)
        return (provider, model) if self.allows(provider, model) else (provider, self.default_model(provider))

    def endpoint(self, provider: str, model: str | None = None) -> Endpoint:
        known = PROVIDERS.get(provider)
        if provider not in self.offered or known is None:
            raise LLMError("config", f"Provider '{provider}' is not offered. Available: {', '.join(self.offered)}.")
        if known.embedded:
            url = self.sim_base_url or ""
        else:
            url = str(self.settings.get(known.url_setting)) if known.url_setting else known.base_url
        if not url:
            what = "the simulator is not running" if known.embedded else f"{known.url_setting} is not set"
            raise LLMError("config", f"Provider '{provider}' is not available: {what}.")
        return Endpoint(provider, url.rstrip("/"), model or self.default_model(provider))

    def _api_key(self, provider: str) -> str:
        """Each provider's own key: the OpenAI key never goes to OpenRouter or a custom base URL."""
        known = PROVIDERS.get(provider)
        setting = known.key_setting if known else None
        secret = self.settings.get(setting) if setting else None
        if secret is not None:
            return str(secret.get_secret_value())
        if known is not None and known.key_required and setting:
            env = REGISTRY[setting].env[0]
            raise LLMError("auth", f"No API key for {provider}: set {env} (or the llm settings) and restart.")
        return "not-needed"  # sim and most local servers accept any key

    def chat_model(self, provider: str) -> Any:
        """The configured ``ChatOpenAI`` of a provider (created once, then reused)."""
        if provider not in self._clients:
            endpoint = self.endpoint(provider)
            from langchain_openai import ChatOpenAI

            self._clients[provider] = ChatOpenAI(
                model=endpoint.model,
                base_url=endpoint.base_url,
                api_key=self._api_key(provider),
                timeout=self.settings.llm.timeout_s,
                max_retries=self.settings.llm.max_retries,
                max_tokens=self.settings.llm.max_tokens,
                streaming=True,
                stream_usage=True,
            )
        return self._clients[provider]

    def session_model(self, provider: str, model: str) -> Any:
        """A ``ChatOpenAI`` for one session's choice (an operator's agent calls it itself)."""
        if not self.allows(provider, model):
            raise LLMError("config", f"Model '{model[:80]}' of provider '{provider}' is not offered.")
        self.endpoint(provider, model)
        return self.chat_model(provider).model_copy(update={"model_name": model})

    async def stream(
        self, provider: str, model: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> AsyncIterator[Delta]:
        """Stream a reply through the configured path; raise :class:`LLMError` on any provider failure.

        ``messages`` is the system message then the conversation in OpenAI's format, newest last; the
        oldest turns are left out to fit ``llm.max_context_chars``. ``tools`` are OpenAI tool schemas the
        model may call (what ``ChatOpenAI.bind_tools`` sends).
        """
        if not self.allows(provider, model):
            raise LLMError("config", f"Model '{model[:80]}' of provider '{provider}' is not offered.")
        endpoint = self.endpoint(provider, model)
        chat_model = self.chat_model(provider)
        fitted = fit_to_budget(messages, self.settings.llm.max_context_chars)
        if self.settings.llm.reader == "astream":
            reader = self._astream(endpoint, chat_model, fitted, tools)
        else:
            reader = self._read(endpoint, chat_model, fitted, tools)
        async for delta in reader:
            yield delta

    async def _astream(
        self, endpoint: Endpoint, chat_model: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
    ) -> AsyncIterator[Delta]:
        """LangChain's own path: ``ChatOpenAI.bind_tools(...).astream``; slower per chunk, same messages."""
        import openai

        bound = chat_model.bind_tools(tools) if tools else chat_model
        try:
            async for chunk in bound.astream(messages, model=endpoint.model):
                usage = getattr(chunk, "usage_metadata", None) or {}
                text = chunk.content if isinstance(chunk.content, str) else ""
                pieces = [dict(c) for c in chunk.tool_call_chunks] or None
                if text or pieces or usage:
                    yield Delta(text, usage.get("output_tokens") if usage else None, pieces)
        except openai.APITimeoutError:
            raise LLMError("timeout", f"{endpoint.provider} did not answer within {self.settings.llm.timeout_s:g} s "
                                      "(llm.timeout_s).") from None
        except openai.APIStatusError as exc:
            raise self._status_error(endpoint.provider, exc.status_code, self.redact(_short(exc))) from None
        except openai.APIConnectionError as exc:
            raise LLMError("disconnect", f"Connection to {endpoint.provider} failed or broke mid-reply "
                                         f"({self.redact(_short(exc))}).") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise LLMError("malformed", f"{endpoint.provider} sent a malformed reply ({self.redact(_short(exc))}).") \
                from None

    def _max_tokens(self, provider: str) -> dict[str, int]:
        """``llm.max_tokens`` under the name each API reads: OpenAI's current one, else the classic one."""
        cap = self.settings.llm.max_tokens
        if cap is None:
            return {}
        known = PROVIDERS.get(provider)
        return {known.max_tokens_field if known else "max_tokens": cap}

    async def _read(
        self, endpoint: Endpoint, chat_model: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
    ) -> AsyncIterator[Delta]:
        """SSE decoded by :mod:`agent.app.sse` on the HTTP client of ChatOpenAI's openai client: same URL, key, timeout.

        Per chunk this costs a fraction of the openai SDK's model objects (bench/llm_client.py), which
        is what lets one process stream to many users; and unlike the SDK's decoder it bounds each
        event and reads every framing the spec allows (the SDK's dispatches an empty event after an
        ``id:`` field followed by a keep-alive comment, and fails on it). Retries follow
        llm.max_retries for failures before the first byte (connection errors, 408/409/429/5xx), with
        jitter and the wait the provider asks for.
        """
        import httpx2
        import orjson

        provider = endpoint.provider
        client = chat_model.root_async_client
        url = f"{str(client.base_url).rstrip('/')}/chat/completions"
        headers = {"Authorization": f"Bearer {client.api_key}", "Accept": "text/event-stream"}
        body = orjson.dumps({"model": endpoint.model, "messages": messages, "stream": True,
                             "stream_options": {"include_usage": True}, **self._max_tokens(provider),
                             **({"tools": tools} if tools else {})})
        timeout = self.settings.llm.timeout_s
        attempts = self.settings.llm.max_retries + 1
        finished = False
        for attempt in range(attempts):
            try:
                async with client._client.stream("POST", url, content=body, headers=headers, timeout=timeout) as resp:
                    if resp.status_code >= 400:
                        detail = await _read_capped(resp, MAX_ERROR_BODY_BYTES)
                        wait = retry_delay(attempt, resp.headers) if _retryable(resp.status_code) else None
                        if wait is not None and attempt + 1 < attempts:
                            await asyncio.sleep(wait)
                            continue
                        raise self._status_error(provider, resp.status_code, _error_message(detail))
                    decoder = SSEDecoder(MAX_EVENT_BYTES)
                    async for piece in resp.aiter_bytes():
                        for event in decoder.feed(piece):
                            delta, done = self._parse_event(provider, event)
                            finished = finished or done
                            if delta is not None:
                                yield delta
                break
            except EventTooLarge:
                raise LLMError(
                    "too_large", f"{provider} sent a reply chunk over {MAX_EVENT_BYTES:,} bytes; the reply was stopped."
                ) from None
            except httpx2.TimeoutException:
                raise LLMError("timeout", f"{provider} did not answer within {timeout:g} s (llm.timeout_s).") from None
            except httpx2.TransportError as exc:
                if not finished and attempt + 1 < attempts and isinstance(exc, httpx2.ConnectError):
                    await asyncio.sleep(retry_delay(attempt, {}) or 0.0)
                    continue
                reason = f"Connection to {provider} failed or broke mid-reply ({self.redact(_short(exc))})."
                raise LLMError("disconnect", reason) from None
        if not finished:
            raise LLMError("disconnect", f"{provider} closed the stream before the reply was complete.")

    def _parse_event(self, provider: str, event: Event) -> tuple[Delta | None, bool]:
        """One SSE event → (delta or None, stream finished?)."""
        import orjson

        data = event.data
        if data == b"[DONE]":
            return None, True
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            if event.type == b"error":
                raise self._mid_reply_error(provider, data.decode("utf-8", "replace")) from None
            raise LLMError("malformed", f"{provider} sent a malformed reply chunk (not JSON).") from None
        if not isinstance(chunk, dict):
            raise LLMError("malformed", f"{provider} sent a malformed reply chunk (not an object).")
        if "error" in chunk or event.type == b"error":
            raise self._mid_reply_error(provider, _error_message(chunk))
        delta = Delta()
        finished = False
        choices = chunk.get("choices") or []
        if choices and isinstance(choices[0], dict):
            choice = choices[0]
            sent = choice.get("delta") or {}
            delta.text = sent.get("content") or ""
            if sent.get("tool_calls"):
                delta.tool_call_chunks = _tool_call_chunks(provider, sent["tool_calls"])
            finished = choice.get("finish_reason") is not None
        usage = chunk.get("usage")
        if isinstance(usage, dict) and "completion_tokens" in usage:
            delta.completion_tokens = int(usage["completion_tokens"])
        if delta.text or delta.completion_tokens is not None or delta.tool_call_chunks:
            return delta, finished
        return None, finished

    # -- what users see of a provider's error, and what the log gets

    def redact(self, text: str) -> str:
        """Text with the configured keys, URL passwords and Bearer/Basic/sk- credentials masked."""
        for secret in self._secrets:
            text = text.replace(secret, "****")
        return _TOKENS.sub(r"\1****", _URL_PASSWORD.sub(r"\1****@", text))

    def _status_error(self, provider: str, status: int, detail: str) -> LLMError:
        log.warning("%s answered HTTP %d: %s", provider, status, self.redact(detail) or "(no detail)")
        if status in (401, 403):
            return LLMError("auth", f"{provider} refused the API key (HTTP {status}): check it and restart.")
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            phrase = "error"
        hint = "; check the model name" if status == 404 else ""
        message = f"{provider} answered HTTP {status} ({phrase}{hint}); details are in the server log."
        return LLMError("http_error", message)

    def _mid_reply_error(self, provider: str, detail: str) -> LLMError:
        log.warning("%s reported an error mid-reply: %s", provider, self.redact(detail) or "(no detail)")
        return LLMError("http_error", f"{provider} reported an error mid-reply; details are in the server log.")


def _tool_call_chunks(provider: str, calls: Any) -> list[dict[str, Any]]:
    """OpenAI ``tool_calls`` deltas as LangChain ``ToolCallChunk`` dicts (LangChain joins them by ``index``)."""
    if not isinstance(calls, list):
        raise LLMError("malformed", f"{provider} sent malformed tool calls (not a list).")
    out = []
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) and function is not None:
            raise LLMError("malformed", f"{provider} sent a malformed tool call.")
        function = function or {}
        out.append({"type": "tool_call_chunk", "index": call.get("index"), "id": call.get("id"),
                    "name": function.get("name"), "args": function.get("arguments")})
    return out


def _size(message: dict[str, Any]) -> int:
    """Characters a message adds to a request: its text and its tool calls' names and arguments."""
    size = len(message.get("content") or "")
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        size += len(function.get("name") or "") + len(function.get("arguments") or "")
    return size


def fit_to_budget(messages: list[dict[str, Any]], max_chars: int) -> list[dict[str, Any]]:
    """The system message and as many of the newest turns as fit ``max_chars`` characters.

    The newest message (the user's) is always sent whole. The oldest turns are left out first; when
    the system message (the instructions, then the attached files) and the newest message alone are
    too long, the end of the files is cut, with a note to the model. Only a message that leaves less
    than :data:`SYSTEM_FLOOR` characters for the system message fails the turn (``too_large``).
    """
    system, *turns = messages
    # The turn in flight (the user's message and the tool calls and results since) is sent whole.
    current = max((i for i, m in enumerate(turns) if m.get("role") == "user"), default=max(len(turns) - 1, 0))
    newest = sum(_size(m) for m in turns[current:])
    room = max_chars - newest
    length = len(system["content"])
    if length > room:
        if room < min(length, SYSTEM_FLOOR):
            raise LLMError(
                "too_large",
                f"This message has {newest:,} characters; at most {max(0, max_chars - SYSTEM_FLOOR):,} fit in what "
                "is sent to the model (llm.max_context_chars). Send a shorter message.",
            )
        content = system["content"][: room - len(_FILES_CUT)] + _FILES_CUT
        return [{**system, "content": content}, *turns[current:]]
    used = length + newest
    start = current
    while start > 0 and used + _size(turns[start - 1]) <= max_chars:
        start -= 1
        used += _size(turns[start])
    if start > 0:  # something was left out: a reply (or a tool call's result) whose question went would open it
        while start < current and turns[start]["role"] != "user":
            start += 1
    return [system, *turns[max(start, 0):]]


def retry_delay(attempt: int, headers: Mapping[str, str], rng: random.Random | None = None) -> float | None:
    """Seconds to wait before retry ``attempt + 1``; None when the provider asks for longer than we wait.

    ``retry-after-ms`` (OpenAI's) wins over ``Retry-After`` (seconds or an HTTP date); without either,
    exponential backoff. A random quarter of jitter keeps the clients a failure hit together from
    retrying in step.
    """
    rng = rng or random
    asked = _asked_wait(headers)
    if asked is None:
        return min(0.5 * 2**attempt, 8.0) * (1 - 0.25 * rng.random())
    if asked > MAX_RETRY_WAIT_S:
        return None
    return asked * (1 + 0.25 * rng.random())


def _asked_wait(headers: Mapping[str, str]) -> float | None:
    wait: float | None = None
    if (value := headers.get("retry-after-ms")) is not None:
        try:
            wait = float(value) / 1000
        except ValueError:
            wait = None
    if wait is None and (value := headers.get("retry-after")) is not None:
        try:
            wait = float(value)
        except ValueError:
            try:
                wait = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
            except (TypeError, ValueError, IndexError):
                wait = None
    if wait is None or not math.isfinite(wait):
        return None
    return max(0.0, wait)


def _retryable(status: int) -> bool:
    return status in (408, 409, 429) or status >= 500


async def _read_capped(resp: Any, limit: int) -> bytes:
    """At most ``limit`` bytes of a body: an error page is read to be logged, never held whole."""
    parts: list[bytes] = []
    size = 0
    async for piece in resp.aiter_bytes():
        parts.append(piece[: limit - size])
        size += len(piece)
        if size >= limit:
            break
    return b"".join(parts)


def _error_message(body: Any) -> str:
    """The message inside an OpenAI-style error body (bytes, text or parsed), else the body itself, cut short."""
    import orjson

    if isinstance(body, bytes):
        try:
            body = orjson.loads(body)
        except orjson.JSONDecodeError:
            body = body.decode("utf-8", "replace")
    if isinstance(body, dict):
        err = body.get("error", body)
        body = err.get("message", err) if isinstance(err, dict) else err
    text = " ".join(str(body).split())
    return text if len(text) <= 300 else text[:299] + "…"


def _secrets_of(settings: Settings) -> list[str]:
    llm = settings.llm
    keys = [settings.get(p.key_setting) for p in PROVIDERS.values() if p.key_setting]
    found = [key.get_secret_value() for key in keys if key]
    try:
        password = urlsplit(llm.base_url).password
    except ValueError:
        password = None
    if password:
        found.append(password)
    return sorted((s for s in found if len(s) >= 4), key=len, reverse=True)


def _short(exc: BaseException, limit: int = 160) -> str:
    text = " ".join((str(exc) or type(exc).__name__).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
