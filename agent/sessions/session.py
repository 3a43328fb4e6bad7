"""One conversation in memory: its history, files, figures, log and the lock its turns hold."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

RECENT = 50  # latencies / TTFTs kept per session for the Stats tab
LOG_LINES = 200  # events kept in a session's own log
MAX_ID_LENGTH = 256  # session hashes and ids come from clients
INTERRUPTED = "[interrupted]"  # the reply of a turn whose process died mid-reply
RUN = secrets.token_hex(8)  # this process's run: a turn in flight marked by another run was cut


class Recent(list):  # type: ignore[type-arg]
    """A list that keeps only its last ``maxlen`` items.

    A deque with a maxlen does the same but costs 760 bytes empty against 64: with three per session
    that was half of what an idle session costs (bench/session_churn.py).
    """

    __slots__ = ("maxlen",)

    def __init__(self, maxlen: int):
        super().__init__()
        self.maxlen = maxlen

    def append(self, item: Any) -> None:
        super().append(item)
        if len(self) > self.maxlen:
            del self[0]


def _recent() -> Recent:
    return Recent(RECENT)


def _log() -> Recent:
    return Recent(LOG_LINES)


def _nonce() -> str:
    return secrets.token_hex(16)  # 128 random bits


@dataclass(eq=False)
class Session:
    """Everything one conversation owns in memory; freed when it leaves memory."""

    id: str
    created: float
    last_active: float
    provider: str
    model: str
    history: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    upload_dir: Path | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    turns: int = 0
    tokens: int = 0
    errors: int = 0  # failed turns
    latencies: Recent = field(default_factory=_recent, repr=False)  # of float
    ttfts: Recent = field(default_factory=_recent, repr=False)  # of float
    log: Recent = field(default_factory=_log, repr=False)  # of (time, message)
    pending: dict[str, Any] | None = None  # the user message of the turn in flight
    ended: str | None = None  # why the conversation ended (Clear keeps it; kill, retention end it)
    token_nonce: str = field(default_factory=_nonce, repr=False)  # part of the restore token; rotated by Clear
    stored: bool = False  # whether the store holds a record of it
    clock: Callable[[], float] = field(default=time.time, repr=False)
    agent: Any = field(default=None, repr=False)  # this conversation's own agent, made on its first turn

    @property
    def state(self) -> Literal["running", "idle"]:
        return "running" if self.pending is not None or self.lock.locked() else "idle"

    @property
    def empty(self) -> bool:
        """Nothing to come back to: never chatted, attached nothing, chose nothing that was stored."""
        return not (self.history or self.files or self.stored or self.turns)

    def note(self, message: str) -> None:
        """Add a line to this session's own log (the Logs tab shows it to this session only).

        The manager notes only what callers cannot see (created, restored); the app notes chat events.
        """
        self.log.append((self.clock(), message))

    def meta(self) -> dict[str, Any]:
        """What the store keeps besides messages and files."""
        return {
            "id": self.id,
            "created": self.created,
            "last_active": self.last_active,
            "provider": self.provider,
            "model": self.model,
            "turns": self.turns,
            "tokens": self.tokens,
            "errors": self.errors,
            "token_nonce": self.token_nonce,
            "pending": None if self.pending is None else {"since": self.last_active, "pid": os.getpid(), "run": RUN},
        }

    def to_summary(self) -> dict[str, Any]:
        """The ``cmw sessions list --json`` object; ``files`` lists the attached file names."""
        summary = {key: value for key, value in self.meta().items() if key not in ("token_nonce", "pending")}
        return {**summary, "state": self.state, "files": list(self.files)}

    def to_detail(self) -> dict[str, Any]:
        """Summary plus history, files (name -> text), recent latencies and the session's log."""
        return {
            **self.to_summary(),
            "history": [dict(m) for m in self.history],
            "files": dict(self.files),
            "latencies": list(self.latencies),
            "ttfts": list(self.ttfts),
            "log": [{"time": at, "message": message} for at, message in self.log],
        }


def interrupted(record: dict[str, Any]) -> dict[str, Any]:
    """A stored record whose turn in flight was cut (its process is gone), with the visible reply added.

    A turn marked by a live process (another worker mid-reply) is left as it is.
    """
    pending = record.get("pending")
    if not isinstance(pending, dict) or pending.get("run") == RUN:
        return record
    pid = pending.get("pid")
    if isinstance(pid, int) and pid != os.getpid() and _alive(pid):
        return record
    return {
        **record,
        "pending": None,
        "history": [*record.get("history", []), {"role": "assistant", "content": INTERRUPTED}],
        "turns": int(record.get("turns", 0)) + 1,
        "errors": int(record.get("errors", 0)) + 1,
        "repaired": True,
    }


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True
