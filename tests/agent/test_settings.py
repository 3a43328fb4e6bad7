"""agent.settings: the registry, the shipped profiles, precedence per key, problems and warnings."""

from __future__ import annotations

import os
import socket
import typing
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from annotated_types import Ge, Gt, Le
from pydantic import SecretStr

from agent.settings import (
    ENV_TO_KEY,
    MASK,
    REGISTRY,
    ConfigError,
    KeySpec,
    Settings,
    available_profiles,
    check_effect,
    display_value,
    load_profile,
    load_settings,
    parse_assignments,
    profile_toml,
    read_profile,
    resolve_profile,
    shipped_profiles_dir,
)

# The settings table of DESIGN.md, verbatim: key → (balanced, high-performance, constrained).
DESIGN_TABLE: dict[str, tuple[Any, Any, Any]] = {
    "queue.enabled": (True, True, True),
    "queue.default_concurrency_limit": (5, 10, 2),
    "queue.status_update_rate": ("auto", 2.0, "auto"),
    "queue.max_size": (100, 500, 20),
    "server.max_threads": (100, 200, 40),
    "events.chat_concurrency_limit": (3, 5, 1),
    "events.file_upload_concurrency_limit": (2, 3, 1),
    "events.file_processing_queue_id": ("file_processing",) * 3,
    "events.stats_refresh_concurrency_limit": (5, 10, 3),
    "events.logs_refresh_concurrency_limit": (5, 10, 3),
    "enable_concurrent_processing": (True, True, True),
}
PROFILES = ("balanced", "high-performance", "constrained")
# Seed env names of DESIGN.md and the product card (API keys, admin token).
SEED_ENV = {
    "GRADIO_ENABLE_QUEUE": "queue.enabled",
    "GRADIO_CONCURRENCY_LIMIT": "queue.default_concurrency_limit",
    "GRADIO_STATUS_UPDATE_RATE": "queue.status_update_rate",
    "GRADIO_QUEUE_MAX_SIZE": "queue.max_size",
    "GRADIO_MAX_THREADS": "server.max_threads",
    "CHAT_CONCURRENCY_LIMIT": "events.chat_concurrency_limit",
    "FILE_CONCURRENCY_LIMIT": "events.file_upload_concurrency_limit",
    "FILE_QUEUE_ID": "events.file_processing_queue_id",
    "STATS_CONCURRENCY_LIMIT": "events.stats_refresh_concurrency_limit",
    "LOGS_CONCURRENCY_LIMIT": "events.logs_refresh_concurrency_limit",
    "ENABLE_CONCURRENT_PROCESSING": "enable_concurrent_processing",
    "OPENAI_API_KEY": "llm.api_key",
    "OPENROUTER_API_KEY": "llm.openrouter_api_key",
    "CMW_ADMIN_TOKEN": "admin.token",
}


# --------------------------------------------------------------------------- helpers


def _arms(spec: KeySpec) -> list[Any]:
    args = [a for a in typing.get_args(spec.field.annotation) if a is not type(None)]
    union = typing.get_origin(spec.field.annotation) in (typing.Union, type(int | None))
    return args if union else [spec.field.annotation]


def _bounds(spec: KeySpec) -> tuple[float, float]:
    low: float = 0
    high: float = 1000
    for meta in spec.field.metadata:
        if isinstance(meta, Ge):
            low = float(meta.ge)  # type: ignore[arg-type]
        elif isinstance(meta, Gt):
            low = float(meta.gt) + 0.5  # type: ignore[operator]
        elif isinstance(meta, Le):
            high = float(meta.le)  # type: ignore[arg-type]
    return low, high


def samples(spec: KeySpec) -> list[Any]:
    """Five valid values, each different from the default and from its neighbours in the list."""
    arms = _arms(spec)
    default = spec.default
    if arms == [bool]:
        return [not default, default, not default, default, not default]
    if spec.key == "queue.status_update_rate":
        return [1.5, 2.5, 3.5, 4.5, 5.5]
    if spec.key == "sessions.store":
        return ["memory", "redis://h2", "redis://h3", "memory", "redis://h5"]
    if spec.key == "llm.providers":
        return [["sim"], ["openai"], ["custom"], ["openrouter"], ["sim", "custom"]]
    if spec.key == "llm.models":
        return [["sim:a"], ["openai:gpt-4o"], ["custom:qwen2.5:7b"], ["openrouter:x/y"], ["sim:a", "custom:b"]]
    if spec.key == "sim.error_statuses":
        return [[401], [402], [403], [404], [405]]
    if spec.key == "server.trusted_proxies":
        return [["10.0.0.1"], ["10.0.0.0/8"], ["192.168.1.1", "::1"], ["fd00::/8"], ["172.16.0.9"]]
    if spec.key == "admin.token":
        return [f"token-{i}-{'x' * 32}" for i in range(5)]
    arm = arms[0]
    if typing.get_origin(arm) is typing.Literal:
        options = [o for o in typing.get_args(arm) if o != default]
        return [options[i % len(options)] for i in range(5)]
    if arm in (int, float):
        low, high = _bounds(spec)
        step = 1 if arm is int else min(1.0, (high - low) / 10)
        values: list[Any] = []
        candidate = low
        while len(values) < 5:
            candidate += step
            if candidate != default:
                values.append(int(candidate) if arm is int else round(candidate, 6))
        return values
    if arm is Path:
        return [Path(f"/tmp/state{i}") for i in range(5)]
    return [f"/v{i}" if spec.key.endswith("root_path") else f"v{i}" for i in range(5)]


def as_text(value: Any) -> str:
    """How a person writes the value in an env var or --set."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    return str(value)


def plain(value: Any) -> Any:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def write_profile(path: Path, flat: dict[str, Any]) -> Path:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        *groups, leaf = key.split(".")
        node = nested
        for group in groups:
            node = node.setdefault(group, {})
        node[leaf] = str(value) if isinstance(value, Path) else value
    top = {k: v for k, v in nested.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in nested.items() if isinstance(v, dict)}
    path.write_text(tomli_w.dumps({**top, **tables}), encoding="utf-8")
    return path


def problems_of(exc: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    return [str(p) for p in exc.value.problems]


# --------------------------------------------------------------------------- registry and profiles


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


@pytest.mark.parametrize("key", list(REGISTRY))
def test_every_key_has_a_description_an_allowed_range_and_a_cmw_env_name(key: str) -> None:
    spec = REGISTRY[key]
    assert spec.description.strip()
    assert spec.allowed.strip()
    assert f"CMW_{key.upper().replace('.', '__')}" in spec.env


def test_seed_env_names_are_exactly_those_of_the_design() -> None:
    seeds = {name: key for name, key in ENV_TO_KEY.items() if not name.startswith("CMW_") or name == "CMW_ADMIN_TOKEN"}
    assert seeds == SEED_ENV
    for name, key in SEED_ENV.items():
        assert REGISTRY[key].env[0] == name, "seed names come first"


def test_secrets_are_the_api_keys_and_the_admin_token() -> None:
    secrets = {k for k, spec in REGISTRY.items() if spec.secret}
    assert secrets == {"llm.api_key", "llm.openrouter_api_key", "llm.custom_api_key", "admin.token"}


# --------------------------------------------------------------------------- precedence, key by key


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


def test_chat_concurrency_limit_from_the_seed_env_name(settings_env: Path) -> None:
    loaded = load_settings(environ={"CHAT_CONCURRENCY_LIMIT": "7"})
    described = loaded.describe()["events.chat_concurrency_limit"]
    assert described["value"] == 7
    assert described["source"] == "env:CHAT_CONCURRENCY_LIMIT"
    assert described["env"] == ["CHAT_CONCURRENCY_LIMIT", "CMW_EVENTS__CHAT_CONCURRENCY_LIMIT"]


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


# --------------------------------------------------------------------------- profile selection


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


def test_cmw_env_file_names_the_dotenv_file(settings_env: Path) -> None:
    (settings_env / "custom.env").write_text("CHAT_CONCURRENCY_LIMIT=4\n", encoding="utf-8")
    loaded = load_settings(environ={"CMW_ENV_FILE": str(settings_env / "custom.env")})
    assert loaded.settings.events.chat_concurrency_limit == 4
    assert loaded.sources["events.chat_concurrency_limit"] == ".env"


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


# --------------------------------------------------------------------------- problems


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


@pytest.mark.parametrize(
    ("flat", "expected"),
    [
        ({"events.chat_limit": 3}, "unknown key (did you mean events.chat_concurrency_limit?)"),
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


def test_display_value_masks_secrets() -> None:
    spec = REGISTRY["llm.api_key"]
    assert display_value(SecretStr("sk-live"), spec) == MASK
    assert display_value(None, spec) is None
    assert display_value(Path("/x"), REGISTRY["server.state_dir"]) == "/x"


def test_describe_masks_secrets(settings_env: Path) -> None:
    loaded = load_settings(environ={"OPENAI_API_KEY": "sk-live-123"})
    assert loaded.describe()["llm.api_key"] == {
        "value": MASK,
        "source": "env:OPENAI_API_KEY",
        "env": ["OPENAI_API_KEY", "CMW_LLM__API_KEY"],
        "allowed": "secret text or empty",
        "description": REGISTRY["llm.api_key"].description,
    }


# --------------------------------------------------------------------------- writing profiles


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


# --------------------------------------------------------------------------- effect warnings


def _warnings(**groups: Any) -> list[str]:
    return check_effect(Settings(**groups))


@pytest.mark.parametrize(
    ("groups", "fragment"),
    [
        ({"events": {"chat_concurrency_limit": 50}, "server": {"max_threads": 40}},
         "events.chat_concurrency_limit=50 exceeds server.max_threads=40"),
        ({"queue": {"default_concurrency_limit": 50}, "server": {"max_threads": 40}},
         "queue.default_concurrency_limit=50 exceeds server.max_threads=40"),
        ({"server": {"max_threads": 10}}, "events.*_concurrency_limit add up to 15 > server.max_threads=10"),
        ({"enable_concurrent_processing": False}, "enable_concurrent_processing=false: every event runs one at a time"),
        ({"queue": {"max_size": 2}}, "queue.max_size=2 < events.chat_concurrency_limit=3"),
        ({"queue": {"enabled": False}}, "queue.enabled=false: Gradio 6 always queues events"),
        ({"queue": {"max_size": None}}, "queue.status_update_rate='auto' with queue.max_size=unbounded"),
        ({"sessions": {"max_sessions": 2}}, "sessions.max_sessions=2 < events.chat_concurrency_limit=3"),
        ({"server": {"workers": 2}}, "server.workers=2 with sessions.store='sqlite'"),
        ({"server": {"port": 8000}, "sim": {"port": 8000}}, "server.port and sim.port are both 8000"),
        ({"llm": {"provider": "custom", "providers": ["custom"]}}, "llm.provider=custom needs llm.base_url"),
        ({"llm": {"provider": "openai"}}, "llm.provider=openai without llm.api_key"),
        ({"llm": {"provider": "openrouter"}}, "llm.provider=openrouter without llm.openrouter_api_key"),
        ({"llm": {"model": "gpt-4o", "models": ["sim:cmw-sim"], "provider": "sim"}}, "llm.model=gpt-4o is not in"),
        ({"sim": {"error_rate": 0.6, "stall_rate": 0.6}}, "= 1.2 > 1"),
        ({"server": {"host": "0.0.0.0"}}, "server.host=0.0.0.0 exposes the app; set admin.token"),
    ],
)
def test_settings_that_cannot_take_effect_are_warned_about(groups: dict[str, Any], fragment: str) -> None:
    assert any(fragment in warning for warning in _warnings(**groups)), _warnings(**groups)


def test_a_queue_of_waiting_events_below_the_chat_limit_is_fine_when_sequential() -> None:
    assert not any("queue.max_size" in w for w in _warnings(enable_concurrent_processing=False, queue={"max_size": 2}))


def test_gradio_default_concurrency_limit_in_the_environment_is_called_out(settings_env: Path) -> None:
    loaded = load_settings(environ={"GRADIO_DEFAULT_CONCURRENCY_LIMIT": "8"})
    assert any(w.startswith("GRADIO_DEFAULT_CONCURRENCY_LIMIT is ignored") for w in loaded.warnings)


def test_gradio_behaves_as_the_warnings_say() -> None:
    """The facts behind check_effect, checked on the installed Gradio so an upgrade cannot make them stale."""
    gr = pytest.importorskip("gradio")
    from gradio.queueing import EventQueue, Queue

    with gr.Blocks() as demo:
        box = gr.Textbox()
        box.submit(lambda text: text, box, box)
    # Gradio 6 queues every Blocks from construction on: queue.enabled=false cannot turn it off.
    assert demo._queue is not None
    demo.queue(status_update_rate="auto", max_size=3, default_concurrency_limit=5)
    assert demo._queue.live_updates is True  # 'auto' broadcasts estimates as jobs start
    # max_size counts waiting events only: a running job has left its event queue.
    queue = Queue(live_updates=True, concurrency_count=1, update_intervals=1, max_size=1, blocks=demo)
    chat = EventQueue("chat", 1)
    chat.current_concurrency = 1
    queue.event_queue_per_concurrency_id["chat"] = chat
    assert len(queue) == 0
    chat.queue.append(object())  # type: ignore[arg-type]
    assert len(queue) == 1
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        demo.launch(server_name="127.0.0.1", server_port=port, max_threads=7, prevent_thread_lock=True, quiet=True)
        # launch(max_threads) sizes the queue's worker slots: no more jobs run at once, whatever the limits.
        assert demo._queue.max_thread_count == 7
        assert len(demo._queue.active_jobs) == 7
    finally:
        demo.close(verbose=False)


@pytest.mark.parametrize("text", ["5\nx = 1", "5 # five", "5, 6"])
def test_text_that_only_starts_with_a_number_is_not_that_number(settings_env: Path, text: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(environ={"CHAT_CONCURRENCY_LIMIT": text})
    assert problems_of(exc)[0].startswith(f"events.chat_concurrency_limit = {text!r} (from env CHAT_CONCURRENCY_LIMIT)")


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
