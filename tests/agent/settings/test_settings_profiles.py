"""Profiles: the shipped ones, the one lookup by name or path, and writing new ones."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.settings import (
    REGISTRY,
    ConfigError,
    available_profiles,
    load_profile,
    load_settings,
    profile_environ,
    profile_toml,
    resolve_profile,
    shipped_profiles_dir,
)
from tests.agent.settings.helpers import (
    DESIGN_TABLE,
    PROFILES,
    problems_of,
    write_profile,
)


@pytest.mark.parametrize("profile", PROFILES)
def test_shipped_profiles_hold_the_design_table_values(settings_env: Path, profile: str) -> None:
    loaded = load_profile(profile)
    column = PROFILES.index(profile)
    for key, values in DESIGN_TABLE.items():
        assert loaded.settings.get(key) == values[column], key
        assert loaded.sources[key] == f"profile:{shipped_profiles_dir() / (profile + '.toml')}", key


@pytest.mark.parametrize("profile", PROFILES)
def test_shipped_profiles_load_without_warnings(settings_env: Path, profile: str) -> None:
    assert load_profile(profile).warnings == []


def test_cmw_profile_selects_the_profile(settings_env: Path) -> None:
    loaded = load_settings(environ={"CMW_PROFILE": "constrained"})
    assert loaded.profile_name == "constrained"
    assert loaded.settings.events.chat_concurrency_limit == 1


def test_the_profile_argument_beats_cmw_profile(settings_env: Path) -> None:
    assert load_settings("high-performance", environ={"CMW_PROFILE": "constrained"}).profile_name == "high-performance"


def test_a_user_profile_in_cmw_profiles_dir_is_found_by_name_and_shadows_a_shipped_one(settings_env: Path) -> None:
    write_profile(settings_env / "profiles" / "mine.toml", {"events.chat_concurrency_limit": 9})
    write_profile(settings_env / "profiles" / "balanced.toml", {"events.chat_concurrency_limit": 8})
    assert load_settings("mine").settings.events.chat_concurrency_limit == 9
    assert load_settings().settings.events.chat_concurrency_limit == 8
    assert set(available_profiles()) == {"balanced", "constrained", "high-performance", "mine"}


def test_cmw_profiles_dir_and_cmw_profile_may_come_from_dotenv(settings_env: Path) -> None:
    elsewhere = settings_env / "elsewhere"
    elsewhere.mkdir()
    write_profile(elsewhere / "team.toml", {"server.max_threads": 300})
    (settings_env / ".env").write_text(f"CMW_PROFILES_DIR={elsewhere}\nCMW_PROFILE=team\n", encoding="utf-8")
    environ = {k: v for k, v in os.environ.items() if k != "CMW_PROFILES_DIR"}
    loaded = load_settings(environ=environ)
    assert loaded.profile_name == "team"
    assert loaded.settings.server.max_threads == 300


def test_a_profile_by_path(settings_env: Path) -> None:
    path = write_profile(settings_env / "mine.toml", {"queue.max_size": 7})
    assert resolve_profile("./mine.toml") == path.resolve()
    assert load_settings("./mine.toml").settings.queue.max_size == 7


def test_load_profile_ignores_the_environment_but_honours_the_profiles_dir(settings_env: Path) -> None:
    write_profile(settings_env / "profiles" / "mine.toml", {"queue.max_size": 7})
    environ = {**os.environ, "GRADIO_QUEUE_MAX_SIZE": "9", "CHAT_CONCURRENCY_LIMIT": "oops"}
    loaded = load_profile("mine", environ=environ)
    assert loaded.settings.queue.max_size == 7
    assert loaded.sources["queue.max_size"].startswith("profile:")


def test_missing_profile_lists_the_available_ones(settings_env: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings("balance")
    (line,) = problems_of(exc)
    assert line.startswith("unknown profile 'balance' (from --profile) (did you mean balanced?); available: ")
    assert "balanced, constrained, high-performance" in line


def test_missing_profile_from_cmw_profile_says_so(settings_env: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(environ={"CMW_PROFILE": "nope"})
    assert "unknown profile 'nope' (from env CMW_PROFILE)" in problems_of(exc)[0]


def test_missing_profile_file(settings_env: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings("./nowhere.toml")
    assert problems_of(exc)[0].startswith("profile file ./nowhere.toml (from --profile) does not exist; available")


def test_profile_toml_round_trips_every_value_and_comments_every_key(settings_env: Path) -> None:
    source = load_profile("high-performance").settings
    text = profile_toml(source, title="t", description="d")
    path = settings_env / "copy.toml"
    path.write_text(text, encoding="utf-8")
    assert load_profile(path).settings == source
    for spec in REGISTRY.values():
        assert f"# {spec.description}" in text


def test_profile_toml_never_writes_secrets(settings_env: Path) -> None:
    settings = load_settings(environ={"OPENAI_API_KEY": "sk-live-123"}).settings
    assert "sk-live-123" not in profile_toml(settings, title="t", description="d")


@pytest.mark.parametrize("where", ["CMW_PROFILES_DIR", "XDG_CONFIG_HOME", ".env"])
def test_one_lookup_every_loader_finds_a_user_profile(
    settings_env: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """load_settings (serve, show, python -m agent, loadtest --spawn), load_profile (validate, diff, init --from)
    and the listing all look a name up the same way, wherever the user directory is configured."""
    monkeypatch.delenv("CMW_PROFILES_DIR")
    directory = settings_env / "config" / "cmw" / "profiles"  # XDG_CONFIG_HOME (set by settings_env)
    if where == "CMW_PROFILES_DIR":
        directory = settings_env / "mine"
        monkeypatch.setenv("CMW_PROFILES_DIR", str(directory))
    elif where == ".env":
        directory = settings_env / "from-dotenv"
        (settings_env / ".env").write_text(f"CMW_PROFILES_DIR={directory}\n", encoding="utf-8")
    directory.mkdir(parents=True)
    path = write_profile(directory / "mine.toml", {"events.chat_concurrency_limit": 9})
    assert resolve_profile("mine") == path
    assert profile_environ().get("CMW_PROFILES_DIR", str(directory)) == str(directory)
    assert available_profiles(profile_environ())["mine"] == path
    assert load_settings("mine").profile_path == path
    assert load_settings(environ={**os.environ, "CMW_PROFILE": "mine"}).settings.events.chat_concurrency_limit == 9
    assert load_profile("mine").settings.events.chat_concurrency_limit == 9


def test_the_environment_beats_dotenv_in_the_lookup(settings_env: Path) -> None:
    (settings_env / ".env").write_text("CMW_PROFILE=constrained\nCMW_PROFILES_DIR=/nowhere\n", encoding="utf-8")
    assert profile_environ({"CMW_PROFILE": "high-performance"}) == {
        "CMW_PROFILE": "high-performance",
        "CMW_PROFILES_DIR": "/nowhere",
    }
    assert resolve_profile(None, {"CMW_PROFILE": "high-performance"}).stem == "high-performance"
    assert resolve_profile(None, {}).stem == "constrained"
