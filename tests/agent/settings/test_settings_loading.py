"""Loading: precedence key by key, the source of every value, and the `config show --json` shape."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.settings import (
    MASK,
    REGISTRY,
    ConfigError,
    load_settings,
)
from tests.agent.settings.helpers import (
    as_text,
    plain,
    samples,
    write_profile,
)


@pytest.mark.parametrize("key", list(REGISTRY))
def test_precedence_flag_then_set_then_env_then_dotenv_then_profile_then_default(settings_env: Path, key: str) -> None:
    spec = REGISTRY[key]
    in_profile, in_dotenv, in_env, in_set, in_flag = samples(spec)
    cmw_name = spec.env[-1]
    profile = write_profile(settings_env / "p.toml", {key: in_profile})
    (settings_env / "dot.env").write_text(f"{cmw_name}={as_text(in_dotenv)}\n", encoding="utf-8")

    def load(**layers: Any) -> tuple[Any, str]:
        loaded = load_settings(
            layers.get("profile"),
            layers.get("overrides", []),
            flags=layers.get("flags"),
            environ=layers.get("environ", {}),
            env_file=layers.get("env_file", "missing.env"),
            use_profile="profile" in layers,
        )
        return plain(loaded.settings.get(key)), loaded.sources.get(key, "default")

    assert load() == (plain(spec.default), "default")
    assert load(profile=profile) == (in_profile, f"profile:{profile.resolve()}")
    assert load(profile=profile, env_file="dot.env") == (in_dotenv, ".env")
    environ = {cmw_name: as_text(in_env)}
    assert load(profile=profile, env_file="dot.env", environ=environ) == (in_env, f"env:{cmw_name}")
    overrides = [f"{key}={as_text(in_set)}"]
    assert load(profile=profile, env_file="dot.env", environ=environ, overrides=overrides) == (in_set, "--set")
    flags = {key: (in_flag, "--flag")}
    assert load(profile=profile, env_file="dot.env", environ=environ, overrides=overrides, flags=flags) == (
        in_flag,
        "--flag",
    )


def test_chat_concurrency_limit_from_the_seed_env_name(settings_env: Path) -> None:
    loaded = load_settings(environ={"CHAT_CONCURRENCY_LIMIT": "7"})
    described = loaded.describe()["events.chat_concurrency_limit"]
    assert described["value"] == 7
    assert described["source"] == "env:CHAT_CONCURRENCY_LIMIT"
    assert described["env"] == ["CHAT_CONCURRENCY_LIMIT", "CMW_EVENTS__CHAT_CONCURRENCY_LIMIT"]


def test_cmw_env_file_names_the_dotenv_file(settings_env: Path) -> None:
    (settings_env / "custom.env").write_text("CHAT_CONCURRENCY_LIMIT=4\n", encoding="utf-8")
    loaded = load_settings(environ={"CMW_ENV_FILE": str(settings_env / "custom.env")})
    assert loaded.settings.events.chat_concurrency_limit == 4
    assert loaded.sources["events.chat_concurrency_limit"] == ".env"


def test_describe_masks_secrets(settings_env: Path) -> None:
    loaded = load_settings(environ={"OPENAI_API_KEY": "sk-live-123"})
    assert loaded.describe()["llm.api_key"] == {
        "value": MASK,
        "source": "env:OPENAI_API_KEY",
        "env": ["OPENAI_API_KEY", "CMW_LLM__API_KEY"],
        "allowed": "secret text or empty",
        "description": REGISTRY["llm.api_key"].description,
    }


def test_cmw_serve_llm_url_and_python_m_agent_load_the_same_custom_provider(settings_env: Path) -> None:
    """`cmw serve --llm URL` passes the URL as llm.provider; `python -m agent` reads it from the environment:
    the model makes both the custom provider at that URL, and both keys name where it came from."""
    url = "http://127.0.0.1:8000/v1"
    served = load_settings(flags={"llm.provider": (url, "--llm")})
    module = load_settings(environ={"CMW_LLM__PROVIDER": url})
    assert served.settings == module.settings
    assert (served.settings.llm.provider, served.settings.llm.base_url) == ("custom", url)
    assert (served.sources["llm.provider"], served.sources["llm.base_url"]) == ("--llm", "--llm")
    assert module.sources["llm.base_url"] == "env:CMW_LLM__PROVIDER"
    assert not any("llm.base_url" in warning for warning in served.warnings)


def test_a_table_key_takes_entries_from_every_source_the_higher_one_winning(settings_env: Path) -> None:
    profile = settings_env / "limits.toml"
    profile.write_text('[events.limits]\nchat = 2\n"gen_*" = 3\n\n[events.groups]\nslow = ["gen_*"]\n',
                       encoding="utf-8")
    loaded = load_settings(profile, ["events.limits.chat=5", "events.limits.slow=1"], environ={}, env_file=None)
    assert loaded.settings.events.limits == {"chat": 5, "gen_*": 3, "slow": 1}
    assert loaded.settings.events.groups == {"slow": ["gen_*"]}
    assert loaded.sources["events.limits"] == "--set"
    with pytest.raises(ConfigError) as refused:
        load_settings(profile, ["events.limits.chat=0"], environ={}, env_file=None)
    assert "events.limits" in str(refused.value) and "greater than or equal to 1" in str(refused.value)
