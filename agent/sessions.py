"""Sessions: one agent per browser session, its lifecycle (idle TTL, LRU cap) and its durable record.

A :class:`Session` owns its history, provider/model, attached files, upload folder, event log and an
``asyncio.Lock`` the chat handler holds while it generates a reply, so two submits of one session never
interleave while different sessions run in parallel (there is no global lock around LLM calls; a
``threading.Lock`` guards only the session table, for admin threads).

A turn has two halves, so the history stays in Gradio's messages format even when a reply fails::

    async with session.lock:
        manager.start_turn(session, text)      # the user message joins the history now
        ...stream the reply...
        manager.finish_turn(session, reply, tokens=n, latency=s, ttft=t, error=None or "timeout")

``finish_turn`` appends the assistant message as given (on failure the caller has put the clear message
in it), counts the turn (failed when ``error`` names a class) and writes user message, reply and counters
to the store in one transaction. :meth:`record_turn` does both halves at once, at the end of the reply.

Durability: every persisted session is loaded when a manager starts, so after a restart (even ``kill -9``)
``list()`` and the admin API show every completed turn and a returning browser gets its history back.
A session reaches the store with its first completed turn, model choice or attached file; a session that
ends (expired, evicted, killed) is deleted from it. The store therefore never holds more sessions than
``max_sessions``, and loading it all at start-up costs what those sessions cost before the restart.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from agent.store import SessionStore, StoreError, open_store

if TYPE_CHECKING:
    from agent.settings import Settings

logger = logging.getLogger("cmw.sessions")

RECENT = 50  # latencies / TTFTs kept per session for the Stats tab
LOG_LINES = 200  # events kept in a session's own log
MAX_ID_LENGTH = 256  # session ids come from clients


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


@dataclass(eq=False)
class Session:
    """Everything one browser session owns; freed when the session ends."""

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
    ended: str | None = None  # why the session ended; an ended session is no longer persisted
    clock: Callable[[], float] = field(default=time.time, repr=False)

    @property
    def state(self) -> Literal["running", "idle"]:
        return "running" if self.pending is not None or self.lock.locked() else "idle"

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
        }

    def to_summary(self) -> dict[str, Any]:
        """The ``cmw sessions list --json`` object; ``files`` lists the attached file names."""
        return {**self.meta(), "state": self.state, "files": list(self.files)}

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


class SessionManager:
    """The session table: creation, restore from the store, LRU eviction, idle expiry and ending."""

    def __init__(
        self,
        *,
        idle_ttl_s: float,
        max_sessions: int,
        store: SessionStore,
        upload_root: Path,
        default_provider: str,
        default_model: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if idle_ttl_s <= 0 or max_sessions < 1:
            raise ValueError("idle_ttl_s must be > 0 and max_sessions >= 1")
        self.idle_ttl_s = idle_ttl_s
        self.max_sessions = max_sessions
        self.store = store
        self.upload_root = Path(upload_root)
        self.default_provider = default_provider
        self.default_model = default_model
        self.clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()  # least recently active first
        self._ending: set[str] = set()  # popped from the table, store record not yet deleted
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._ended_by_reason: Counter[str] = Counter()
        self._closed = False
        self._restore_all()

    @classmethod
    def from_settings(cls, settings: Settings, state_dir: Path) -> SessionManager:
        """The manager ``cmw serve`` runs: store from ``sessions.store``, uploads under state_dir/uploads."""
        store = open_store(settings.sessions.store, state_dir)
        uploads = state_dir / "uploads"
        _reap_stale_uploads(uploads)
        return cls(
            idle_ttl_s=settings.sessions.idle_ttl_s,
            max_sessions=settings.sessions.max_sessions,
            store=store,
            # Per process, so a restart can remove what a killed process left behind.
            upload_root=uploads / str(os.getpid()),
            default_provider=settings.llm.provider,
            default_model=settings.llm.model,
        )

    # ------------------------------------------------------------------ lookup

    def get_or_create(self, session_id: str) -> Session:
        """The session for this client key: in memory, restored from the store, or new. Marks it active."""
        if not session_id or len(session_id) > MAX_ID_LENGTH:
            raise ValueError(f"session id must be 1–{MAX_ID_LENGTH} characters")
        session = self._lookup(session_id)
        if session is None:
            now = self.clock()
            fresh = Session(session_id, now, now, self.default_provider, self.default_model, clock=self.clock)
            fresh.note("session created")
            session = self._register(fresh, restored=False)
        self._touch(session)
        return session

    def is_live(self, session_id: str) -> bool:
        """Whether this process holds the session now (no store lookup)."""
        with self._lock:
            return session_id in self._sessions

    def get(self, session_id: str) -> Session | None:
        """The session if it exists here or in the store, without creating it or marking it active."""
        if not session_id or len(session_id) > MAX_ID_LENGTH:
            return None
        return self._lookup(session_id)

    def list(self) -> list[Session]:
        """Every live session, most recently active first (persisted ones included: all load at start)."""
        with self._lock:
            return list(reversed(self._sessions.values()))

    def _lookup(self, session_id: str) -> Session | None:
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None or session_id in self._ending:
                return session
        # Normally everything persisted is already in memory; this finds records another process wrote.
        record = self._load(session_id)
        if record is None:
            return None
        return self._register(self._from_record(record), restored=True)

    def _load(self, session_id: str) -> dict[str, Any] | None:
        try:
            return self.store.load(session_id)
        except StoreError as exc:
            self._counts["store_errors"] += 1
            logger.error("%s", exc)
            return None

    def _from_record(self, record: dict[str, Any]) -> Session:
        now = self.clock()
        session = Session(
            id=str(record["id"]),
            created=float(record.get("created", now)),
            last_active=float(record.get("last_active", now)),
            provider=str(record.get("provider") or self.default_provider),
            model=str(record["model"] if record.get("model") is not None else self.default_model),
            history=list(record.get("history", [])),
            files=dict(record.get("files", {})),
            turns=int(record.get("turns", 0)),
            tokens=int(record.get("tokens", 0)),
            errors=int(record.get("errors", 0)),
            clock=self.clock,
        )
        session.note(f"session restored from the store: {session.turns} turns, {len(session.files)} files")
        return session

    def _restore_all(self) -> None:
        try:
            ids = self.store.list_ids()
        except StoreError as exc:
            logger.error("%s", exc)
            return
        restored: list[Session] = []
        for session_id in ids:
            record = self._load(session_id)
            if record is not None:
                try:
                    restored.append(self._from_record(record))
                except (KeyError, TypeError, ValueError) as exc:
                    logger.warning("session store: skipping an unreadable record %r: %s", session_id[:8], exc)
        with self._lock:
            for session in sorted(restored, key=lambda s: s.last_active):
                self._sessions[session.id] = session
            self._counts["restored_total"] += len(restored)
        if restored:
            logger.info("restored %d sessions from the session store", len(restored))
        self.sweep()

    def _register(self, session: Session, *, restored: bool) -> Session:
        """Add a session to the table (or return the one another caller added first), then enforce the cap."""
        with self._lock:
            existing = self._sessions.get(session.id)
            if existing is not None:
                return existing
            self._sessions[session.id] = session
            self._counts["restored_total" if restored else "created_total"] += 1
            victims = self._pop_over_cap(keep=session)
        self._free_all(victims, "evicted")
        return session

    def _touch(self, session: Session) -> None:
        with self._lock:
            session.last_active = self.clock()
            if session.id in self._sessions:
                self._sessions.move_to_end(session.id)

    # ------------------------------------------------------------------ ending

    def end(self, session_id: str, reason: str) -> bool:
        """Free a session and delete its record; True when it existed (here or only in the store).

        A running session may be ended too (an operator's kill): its reply finishes but is not
        persisted, and the handler can stop early by checking ``session.ended``.
        """
        with self._lock:
            session = self._sessions.pop(session_id, None)
            if session is not None:
                self._ending.add(session_id)
        if session is not None:
            self._free(session, reason)
            return True
        try:
            return self.store.delete(session_id)
        except StoreError as exc:
            self._counts["store_errors"] += 1
            logger.error("%s", exc)
            return False

    def sweep(self) -> int:
        """End idle sessions past the TTL and trim any overflow of the cap; the number ended."""
        now = self.clock()
        with self._lock:
            expired = [
                s for s in self._sessions.values() if s.state == "idle" and now - s.last_active > self.idle_ttl_s
            ]
            for session in expired:
                del self._sessions[session.id]
                self._ending.add(session.id)
            evicted = self._pop_over_cap()
        self._free_all(expired, "expired")
        self._free_all(evicted, "evicted")
        return len(expired) + len(evicted)

    def _pop_over_cap(self, keep: Session | None = None) -> list[Session]:
        """Least recently active idle sessions beyond the cap, removed from the table (lock held).

        Running sessions are never evicted: when every session runs, the table briefly exceeds the
        cap and the next registration or sweep trims it.
        """
        victims: list[Session] = []
        overflow = len(self._sessions) - self.max_sessions
        if overflow <= 0:
            return victims
        for session in self._sessions.values():
            if len(victims) == overflow:
                break
            if session is not keep and session.state == "idle":
                victims.append(session)
        for session in victims:
            del self._sessions[session.id]
            self._ending.add(session.id)
        return victims

    def _free_all(self, sessions: list[Session], reason: str) -> None:
        for session in sessions:
            self._free(session, reason)

    def _free(self, session: Session, reason: str) -> None:
        """Drop everything the session owns; the caller has already removed it from the table."""
        session.ended = reason
        session.history.clear()
        session.files.clear()
        session.log.clear()
        session.latencies.clear()
        session.ttfts.clear()
        if session.upload_dir is not None:
            shutil.rmtree(session.upload_dir, ignore_errors=True)
            session.upload_dir = None
        try:
            if not self._closed:
                self.store.delete(session.id)
        except StoreError as exc:
            self._counts["store_errors"] += 1
            logger.error("%s", exc)
        finally:
            with self._lock:
                self._ending.discard(session.id)
                self._counts["ended_total"] += 1
                self._ended_by_reason[reason] += 1
        logger.info("session %s… ended: %s", session.id[:8], reason)

    # ------------------------------------------------------------------ turns and changes

    def start_turn(self, session: Session, user_message: str) -> dict[str, Any]:
        """Append the user message (it stays even if the reply fails) and mark the session running."""
        if session.pending is not None:
            raise RuntimeError(f"session {session.id[:8]}… already has a turn in flight; hold session.lock")
        message = {"role": "user", "content": user_message}
        session.history.append(message)
        session.pending = message
        self._touch(session)
        return message

    def finish_turn(
        self,
        session: Session,
        reply: str,
        *,
        tokens: int = 0,
        latency: float | None = None,
        ttft: float | None = None,
        error: str | None = None,
    ) -> dict[str, Any]:
        """Append the assistant message, count the turn and persist it; returns the assistant message.

        ``reply`` is shown as given: on failure the caller puts the clear message in it (e.g. the partial
        reply then ``⚠️ …``). ``error`` is the failure class (``timeout``, ``stopped``…): it marks the
        turn failed and is counted; an empty failed reply becomes ``⚠️ The reply failed (<error>).``.
        """
        user = session.pending
        if user is None:
            raise RuntimeError(f"session {session.id[:8]}… has no turn in flight; call start_turn first")
        content = reply if reply or error is None else f"⚠️ The reply failed ({error})."
        assistant = {"role": "assistant", "content": content}
        session.history.append(assistant)
        session.pending = None
        session.turns += 1
        session.tokens += tokens
        if latency is not None:
            session.latencies.append(latency)
        if ttft is not None:
            session.ttfts.append(ttft)
        if error is not None:
            session.errors += 1
        self._touch(session)
        self._persist(session, "append_messages", session.id, [user, assistant], meta=session.meta())
        return assistant

    def record_turn(
        self,
        session: Session,
        user_message: str,
        reply: str,
        *,
        tokens: int = 0,
        latency: float | None = None,
        ttft: float | None = None,
        error: str | None = None,
    ) -> dict[str, Any]:
        """A whole turn at once (callers that do not stream): start_turn then finish_turn."""
        self.start_turn(session, user_message)
        return self.finish_turn(session, reply, tokens=tokens, latency=latency, ttft=ttft, error=error)

    def clear_history(self, session_id: str) -> bool:
        """Forget a conversation (the Clear button) here and in the store; False for an unknown session.

        Files, counters and a turn in flight stay.
        """
        session = self.get(session_id)
        if session is None:
            return False
        session.history[:] = [session.pending] if session.pending is not None else []
        self._persist(session, "clear_messages", session.id)
        return True

    def known(self, session_id: str) -> bool:
        """Whether a session exists (live or persisted): a returning browser may reclaim it."""
        return self.get(session_id) is not None

    def release(self, session_id: str) -> bool:
        """The browser tab closed (Gradio's unload); True when that ended the session.

        A session with a conversation or files stays until its idle TTL, so a reload or a returning
        browser gets it back; one with nothing to come back to (a page view that never chatted) is
        freed at once.
        """
        with self._lock:
            session = self._sessions.get(session_id)
        if session is None or session.history or session.files or session.state == "running":
            return False
        return self.end(session_id, "unload")

    def set_model(self, session: Session, provider: str, model: str) -> None:
        """This session's provider and model from now on (the caller checks they are offered)."""
        session.provider, session.model = provider, model
        self._persist(session, "save_session", session.meta())

    def attach_file(self, session: Session, name: str, content: str) -> None:
        """Add (or replace) a text file in this session's context."""
        session.files[name] = content
        self._persist(session, "save_file", session.id, name, content, meta=session.meta())

    def remove_file(self, session: Session, name: str) -> bool:
        if session.files.pop(name, None) is None:
            return False
        self._persist(session, "delete_file", session.id, name)
        return True

    def upload_dir(self, session: Session) -> Path:
        """This session's own upload folder (0700), created on first use and removed when the session ends."""
        if session.upload_dir is None:
            # Hashed: the id comes from the client and must not steer the path.
            name = hashlib.sha256(session.id.encode("utf-8")).hexdigest()[:32]
            path = self.upload_root / name
            self.upload_root.mkdir(parents=True, exist_ok=True, mode=0o700)
            path.mkdir(exist_ok=True, mode=0o700)
            session.upload_dir = path
        return session.upload_dir

    def _persist(self, session: Session, method: str, *args: Any, **kwargs: Any) -> None:
        """Write through to the store; a store failure is logged and counted, never breaks the chat."""
        if session.ended is not None or self._closed:
            return
        try:
            getattr(self.store, method)(*args, **kwargs)
        except StoreError as exc:
            self._counts["store_errors"] += 1
            logger.error("%s", exc)

    # ------------------------------------------------------------------ figures and background work

    def counts(self) -> dict[str, Any]:
        """Figures for the Stats tab, the admin API and /metrics."""
        with self._lock:
            sessions = list(self._sessions.values())
            counts = dict(self._counts)
            by_reason = dict(self._ended_by_reason)
        return {
            "active": len(sessions),
            "running": sum(1 for s in sessions if s.state == "running"),
            "created_total": counts.get("created_total", 0),
            "restored_total": counts.get("restored_total", 0),
            "evicted_total": by_reason.get("evicted", 0),
            "expired_total": by_reason.get("expired", 0),
            "ended_total": counts.get("ended_total", 0),
            "ended_by_reason": by_reason,
            "store_errors": counts.get("store_errors", 0),
        }

    async def run_sweeper(self, interval_s: float) -> None:
        """Sweep every ``interval_s`` until cancelled; in a thread, so a large sweep never blocks the loop."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await asyncio.to_thread(self.sweep)
            except Exception:  # the sweeper must outlive any one failure
                logger.exception("session sweep failed")

    def close(self) -> None:
        """Stop writing and close the store; sessions stay in the store for the next start."""
        self._closed = True
        self.store.close()


def _reap_stale_uploads(root: Path) -> None:
    """Remove upload folders of processes that no longer run (e.g. killed with -9)."""
    if not root.is_dir():
        return
    for child in root.iterdir():
        if not child.name.isdigit() or int(child.name) == os.getpid():
            continue
        try:
            os.kill(int(child.name), 0)
        except ProcessLookupError:
            shutil.rmtree(child, ignore_errors=True)
        except PermissionError:
            pass  # alive, owned by someone else
