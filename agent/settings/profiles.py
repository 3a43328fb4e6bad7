"""Profiles: finding one by name or path (the one lookup every command uses) and writing new ones.

A name is looked up in the user's profiles directory first, then among the profiles shipped with cmw.
Where that directory is and which profile is selected come from the environment, else from `.env`:
:func:`profile_environ` gathers those variables and :func:`resolve_profile` is the lookup, so
`cmw serve`, every `cmw config` command, `cmw loadtest --spawn` and `python -m agent` agree.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.settings.errors import ConfigError, Problem, suggest
from agent.settings.model import Settings
from agent.settings.paths import shipped_profiles_dir, user_profiles_dir
from agent.settings.registry import REGISTRY, KeySpec
from agent.settings.sources import read_dotenv

DEFAULT_PROFILE = "balanced"
# The variables that say where profiles live and which one is selected (the rest of a profile lookup is
# the name given). XDG_CONFIG_HOME places the user directory when CMW_PROFILES_DIR is not set.
LOCATION_ENV = ("CMW_PROFILE", "CMW_PROFILES_DIR", "XDG_CONFIG_HOME")


def profile_environ(
    environ: Mapping[str, str] | None = None,
    *,
    env_file: str | os.PathLike[str] | None = ".env",
    dotenv: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The variables of :data:`LOCATION_ENV` that are set: the environment's, else the `.env` file's.

    The `.env` file is ``$CMW_ENV_FILE`` or ``env_file`` (``None``: none); a caller that has read it
    already passes its variables as ``dotenv``.
    """
    environ = os.environ if environ is None else environ
    if dotenv is None:
        dotenv = {}
        if env_file is not None:
            path = Path(environ.get("CMW_ENV_FILE") or env_file).expanduser()
            if path.is_file():
                dotenv, _ = read_dotenv(path)  # its problems are reported when settings are loaded
    found = {name: dotenv[name] for name in LOCATION_ENV if name in dotenv}
    found.update({name: environ[name] for name in LOCATION_ENV if name in environ})
    return found


def profile_dirs(environ: Mapping[str, str] | None = None) -> list[Path]:
    """Directories searched for profiles by name, user directory first (``environ`` as :func:`profile_environ`)."""
    return [user_profiles_dir(environ), shipped_profiles_dir()]


def available_profiles(environ: Mapping[str, str] | None = None) -> dict[str, Path]:
    """Profile name → file; a user profile shadows a shipped one of the same name."""
    found: dict[str, Path] = {}
    for directory in reversed(profile_dirs(environ)):
        if directory.is_dir():
            for path in sorted(directory.glob("*.toml")):
                found[path.stem] = path
    return dict(sorted(found.items()))


def looks_like_path(name: str) -> bool:
    """A profile argument naming a file rather than a profile."""
    return name.endswith(".toml") or "/" in name or os.sep in name or name.startswith((".", "~"))


def resolve_profile(
    profile: str | os.PathLike[str] | None,
    environ: Mapping[str, str] | None = None,
    *,
    env_file: str | os.PathLike[str] | None = ".env",
) -> Path:
    """The profile lookup: a name or path (else $CMW_PROFILE, else balanced) → its file, or ConfigError
    listing what exists. ``environ`` (default: the process's) and the `.env` file place the user directory."""
    environ = profile_environ(environ, env_file=env_file)
    if profile:
        name, origin = str(profile), "--profile"
    elif environ.get("CMW_PROFILE"):
        name, origin = environ["CMW_PROFILE"], "env CMW_PROFILE"
    else:
        name, origin = DEFAULT_PROFILE, "default"
    profiles = available_profiles(environ)
    listing = ", ".join(profiles) or "none"
    if looks_like_path(name):
        path = Path(name).expanduser()
        if path.is_file():
            return path.resolve()
        state = "is a directory" if path.is_dir() else "does not exist"
        raise ConfigError([Problem(f"profile file {name} (from {origin}) {state}; available profiles: {listing}")])
    if name in profiles:
        return profiles[name]
    raise ConfigError(
        [
            Problem(
                f"unknown profile '{name}' (from {origin}){suggest(name, profiles)}; available: {listing} "
                f"(in {user_profiles_dir(environ)} and {shipped_profiles_dir()}), or give a path to a .toml file"
            )
        ]
    )


def profile_description(path: Path) -> str:
    """The free-text ``[profile] description`` of a profile file ('' when absent or unreadable)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):  # TOMLDecodeError is a ValueError
        return ""
    table = data.get("profile")
    text = table.get("description") if isinstance(table, dict) else data.get("description")
    return text if isinstance(text, str) else ""


def _toml_literal(value: Any) -> str:
    import tomli_w

    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_literal(item) for item in value) + "]"
    if isinstance(value, dict):  # an inline table; keys such as "gen_*" need quotes
        return "{" + ", ".join(f"{_toml_literal(str(k))} = {_toml_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, Path):
        value = str(value)
    return tomli_w.dumps({"v": value})[4:].rstrip("\n")


def profile_toml(settings: Settings, *, title: str, description: str) -> str:
    """A commented profile holding every key of ``settings``: each with its description, range and env names.

    Secrets are never written (they belong in the environment or ``.env``); an empty optional key
    that defaults to something else is written as ``""``, TOML's stand-in for empty.
    """
    sections: dict[str, list[KeySpec]] = {}
    for spec in REGISTRY.values():
        sections.setdefault(spec.key.rpartition(".")[0], []).append(spec)
    lines = [
        f"# {title}",
        "# Every key is listed with what it does; delete a line to fall back to the built-in default.",
        "# Precedence: --flags/--set > environment > .env > this file > defaults.",
    ]
    # TOML puts top-level keys before the first table, so they come before [profile].
    lines += _toml_keys(settings, sections.pop("", []))
    lines += ["", "[profile]", f"description = {_toml_literal(description)}"]
    for section, specs in sections.items():
        lines += ["", "", f"[{section}]"]
        group = Settings.model_fields[section].description
        lines += [f"# {group}"] if group else []
        lines += _toml_keys(settings, specs)
    return "\n".join(lines) + "\n"


def _toml_keys(settings: Settings, specs: list[KeySpec]) -> list[str]:
    lines: list[str] = []
    for spec in specs:
        name = spec.key.rpartition(".")[2]
        value = settings.get(spec.key)
        lines += ["", f"# {spec.description}", f"# allowed: {spec.allowed} · env: {', '.join(spec.env)}"]
        if spec.secret:
            lines.append(f'# {name} = ""  # a secret: set {spec.env[0]} in the environment or .env instead')
        elif value is None:
            lines.append(f'{"# " if spec.default is None else ""}{name} = ""')
        else:
            lines.append(f"{name} = {_toml_literal(value)}")
    return lines
