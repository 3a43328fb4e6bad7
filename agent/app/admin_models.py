"""The admin API's response shapes: FastAPI validates every answer against them and publishes them in /openapi.json.

So the OpenAPI document states what a script may rely on, and the fuzz test (tests/agent/app/test_admin_fuzz.py)
checks each answer against it. The shapes are what the routes returned before they had models; a field added
here is a promise to every `cmw status` and `cmw sessions` that reads it.
"""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# Allowed extra keys only where the payload is open by nature (a chat message's provider-specific fields).


class Message(BaseModel):
    """One chat message as the LLM saw it."""

    model_config = ConfigDict(extra="allow")
    role: str
    content: str


class LogEntry(BaseModel):
    time: float = Field(description="Unix time.")
    message: str


class _Conversation(BaseModel):
    """The figures every view of a conversation carries."""

    id: str
    created: float
    last_active: float
    provider: str
    model: str
    turns: int
    tokens: int
    errors: int
    state: Literal["running", "idle", "stored"]


class SessionSummary(_Conversation):
    """A conversation in `cmw sessions list`: in memory (running/idle) or only in the store (stored)."""

    files: list[str] = Field(default_factory=list, description="Names of the attached files.")


class SessionDetail(_Conversation):
    """One conversation with its history (tool steps included), files (name → text), recent latencies and log."""

    history: list[Message]
    files: dict[str, str]
    latencies: list[float]
    ttfts: list[float]
    log: list[LogEntry]


class AppSessionSummary(BaseModel):
    """A Gradio session of an operator's app (`cmw serve APP`): what its queue saw of it."""

    id: str = Field(description="The Gradio session hash.")
    state: Literal["running", "idle"] = Field(description="running: it has events queued or running now.")
    first_seen: float = Field(description="Unix time of its first event.")
    last_seen: float = Field(description="Unix time of its latest event.")
    events: int = Field(description="Events it has run (queued, counted at the join).")
    running: int = Field(description="Its events running now.")
    waiting: int = Field(description="Its events waiting in the queue now.")
    created: float = Field(description="= first_seen (the key every session row has).")
    last_active: float = Field(description="= last_seen.")
    turns: int = Field(description="= events.")
    provider: None = Field(description="An app's LLM is its own business: null.")
    model: None = Field(description="null.")


class AppSessionDetail(AppSessionSummary):
    by_event: dict[str, int] = Field(description="Events run, by api name.")
    running_events: list[str]
    waiting_events: list[str]


class Ended(BaseModel):
    id: str
    ended: Literal["killed"]
    cancelled: int | None = Field(None, description="An app's session: its events cancelled (running or waiting).")


class SessionCounts(BaseModel):
    active: int = Field(description="Sessions in memory.")
    running: int
    created_total: int
    restored_total: int
    evicted_total: int
    expired_total: int
    ended_total: int
    ended_by_reason: dict[str, int]
    purged_total: int
    aliases: int
    store_errors: int
    stored: int | None = Field(description="Conversations in the store; null when the store cannot say.")


class TurnFigures(BaseModel):
    started: int
    completed: int
    failed: int
    failed_by_class: dict[str, int]


class Health(BaseModel):
    status: Literal["ok", "draining"]
    version: str
    profile: str | None
    app: str | None = Field(None, description="The operator's app served (`cmw serve APP`); null: cmw's agent.")
    uptime_s: float
    provider: str
    model: str
    sessions: SessionCounts
    turns: TurnFigures


class EventFigures(BaseModel):
    waiting: int | None
    running: int | None
    limit: int | None = Field(description="Concurrency limit; null when unlimited.")


class Percentiles(BaseModel):
    p50: float | None
    p95: float | None


class Queue(BaseModel):
    events: dict[str, EventFigures]
    waiting_total: int
    in_flight: int
    e2e_s: Percentiles = Field(description="Reply latency of recent turns, seconds.")
    ttft_s: Percentiles = Field(description="Time to first token of recent turns, seconds.")
    samples: int


class SettingEntry(BaseModel):
    """One settings key as `cmw config show --json` shows it: value (secrets masked) and where it came from."""

    value: object
    source: str
    env: list[str]
    allowed: str
    description: str


class LimitEntry(BaseModel):
    """One event's concurrency limit on the running server and where it came from."""

    limit: int | None = Field(description="The limit in effect now; null when unlimited.")
    source: str = Field(description="Where it came from: the settings source (profile:…, default, env:…, --set), "
                                    "an app's own limit source as `cmw inspect` names it, or live.")
    changed_at: float | None = Field(description="Unix time of its last live change; null if none.")
    changed_by: str | None = Field(description="Client address of its last live change; null if none.")


class WorkerLimits(BaseModel):
    """One worker's limits (with --workers N each worker runs its own pools)."""

    worker: int
    port: int
    events: dict[str, LimitEntry] | None = None
    max_threads: int | None = None
    error: str | None = Field(None, description="Why this worker did not answer.")


class Limits(BaseModel):
    events: dict[str, LimitEntry] = Field(description="By event name, as /admin/api/queue names them.")
    max_threads: int = Field(description="server.max_threads: the highest limit a live change may set.")
    workers: list[WorkerLimits] | None = Field(None, description="With --workers N: every worker's limits.")


class LimitChange(BaseModel):
    """The body of a live limit change."""

    model_config = ConfigDict(extra="forbid")
    limit: int = Field(strict=True, description="The new limit: 1 to server.max_threads.")


class WorkerLimitChanged(BaseModel):
    worker: int
    limit: int | None = None
    previous: int | None = None
    error: str | None = Field(None, description="Why this worker did not take the change.")


class LimitChanged(BaseModel):
    """A live limit change made: the event, its new and previous limit, and the events sharing its pool."""

    event: str
    limit: int
    previous: int | None = Field(description="The limit before; null when it was unlimited.")
    pool: list[str] = Field(description="The events that changed with it (one Gradio concurrency id).")
    workers: list[WorkerLimitChanged] | None = Field(None, description="With --workers N: each worker's outcome.")


class Problem(BaseModel):
    """A refused request: what is wrong (a sentence, or FastAPI's list of invalid fields)."""

    detail: str | list[dict[str, object]]
