"""Sources of raw values: profile TOML, the environment, `.env`, ``--set`` pairs and dedicated flags.

Each reader returns ``(values, problems)``: values keyed by dotted key, each remembering its source
(for `cmw config show`) and exact origin (for errors); problems are collected, never raised one by one,
so a person sees everything wrong at once. Nothing is validated here; the model does that.
"""

from __future__ import annotations

import re
import sys
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.settings.errors import ConfigError, Problem, short_value, suggest
from agent.settings.registry import (
    ENV_PREFIX,
    ENV_TO_KEY,
    GROUPS,
    LOADER_ENV,
    REGISTRY,
    KeySpec,
    is_list,
    is_optional,
    is_table,
    is_text,
)

# Free text a profile may carry about itself; not a setting.
PROFILE_META = ("profile.description", "description")


@dataclass
class Raw:
    """A value as some source supplied it, read but not yet validated."""

    value: Any
    source: str  # default | profile:<path> | .env | env:NAME | --flag / --set
    origin: str  # where exactly, for error messages: "file.toml [events] chat_…", "env CHAT_…"

def _parse_scalar(text: str) -> Any:
    """A TOML literal when the whole text is one (`4`, `2.0`, `true`, `[1, 2]`), else the text itself."""
    if any(c in text for c in "\n\r#"):
        return text  # `5\nx = 1` or `5 # five` is not the number 5: let validation say so
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except (tomllib.TOMLDecodeError, ValueError):  # ValueError: an integer too long for Python to convert
        return text


def _from_text(text: str, spec: KeySpec, *, unquote: bool = False) -> Any:
    """Read a value given as text (env, .env, --set) the way a person means it."""
    stripped = text.strip()
    if stripped == "" and is_optional(spec):
        return None
    if is_list(spec):
        if stripped.startswith("["):
            return _parse_scalar(stripped)
        return [_parse_scalar(item.strip()) for item in stripped.split(",") if item.strip()]
    if is_text(spec):
        if unquote and stripped[:1] in ("'", '"'):
            parsed = _parse_scalar(stripped)
            return parsed if isinstance(parsed, str) else text
        return text
    return _parse_scalar(stripped)


def _flatten(table: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for name, value in table.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict) and key not in REGISTRY:
            yield from _flatten(value, f"{key}.")
        else:
            yield key, value


def _toml_error(path: Path, exc: tomllib.TOMLDecodeError) -> str:
    """`file:line:col: TOML syntax error: why`, the shape editors and people both read."""
    message = str(exc)
    match = re.search(r"\s*\(at line (\d+), column (\d+)\)", message)
    if match:
        reason = message[: match.start()] + message[match.end() :]
        return f"{path}:{match[1]}:{match[2]}: TOML syntax error: {reason.strip()}"
    return f"{path}: TOML syntax error: {message}"


def profile_values(path: Path) -> tuple[dict[str, Raw], list[Problem]]:
    """A profile TOML's keys; unreadable files, syntax errors and unknown keys are problems."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return {}, [Problem(f"{path}: cannot read profile: {exc.strerror or exc}")]
    except UnicodeDecodeError:
        return {}, [Problem(f"{path}: cannot read profile: not UTF-8 text")]
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return {}, [Problem(_toml_error(path, exc))]
    except ValueError:  # Python refuses to convert an integer of thousands of digits
        return {}, [Problem(f"{path}: an integer with more than {sys.get_int_max_str_digits()} digits; "
                            "no setting takes a number that large")]
    values: dict[str, Raw] = {}
    problems: list[Problem] = []
    for key, value in _flatten(data):
        if key in PROFILE_META:
            continue
        section, _, name = key.rpartition(".")
        where = f"{path} [{section}] {name}" if section else f"{path} {name}"
        if key in GROUPS:
            problems.append(
                Problem(f"{key} = {short_value(value)} (from {where}): {key} is a group; write a [{key}] table")
            )
        elif key not in REGISTRY:
            hint = suggest(key, [*REGISTRY, "profile.description"])
            problems.append(Problem(f"{key} (from {where}): unknown key{hint}; `cmw config show` lists every key"))
        else:
            spec = REGISTRY[key]
            # TOML has no null: an empty string stands for "empty" in an optional key.
            value = None if value == "" and is_optional(spec) else value
            values[key] = Raw(value, f"profile:{path}", where)
    return values, problems


def read_profile(path: Path) -> dict[str, Raw]:
    """Read a profile TOML into raw values, raising ConfigError on syntax errors and unknown keys."""
    values, problems = profile_values(path)
    if problems:
        raise ConfigError(problems)
    return values


def environ_values(environ: Mapping[str, str], dotenv: Path | None = None) -> tuple[dict[str, Raw], list[Problem]]:
    """Keys set by env vars (or by the lines of the .env file ``dotenv``); an unknown CMW_ name is a problem."""
    values: dict[str, Raw] = {}
    problems: list[Problem] = []
    for name, text in environ.items():
        where = f"{dotenv} {name}" if dotenv else f"env {name}"
        key = ENV_TO_KEY.get(name)
        if key is None:
            if name.startswith(ENV_PREFIX) and name not in LOADER_ENV:
                hint = suggest(name, [*ENV_TO_KEY, *LOADER_ENV])
                problems.append(Problem(f"{name} (from {where}): unknown setting{hint}"))
            continue
        # A CMW_ name is the explicit, namespaced spelling: it wins over a seed name.
        if key not in values or name.startswith(ENV_PREFIX):
            values[key] = Raw(_from_text(text, REGISTRY[key]), ".env" if dotenv else f"env:{name}", where)
    return values, problems


def read_environ(environ: Mapping[str, str], source: str = "env") -> dict[str, Raw]:
    """Map env vars (seed names and CMW_<GROUP>__<KEY>) to keys; unknown CMW_ names are errors."""
    values, problems = environ_values(environ, Path(".env") if source == ".env" else None)
    if problems:
        raise ConfigError(problems)
    return values


def read_dotenv(path: Path) -> tuple[dict[str, str], list[Problem]]:
    """The variables a .env file sets (python-dotenv's reading of quotes, comments and `export`)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return {}, [Problem(f"{path}: cannot read .env: {exc.strerror or exc}")]
    except UnicodeDecodeError:
        return {}, [Problem(f"{path}: cannot read .env: not UTF-8 text")]
    import io

    from dotenv import dotenv_values  # only when a .env exists: it costs start-up time

    parsed = dotenv_values(stream=io.StringIO(text))
    return {k: v for k, v in parsed.items() if v is not None}, []


def assignment_values(pairs: list[str], label: str) -> tuple[dict[str, Raw], list[Problem]]:
    """``KEY=VALUE`` pairs (``--set``), values read as a person means them."""
    values: dict[str, Raw] = {}
    problems: list[Problem] = []
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            problems.append(Problem(f"{label} {pair!r}: expected KEY=VALUE, e.g. events.chat_concurrency_limit=4"))
        elif key not in REGISTRY and is_table(REGISTRY.get(key.rpartition(".")[0])):
            # One entry of a table key: `--set events.limits.chat=4` adds (or replaces) the entry `chat`.
            table, _, entry = key.rpartition(".")
            earlier = values.get(table)
            merged = dict(earlier.value) if earlier is not None and isinstance(earlier.value, dict) else {}
            merged[entry] = _parse_scalar(text.strip())
            values[table] = Raw(merged, label, f"{label} {key}")
        elif key not in REGISTRY:
            hint = f"{suggest(key, REGISTRY)}; `cmw config show` lists every key"
            problems.append(Problem(f"{key} (from {label} {key}): unknown key{hint}"))
        else:
            values[key] = Raw(_from_text(text, REGISTRY[key], unquote=True), label, f"{label} {key}")
    return values, problems


def parse_assignments(pairs: list[str], label: str = "--set") -> dict[str, Raw]:
    """Parse ``key=value`` flags; values are read as TOML literals when they are one, else as text."""
    values, problems = assignment_values(pairs, label)
    if problems:
        raise ConfigError(problems)
    return values


def flag_values(flags: Mapping[str, Any], default_label: str) -> tuple[dict[str, Raw], list[Problem]]:
    """Dedicated flags (``--port``) or a mapping given as ``overrides``: dotted key → value or (value, label)."""
    values: dict[str, Raw] = {}
    problems: list[Problem] = []
    for key, given in flags.items():
        flag = default_label if default_label == "--set" else "--" + key.rpartition(".")[2].replace("_", "-")
        value, label = given if isinstance(given, tuple) else (given, flag)
        if value is None and default_label != "--set":
            continue  # a dedicated flag left out
        if key not in REGISTRY:
            problems.append(Problem(f"{key} (from {label}): unknown key{suggest(key, REGISTRY)}"))
            continue
        values[key] = Raw(value, label, f"{label} {key}" if label == "--set" else label)
    return values, problems


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1}`` → ``{"a": {"b": 1}}``, the shape the model takes."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested
