"""Loading settings: every source merged by precedence, validated by the model, each value's source recorded.

Precedence (highest first): flags / ``--set`` > environment > ``.env`` > profile TOML > defaults.
Pydantic validates the merged values; :func:`load_settings` remembers which source supplied each
key so errors and ``cmw config show`` can name it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agent.settings.checks import check_effect, environment_warnings
from agent.settings.errors import ConfigError, Problem, explain
from agent.settings.model import Settings
from agent.settings.profiles import profile_environ, resolve_profile
from agent.settings.providers import is_base_url
from agent.settings.registry import REGISTRY, display_value, is_table
from agent.settings.sources import (
    Raw,
    assignment_values,
    environ_values,
    flag_values,
    nest,
    profile_values,
    read_dotenv,
)


@dataclass
class LoadedSettings:
    """Validated settings plus, per key, the source that supplied the value in effect."""

    settings: Settings
    sources: dict[str, str]
    profile_path: Path | None
    warnings: list[str] = field(default_factory=list)

    @property
    def profile_name(self) -> str:
        return self.profile_path.stem if self.profile_path else "none"

    def describe(self) -> dict[str, dict[str, Any]]:
        """The stable ``config show --json`` shape: dotted key → value, source, env, allowed, description."""
        out: dict[str, dict[str, Any]] = {}
        for key, spec in REGISTRY.items():
            out[key] = {
                "value": display_value(self.settings.get(key), spec),
                "source": self.sources.get(key, "default"),
                "env": list(spec.env),
                "allowed": spec.allowed,
                "description": spec.description,
            }
        return out


def load_settings(
    profile: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | list[str] | None = None,
    *,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    env_file: str | os.PathLike[str] | None = ".env",
    use_profile: bool = True,
) -> LoadedSettings:
    """Merge defaults, profile, .env, environment, ``--set`` and flags; validate; record sources.

    ``overrides`` is ``["key=value", ...]`` (from ``--set``) or a mapping of dotted key to value or
    ``(value, label)``. ``flags`` maps dotted keys of dedicated flags (``--port``) to ``(value,
    "--port")`` or a bare value; ``None`` means the flag was not given. Flags outrank ``--set``.
    Every problem of every source is collected before ConfigError is raised.
    """
    environ = dict(os.environ if environ is None else environ)
    problems: list[Problem] = []
    layers: list[dict[str, Raw]] = []

    def add(result: tuple[dict[str, Raw], list[Problem]]) -> None:
        layers.append(result[0])
        problems.extend(result[1])

    dotenv_path: Path | None = None
    dotenv: dict[str, str] = {}
    if env_file is not None:
        explicit = environ.get("CMW_ENV_FILE")
        dotenv_path = Path(explicit or env_file).expanduser()
        if dotenv_path.is_file():
            dotenv, trouble = read_dotenv(dotenv_path)
            problems.extend(trouble)
        elif explicit:
            problems.append(Problem(f"CMW_ENV_FILE={explicit} (from env CMW_ENV_FILE): no such file"))

    profile_path: Path | None = None
    if use_profile:
        try:
            # CMW_PROFILE and CMW_PROFILES_DIR may live in .env too; the environment still wins.
            profile_path = resolve_profile(profile, profile_environ(environ, dotenv=dotenv), env_file=None)
        except ConfigError as exc:
            problems.extend(exc.problems)
        else:
            add(profile_values(profile_path))
    if dotenv:
        add(environ_values(dotenv, dotenv_path))
    add(environ_values(environ))
    if isinstance(overrides, list):
        add(assignment_values(overrides, "--set"))
    elif overrides:
        add(flag_values(overrides, "--set"))
    if flags:
        add(flag_values(flags, "flag"))

    merged: dict[str, Raw] = {}
    for layer in layers:
        for key, raw in layer.items():
            below = merged.get(key)
            if below is not None and is_table(REGISTRY.get(key)) and isinstance(below.value, dict) \
                    and isinstance(raw.value, dict):
                raw = Raw({**below.value, **raw.value}, raw.source, raw.origin)
            merged[key] = raw
    settings: Settings | None = None
    try:
        settings = Settings(**nest({key: raw.value for key, raw in merged.items()}))
    except ValidationError as exc:
        problems.extend(explain(exc, merged))
    if problems or settings is None:
        raise ConfigError(problems)
    sources = {key: raw.source for key, raw in merged.items()}
    provider = merged.get("llm.provider")
    if provider is not None and is_base_url(provider.value):
        sources["llm.base_url"] = provider.source  # the model took the URL given as the provider
    loaded = LoadedSettings(settings, sources, profile_path)
    loaded.warnings = check_effect(settings) + environment_warnings(settings, environ)
    return loaded


def load_profile(
    profile: str | os.PathLike[str] | None,
    *,
    environ: Mapping[str, str] | None = None,
    env_file: str | os.PathLike[str] | None = ".env",
) -> LoadedSettings:
    """A profile on its own: defaults overlaid with that file, for comparing and validating profiles.

    The environment and ``.env`` only say where profiles live and which is selected (see
    :func:`~agent.settings.profiles.profile_environ`); their settings are not applied, so ``validate``
    and ``diff`` judge the file, not this shell.
    """
    return load_settings(profile, environ=profile_environ(environ, env_file=env_file), env_file=None)
