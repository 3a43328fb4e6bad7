"""The provider registry: the one list of providers, and every part of cmw reading it."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from agent.app.llm import LLMError, Providers
from agent.settings import PROVIDERS, REGISTRY, Settings, check_effect
from cmw_cli.main import app


def test_the_model_offers_exactly_the_registered_providers() -> None:
    for key in ("llm.provider", "llm.providers"):
        annotation = REGISTRY[key].field.annotation
        literal = typing.get_args(annotation)[0] if typing.get_origin(annotation) is list else annotation
        assert typing.get_args(literal) == tuple(PROVIDERS), key
    for name in PROVIDERS:
        assert Settings(llm={"models": [f"{name}:some-model"]}).llm.models == [f"{name}:some-model"]


@pytest.mark.parametrize("provider", PROVIDERS.values(), ids=list(PROVIDERS))
def test_each_provider_names_real_secret_and_url_settings(provider: typing.Any) -> None:
    if provider.key_setting is not None:
        assert REGISTRY[provider.key_setting].secret
    if provider.url_setting is not None:
        assert provider.url_setting in REGISTRY and not provider.base_url
    assert provider.embedded or provider.base_url or provider.url_setting, "somewhere to send requests"


@pytest.mark.parametrize("provider", PROVIDERS.values(), ids=list(PROVIDERS))
def test_the_llm_client_sends_each_provider_its_own_url_key_and_default_model(provider: typing.Any) -> None:
    keys = {p.key_setting.rpartition(".")[2]: f"key-of-{p.name}" for p in PROVIDERS.values() if p.key_setting}
    settings = Settings(llm={"provider": provider.name, "base_url": "http://custom.example/v1", **keys})
    client = Providers(settings, sim_base_url="http://127.0.0.1:9/v1")
    endpoint = client.endpoint(provider.name)
    expected_url = {"sim": "http://127.0.0.1:9/v1", "custom": "http://custom.example/v1"}.get(provider.name)
    assert endpoint.base_url == (expected_url or provider.base_url)
    assert endpoint.model == provider.default_model
    assert client._api_key(provider.name) == (f"key-of-{provider.name}" if provider.key_setting else "not-needed")
    assert client._max_tokens(provider.name) == {provider.max_tokens_field: settings.llm.max_tokens}


@pytest.mark.parametrize("provider", [p for p in PROVIDERS.values() if p.key_required], ids=lambda p: p.name)
def test_a_provider_that_needs_a_key_is_warned_about_and_refused_without_one(provider: typing.Any) -> None:
    settings = Settings(llm={"provider": provider.name})
    env = REGISTRY[provider.key_setting].env[0]
    assert f"llm.provider={provider.name} without {provider.key_setting} ({env})" in "\n".join(check_effect(settings))
    with pytest.raises(LLMError, match=f"set {env}"):
        Providers(settings)._api_key(provider.name)
    keyed = Settings(llm={"provider": provider.name, provider.key_setting.rpartition(".")[2]: SecretStr("k" * 8)})
    assert not any(provider.key_setting in warning for warning in check_effect(keyed))


def test_cmw_serve_help_lists_the_registered_providers(settings_env: Path) -> None:
    text = " ".join(CliRunner().invoke(app, ["serve", "--help"]).output.split())
    assert f"Provider ({', '.join(PROVIDERS)})" in text
