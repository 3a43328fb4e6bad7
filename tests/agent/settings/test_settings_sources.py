"""Sources: values read from the environment, `.env`, `--set` and TOML the way a person means them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from agent.settings import (
    ENV_TO_KEY,
    REGISTRY,
    ConfigError,
    load_settings,
    parse_assignments,
    read_profile,
)
from tests.agent.settings.helpers import (
    SEED_ENV,
    as_text,
    plain,
    problems_of,
    samples,
    write_profile,
)


@pytest.mark.parametrize(("name", "key"), sorted(ENV_TO_KEY.items()))
def test_every_env_name_sets_its_key(settings_env: Path, name: str, key: str) -> None:
    value = samples(REGISTRY[key])[0]
    loaded = load_settings(environ={name: as_text(value)}, env_file=None)
    assert plain(loaded.settings.get(key)) == value
    assert loaded.sources[key] == f"env:{name}"


@pytest.mark.parametrize("name", [name for name in SEED_ENV if not name.startswith("CMW_")])
def test_the_cmw_name_beats_the_seed_name(settings_env: Path, name: str) -> None:
    spec = REGISTRY[SEED_ENV[name]]
    seed_value, cmw_value = samples(spec)[:2]
    environ = {spec.env[-1]: as_text(cmw_value), name: as_text(seed_value)}
    loaded = load_settings(environ=environ, env_file=None)
    assert plain(loaded.settings.get(spec.key)) == cmw_value
    assert loaded.sources[spec.key] == f"env:{spec.env[-1]}"


def test_empty_text_empties_an_optional_key_in_env_set_and_toml(settings_env: Path) -> None:
    assert load_settings(environ={"GRADIO_QUEUE_MAX_SIZE": ""}).settings.queue.max_size is None
    assert load_settings(None, ["queue.max_size="]).settings.queue.max_size is None
    profile = settings_env / "unbounded.toml"
    profile.write_text('[queue]\nmax_size = ""\n', encoding="utf-8")
    assert load_settings(profile).settings.queue.max_size is None


def test_lists_read_from_commas_or_a_toml_array(settings_env: Path) -> None:
    assert load_settings(environ={"CMW_SIM__ERROR_STATUSES": "500, 502"}).settings.sim.error_statuses == [500, 502]
    assert load_settings(None, ["sim.error_statuses=[429]"]).settings.sim.error_statuses == [429]


def test_text_keys_keep_number_like_values_as_text(settings_env: Path) -> None:
    assert load_settings(None, ["llm.model=4"]).settings.llm.model == "4"
    assert load_settings(None, ['llm.model="gpt-4o"']).settings.llm.model == "gpt-4o"


@pytest.mark.parametrize("text", ["5\nx = 1", "5 # five", "5, 6"])
def test_text_that_only_starts_with_a_number_is_not_that_number(settings_env: Path, text: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(environ={"CHAT_CONCURRENCY_LIMIT": text})
    assert problems_of(exc)[0].startswith(f"events.chat_concurrency_limit = {text!r} (from env CHAT_CONCURRENCY_LIMIT)")


@pytest.mark.parametrize(
    ("flat", "expected"),
    [
        ({"events.chat_limits": 3}, "unknown key (did you mean events.limits?)"),
        ({"queue.chat_concurrency_limit": 3}, "unknown key (did you mean events.chat_concurrency_limit?)"),
        ({"sessions.max_sesions": 3}, "unknown key (did you mean sessions.max_sessions?)"),
    ],
)
def test_unknown_toml_key_suggests_the_right_one(settings_env: Path, flat: dict[str, Any], expected: str) -> None:
    path = write_profile(settings_env / "typo.toml", flat)
    with pytest.raises(ConfigError) as exc:
        load_settings(path)
    (line,) = problems_of(exc)
    assert f"(from {path.resolve()} [" in line
    assert expected in line


def test_a_group_written_as_a_value_is_explained(settings_env: Path) -> None:
    path = settings_env / "flat.toml"
    path.write_text("queue = 5\n", encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_settings(path)
    assert "queue is a group; write a [queue] table" in problems_of(exc)[0]


def test_unknown_cmw_env_var_suggests_the_right_one(settings_env: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(environ={"CMW_EVENTS__CHAT": "3"})
    assert problems_of(exc) == [
        "CMW_EVENTS__CHAT (from env CMW_EVENTS__CHAT): unknown setting"
        " (did you mean CMW_EVENTS__CHAT_CONCURRENCY_LIMIT?)"
    ]


def test_unknown_env_var_in_dotenv_names_the_file(settings_env: Path) -> None:
    (settings_env / ".env").write_text("CMW_QUEUE__MAXSIZE=3\n", encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_settings()
    line = problems_of(exc)[0]
    assert line.startswith(f"CMW_QUEUE__MAXSIZE (from {Path('.env')} CMW_QUEUE__MAXSIZE): unknown setting")
    assert "did you mean CMW_QUEUE__MAX_SIZE?" in line


def test_unknown_set_key_and_bad_set_syntax(settings_env: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_assignments(["llm.modle=x", "novalue", "=3"])
    assert problems_of(exc) == [
        "llm.modle (from --set llm.modle): unknown key (did you mean llm.model?); `cmw config show` lists every key",
        "--set 'novalue': expected KEY=VALUE, e.g. events.chat_concurrency_limit=4",
        "--set '=3': expected KEY=VALUE, e.g. events.chat_concurrency_limit=4",
    ]


def test_toml_syntax_error_names_file_line_and_column(settings_env: Path) -> None:
    path = settings_env / "broken.toml"
    path.write_text("[queue]\nmax_size = 1\nenabled = = true\n", encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_settings(path)
    assert problems_of(exc) == [f"{path.resolve()}:3:11: TOML syntax error: Invalid value"]


def test_unreadable_profile_is_a_problem_not_a_traceback(settings_env: Path) -> None:
    directory = settings_env / "dir.toml"
    directory.mkdir()
    with pytest.raises(ConfigError) as exc:
        read_profile(directory)
    assert problems_of(exc)[0].startswith(f"{directory}: cannot read profile: ")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_profile_without_read_permission(settings_env: Path) -> None:
    path = write_profile(settings_env / "secret.toml", {"queue.max_size": 3})
    path.chmod(0)
    with pytest.raises(ConfigError) as exc:
        load_settings(path)
    assert "cannot read profile: Permission denied" in problems_of(exc)[0]


def test_profile_that_is_not_utf8(settings_env: Path) -> None:
    path = settings_env / "latin1.toml"
    path.write_bytes(b"[llm]\nmodel = '\xe9'\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(path)
    assert problems_of(exc) == [f"{path.resolve()}: cannot read profile: not UTF-8 text"]
