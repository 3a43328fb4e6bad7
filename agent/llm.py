"""LLM providers: langchain-openai `ChatOpenAI` is the one place a provider is configured.

Replies stream through the OpenAI client that ``ChatOpenAI`` holds (same base URL, key, timeout and
retries), which costs less CPU per chunk than ``astream``'s message objects — see bench/llm_client.py.
Every failure becomes an :class:`LLMError` with a class and a message fit for the chat.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from agent.settings import Settings

SIM_MODEL = "cmw-sim"
OPENAI_URL = "https://api.openai.com/v1"
OPENROUTER_URL = "https://openrouter.ai/api/v1"
DEFAULT_MODELS = {"sim": SIM_MODEL, "openai": "gpt-4o-mini", "openrouter": "openai/gpt-4o-mini", "custom": "default"}


class LLMError(Exception):
    """A failed turn: ``kind`` is its class (http_error, auth, timeout, disconnect, malformed, config)."""

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
    """What one streamed chunk added: text, and the completion token count once the stream reports it."""

    text: str = ""
    completion_tokens: int | None = None


class Providers:
    """Builds and caches one ``ChatOpenAI`` per (provider, model); streams replies through it."""

    def __init__(self, settings: Settings, sim_base_url: str | None = None):
        self.settings = settings
        self.sim_base_url = sim_base_url
        self._models: dict[tuple[str, str], Any] = {}

    @property
    def offered(self) -> list[str]:
        return list(self.settings.llm.providers)

    def default_model(self, provider: str) -> str:
        if provider == self.settings.llm.provider and self.settings.llm.model:
            return self.settings.llm.model
        return DEFAULT_MODELS.get(provider, "default")

    def endpoint(self, provider: str, model: str | None = None) -> Endpoint:
        llm = self.settings.llm
        urls = {
            "sim": self.sim_base_url or "",
            "openai": llm.base_url if llm.provider == "openai" and llm.base_url else OPENAI_URL,
            "openrouter": OPENROUTER_URL,
            "custom": llm.base_url,
        }
        if provider not in urls:
            raise LLMError("config", f"Unknown provider '{provider}'. Available: {', '.join(self.offered)}.")
        if not urls[provider]:
            what = "the simulator is not running" if provider == "sim" else "llm.base_url is not set"
            raise LLMError("config", f"Provider '{provider}' is not available: {what}.")
        return Endpoint(provider, urls[provider].rstrip("/"), model or self.default_model(provider))

    def _api_key(self, provider: str) -> str:
        llm = self.settings.llm
        secret = llm.openrouter_api_key if provider == "openrouter" else llm.api_key
        if secret is not None:
            return secret.get_secret_value()
        if provider in ("openai", "openrouter"):
            env = "OPENROUTER_API_KEY" if provider == "openrouter" else "OPENAI_API_KEY"
            raise LLMError("auth", f"No API key for {provider}: set {env} (or the llm settings) and restart.")
        return "not-needed"  # sim and most local servers accept any key

    def chat_model(self, provider: str, model: str | None = None) -> Any:
        """The configured ``ChatOpenAI`` for a provider and model (created once, then reused)."""
        endpoint = self.endpoint(provider, model)
        cache_key = (endpoint.provider, endpoint.model)
        if cache_key not in self._models:
            from langchain_openai import ChatOpenAI

            self._models[cache_key] = ChatOpenAI(
                model=endpoint.model,
                base_url=endpoint.base_url,
                api_key=self._api_key(provider),
                timeout=self.settings.llm.timeout_s,
                max_retries=self.settings.llm.max_retries,
                streaming=True,
                stream_usage=True,
            )
        return self._models[cache_key]

    async def stream(self, provider: str, model: str | None, messages: list[dict[str, str]]) -> AsyncIterator[Delta]:
        """Stream a reply through the configured path; raise :class:`LLMError` on any provider failure."""
        chat_model = self.chat_model(provider, model)
        path = self.settings.stream.client
        reader = {"raw": self._stream_raw, "openai": self._stream_openai, "langchain": self._stream_langchain}[path]
        async for delta in reader(provider, chat_model, messages):
            yield delta

    async def _stream_raw(self, provider: str, chat_model: Any, messages: list[dict[str, str]]) -> AsyncIterator[Delta]:
        """SSE parsed by hand on the HTTP client ChatOpenAI's openai client holds: same URL, key, timeout.

        Per chunk this costs a fraction of the openai SDK's model objects (bench/llm_client.py), which
        is what lets one process stream to many users. Retries follow llm.max_retries for failures
        before the first byte (connection errors, 408/409/429/5xx), as the openai client does.
        """
        import httpx2
        import orjson

        client = chat_model.root_async_client
        url = f"{str(client.base_url).rstrip('/')}/chat/completions"
        headers = {"Authorization": f"Bearer {client.api_key}", "Accept": "text/event-stream"}
        body = orjson.dumps({"model": chat_model.model_name, "messages": messages, "stream": True,
                             "stream_options": {"include_usage": True}})
        timeout = self.settings.llm.timeout_s
        attempts = self.settings.llm.max_retries + 1
        finished = False
        for attempt in range(attempts):
            try:
                async with client._client.stream("POST", url, content=body, headers=headers, timeout=timeout) as resp:
                    if resp.status_code >= 400:
                        detail = (await resp.aread())[:2000]
                        if _retryable(resp.status_code) and attempt + 1 < attempts:
                            await asyncio.sleep(_backoff(attempt, resp.headers.get("retry-after")))
                            continue
                        raise _status_error(provider, resp.status_code, detail)
                    buffer = b""
                    async for raw in resp.aiter_raw():
                        buffer += raw
                        *events, buffer = buffer.split(b"\n\n")
                        for event in events:
                            delta, done = _parse_event(provider, event)
                            finished = finished or done
                            if delta is not None:
                                yield delta
                    if buffer.strip():
                        delta, done = _parse_event(provider, buffer)
                        finished = finished or done
                        if delta is not None:
                            yield delta
                break
            except httpx2.TimeoutException:
                raise LLMError("timeout", f"{provider} did not answer within {timeout:g} s (llm.timeout_s).") from None
            except httpx2.TransportError as exc:
                if not finished and attempt + 1 < attempts and isinstance(exc, httpx2.ConnectError):
                    await asyncio.sleep(_backoff(attempt, None))
                    continue
                reason = f"Connection to {provider} failed or broke mid-reply ({_short(exc)})."
                raise LLMError("disconnect", reason) from None
        if not finished:
            raise LLMError("disconnect", f"{provider} closed the stream before the reply was complete.")

    async def _stream_openai(
        self, provider: str, chat_model: Any, messages: list[dict[str, str]]
    ) -> AsyncIterator[Delta]:
        """The openai client ChatOpenAI holds (its retries and timeout)."""
        import httpx
        import openai

        finished = False
        try:
            stream = await chat_model.async_client.create(
                model=chat_model.model_name, messages=messages, stream=True, stream_options={"include_usage": True}
            )
            async for chunk in stream:
                delta = Delta()
                if chunk.choices:
                    choice = chunk.choices[0]
                    delta.text = choice.delta.content or "" if choice.delta else ""
                    finished = finished or choice.finish_reason is not None
                if chunk.usage is not None:
                    delta.completion_tokens = chunk.usage.completion_tokens
                if delta.text or delta.completion_tokens is not None:
                    yield delta
        except openai.AuthenticationError:
            raise LLMError("auth", f"{provider} refused the API key (HTTP 401): check it and restart.") from None
        except openai.APIStatusError as exc:
            raise LLMError("http_error", f"{provider} answered HTTP {exc.status_code}: {_short(exc)}") from None
        except openai.APITimeoutError:
            raise LLMError(
                "timeout", f"{provider} did not answer within {self.settings.llm.timeout_s:g} s (llm.timeout_s)."
            ) from None
        except (openai.APIConnectionError, httpx.TransportError) as exc:
            reason = f"Connection to {provider} failed or broke mid-reply ({_short(exc)})."
            raise LLMError("disconnect", reason) from None
        except (json.JSONDecodeError, openai.APIResponseValidationError, ValueError) as exc:
            raise LLMError("malformed", f"{provider} sent a malformed reply chunk ({_short(exc)}).") from None
        if not finished:
            raise LLMError("disconnect", f"{provider} closed the stream before the reply was complete.")

    async def _stream_langchain(
        self, provider: str, chat_model: Any, messages: list[dict[str, str]]
    ) -> AsyncIterator[Delta]:
        """langchain's own astream: the most CPU per chunk, kept for comparison."""
        import openai

        try:
            async for chunk in chat_model.astream(messages):
                usage = getattr(chunk, "usage_metadata", None)
                yield Delta(str(chunk.content or ""), usage.get("output_tokens") if usage else None)
        except openai.APIStatusError as exc:
            raise LLMError("http_error", f"{provider} answered HTTP {exc.status_code}: {_short(exc)}") from None
        except openai.APITimeoutError:
            raise LLMError("timeout", f"{provider} did not answer in time (llm.timeout_s).") from None
        except openai.APIConnectionError as exc:
            raise LLMError("disconnect", f"Connection to {provider} failed ({_short(exc)}).") from None
        except ValueError as exc:
            raise LLMError("malformed", f"{provider} sent a malformed reply chunk ({_short(exc)}).") from None


def _parse_event(provider: str, event: bytes) -> tuple[Delta | None, bool]:
    """One SSE event → (delta or None, stream finished?)."""
    import orjson

    data = b"".join(line[5:].lstrip() for line in event.split(b"\n") if line.startswith(b"data:"))
    if not data:
        return None, False
    if data == b"[DONE]":
        return None, True
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise LLMError("malformed", f"{provider} sent a malformed reply chunk (not JSON).") from None
    if not isinstance(chunk, dict):
        raise LLMError("malformed", f"{provider} sent a malformed reply chunk (not an object).")
    if "error" in chunk:
        err = chunk["error"]
        message = err.get("message", "") if isinstance(err, dict) else str(err)
        raise LLMError("http_error", f"{provider} reported an error mid-reply: {' '.join(str(message).split())[:160]}")
    delta = Delta()
    finished = False
    choices = chunk.get("choices") or []
    if choices and isinstance(choices[0], dict):
        choice = choices[0]
        delta.text = (choice.get("delta") or {}).get("content") or ""
        finished = choice.get("finish_reason") is not None
    usage = chunk.get("usage")
    if isinstance(usage, dict) and "completion_tokens" in usage:
        delta.completion_tokens = int(usage["completion_tokens"])
    if delta.text or delta.completion_tokens is not None:
        return delta, finished
    return None, finished


def _retryable(status: int) -> bool:
    return status in (408, 409, 429) or status >= 500


def _backoff(attempt: int, retry_after: str | None) -> float:
    if retry_after:
        try:
            return min(float(retry_after), 20.0)
        except ValueError:
            pass
    return min(0.5 * 2**attempt, 8.0)


def _status_error(provider: str, status: int, body: bytes) -> LLMError:
    import orjson

    message = ""
    try:
        parsed = orjson.loads(body)
        err = parsed.get("error", parsed) if isinstance(parsed, dict) else parsed
        message = str(err.get("message", "")) if isinstance(err, dict) else str(err)
    except orjson.JSONDecodeError:
        message = body.decode("utf-8", "replace")
    message = " ".join(message.split())[:160]
    if status == 401:
        return LLMError("auth", f"{provider} refused the API key (HTTP 401): check it and restart.")
    return LLMError("http_error", f"{provider} answered HTTP {status}: {message}")


def _short(exc: BaseException, limit: int = 160) -> str:
    body = getattr(exc, "body", None)
    text = ""
    if isinstance(body, dict):
        err = body.get("error", body)
        text = str(err.get("message", "")) if isinstance(err, dict) else str(err)
    text = text or str(exc) or type(exc).__name__
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
