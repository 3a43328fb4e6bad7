"""The settings model: every key with its type, bounds, default, one-line description and seed env names.

A key is declared here exactly once; the registry (:mod:`agent.settings.registry`) derives env names,
allowed ranges and help from these fields, and the loader (:mod:`agent.settings.loading`) fills them.
The model is a plain pydantic ``BaseModel`` and not pydantic-settings' ``BaseSettings``: the loader
reads every source itself so it can name the source of each value (see the README).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, ConfigDict, Field, SecretStr, StringConstraints, field_validator, model_validator

from agent.settings.providers import PROVIDER_NAMES, PROVIDERS, URL_PROVIDER, is_base_url

MIN_TOKEN_CHARS = 32
# `provider:model`, e.g. openai:gpt-4o-mini; the registry recognises it by this pattern.
PROVIDER_MODEL_PATTERN = rf"^({'|'.join(PROVIDER_NAMES)}):\S+$"
ProviderName = Literal[PROVIDER_NAMES]  # type: ignore[valid-type]

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
    app: str = _key(
        "", "The Gradio app to serve: path/to/app.py[:attr] or module:attr (empty = cmw's own agent app).",
        allowed="path/to/app.py[:attr] | module:attr | empty",
    )
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


EventPattern = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_*?\[\]!.-]+$")]
EventLimit = Annotated[int, Ge(1), Le(10_000)]


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
    limits: dict[EventPattern, EventLimit] = _key(
        {}, "Concurrency limit per event of the served app by api name or glob (the most specific match wins), "
        "and per group of events.groups; wins over the *_concurrency_limit keys for the same event.",
        allowed="table: api name, glob or group → 1–10000",
    )
    groups: dict[EventPattern, list[EventPattern]] = _key(
        {}, "Named sets of api names or globs whose events share one pool of slots (one Gradio concurrency id); "
        "its size is events.limits.GROUP.", allowed="table: group → [api names or globs]",
    )
    override_app_limits: bool = _key(
        False, "Profile limits win over limits the served app's own code set (false: the app's own win)."
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
    provider: ProviderName = _key(
        "sim", "Default provider: " + ", ".join(f"{p.name} ({p.summary})" for p in PROVIDERS.values())
        + f"; a base URL stands for {URL_PROVIDER} at that URL.",
        allowed=f"{' | '.join(PROVIDER_NAMES)}, or an http(s):// base URL",
    )
    model: str = _key("", "Default model; empty picks the provider's default.")
    base_url: str = _key("", "OpenAI-compatible base URL for the custom provider, e.g. http://127.0.0.1:8000/v1.")
    api_key: SecretStr | None = _key(None, "API key for OpenAI, sent to api.openai.com only (never shown).",
                                     "OPENAI_API_KEY")
    openrouter_api_key: SecretStr | None = _key(None, "API key for OpenRouter (never shown).", "OPENROUTER_API_KEY")
    custom_api_key: SecretStr | None = _key(None, "API key for the custom provider's llm.base_url (never shown).")
    timeout_s: float = _key(60.0, "Seconds before an LLM request is abandoned.", gt=0, le=3600)
    max_retries: int = _key(2, "Retries of a failed LLM request before the turn fails.", ge=0, le=20)
    providers: list[ProviderName] = _key(
        [], "Providers a browser may pick besides llm.provider (always offered); empty = llm.provider alone."
    )
    models: list[Annotated[str, StringConstraints(pattern=PROVIDER_MODEL_PATTERN)]] = _key(
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
    reader: Literal["sse", "astream"] = _key(
        "sse", "How replies are read: sse (cmw's lean SSE reader on ChatOpenAI's HTTP client) or astream "
        "(LangChain's ChatOpenAI.astream); both give the same LangChain messages.",
    )

    @model_validator(mode="before")
    @classmethod
    def _base_url_as_provider(cls, data: Any) -> Any:
        """``provider = "http://host/v1"`` (``cmw serve --llm URL``, ``CMW_LLM__PROVIDER=URL``) means the custom
        provider at that URL, however the settings arrive: the CLI, ``python -m agent`` or a profile."""
        if isinstance(data, dict) and is_base_url(data.get("provider")):
            return {**data, "provider": URL_PROVIDER, "base_url": data["provider"]}
        return data


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


BUILTIN_TOOLS = ("calculator", "current_time", "files")


class AgentSettings(_Group):
    factory: str = _key(
        "", "Your own agent, as module:attr or path/to/file.py:attr (empty = the built-in tool-calling agent).",
        allowed="module:attr | path/to/file.py:attr | empty", pattern=r"^$|^[^:\s][^\s]*:[A-Za-z_][A-Za-z0-9_.]*$",
    )
    tools: list[Literal[BUILTIN_TOOLS]] = _key(  # type: ignore[valid-type]
        list(BUILTIN_TOOLS), "Built-in tools the built-in agent may call.",
    )
    max_steps: int = _key(8, "Model calls one turn may make (tool rounds + the answer); past it the turn stops "
                          "with a note.", ge=1, le=100)
    tool_timeout_s: float = _key(10.0, "Seconds one tool call may run before it fails as an error step.",
                                 gt=0, le=3600)
    max_tool_result_chars: int = _key(4000, "Characters of a tool result the model and the UI are given.",
                                      ge=100, le=1_000_000)


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
    tool_call_rate: float = _key(
        0.0, "Share of user turns answered with a tool call when the request offers tools.", ge=0, le=1
    )
    capacity: int = _key(
        0, "Streams served at full speed; beyond it the total token rate stays capacity × tokens_per_second, "
        "shared, as a batching inference server behaves (0 = unlimited).", ge=0, le=100_000,
    )


class UiSettings(_Group):
    language: Literal["auto", "en", "ru"] = _key(
        "auto", "Language of the UI and the dashboard: auto follows the browser's (English unless it prefers "
        "Russian).",
    )


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
    agent: AgentSettings = Field(default_factory=AgentSettings, description="The agent behind the chat.")
    admin: AdminSettings = Field(default_factory=AdminSettings, description="Admin API.")
    ui: UiSettings = Field(default_factory=UiSettings, description="User interface.")
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
