"""The settings model: the design's defaults, bounds that fit real deployments, the validators of single keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.settings import (
    ConfigError,
    Settings,
    load_settings,
)
from tests.agent.settings.helpers import (
    DESIGN_TABLE,
    problems_of,
)


def test_built_in_defaults_are_the_balanced_profile(settings_env: Path) -> None:
    defaults = Settings()
    for key, values in DESIGN_TABLE.items():
        assert defaults.get(key) == values[0], key


def test_bounds_fit_real_deployments() -> None:
    settings = Settings(
        queue={"default_concurrency_limit": 1000, "max_size": 1000},
        server={"max_threads": 2000},
        events={name: 1000 for name in Settings().events.model_dump() if name.endswith("_limit")},
    )
    assert settings.events.chat_concurrency_limit == 1000


@pytest.mark.parametrize("token", ["Zq7", "short-token", "a" * 31])
def test_an_admin_token_shorter_than_32_characters_is_refused_without_showing_it(
    settings_env: Path, token: str
) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(environ={"CMW_ADMIN_TOKEN": token})
    (problem,) = problems_of(exc)
    assert problem.startswith("admin.token = ******** (from env CMW_ADMIN_TOKEN): too short")
    assert token not in problem


def test_an_admin_token_of_32_characters_or_none_is_accepted(settings_env: Path) -> None:
    assert load_settings(environ={"CMW_ADMIN_TOKEN": "a" * 32}).settings.admin.token is not None
    assert load_settings(environ={"CMW_ADMIN_TOKEN": ""}).settings.admin.token is None


def test_trusted_proxies_take_addresses_and_networks_only(settings_env: Path) -> None:
    loaded = load_settings(environ={"CMW_SERVER__TRUSTED_PROXIES": "10.0.0.1, 10.1.0.0/16,::1"})
    assert loaded.settings.server.trusted_proxies == ["10.0.0.1", "10.1.0.0/16", "::1"]
    with pytest.raises(ConfigError) as exc:
        load_settings(environ={"CMW_SERVER__TRUSTED_PROXIES": "10.0.0.1,proxy.example"})
    assert "'proxy.example' is not an IP address or CIDR network" in problems_of(exc)[0]


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000/v1", "https://llm.example/v1"])
def test_a_base_url_as_the_provider_means_the_custom_provider_there(url: str) -> None:
    llm = Settings(llm={"provider": url, "base_url": "http://ignored/v1"}).llm
    assert (llm.provider, llm.base_url) == ("custom", url)


def test_a_provider_that_is_neither_a_name_nor_a_url_is_refused(settings_env: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(flags={"llm.provider": ("ftp://host", "--llm")})
    (line,) = problems_of(exc)
    assert line.startswith("llm.provider = 'ftp://host' (from --llm): input should be 'sim', 'openai'")
    assert line.endswith("allowed: sim | openai | openrouter | custom, or an http(s):// base URL")
