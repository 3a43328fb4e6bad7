"""LLM providers: langchain-openai `ChatOpenAI` is the one place a provider is configured.

Replies stream through the OpenAI client that ``ChatOpenAI`` holds (same base URL, key, timeout and
retries), which costs less CPU per chunk than ``astream``'s message objects — see bench/llm_client.py.
Every failure becomes an :class:`LLMError` with a class and a message fit for the chat.
"""

from __future__ import annotations

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
        """Stream a reply; raise :class:`LLMError` on any provider failure."""
        import httpx
        import openai

        chat_model = self.chat_model(provider, model)
        finished = False
        try:
            stream = await chat_model.async_client.create(
                model=chat_model.model_name,
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
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


def _short(exc: BaseException, limit: int = 160) -> str:
    body = getattr(exc, "body", None)
    text = ""
    if isinstance(body, dict):
        err = body.get("error", body)
        text = str(err.get("message", "")) if isinstance(err, dict) else str(err)
    text = text or str(exc) or type(exc).__name__
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
