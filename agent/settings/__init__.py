"""cmw's settings: one pydantic model, the registry derived from it, and the sources that fill it.

Every key is declared once, in :mod:`~agent.settings.model`; `cmw config show`, the admin config
endpoint, `cmw config init`, error messages and the README's settings table read the registry.

=====================  ==========================================================================
module                 concern
=====================  ==========================================================================
``model``              the pydantic model: every key's type, bounds, default and description
``providers``          the LLM providers cmw knows (one registry, no dependencies)
``registry``           dotted keys → field, env names, what each allows; masked display values
``sources``            raw values from profile TOML, the environment, `.env`, ``--set`` and flags
``profiles``           the one profile lookup (name or path → file) and writing new profiles
``paths``              where profiles and the state directory live (XDG rules)
``errors``             :class:`ConfigError` and its problems, one line each
``masking``            the secret mask and passwords inside URLs hidden
``checks``             valid settings that cannot take effect, as warnings
``loading``            every source merged by precedence and validated, sources recorded
``reference``          the README's settings table, generated from the registry
=====================  ==========================================================================

Every public name is re-exported here, lazily (PEP 562): ``import agent.settings.providers`` stays
free of pydantic, so `cmw --help` may read the provider list.
"""

from __future__ import annotations

import importlib
from typing import Any

# name → submodule that defines it
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(
        ("Settings", "QueueSettings", "ServerSettings", "EventSettings", "StreamSettings", "SessionSettings",
         "RateLimitSettings", "LLMSettings", "AdminSettings", "SimSettings", "MIN_TOKEN_CHARS"),
        "model",
    ),
    **dict.fromkeys(("Provider", "PROVIDERS", "PROVIDER_NAMES", "SIM_MODEL", "is_base_url"), "providers"),
    **dict.fromkeys(
        ("KeySpec", "REGISTRY", "ENV_TO_KEY", "ENV_PREFIX", "LOADER_ENV", "GROUPS", "describe_allowed",
         "display_value"),
        "registry",
    ),
    **dict.fromkeys(("MASK", "mask_url_passwords"), "masking"),
    **dict.fromkeys(("Problem", "ConfigError"), "errors"),
    **dict.fromkeys(
        ("Raw", "PROFILE_META", "read_profile", "read_environ", "parse_assignments"), "sources"
    ),
    **dict.fromkeys(
        ("DEFAULT_PROFILE", "profile_environ", "profile_dirs", "available_profiles", "looks_like_path",
         "resolve_profile", "profile_description", "profile_toml"),
        "profiles",
    ),
    **dict.fromkeys(("shipped_profiles_dir", "user_profiles_dir", "default_state_dir", "state_dir_path"), "paths"),
    **dict.fromkeys(("check_effect",), "checks"),
    **dict.fromkeys(("LoadedSettings", "load_settings", "load_profile"), "loading"),
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
