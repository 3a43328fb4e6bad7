"""The one settings model: every key, its bounds, env names and description live here.

Profiles, env vars, `.env`, `cmw config show`, the admin config endpoint and the README table
all read this registry, so a key is declared exactly once.

Precedence (highest first): flags / ``--set`` > environment > ``.env`` > profile TOML > defaults.
Pydantic validates the merged values; :func:`load_settings` remembers which source supplied each
key so errors and ``cmw config show`` can name it. That bookkeeping is why the model is a plain
pydantic ``BaseModel`` and not pydantic-settings' ``BaseSettings``: the loader reads every source
itself, so BaseSettings had all its sources turned off and only added ~0.08 s to every CLI start.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
import tomllib
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, ConfigDict, Field, SecretStr, StringConstraints, ValidationError, field_validator
from pydantic.fields import FieldInfo

MASK = "********"
ENV_PREFIX = "CMW_"
# Env vars with the CMW_ prefix that select *which* settings to load rather than a key.
LOADER_ENV = ("CMW_PROFILE", "CMW_PROFILES_DIR", "CMW_ENV_FILE")
DEFAULT_PROFILE = "balanced"


def _key(default: Any, description: str, *seed_env: str, allowed: str | None = None, **constraints: Any) -> Any:
    """A settings key: default, one-line help, the seed env names it also answers to (and what it allows,
    where a validator rather than the type says so)."""
    extra: dict[str, Any] = {"seed_env": list(seed_env)}
    if allowed is not None:
        extra["allowed"] = allowed
    return Field(default, description=description, json_schema_extra=extra, **constraints)


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class QueueSettings(_Group):
    enabled: bool = _key(
        True, "Configure Gradio's queue from these settings (false: Gradio's defaults).", "GRADIO_ENABLE_QUEUE"
    )
    default_concurrency_limit: int = _key(
        5, "Running jobs per event that sets no limit of its own.", "GRADIO_CONCURRENCY_LIMIT", ge=1, le=10_000
    )
    status_update_rate: Union[Literal["auto"], Annotated[float, Gt(0), Le(3600)]] = _key(
        "auto",
        "Seconds between queue status messages, or 'auto' (an estimate to every waiting client whenever a job starts).",
        "GRADIO_STATUS_UPDATE_RATE",
    )
    max_size: int | None = _key(
        100, "Events the queue holds before refusing joins (backpressure); empty = unbounded.", "GRADIO_QUEUE_MAX_SIZE",
        ge=1, le=1_000_000,
    )


class ServerSettings(_Group):
    host: str = _key("127.0.0.1", "Interface to bind; 0.0.0.0 exposes the app to the network.", min_length=1)
    port: int = _key(7860, "TCP port of the app (0 = any free port).", ge=0, le=65_535)
    workers: int = _key(1, "App processes (1 = a single process, no proxy).", ge=1, le=64)
    max_threads: int = _key(
        100, "Gradio's cap on jobs running at once, across all events.", "GRADIO_MAX_THREADS", ge=1, le=10_000
    )
    root_path: str = _key("", "URL prefix when served behind a reverse proxy under a sub-path, e.g. /chat.")
    state_dir: Path | None = _key(
        None, "Where the session database and admin token live (default: $XDG_STATE_HOME/cmw)."
    )
    shutdown_grace_s: float = _key(10.0, "Seconds in-flight replies get to finish on SIGINT/SIGTERM.", ge=0, le=3600)
    trusted_proxies: list[str] = _key(
        ["127.0.0.1", "::1"], "Proxy addresses (IPs or CIDR networks) whose X-Forwarded-For names the client; "
        "from anyone else the header is ignored.", allowed="list of IP addresses or CIDR networks",
    )
    max_request_bytes: int = _key(
        262_144, "Largest body of a queue join or /gradio_api/call request; a bigger one is answered 413 before "
        "anything is queued.", ge=4096, le=100_000_000,
    )
    upload_cache_ttl_s: int = _key(
        3600, "Seconds an upload stays in Gradio's upload cache (a chat keeps its own copy of what it attaches).",
        ge=1, le=30 * 86_400,
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        import ipaddress

        for item in value:
            try:
                ipaddress.ip_network(item.strip(), strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or CIDR network") from None
        return [item.strip() for item in value]


class EventSettings(_Group):
    chat_concurrency_limit: int = _key(3, "Chat replies generated at once.", "CHAT_CONCURRENCY_LIMIT", ge=1, le=10_000)
    file_upload_concurrency_limit: int = _key(
        2, "File uploads processed at once (shared by every event in the file queue).", "FILE_CONCURRENCY_LIMIT",
        ge=1, le=10_000,
    )
    file_processing_queue_id: str = _key(
        "file_processing", "Gradio concurrency_id shared by the file-processing events.", "FILE_QUEUE_ID",
        min_length=1, max_length=100,
    )
    stats_refresh_concurrency_limit: int = _key(
        5, "Stats tab refreshes served at once.", "STATS_CONCURRENCY_LIMIT", ge=1, le=10_000
    )
    logs_refresh_concurrency_limit: int = _key(
        5, "Logs tab refreshes served at once.", "LOGS_CONCURRENCY_LIMIT", ge=1, le=10_000
    )


class StreamSettings(_Group):
    coalesce_ms: float = _key(
        100.0, "Minimum milliseconds between streamed UI updates of one reply (0 = one update per token).",
        ge=0, le=10_000,
    )
    max_updates_per_s: float = _key(
        250.0, "Budget of streamed UI updates per second across all replies; under load each reply updates "
        "less often instead of saturating the server.", gt=0, le=100_000,
    )


class SessionSettings(_Group):
    idle_ttl_s: float = _key(3600.0, "Seconds a session may stay idle before it is freed.", ge=1, le=30 * 86_400)
    max_sessions: int = _key(
        1000, "Sessions kept in memory at once; beyond it the least recently used is freed (empty ones first), "
        "its stored conversation kept.", ge=1, le=1_000_000
    )
    store: str = _key(
        "sqlite", "Where conversations persist: sqlite (embedded), memory, or a redis:// URL.",
        pattern=r"^(sqlite|memory|rediss?://.+)$",
    )
    retention_days: float = _key(
        30.0, "Days a stored conversation is kept after its last change; 0 keeps it until Clear or an admin kill.",
        ge=0, le=36_500,
    )
    max_upload_bytes: int = _key(1_000_000, "Largest file a chat may attach.", ge=1, le=1_000_000_000)
    max_files: int = _key(10, "Files one conversation may attach.", ge=1, le=1000)
    max_files_per_upload: int = _key(
        10, "Files one upload request may carry; more are refused (400) before any is stored.", ge=1, le=1000
    )


class RateLimitSettings(_Group):
    new_sessions_per_minute: int = _key(
        120, "New sessions one client address may open per minute (0 = no limit).", ge=0, le=1_000_000
    )
    messages_per_minute: int = _key(
        600, "Chat messages one client address may send per minute (0 = no limit).", ge=0, le=1_000_000
    )
    session_messages_per_minute: int = _key(
        60, "Chat messages one session may send per minute (0 = no limit).", ge=0, le=1_000_000
    )
    exempt_loopback: bool = _key(
        True, "Clients on this host (127.0.0.1, ::1: cmw loadtest, smoke, benches) are not rate-limited.",
    )


class LLMSettings(_Group):
    provider: Literal["sim", "openai", "openrouter", "custom"] = _key(
        "sim", "Default provider: sim (embedded simulator), openai, openrouter, or custom (llm.base_url)."
    )
    model: str = _key("", "Default model; empty picks the provider's default.")
    base_url: str = _key("", "OpenAI-compatible base URL for the custom provider, e.g. http://127.0.0.1:8000/v1.")
    api_key: SecretStr | None = _key(None, "API key for OpenAI, sent to api.openai.com only (never shown).",
                                     "OPENAI_API_KEY")
    openrouter_api_key: SecretStr | None = _key(None, "API key for OpenRouter (never shown).", "OPENROUTER_API_KEY")
    custom_api_key: SecretStr | None = _key(None, "API key for the custom provider's llm.base_url (never shown).")
    timeout_s: float = _key(60.0, "Seconds before an LLM request is abandoned.", gt=0, le=3600)
    max_retries: int = _key(2, "Retries of a failed LLM request before the turn fails.", ge=0, le=20)
    providers: list[Literal["sim", "openai", "openrouter", "custom"]] = _key(
        [], "Providers a browser may pick besides llm.provider (always offered); empty = llm.provider alone."
    )
    models: list[Annotated[str, StringConstraints(pattern=r"^(sim|openai|openrouter|custom):\S+$")]] = _key(
        [], "Models a browser may pick, as provider:model (e.g. openai:gpt-4o-mini); a provider without an "
        "entry takes any model."
    )
    max_tokens: int | None = _key(4096, "Most tokens a reply may have (sent to the provider); empty = its default.",
                                  ge=1, le=1_000_000)
    max_context_chars: int = _key(
        100_000, "Characters of system prompt, attached files and history sent per turn: the oldest turns are "
        "left out first, then the end of the files.", ge=1_000, le=10_000_000,
    )
    max_reply_chars: int = _key(100_000, "Characters a reply may have; it stops with a note there.",
                                ge=100, le=10_000_000)
    reply_deadline_s: float = _key(300.0, "Seconds a whole reply may take, retries included; it stops with a note "
                                   "there.", gt=0, le=86_400)


MIN_TOKEN_CHARS = 32


class AdminSettings(_Group):
    token: SecretStr | None = _key(
        None, f"Bearer token of the admin API (at least {MIN_TOKEN_CHARS} characters); empty = generated at start-up "
        "into the state dir.", "CMW_ADMIN_TOKEN",
        allowed=f"secret text of at least {MIN_TOKEN_CHARS} characters or empty",
    )
    metrics_require_token: bool = _key(False, "Serve /metrics only with the admin token (Bearer), like /admin/api.")

    @field_validator("token")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        length = len(value.get_secret_value()) if value is not None else 0
        if 0 < length < MIN_TOKEN_CHARS:
            raise ValueError(
                f"too short ({length} characters, at least {MIN_TOKEN_CHARS} needed); leave it empty to have one "
                "generated, or make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        return value


class SimSettings(_Group):
    host: str = _key("127.0.0.1", "Interface the simulator binds.")
    port: int = _key(0, "Simulator port (0 = any free port).", ge=0, le=65_535)
    ttft_ms: float = _key(200.0, "Time to first token, milliseconds.", ge=0, le=600_000)
    tokens_per_second: float = _key(50.0, "Streaming speed after the first token.", gt=0, le=100_000)
    reply_tokens: int = _key(50, "Tokens per reply.", ge=1, le=100_000)
    jitter: float = _key(0.1, "Relative random spread of the latencies (0 = exact).", ge=0, le=1)
    error_rate: float = _key(0.0, "Share of requests answered with an HTTP error.", ge=0, le=1)
    error_statuses: list[Annotated[int, Ge(400), Lt(600)]] = _key(
        [500, 503, 429], "HTTP statuses an injected error picks from.", min_length=1
    )
    disconnect_rate: float = _key(0.0, "Share of streams cut off mid-reply.", ge=0, le=1)
    stall_rate: float = _key(0.0, "Share of streams that stop sending mid-reply.", ge=0, le=1)
    stall_s: float = _key(30.0, "How long a stalled stream stays silent before closing.", ge=0, le=3600)
    malformed_rate: float = _key(0.0, "Share of streams that carry one malformed chunk.", ge=0, le=1)
    seed: int | None = _key(None, "Random seed for repeatable latencies and faults.")


class Settings(BaseModel):
    """Everything cmw and the app read; build it with :func:`load_settings`."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    enable_concurrent_processing: bool = _key(
        True, "Master switch: false runs every event one at a time (the sequential baseline).",
        "ENABLE_CONCURRENT_PROCESSING",
    )
    queue: QueueSettings = Field(default_factory=QueueSettings, description="Gradio queue.")
    server: ServerSettings = Field(default_factory=ServerSettings, description="HTTP server.")
    events: EventSettings = Field(default_factory=EventSettings, description="Per-event concurrency.")
    stream: StreamSettings = Field(default_factory=StreamSettings, description="Streaming to the UI.")
    sessions: SessionSettings = Field(default_factory=SessionSettings, description="Browser sessions.")
    rate_limits: RateLimitSettings = Field(
        default_factory=RateLimitSettings, description="Per client address and per session, at the HTTP edge."
    )
    llm: LLMSettings = Field(default_factory=LLMSettings, description="LLM provider.")
    admin: AdminSettings = Field(default_factory=AdminSettings, description="Admin API.")
    sim: SimSettings = Field(default_factory=SimSettings, description="Embedded OpenAI-compatible simulator.")

    def get(self, key: str) -> Any:
        """Value of a dotted key, e.g. ``events.chat_concurrency_limit``."""
        obj: Any = self
        for part in key.split("."):
            obj = getattr(obj, part)
        return obj

    # Effective limits: one place that turns settings into what Gradio is given.
    def event_limit(self, event: str) -> int:
        """Concurrency limit an event runs with: 1 when the master switch is off."""
        if not self.enable_concurrent_processing:
            return 1
        return int(self.get(f"events.{event}_concurrency_limit"))

    @property
    def default_limit(self) -> int:
        return self.queue.default_concurrency_limit if self.enable_concurrent_processing else 1


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class KeySpec:
    """One settings key as the registry describes it."""

    key: str
    field: FieldInfo
    env: tuple[str, ...]

    @property
    def description(self) -> str:
        return self.field.description or ""

    @property
    def secret(self) -> bool:
        return "SecretStr" in _type_name(self.field.annotation)

    @property
    def default(self) -> Any:
        return self.field.get_default(call_default_factory=True)

    @property
    def allowed(self) -> str:
        extra = self.field.json_schema_extra if isinstance(self.field.json_schema_extra, dict) else {}
        return str(extra.get("allowed") or describe_allowed(self.field))


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation)


def _iter_fields(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, FieldInfo]]:
    for name, info in model.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _iter_fields(ann, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", info


def _build_registry() -> dict[str, KeySpec]:
    registry: dict[str, KeySpec] = {}
    for key, info in _iter_fields(Settings):
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        seed = [str(name) for name in extra.get("seed_env", [])]  # type: ignore[union-attr]
        cmw = ENV_PREFIX + key.upper().replace(".", "__")
        env = tuple(dict.fromkeys([*seed, cmw]))
        registry[key] = KeySpec(key, info, env)
    return registry


REGISTRY: dict[str, KeySpec] = _build_registry()
ENV_TO_KEY: dict[str, str] = {name: spec.key for spec in REGISTRY.values() for name in spec.env}


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _bound(info: FieldInfo, kind: type, attr: str) -> float | None:
    for meta in info.metadata:
        if isinstance(meta, kind):
            return getattr(meta, attr)
    return None


def describe_allowed(info: FieldInfo) -> str:
    """Human summary of what a key accepts, derived from its annotation and bounds."""
    ann = info.annotation
    origin = typing.get_origin(ann)
    args = typing.get_args(ann)
    optional = type(None) in args
    parts = [a for a in args if a is not type(None)] if origin in (Union, types.UnionType) else [ann]
    described: list[str] = []
    for part in parts:
        described.append(_describe_type(part, info if len(parts) == 1 else None))
    text = " or ".join(described)
    return f"{text} or empty" if optional else text


def _describe_type(ann: Any, info: FieldInfo | None) -> str:
    origin = typing.get_origin(ann)
    if origin is Literal:
        return " | ".join(str(a) for a in typing.get_args(ann))
    if origin is Annotated:
        base, *meta = typing.get_args(ann)
        holder = FieldInfo.from_annotation(ann)
        holder.metadata = meta
        return _describe_type(base, holder)
    if origin is list:
        (inner,) = typing.get_args(ann)
        return f"list of {_describe_type(inner, None)}"
    if ann is bool:
        return "true|false"
    if ann in (int, float) and info is not None:
        kind = "integer" if ann is int else "number"
        ge, gt = _bound(info, Ge, "ge"), _bound(info, Gt, "gt")
        le, lt = _bound(info, Le, "le"), _bound(info, Lt, "lt")
        if ge is not None and le is not None:
            return f"{kind} {_num(ge)}–{_num(le)}"
        low = f">{_num(gt)}" if gt is not None else (f"≥{_num(ge)}" if ge is not None else "")
        high = f"<{_num(lt)}" if lt is not None else (f"≤{_num(le)}" if le is not None else "")
        return " ".join(part for part in (kind, low, high) if part)
    if ann in (int, float):
        return "integer" if ann is int else "number"
    if ann is SecretStr:
        return "secret text"
    if ann is Path:
        return "path"
    if ann is str and info is not None:
        for meta in info.metadata:
            pattern = getattr(meta, "pattern", None)
            if pattern:
                if "redis" in pattern:
                    return "sqlite | memory | redis://…"
                return "provider:model" if pattern.startswith("^(sim|") else f"text matching {pattern}"
        return "text"
    return _type_name(ann)


# --------------------------------------------------------------------------- problems


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the configuration, already phrased for a person."""

    message: str

    def __str__(self) -> str:
        return self.message


class ConfigError(Exception):
    """Settings could not be loaded; every problem is listed, one per line."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def _short(value: Any) -> str:
    """repr() of a bad value, cut so one problem stays one readable line; URL passwords masked."""
    text = mask_url_passwords(repr(value))
    return text if len(text) <= 60 else text[:57] + "..."


def _split_name(name: str) -> tuple[str, str]:
    """(group, leaf) of a dotted key or a CMW_GROUP__KEY env name, lower-cased."""
    sep = "." if "." in name else "__"
    group, _, leaf = name.rpartition(sep)
    return group.lower(), leaf.lower()


def _suggest(word: str, candidates: Any) -> str:
    """' (did you mean X?)' for a misspelt, shortened or misplaced name, else ''."""
    names = [n for n in candidates if n != word]
    group, leaf = _split_name(word)
    # A right name in the wrong section (`[queue] chat_concurrency_limit`) is the commonest slip.
    moved = [n for n in names if _split_name(n)[1] == leaf]
    siblings = [n for n in names if _split_name(n)[0] == group]
    started = [n for n in siblings if leaf and _split_name(n)[1].startswith(leaf)]
    match = (
        moved
        or started
        or difflib.get_close_matches(word, siblings, n=1, cutoff=0.5)
        or difflib.get_close_matches(word, names, n=1, cutoff=0.6)
    )
    return f" (did you mean {match[0]}?)" if match else ""


# --------------------------------------------------------------------------- profiles


def shipped_profiles_dir() -> Path:
    """Profiles that come with cmw: in the wheel (agent/profiles) or a checkout (./profiles)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "profiles", here.parent / "profiles"):
        if candidate.is_dir():
            return candidate
    return here / "profiles"


def user_profiles_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where `cmw config init` writes and names are looked up first: $CMW_PROFILES_DIR or ~/.config/cmw/profiles."""
    environ = os.environ if environ is None else environ
    if environ.get("CMW_PROFILES_DIR"):
        return Path(environ["CMW_PROFILES_DIR"]).expanduser()
    return Path(environ.get("XDG_CONFIG_HOME") or "~/.config").expanduser() / "cmw" / "profiles"


def default_state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where the session database and admin token live when server.state_dir is empty."""
    environ = os.environ if environ is None else environ
    return Path(environ.get("XDG_STATE_HOME") or "~/.local/state").expanduser() / "cmw"


def profile_dirs(environ: Mapping[str, str] | None = None) -> list[Path]:
    """Directories searched for profiles by name, user directory first."""
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


def resolve_profile(profile: str | os.PathLike[str] | None, environ: Mapping[str, str] | None = None) -> Path:
    """Turn a profile name or path into a file, or raise ConfigError listing what exists."""
    environ = os.environ if environ is None else environ
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
                f"unknown profile '{name}' (from {origin}){_suggest(name, profiles)}; available: {listing} "
                f"(in {user_profiles_dir(environ)} and {shipped_profiles_dir()}), or give a path to a .toml file"
            )
        ]
    )


# --------------------------------------------------------------------------- loading


@dataclass
class Raw:
    """A value as some source supplied it, read but not yet validated."""

    value: Any
    source: str  # default | profile:<path> | .env | env:NAME | --flag / --set
    origin: str  # where exactly, for error messages: "file.toml [events] chat_…", "env CHAT_…"


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


# scheme://user:PASSWORD@host: the password runs to the last "@" before the path (people leave "@" unescaped).
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*):(?P<password>[^/\s]*)@")


def mask_url_passwords(text: str) -> str:
    """``text`` with the password of every URL in it masked (``redis://:********@host``): the one place
    that hides passwords inside URLs, for ``cmw config show``, the admin API, banners, logs and errors."""
    return _URL_PASSWORD.sub(lambda m: f"{m['head']}:{MASK}@", text)


def display_value(value: Any, spec: KeySpec | None = None) -> Any:
    """JSON-friendly value with secrets masked, passwords inside URLs included."""
    if isinstance(value, SecretStr) or (spec is not None and spec.secret and value is not None):
        return MASK
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, str):
        return mask_url_passwords(value)
    return value


GROUPS: frozenset[str] = frozenset(key.partition(".")[0] for key in REGISTRY if "." in key)
# Free text a profile may carry about itself; not a setting.
PROFILE_META = ("profile.description", "description")


def _arms(spec: KeySpec) -> list[Any]:
    """The types a key accepts besides empty: ``int | None`` → [int]; ``Literal[...]`` stays whole."""
    ann = spec.field.annotation
    if typing.get_origin(ann) in (Union, types.UnionType):
        return [a for a in typing.get_args(ann) if a is not type(None)]
    return [ann]


def _optional(spec: KeySpec) -> bool:
    ann = spec.field.annotation
    return typing.get_origin(ann) in (Union, types.UnionType) and type(None) in typing.get_args(ann)


def _is_list(spec: KeySpec) -> bool:
    return any(typing.get_origin(a) is list for a in _arms(spec))


def _is_text(spec: KeySpec) -> bool:
    """Keys whose values are free text: `--set llm.model=4o` must not become a number."""
    return all(a in (str, SecretStr, Path) for a in _arms(spec))


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
    if stripped == "" and _optional(spec):
        return None
    if _is_list(spec):
        if stripped.startswith("["):
            return _parse_scalar(stripped)
        return [_parse_scalar(item.strip()) for item in stripped.split(",") if item.strip()]
    if _is_text(spec):
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


def _read_profile(path: Path) -> tuple[dict[str, Raw], list[Problem]]:
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
            problems.append(Problem(f"{key} = {_short(value)} (from {where}): {key} is a group; write a [{key}] table"))
        elif key not in REGISTRY:
            hint = _suggest(key, [*REGISTRY, "profile.description"])
            problems.append(Problem(f"{key} (from {where}): unknown key{hint}; `cmw config show` lists every key"))
        else:
            spec = REGISTRY[key]
            # TOML has no null: an empty string stands for "empty" in an optional key.
            value = None if value == "" and _optional(spec) else value
            values[key] = Raw(value, f"profile:{path}", where)
    return values, problems


def read_profile(path: Path) -> dict[str, Raw]:
    """Read a profile TOML into raw values, raising ConfigError on syntax errors and unknown keys."""
    values, problems = _read_profile(path)
    if problems:
        raise ConfigError(problems)
    return values


def _read_environ(environ: Mapping[str, str], dotenv: Path | None = None) -> tuple[dict[str, Raw], list[Problem]]:
    values: dict[str, Raw] = {}
    problems: list[Problem] = []
    for name, text in environ.items():
        where = f"{dotenv} {name}" if dotenv else f"env {name}"
        key = ENV_TO_KEY.get(name)
        if key is None:
            if name.startswith(ENV_PREFIX) and name not in LOADER_ENV:
                hint = _suggest(name, [*ENV_TO_KEY, *LOADER_ENV])
                problems.append(Problem(f"{name} (from {where}): unknown setting{hint}"))
            continue
        # A CMW_ name is the explicit, namespaced spelling: it wins over a seed name.
        if key not in values or name.startswith(ENV_PREFIX):
            values[key] = Raw(_from_text(text, REGISTRY[key]), ".env" if dotenv else f"env:{name}", where)
    return values, problems


def read_environ(environ: Mapping[str, str], source: str = "env") -> dict[str, Raw]:
    """Map env vars (seed names and CMW_<GROUP>__<KEY>) to keys; unknown CMW_ names are errors."""
    values, problems = _read_environ(environ, Path(".env") if source == ".env" else None)
    if problems:
        raise ConfigError(problems)
    return values


def _read_dotenv(path: Path) -> tuple[dict[str, str], list[Problem]]:
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


def _parse_assignments(pairs: list[str], label: str) -> tuple[dict[str, Raw], list[Problem]]:
    values: dict[str, Raw] = {}
    problems: list[Problem] = []
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            problems.append(Problem(f"{label} {pair!r}: expected KEY=VALUE, e.g. events.chat_concurrency_limit=4"))
        elif key not in REGISTRY:
            hint = f"{_suggest(key, REGISTRY)}; `cmw config show` lists every key"
            problems.append(Problem(f"{key} (from {label} {key}): unknown key{hint}"))
        else:
            values[key] = Raw(_from_text(text, REGISTRY[key], unquote=True), label, f"{label} {key}")
    return values, problems


def parse_assignments(pairs: list[str], label: str = "--set") -> dict[str, Raw]:
    """Parse ``key=value`` flags; values are read as TOML literals when they are one, else as text."""
    values, problems = _parse_assignments(pairs, label)
    if problems:
        raise ConfigError(problems)
    return values


def _read_flags(flags: Mapping[str, Any], default_label: str) -> tuple[dict[str, Raw], list[Problem]]:
    values: dict[str, Raw] = {}
    problems: list[Problem] = []
    for key, given in flags.items():
        flag = default_label if default_label == "--set" else "--" + key.rpartition(".")[2].replace("_", "-")
        value, label = given if isinstance(given, tuple) else (given, flag)
        if value is None and default_label != "--set":
            continue  # a dedicated flag left out
        if key not in REGISTRY:
            problems.append(Problem(f"{key} (from {label}): unknown key{_suggest(key, REGISTRY)}"))
            continue
        values[key] = Raw(value, label, f"{label} {key}" if label == "--set" else label)
    return values, problems


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


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
            dotenv, trouble = _read_dotenv(dotenv_path)
            problems.extend(trouble)
        elif explicit:
            problems.append(Problem(f"CMW_ENV_FILE={explicit} (from env CMW_ENV_FILE): no such file"))
    # CMW_PROFILE and CMW_PROFILES_DIR may live in .env too; the environment still wins.
    selector_env = {**{k: dotenv[k] for k in LOADER_ENV if k in dotenv}, **environ}

    profile_path: Path | None = None
    if use_profile:
        try:
            profile_path = resolve_profile(profile, selector_env)
        except ConfigError as exc:
            problems.extend(exc.problems)
        else:
            add(_read_profile(profile_path))
    if dotenv:
        add(_read_environ(dotenv, dotenv_path))
    add(_read_environ(environ))
    if isinstance(overrides, list):
        add(_parse_assignments(overrides, "--set"))
    elif overrides:
        add(_read_flags(overrides, "--set"))
    if flags:
        add(_read_flags(flags, "flag"))

    merged: dict[str, Raw] = {}
    for layer in layers:
        merged.update(layer)
    settings: Settings | None = None
    try:
        settings = Settings(**_nest({key: raw.value for key, raw in merged.items()}))
    except ValidationError as exc:
        problems.extend(_explain(exc, merged))
    if problems or settings is None:
        raise ConfigError(problems)
    loaded = LoadedSettings(settings, {k: raw.source for k, raw in merged.items()}, profile_path)
    loaded.warnings = check_effect(settings) + _environment_warnings(settings, environ)
    return loaded


def load_profile(
    profile: str | os.PathLike[str] | None,
    *,
    environ: Mapping[str, str] | None = None,
    env_file: str | os.PathLike[str] | None = ".env",
) -> LoadedSettings:
    """A profile on its own: defaults overlaid with that file, for comparing and validating profiles.

    The environment and ``.env`` only say where profiles live (CMW_PROFILES_DIR, CMW_PROFILE); their
    settings are not applied, so ``validate`` and ``diff`` judge the file, not this shell.
    """
    environ = os.environ if environ is None else environ
    selector = {k: environ[k] for k in LOADER_ENV if k in environ}
    if env_file is not None:
        path = Path(selector.get("CMW_ENV_FILE") or env_file).expanduser()
        if path.is_file():
            dotenv, _ = _read_dotenv(path)
            selector = {**{k: dotenv[k] for k in LOADER_ENV if k in dotenv}, **selector}
    selector.pop("CMW_ENV_FILE", None)
    return load_settings(profile, environ=selector, env_file=None)


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


def _explain(exc: ValidationError, merged: Mapping[str, Raw]) -> list[Problem]:
    by_key: dict[str, list[Any]] = {}
    for error in exc.errors(include_url=False):
        loc = [str(part) for part in error["loc"]]
        key = next((".".join(loc[:n]) for n in range(len(loc), 0, -1) if ".".join(loc[:n]) in REGISTRY), ".".join(loc))
        by_key.setdefault(key, []).append(error)
    problems: list[Problem] = []
    for key, errors in by_key.items():
        # A union reports one error per branch; the branch that was not a plain mismatch says most.
        error = next((e for e in errors if e["type"] != "literal_error"), errors[0])
        raw = merged.get(key)
        spec = REGISTRY.get(key)
        shown = MASK if spec is not None and spec.secret else _short(raw.value if raw else error.get("input"))
        where = raw.origin if raw else "default"
        item = next((int(p) for p in error["loc"][len(key.split(".")) :] if isinstance(p, int)), None)
        reason = _reason(error) if item is None else f"item {item + 1}: {_reason(error)}"
        allowed = spec.allowed if spec else "see `cmw config show`"
        problems.append(Problem(f"{key} = {shown} (from {where}): {reason}; allowed: {allowed}"))
    return problems


def _reason(error: Any) -> str:
    msg = str(error["msg"]).removeprefix("Value error, ")
    return msg[0].lower() + msg[1:] if msg else "invalid"


# --------------------------------------------------------------------------- effect checks


def _limits(settings: Settings) -> dict[str, int]:
    return {
        "queue.default_concurrency_limit": settings.queue.default_concurrency_limit,
        **{
            f"events.{name}": getattr(settings.events, name)
            for name in EventSettings.model_fields
            if name.endswith("_limit")
        },
    }


def check_effect(settings: Settings) -> list[str]:
    """Valid settings that cannot take effect as written; each warning names its keys.

    Each rule restates what Gradio 6 does (gradio/queueing.py, gradio/blocks.py): `launch(max_threads)`
    sizes the queue's worker slots, so no more jobs run at once across all events; `max_size` counts
    waiting events of every event, not running ones; 'auto' status updates broadcast an estimate to
    every waiting client of an event each time one of its jobs starts.
    """
    warnings: list[str] = []
    threads = settings.server.max_threads
    limits = _limits(settings)
    if settings.enable_concurrent_processing:
        for key, limit in limits.items():
            if limit > threads:
                warnings.append(
                    f"{key}={limit} exceeds server.max_threads={threads}: Gradio never runs more than "
                    f"{threads} jobs at once, so the limit acts as {threads}."
                )
        total = sum(v for k, v in limits.items() if k.startswith("events."))
        if total > threads:
            warnings.append(
                f"events.*_concurrency_limit add up to {total} > server.max_threads={threads}: under mixed load "
                "events wait for one of Gradio's worker slots even below their own limits."
            )
    elif any(v > 1 for v in limits.values()):
        warnings.append(
            "enable_concurrent_processing=false: every event runs one at a time; the queue.* and events.* "
            "concurrency limits are not applied."
        )
    max_size = settings.queue.max_size
    chat = settings.event_limit("chat")
    if max_size is not None and max_size < chat:
        warnings.append(
            f"queue.max_size={max_size} < events.chat_concurrency_limit={chat}: Gradio refuses joins once "
            f"{max_size} events wait, so a burst of more than {max_size} simultaneous chats can be refused while "
            "chat slots are free."
        )
    if not settings.queue.enabled:
        warnings.append(
            "queue.enabled=false: Gradio 6 always queues events; queue.default_concurrency_limit, "
            "queue.max_size and queue.status_update_rate are not applied (Gradio's defaults are)."
        )
    if settings.queue.status_update_rate == "auto" and (max_size is None or max_size > 200):
        warnings.append(
            f"queue.status_update_rate='auto' with queue.max_size={max_size if max_size is not None else 'unbounded'}: "
            "every job that starts sends an estimate to every client waiting for that event; a number such as "
            "2.0 keeps that traffic bounded."
        )
    if settings.enable_concurrent_processing and settings.sessions.max_sessions < chat:
        warnings.append(
            f"sessions.max_sessions={settings.sessions.max_sessions} < events.chat_concurrency_limit={chat}: "
            "more chats can run than sessions are kept, so sessions are evicted while they reply."
        )
    if settings.server.workers > 1 and not settings.sessions.store.startswith("redis"):
        warnings.append(
            f"server.workers={settings.server.workers} with sessions.store={settings.sessions.store!r}: workers do "
            "not share sessions; use a redis:// store."
        )
    if settings.server.port and settings.server.port == settings.sim.port:
        warnings.append(
            f"server.port and sim.port are both {settings.server.port}: the second server to start cannot bind it."
        )
    llm = settings.llm
    if llm.provider == "custom" and not llm.base_url:
        warnings.append("llm.provider=custom needs llm.base_url (an OpenAI-compatible URL).")
    if llm.provider == "openai" and llm.api_key is None:
        warnings.append("llm.provider=openai without llm.api_key (OPENAI_API_KEY): requests will be refused.")
    if llm.provider == "openrouter" and llm.openrouter_api_key is None:
        warnings.append("llm.provider=openrouter without llm.openrouter_api_key (OPENROUTER_API_KEY).")
    if llm.model and any(m.startswith(f"{llm.provider}:") for m in llm.models) and \
            f"{llm.provider}:{llm.model}" not in llm.models:
        warnings.append(f"llm.model={llm.model} is not in llm.models for {llm.provider}: the first model listed "
                        "there is the default instead.")
    sim = settings.sim
    faults = sim.error_rate + sim.disconnect_rate + sim.stall_rate + sim.malformed_rate
    if faults > 1:
        warnings.append(
            f"sim.error_rate + disconnect_rate + stall_rate + malformed_rate = {faults:g} > 1: "
            "the rates cannot all hold; at most every request gets a fault."
        )
    if settings.server.host not in ("127.0.0.1", "localhost", "::1") and settings.admin.token is None:
        warnings.append(
            f"server.host={settings.server.host} exposes the app; set admin.token explicitly rather than relying on "
            "the generated one."
        )
    return warnings


def _environment_warnings(settings: Settings, environ: Mapping[str, str]) -> list[str]:
    """Gradio's own env var that cmw's settings override, so setting it does nothing."""
    if settings.queue.enabled and "GRADIO_DEFAULT_CONCURRENCY_LIMIT" in environ:
        return [
            "GRADIO_DEFAULT_CONCURRENCY_LIMIT is ignored: cmw passes queue.default_concurrency_limit to Gradio; "
            "set GRADIO_CONCURRENCY_LIMIT or CMW_QUEUE__DEFAULT_CONCURRENCY_LIMIT instead."
        ]
    return []
