"""The LLM providers cmw knows: one entry each, read by the settings model, the checks, the LLM client and the CLI.

Imports nothing but the standard library, so `cmw --help` may read it (the `--llm` help names them).
"""

from __future__ import annotations

from dataclasses import dataclass

SIM_MODEL = "cmw-sim"


@dataclass(frozen=True)
class Provider:
    """What cmw needs to know to talk to one OpenAI-compatible provider."""

    name: str
    summary: str  # a few words for help texts and docs
    default_model: str
    base_url: str = ""  # a fixed endpoint; "" when it comes from the simulator or from url_setting
    url_setting: str | None = None  # the settings key holding the endpoint (the custom provider)
    key_setting: str | None = None  # the settings key holding its API key, sent to this provider only
    key_required: bool = False  # refuses every request without a key
    embedded: bool = False  # served by cmw's own simulator, started with the app
    max_tokens_field: str = "max_tokens"  # the request field that caps a reply


PROVIDERS: dict[str, Provider] = {
    p.name: p
    for p in (
        Provider("sim", "the embedded simulator", SIM_MODEL, embedded=True),
        Provider(
            "openai", "api.openai.com", "gpt-4o-mini", base_url="https://api.openai.com/v1",
            key_setting="llm.api_key", key_required=True, max_tokens_field="max_completion_tokens",
        ),
        Provider(
            "openrouter", "openrouter.ai", "openai/gpt-4o-mini", base_url="https://openrouter.ai/api/v1",
            key_setting="llm.openrouter_api_key", key_required=True,
        ),
        Provider(
            "custom", "any OpenAI-compatible server at llm.base_url", "default",
            url_setting="llm.base_url", key_setting="llm.custom_api_key",
        ),
    )
}
PROVIDER_NAMES: tuple[str, ...] = tuple(PROVIDERS)
# The provider a base URL given in place of a provider name (`--llm http://…`) stands for.
URL_PROVIDER = next(p.name for p in PROVIDERS.values() if p.url_setting)


def is_base_url(text: object) -> bool:
    """Whether a provider argument is an endpoint (``http(s)://…``) rather than a provider name."""
    return isinstance(text, str) and text.startswith(("http://", "https://"))
