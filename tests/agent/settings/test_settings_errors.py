"""Problems: one line each naming key, source, bad value and what is allowed; all of them at once; no secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.settings import (
    MASK,
    ConfigError,
    load_settings,
)
from tests.agent.settings.helpers import (
    problems_of,
    write_profile,
)


def test_wrong_type_names_key_source_value_and_allowed(settings_env: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(environ={"CHAT_CONCURRENCY_LIMIT": "lots"})
    (line,) = problems_of(exc)
    assert line.startswith("events.chat_concurrency_limit = 'lots' (from env CHAT_CONCURRENCY_LIMIT): ")
    assert line.endswith("allowed: integer 1–10000")


def test_out_of_range_in_a_profile_names_file_table_and_key(settings_env: Path) -> None:
    path = write_profile(settings_env / "bad.toml", {"server.max_threads": 0})
    with pytest.raises(ConfigError) as exc:
        load_settings(path)
    (line,) = problems_of(exc)
    assert f"server.max_threads = 0 (from {path.resolve()} [server] max_threads)" in line
    assert "greater than or equal to 1" in line and "allowed: integer 1–10000" in line


def test_a_union_reports_the_reason_that_matters(settings_env: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(None, ["queue.status_update_rate=0"])
    assert "greater than 0" in problems_of(exc)[0]
    assert "allowed: auto or number >0 ≤3600" in problems_of(exc)[0]


def test_a_bad_list_item_is_numbered(settings_env: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(None, ["llm.providers=sim,gemini"])
    assert "item 2: input should be 'sim', 'openai', 'openrouter' or 'custom'" in problems_of(exc)[0]


def test_missing_cmw_env_file_is_a_problem(settings_env: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(environ={"CMW_ENV_FILE": "nope.env"})
    assert problems_of(exc) == ["CMW_ENV_FILE=nope.env (from env CMW_ENV_FILE): no such file"]


def test_every_problem_of_every_source_is_reported_at_once(settings_env: Path) -> None:
    path = write_profile(settings_env / "bad.toml", {"server.max_threads": -1, "server.colour": "red"})
    (settings_env / ".env").write_text("CMW_SIM__JITTER=2\n", encoding="utf-8")
    environ = {"CMW_BOGUS": "1", "GRADIO_QUEUE_MAX_SIZE": "big"}
    with pytest.raises(ConfigError) as exc:
        load_settings(path, ["events.chat_concurrency_limit=0", "oops"], environ=environ)
    text = "\n".join(problems_of(exc))
    for fragment in ("server.colour", "CMW_BOGUS", "--set 'oops'", "server.max_threads = -1", "sim.jitter = 2",
                     "queue.max_size = 'big'", "events.chat_concurrency_limit = 0"):
        assert fragment in text
    assert len(problems_of(exc)) == 7


def test_a_missing_profile_does_not_hide_environment_problems(settings_env: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings("nope", environ={"GRADIO_MAX_THREADS": "x"})
    assert len(problems_of(exc)) == 2


def test_secret_values_never_appear_in_problems(settings_env: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(None, flags={"llm.api_key": (12345678, "--key")})
    assert "12345678" not in str(exc.value)
    assert f"llm.api_key = {MASK} (from --key)" in str(exc.value)
