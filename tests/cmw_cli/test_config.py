"""`cmw config show|profiles|validate|diff|init|path`, driven through the real Typer app."""

from __future__ import annotations

import json
import string
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from rich.console import Console
from typer.testing import CliRunner, Result

from agent.settings import MASK, REGISTRY, ConfigError, load_profile, load_settings, shipped_profiles_dir
from cmw_cli import config as config_commands
from cmw_cli.main import app

runner = CliRunner()
SECRET = "sk-live-DO-NOT-PRINT-4f9a-0123456789"  # long enough for admin.token


def cmw(*args: str, env: dict[str, str] | None = None) -> Result:
    return runner.invoke(app, list(args), env=env)


def assert_bad_input(result: Result, *fragments: str) -> list[str]:
    """Exit 2, only `error:` lines on stderr, no traceback; returns the error lines."""
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert lines and all(line.startswith("error: ") for line in lines), lines
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)
    return lines


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def terminal(monkeypatch: pytest.MonkeyPatch, width: int) -> None:
    """Print the config commands' output as on a terminal `width` columns wide."""
    monkeypatch.setattr(config_commands, "console", Console(width=width))


@pytest.fixture
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    """A terminal wide enough for one table column per field, so cells do not wrap."""
    terminal(monkeypatch, 220)


# --------------------------------------------------------------------------- show


def test_show_json_has_the_stable_shape_for_every_key(settings_env: Path) -> None:
    result = cmw("config", "show", "--json")
    assert result.exit_code == 0, result.stderr
    shown = json.loads(result.stdout)
    assert list(shown) == list(REGISTRY)
    for key, entry in shown.items():
        assert set(entry) == {"value", "source", "env", "allowed", "description"}, key
        assert entry["env"] == list(REGISTRY[key].env)


def test_show_high_performance_reports_design_values_and_their_profile_source(settings_env: Path) -> None:
    shown = json.loads(cmw("config", "show", "-p", "high-performance", "--json").stdout)
    path = shipped_profiles_dir() / "high-performance.toml"
    expected = {
        "queue.default_concurrency_limit": 10,
        "queue.status_update_rate": 2.0,
        "queue.max_size": 500,
        "server.max_threads": 200,
        "events.chat_concurrency_limit": 5,
        "events.file_upload_concurrency_limit": 3,
        "events.stats_refresh_concurrency_limit": 10,
        "events.logs_refresh_concurrency_limit": 10,
    }
    for key, value in expected.items():
        assert shown[key]["value"] == value
        assert shown[key]["source"] == f"profile:{path}"
    assert shown["server.port"]["source"] == "default"


def test_show_reports_a_seed_env_var_as_the_source(settings_env: Path, wide: None) -> None:
    shown = json.loads(cmw("config", "show", "--json", env={"CHAT_CONCURRENCY_LIMIT": "7"}).stdout)
    assert shown["events.chat_concurrency_limit"]["value"] == 7
    assert shown["events.chat_concurrency_limit"]["source"] == "env:CHAT_CONCURRENCY_LIMIT"
    table = cmw("config", "show", env={"CHAT_CONCURRENCY_LIMIT": "7"}).stdout
    (row,) = [line for line in table.splitlines() if "events.chat_concurrency_limit" in line]
    assert [cell.strip() for cell in row.strip("│ ").split("│")][:3] == [
        "events.chat_concurrency_limit",
        "7",
        "env:CHAT_CONCURRENCY_LIMIT",
    ]


def test_show_table_has_every_key_value_source_allowed_and_description(settings_env: Path, wide: None) -> None:
    result = cmw("config", "show", "-p", "constrained")
    assert result.exit_code == 0
    assert "profile constrained:" in result.stdout
    for header in ("key", "value", "source", "allowed", "description"):
        assert f" {header} " in result.stdout.splitlines()[2]
    for key in REGISTRY:
        assert f" {key} " in result.stdout


def test_show_narrow_terminal_keeps_every_key(settings_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    terminal(monkeypatch, 80)
    result = cmw("config", "show")
    assert result.exit_code == 0
    assert all(len(line) <= 80 for line in result.stdout.splitlines())
    for key in REGISTRY:
        assert key in result.stdout


def test_show_set_overrides_and_names_the_source(settings_env: Path) -> None:
    shown = json.loads(cmw("config", "show", "--set", "sim.ttft_ms=5", "--set", "llm.model=4o", "--json").stdout)
    assert (shown["sim.ttft_ms"]["value"], shown["sim.ttft_ms"]["source"]) == (5.0, "--set")
    assert shown["llm.model"]["value"] == "4o"


def test_show_prints_warnings_on_stderr_and_keeps_stdout_json(settings_env: Path) -> None:
    result = cmw("config", "show", "--json", "--set", "server.max_threads=2")
    assert result.exit_code == 0
    json.loads(result.stdout)
    assert "warning: events.chat_concurrency_limit=3 exceeds server.max_threads=2" in result.stderr


def test_show_honours_cmw_profile_and_dotenv(settings_env: Path) -> None:
    write(settings_env / ".env", "GRADIO_QUEUE_MAX_SIZE=33\n")
    shown = json.loads(cmw("config", "show", "--json", env={"CMW_PROFILE": "constrained"}).stdout)
    assert shown["events.chat_concurrency_limit"]["value"] == 1
    assert (shown["queue.max_size"]["value"], shown["queue.max_size"]["source"]) == (33, ".env")


def test_show_finds_user_profiles_in_cmw_profiles_dir(settings_env: Path) -> None:
    write(settings_env / "profiles" / "team.toml", "[server]\nmax_threads = 321\n")
    shown = json.loads(cmw("config", "show", "-p", "team", "--json").stdout)
    assert shown["server.max_threads"]["value"] == 321


# --------------------------------------------------------------------------- error paths


def test_wrong_type_from_env(settings_env: Path) -> None:
    result = cmw("config", "show", env={"GRADIO_MAX_THREADS": "many"})
    assert_bad_input(result, "server.max_threads = 'many' (from env GRADIO_MAX_THREADS)", "allowed: integer 1–10000")


def test_out_of_range_from_cmw_env(settings_env: Path) -> None:
    result = cmw("config", "show", env={"CMW_SIM__JITTER": "1.5"})
    assert_bad_input(
        result, "sim.jitter = 1.5 (from env CMW_SIM__JITTER)", "less than or equal to 1", "allowed: number 0–1"
    )


def test_wrong_type_in_toml(settings_env: Path) -> None:
    path = write(settings_env / "bad.toml", '[events]\nchat_concurrency_limit = "three"\n')
    assert_bad_input(
        cmw("config", "show", "-p", str(path)),
        f"events.chat_concurrency_limit = 'three' (from {path} [events] chat_concurrency_limit)",
        "allowed: integer 1–10000",
    )


def test_unknown_key_in_toml_env_and_set_with_did_you_mean(settings_env: Path) -> None:
    path = write(settings_env / "typo.toml", "[queue]\nmax_sise = 3\n")
    result = cmw("config", "show", "-p", str(path), "--set", "sim.ttft=3", env={"CMW_LLM__MODLE": "x"})
    lines = assert_bad_input(result)
    assert len(lines) == 3
    assert "queue.max_sise (from " in result.stderr and "(did you mean queue.max_size?)" in result.stderr
    assert "CMW_LLM__MODLE (from env CMW_LLM__MODLE): unknown setting (did you mean CMW_LLM__MODEL?)" in result.stderr
    assert "sim.ttft (from --set sim.ttft): unknown key (did you mean sim.ttft_ms?)" in result.stderr


def test_missing_profile_lists_available_ones(settings_env: Path) -> None:
    assert_bad_input(
        cmw("config", "show", "-p", "fast"),
        "unknown profile 'fast' (from --profile)",
        "available: balanced, constrained, high-performance",
    )


def test_missing_profile_from_cmw_profile(settings_env: Path) -> None:
    result = cmw("config", "show", env={"CMW_PROFILE": "fast"})
    assert_bad_input(result, "unknown profile 'fast' (from env CMW_PROFILE)")


def test_toml_syntax_error_names_file_and_line(settings_env: Path) -> None:
    path = write(settings_env / "broken.toml", "[server]\nmax_threads = 10\nport = \n")
    (line,) = assert_bad_input(cmw("config", "show", "-p", str(path)))
    assert line.startswith(f"error: {path}:3:") and "TOML syntax error" in line


def test_unreadable_profile(settings_env: Path) -> None:
    path = settings_env / "binary.toml"
    path.write_bytes(b"\xff\xfe\x00")
    assert_bad_input(cmw("config", "show", "-p", str(path)), f"{path}: cannot read profile: not UTF-8 text")


def test_bad_set_syntax(settings_env: Path) -> None:
    assert_bad_input(cmw("config", "show", "--set", "events.chat_concurrency_limit"), "expected KEY=VALUE")


def test_table_like_text_in_errors_is_printed_verbatim(settings_env: Path) -> None:
    path = write(settings_env / "list.toml", "[sim]\nerror_statuses = [200]\n")
    result = cmw("config", "show", "-p", str(path))
    assert_bad_input(result, "sim.error_statuses = [200] (from ", "[sim] error_statuses")


def test_every_problem_is_one_line(settings_env: Path) -> None:
    path = write(settings_env / "bad.toml", "[queue]\nmax_size = 0\n[server]\nport = -1\n")
    lines = assert_bad_input(cmw("config", "show", "-p", str(path), env={"CHAT_CONCURRENCY_LIMIT": "x"}))
    assert len(lines) == 3


# Keys whose values have a type or range to get wrong (free text accepts anything).
CHECKED_KEYS = [
    key
    for key, spec in REGISTRY.items()
    if spec.allowed not in ("text", "secret text or empty", "path or empty")
    and key != "events.file_processing_queue_id"
]
printable = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
bad_text = st.one_of(
    printable,
    st.integers(min_value=-(10**12), max_value=-1).map(str),
    st.integers(min_value=10**7, max_value=10**15).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    # More digits than Python converts to an int (sys.get_int_max_str_digits(), 4300): tomllib raises ValueError.
    st.integers(min_value=4301, max_value=6000).map(lambda digits: "7" * digits),
)
toml_values = st.one_of(
    bad_text,
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True),
    st.booleans(),
    st.lists(st.one_of(st.integers(min_value=-(10**6), max_value=10**6), printable), max_size=3),
    st.dictionaries(st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=4), st.integers(), max_size=2),
)


def _rejected(**kwargs: Any) -> bool:
    try:
        load_settings(env_file=None, **kwargs)
    except ConfigError:
        return True
    return False


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(CHECKED_KEYS), text=bad_text, seed_name=st.booleans())
def test_random_bad_env_values_exit_2_without_traceback(
    settings_env: Path, key: str, text: str, seed_name: bool
) -> None:
    name = REGISTRY[key].env[0 if seed_name else -1]
    assume(_rejected(environ={name: text}))
    assert_bad_input(cmw("config", "show", env={name: text}), f"(from env {name})")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(CHECKED_KEYS), value=toml_values)
def test_random_bad_toml_values_exit_2_without_traceback(settings_env: Path, key: str, value: Any) -> None:
    *groups, leaf = key.split(".")
    document: dict[str, Any] = {leaf: value}
    for group in reversed(groups):
        document = {group: document}
    path = write(settings_env / "random.toml", tomli_w.dumps(document))
    assume(_rejected(profile=path, environ={}))
    assert_bad_input(cmw("config", "show", "-p", str(path)), f"(from {path}")


HUGE = "7" * 5000  # past Python's int conversion limit (4300 digits)


@pytest.mark.parametrize("source", ["env", "seed env", ".env", "--set", "profile", "list item"])
def test_a_5000_digit_integer_from_any_source_is_one_line_and_exit_2(settings_env: Path, source: str) -> None:
    args: list[str] = ["config", "show"]
    env: dict[str, str] = {}
    if source == "env":
        env["CMW_EVENTS__CHAT_CONCURRENCY_LIMIT"] = HUGE
    elif source == "seed env":
        env["CHAT_CONCURRENCY_LIMIT"] = HUGE
    elif source == ".env":
        write(settings_env / ".env", f"CHAT_CONCURRENCY_LIMIT={HUGE}\n")
    elif source == "--set":
        args += ["--set", f"events.chat_concurrency_limit={HUGE}"]
    elif source == "profile":
        args += ["-p", str(write(settings_env / "huge.toml", f"[events]\nchat_concurrency_limit = {HUGE}\n"))]
    else:
        args += ["--set", f"sim.error_statuses=500,{HUGE}"]
    lines = assert_bad_input(cmw(*args, env=env))
    assert len(lines) == 1 and len(lines[0]) < 300, lines
    assert "events.chat_concurrency_limit" in lines[0] or "sim.error_statuses" in lines[0] or "huge.toml" in lines[0]


# --------------------------------------------------------------------------- profiles


def test_profiles_side_by_side(settings_env: Path, wide: None) -> None:
    result = cmw("config", "profiles")
    assert result.exit_code == 0
    header = next(line for line in result.stdout.splitlines() if "balanced" in line and "constrained" in line)
    assert header.index("balanced") < header.index("constrained") < header.index("high-performance")
    row = next(line for line in result.stdout.splitlines() if "events.chat_concurrency_limit" in line)
    assert [cell.strip() for cell in row.strip("│ ").split("│")][1:] == ["3", "1", "5"]


def test_profiles_json_includes_user_profiles_and_marks_invalid_ones(settings_env: Path, wide: None) -> None:
    write(settings_env / "profiles" / "mine.toml", "[events]\nchat_concurrency_limit = 7\n")
    write(settings_env / "profiles" / "broken.toml", "[events]\nchat_concurrency_limit = 0\n")
    result = cmw("config", "profiles", "--json")
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert list(report) == ["balanced", "broken", "constrained", "high-performance", "mine"]
    assert report["mine"]["values"]["events.chat_concurrency_limit"] == 7
    assert report["high-performance"]["values"]["queue.max_size"] == 500
    assert report["balanced"]["description"].startswith("Default")
    assert report["broken"]["ok"] is False and "greater than or equal to 1" in report["broken"]["problems"][0]
    table = cmw("config", "profiles").stdout
    assert "invalid" in table and "greater than or equal to 1" in table


def test_profiles_ignore_the_environment(settings_env: Path) -> None:
    report = json.loads(cmw("config", "profiles", "--json", env={"CHAT_CONCURRENCY_LIMIT": "9"}).stdout)
    assert report["balanced"]["values"]["events.chat_concurrency_limit"] == 3


# --------------------------------------------------------------------------- validate


def test_validate_the_shipped_profiles(settings_env: Path) -> None:
    result = cmw("config", "validate", "balanced", "high-performance", "constrained")
    assert result.exit_code == 0
    assert [line.split()[:2] for line in result.stdout.splitlines()] == [
        ["ok", "balanced"],
        ["ok", "high-performance"],
        ["ok", "constrained"],
    ]


def test_validate_without_arguments_checks_every_available_profile(settings_env: Path) -> None:
    write(settings_env / "profiles" / "mine.toml", "[queue]\nmax_size = 10\n")
    results = json.loads(cmw("config", "validate", "--json").stdout)
    assert [r["target"] for r in results] == ["balanced", "constrained", "high-performance", "mine"]


def test_validate_reports_each_problem_and_exits_2(settings_env: Path) -> None:
    bad = write(settings_env / "bad.toml", "[queue]\nmax_size = -1\nmax_sise = 2\n")
    result = cmw("config", "validate", "balanced", str(bad), "nope")
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert "ok       balanced" in result.stdout
    assert f"invalid  {bad}: 2 problems" in result.stdout
    assert "invalid  nope: 1 problem" in result.stdout
    assert "queue.max_size = -1" in result.stdout and "did you mean queue.max_size?" in result.stdout


def test_validate_json_and_warnings(settings_env: Path) -> None:
    risky = write(settings_env / "risky.toml", "[server]\nmax_threads = 4\n")
    result = cmw("config", "validate", str(risky), "--json")
    assert result.exit_code == 0
    (entry,) = json.loads(result.stdout)
    assert entry["ok"] is True and entry["path"] == str(risky)
    assert any("exceeds server.max_threads=4" in w for w in entry["warnings"])
    assert "warning: " in cmw("config", "validate", str(risky)).stdout


def test_validate_judges_the_file_not_the_shell(settings_env: Path) -> None:
    assert cmw("config", "validate", "balanced", env={"CHAT_CONCURRENCY_LIMIT": "x"}).exit_code == 0


# --------------------------------------------------------------------------- diff


def test_diff_balanced_and_high_performance(settings_env: Path, wide: None) -> None:
    result = cmw("config", "diff", "balanced", "high-performance", "--json")
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert report["differences"] == {
        "queue.default_concurrency_limit": {"a": 5, "b": 10},
        "queue.status_update_rate": {"a": "auto", "b": 2.0},
        "queue.max_size": {"a": 100, "b": 500},
        "server.max_threads": {"a": 100, "b": 200},
        "events.chat_concurrency_limit": {"a": 3, "b": 5},
        "events.file_upload_concurrency_limit": {"a": 2, "b": 3},
        "events.stats_refresh_concurrency_limit": {"a": 5, "b": 10},
        "events.logs_refresh_concurrency_limit": {"a": 5, "b": 10},
    }
    assert report["a"]["path"] == str(shipped_profiles_dir() / "balanced.toml")
    table = cmw("config", "diff", "balanced", "high-performance").stdout
    assert "8 keys differ" in table
    row = next(line for line in table.splitlines() if "queue.max_size" in line)
    assert [cell.strip() for cell in row.strip("│ ").split("│")] == ["queue.max_size", "100", "500"]


def test_diff_of_identical_profiles(settings_env: Path) -> None:
    result = cmw("config", "diff", "balanced", str(shipped_profiles_dir() / "balanced.toml"))
    assert result.exit_code == 0
    assert "hold the same settings" in result.stdout


def test_diff_with_a_missing_profile(settings_env: Path) -> None:
    assert_bad_input(cmw("config", "diff", "balanced", "turbo"), "unknown profile 'turbo'")


def test_diff_shows_whether_a_secret_is_set_not_its_value(settings_env: Path) -> None:
    keyed = write(settings_env / "keyed.toml", f'[llm]\napi_key = "{SECRET}"\n')
    report = json.loads(cmw("config", "diff", "balanced", str(keyed), "--json").stdout)
    assert report["differences"] == {"llm.api_key": {"a": None, "b": "set"}}


# --------------------------------------------------------------------------- init


def test_init_writes_a_commented_profile_into_cmw_profiles_dir_that_validates(settings_env: Path) -> None:
    result = cmw("config", "init", "mine")
    assert result.exit_code == 0, result.stderr
    path = settings_env / "profiles" / "mine.toml"
    assert f"wrote {path}" in result.stdout
    text = path.read_text(encoding="utf-8")
    for spec in REGISTRY.values():
        assert f"# {spec.description}" in text
    assert load_profile("mine").settings == load_settings(environ={}, env_file=None, use_profile=False).settings
    assert cmw("config", "validate", "mine").exit_code == 0


def test_init_from_a_profile_copies_its_values(settings_env: Path) -> None:
    assert cmw("config", "init", "fast", "--from", "high-performance", "--description", "Ours.").exit_code == 0
    copied = load_profile("fast")
    assert copied.settings == load_profile("high-performance").settings
    assert tomllib.loads((settings_env / "profiles" / "fast.toml").read_text())["profile"]["description"] == "Ours."


def test_init_to_a_path_or_a_directory(settings_env: Path) -> None:
    assert cmw("config", "init", "./here.toml", "--from", "constrained").exit_code == 0
    assert load_profile("./here.toml").settings.events.chat_concurrency_limit == 1
    assert cmw("config", "init", "x", "--dir", str(settings_env / "elsewhere")).exit_code == 0
    assert (settings_env / "elsewhere" / "x.toml").is_file()


def test_init_refuses_to_overwrite_without_force(settings_env: Path) -> None:
    assert cmw("config", "init", "mine").exit_code == 0
    assert_bad_input(cmw("config", "init", "mine"), "already exists; pass --force")
    assert cmw("config", "init", "mine", "--force", "--from", "constrained").exit_code == 0
    assert load_profile("mine").settings.server.max_threads == 40


@pytest.mark.parametrize(("name", "fragment"), [("bad name", "profile name 'bad name'"), ("x/y", "ends in .toml")])
def test_init_rejects_bad_names(settings_env: Path, name: str, fragment: str) -> None:
    assert_bad_input(cmw("config", "init", name), fragment)


def test_init_from_a_missing_profile(settings_env: Path) -> None:
    assert_bad_input(cmw("config", "init", "mine", "--from", "nope"), "unknown profile 'nope'")
    assert not (settings_env / "profiles" / "mine.toml").exists()


def test_init_does_not_copy_secrets(settings_env: Path) -> None:
    keyed = write(settings_env / "keyed.toml", f'[llm]\napi_key = "{SECRET}"\n')
    result = cmw("config", "init", "copy", "--from", str(keyed))
    assert result.exit_code == 0
    assert "warning: llm.api_key not copied" in result.stderr
    assert SECRET not in (settings_env / "profiles" / "copy.toml").read_text()


@pytest.mark.parametrize("where", ["CMW_PROFILES_DIR", "XDG_CONFIG_HOME", ".env"])
def test_every_command_finds_the_profile_init_just_wrote(
    settings_env: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """One profile lookup: `config init mine` writes where validate, show, diff, profiles and path look."""
    monkeypatch.delenv("CMW_PROFILES_DIR")
    directory = settings_env / "config" / "cmw" / "profiles"  # $XDG_CONFIG_HOME/cmw/profiles (settings_env)
    if where == "CMW_PROFILES_DIR":
        directory = settings_env / "mine-dir"
        monkeypatch.setenv("CMW_PROFILES_DIR", str(directory))
    elif where == ".env":
        directory = settings_env / "dotenv-dir"
        write(settings_env / ".env", f"CMW_PROFILES_DIR={directory}\n")
    path = directory / "mine.toml"
    assert cmw("config", "init", "mine", "--from", "constrained").exit_code == 0
    assert path.is_file()

    validated = cmw("config", "validate", "mine", "--json")
    assert validated.exit_code == 0, validated.output
    assert json.loads(validated.stdout)[0]["path"] == str(path)
    shown = json.loads(cmw("config", "show", "-p", "mine", "--json").stdout)
    assert shown["events.chat_concurrency_limit"] == {**shown["events.chat_concurrency_limit"], "value": 1,
                                                      "source": f"profile:{path}"}
    differ = json.loads(cmw("config", "diff", "balanced", "mine", "--json").stdout)
    assert differ["b"]["path"] == str(path)
    assert differ["differences"]["events.chat_concurrency_limit"] == {"a": 3, "b": 1}
    assert json.loads(cmw("config", "profiles", "--json").stdout)["mine"]["path"] == str(path)
    places = json.loads(cmw("config", "path", "--json", env={"CMW_PROFILE": "mine"}).stdout)
    assert (places["profiles_dir"], places["profile"]) == (str(directory), str(path))


# --------------------------------------------------------------------------- path


def test_path_tells_where_cmw_looks(settings_env: Path) -> None:
    places = json.loads(cmw("config", "path", "--json").stdout)
    assert places == {
        "profiles_dir": str(settings_env / "profiles"),
        "shipped_profiles_dir": str(shipped_profiles_dir()),
        "env_file": str(settings_env / ".env"),
        "profile": str(shipped_profiles_dir() / "balanced.toml"),
        "state_dir": str(settings_env / "state" / "cmw"),
    }
    assert cmw("config", "path").exit_code == 0


def test_path_names_the_state_dir_the_server_uses_when_xdg_state_home_is_relative(
    settings_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The XDG spec says a relative $XDG_STATE_HOME is ignored; `config path` and the server both ignore it."""
    from agent.sessions.store import state_dir as server_state_dir

    monkeypatch.setenv("HOME", str(settings_env / "home"))
    monkeypatch.setenv("XDG_STATE_HOME", "relative/state")
    named = json.loads(cmw("config", "path", "--json").stdout)["state_dir"]
    assert named == str(settings_env / "home" / ".local" / "state" / "cmw")
    assert named == str(server_state_dir(load_settings().settings))


def test_path_survives_broken_settings(settings_env: Path) -> None:
    result = cmw("config", "path", "--json", env={"CMW_PROFILE": "nope", "GRADIO_MAX_THREADS": "x"})
    assert result.exit_code == 0
    assert json.loads(result.stdout)["profile"].startswith("(none: unknown profile 'nope'")


# --------------------------------------------------------------------------- secrets


def test_secrets_are_masked_in_every_output(settings_env: Path) -> None:
    write(settings_env / ".env", f"OPENROUTER_API_KEY={SECRET}-dotenv\n")
    keyed = write(settings_env / "profiles" / "keyed.toml", f'[admin]\ntoken = "{SECRET}-toml"\n')
    env = {"OPENAI_API_KEY": f"{SECRET}-env"}
    runs = [
        ("config", "show", "-p", "keyed", "--set", f"admin.token={SECRET}-set"),
        ("config", "show", "-p", "keyed", "--json"),
        ("config", "show", "--set", "llm.api_key=12", "--set", "llm.openrouter_api_key=x", "--json"),
        ("config", "profiles"),
        ("config", "profiles", "--json"),
        ("config", "validate"),
        ("config", "validate", "--json"),
        ("config", "diff", "balanced", "keyed"),
        ("config", "diff", "balanced", "keyed", "--json"),
        ("config", "init", "copy", "--from", str(keyed)),
        ("config", "path"),
    ]
    for args in runs:
        result = cmw(*args, env=env)
        assert result.exit_code == 0, (args, result.stderr)
        assert SECRET not in result.output, args
    shown = json.loads(cmw("config", "show", "-p", "keyed", "--json", env=env).stdout)
    assert shown["admin.token"]["value"] == MASK
    assert shown["llm.api_key"]["value"] == MASK
    assert shown["llm.openrouter_api_key"] == {**shown["llm.openrouter_api_key"], "value": MASK, "source": ".env"}


def test_passwords_inside_urls_are_masked_in_show_table_and_json(settings_env: Path, wide: None) -> None:
    env = {"CMW_SESSIONS__STORE": f"redis://:{SECRET}@redis.internal:6379/0",
           "CMW_LLM__BASE_URL": f"http://user:{SECRET}@llm.internal:8000/v1"}
    table = cmw("config", "show", env=env)
    shown = json.loads(cmw("config", "show", "--json", env=env).stdout)
    assert table.exit_code == 0 and SECRET not in table.output
    assert shown["sessions.store"]["value"] == f"redis://:{MASK}@redis.internal:6379/0"
    assert shown["llm.base_url"]["value"] == f"http://user:{MASK}@llm.internal:8000/v1"
    assert f"redis://:{MASK}@redis.internal:6379/0" in table.stdout


def test_a_password_in_a_bad_url_is_masked_in_the_error(settings_env: Path) -> None:
    result = cmw("config", "show", env={"CMW_SESSIONS__STORE": f"postgres://admin:{SECRET}@db/x"})
    assert_bad_input(result, "sessions.store")
    assert SECRET not in result.output


def test_a_bad_secret_is_reported_without_its_value(settings_env: Path) -> None:
    keyed = write(settings_env / "keyed.toml", "[llm]\napi_key = 123456789\n")
    result = cmw("config", "show", "-p", str(keyed))
    assert_bad_input(result, f"llm.api_key = {MASK} (from {keyed} [llm] api_key)")
    assert "123456789" not in result.output


# --------------------------------------------------------------------------- common.load_or_exit


def test_load_or_exit_dedicated_flags_beat_set_which_beats_env(
    settings_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cmw_cli.common import load_or_exit

    monkeypatch.setenv("CMW_SERVER__PORT", "3")
    assert load_or_exit(None, ["server.port=2"]).sources["server.port"] == "--set"
    loaded = load_or_exit(None, ["server.port=2"], {"server.port": (1, "--port"), "server.host": None})
    assert (loaded.settings.server.port, loaded.sources["server.port"]) == (1, "--port")
    assert loaded.sources.get("server.host", "default") == "default"


def test_load_or_exit_turns_problems_into_exit_2(settings_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import typer

    from cmw_cli.common import load_or_exit

    with pytest.raises(typer.Exit) as exc:
        load_or_exit("nope", ["server.port=x"], {"sim.port": (-1, "--port")})
    assert exc.value.exit_code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("error: ") for line in lines)
    assert any(line.startswith("error: sim.port = -1 (from --port): ") for line in lines)
