"""Where cmw keeps things: shipped and user profiles, and the state directory (sessions database, admin token).

One rule for the XDG base directories, as the spec states it: a relative ``$XDG_*_HOME`` is ignored, so
`cmw config path` and the server always name the same folders.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.settings.model import Settings


def xdg_home(variable: str, fallback: str, environ: Mapping[str, str] | None = None) -> Path:
    """``$variable`` when it is an absolute path (the XDG spec: relative ones are ignored), else ``fallback``."""
    environ = os.environ if environ is None else environ
    value = environ.get(variable, "")
    return Path(value) if value and Path(value).is_absolute() else Path(fallback).expanduser()


def shipped_profiles_dir() -> Path:
    """Profiles that come with cmw: in the wheel (agent/profiles) or a checkout (./profiles)."""
    agent_dir = Path(__file__).resolve().parent.parent
    for candidate in (agent_dir / "profiles", agent_dir.parent / "profiles"):
        if candidate.is_dir():
            return candidate
    return agent_dir / "profiles"


def user_profiles_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where `cmw config init` writes and names are looked up first: $CMW_PROFILES_DIR, else
    $XDG_CONFIG_HOME/cmw/profiles, else ~/.config/cmw/profiles."""
    environ = os.environ if environ is None else environ
    if environ.get("CMW_PROFILES_DIR"):
        return Path(environ["CMW_PROFILES_DIR"]).expanduser()
    return xdg_home("XDG_CONFIG_HOME", "~/.config", environ) / "cmw" / "profiles"


def default_state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The state directory when server.state_dir is empty: $XDG_STATE_HOME/cmw, else ~/.local/state/cmw."""
    return xdg_home("XDG_STATE_HOME", "~/.local/state", environ) / "cmw"


def state_dir_path(settings: Settings, environ: Mapping[str, str] | None = None) -> Path:
    """The one answer to "where is the state directory": server.state_dir when set, else
    :func:`default_state_dir`. Only names it; the server creates it (0700) when it starts."""
    if settings.server.state_dir is not None:
        return Path(settings.server.state_dir).expanduser()
    return default_state_dir(environ)
