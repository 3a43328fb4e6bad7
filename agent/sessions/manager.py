"""Sessions: one agent per browser session, its lifecycle (idle TTL, memory cap, retention) and its record.

A :class:`Session` owns its history, provider/model, attached files, upload folder, event log and an
``asyncio.Lock`` the chat handler holds while it generates a reply, so two submits of one session never
interleave while different sessions run in parallel (there is no global lock around LLM calls; a
``threading.Lock`` guards only the session table, for admin threads).

Identity. A conversation's id is derived from the Gradio session hash that started it with a key kept in
the store (HMAC): within one live Gradio session the hash still identifies it, as in Gradio itself, and a
``gradio_client`` whose session was freed while idle goes on in its own conversation; but the id that
``cmw sessions list`` shows is not a hash anyone can present. A browser comes back to its conversation
after a reload only with the token the server issued it (:class:`SessionKeys`): the conversation id, a
128-bit nonce kept in the record, and an HMAC of both. Clear rotates the nonce; an admin kill deletes the
record; either revokes the token.

A turn has two halves, both persisted, so a reply cut by ``kill -9`` or a shutdown whose grace ran out
leaves the user's message and a visible ``[interrupted]`` reply::

    async with session.lock:
        manager.start_turn(session, text)      # the user message is stored now, marked in flight
        ...stream the reply...
        manager.finish_turn(session, reply, tokens=n, latency=s, ttft=t, error=None or "timeout")

Lifecycle. Memory holds at most ``max_sessions`` sessions; beyond it, and after the idle TTL, sessions are
freed from memory only (empty ones first) and read back from the store when they return. Stored
conversations go only by Clear, an admin kill or ``sessions.retention_days``. Start-up loads nothing.

Store I/O never runs on the event loop: writes go, in order, to one writer thread; reads of sessions not
in memory happen in the caller's thread (the app hops to a thread for them), after the writes queued
before them.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import secrets
import shutil
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.sessions.identity import SessionKeys
from agent.sessions.session import MAX_ID_LENGTH, Session, _nonce, interrupted
from agent.sessions.store import SessionStore, StoreError, open_store
from agent.sessions.writer import StoreWriter

if TYPE_CHECKING:
    from agent.settings import Settings

logger = logging.getLogger("cmw.sessions")

TOKEN_KEY = "session-tokens"


class SessionManager:
    """The session table: lookup by hash or token, memory cap and idle expiry, retention, ending."""

    def __init__(
        self,
        *,
        idle_ttl_s: float,
        max_sessions: int,
        store: SessionStore,
        upload_root: Path,
        default_provider: str,
        default_model: str,
        retention_s: float = 30 * 86_400,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if idle_ttl_s <= 0 or max_sessions < 1 or retention_s < 0:
            raise ValueError("idle_ttl_s must be > 0, max_sessions >= 1 and retention_s >= 0")
        self.idle_ttl_s = idle_ttl_s
        self.max_sessions = max_sessions
        self.retention_s = retention_s
        self.store = store
        self.upload_root = Path(upload_root)
        self.default_provider = default_provider
        self.default_model = default_model
        self.clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()  # least recently active first
        # Gradio session hash → conversation id, for tabs that came back with a token. Bounded; entries of
        # conversations that ended go, entries of conversations merely freed from memory stay.
        self._aliases: OrderedDict[str, str] = OrderedDict()
        self.max_aliases = max(1000, 4 * max_sessions)
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._freed_by_reason: Counter[str] = Counter()
        self._closed = False
        self.keys = SessionKeys(self._store_key())
        self.writer = StoreWriter(store, self._store_failed)

    @classmethod
    def from_settings(cls, settings: Settings, state_dir: Path) -> SessionManager:
        """The manager ``cmw serve`` runs: store from ``sessions.store``, uploads under state_dir/uploads."""
        store = open_store(settings.sessions.store, state_dir)
        uploads = state_dir / "uploads"
        _reap_stale_uploads(uploads)
        return cls(
            idle_ttl_s=settings.sessions.idle_ttl_s,
            max_sessions=settings.sessions.max_sessions,
            retention_s=settings.sessions.retention_days * 86_400,
            store=store,
            # Per process, so a restart can remove what a killed process left behind.
            upload_root=uploads / str(os.getpid()),
            default_provider=settings.llm.provider,
            default_model=settings.llm.model,
        )

    def _store_key(self) -> bytes:
        try:
            return self.store.key(TOKEN_KEY)
        except StoreError as exc:  # a store down at start: ids and tokens still work for this process
            logger.error("%s; session tokens will not survive a restart", exc)
            return secrets.token_bytes(32)

    def _store_failed(self, exc: StoreError) -> None:
        self._counts["store_errors"] += 1
        logger.error("%s", exc)

    # ------------------------------------------------------------------ identity

    def conversation_id(self, session_hash: str) -> str:
        """The conversation a Gradio session hash belongs to: its own, or the one it came back to."""
        if not session_hash:
            session_hash = "anonymous"
        with self._lock:
            alias = self._aliases.get(session_hash)
        return alias if alias is not None else self.keys.conversation_id(session_hash[:4096])

    def token(self, session: Session) -> str:
        """The token that brings a browser back to this conversation (kept in its BrowserState)."""
        return self.keys.token(session.id, session.token_nonce)

    def come_back(self, session_hash: str, token: object) -> bool:
        """Point this Gradio session at the conversation the token restores; False (nothing) for any other.

        Runs in a thread: it may read the store. An unknown, forged, revoked or foreign token changes
        nothing, so the caller answers it exactly as a browser that had no token.
        """
        claim = self.keys.verify(token)
        if claim is None or not session_hash:
            return False
        session_id, nonce = claim
        session = self.get(session_id)
        if session is None or session.ended is not None or not hmac.compare_digest(session.token_nonce, nonce):
            return False
        if session_id != self.keys.conversation_id(session_hash):
            with self._lock:
                self._aliases[session_hash] = session_id
                self._aliases.move_to_end(session_hash)
                while len(self._aliases) > self.max_aliases:
                    self._aliases.popitem(last=False)
        self.touch(session)
        return True

    def forget_hash(self, session_hash: str) -> None:
        """The Gradio session ended (tab closed or reloaded): its hash no longer leads to a restored conversation."""
        with self._lock:
            self._aliases.pop(session_hash, None)

    def _drop_aliases(self, session_id: str, keep: str | None = None) -> None:
        with self._lock:
            for session_hash in [h for h, sid in self._aliases.items() if sid == session_id and h != keep]:
                del self._aliases[session_hash]

    # ------------------------------------------------------------------ lookup

    def live(self, session_id: str) -> Session | None:
        """The session if this process holds it in memory now (no store read: safe on the event loop)."""
        with self._lock:
            return self._sessions.get(session_id)

    def is_live(self, session_id: str) -> bool:
        return self.live(session_id) is not None

    def get_or_create(self, session_id: str) -> Session:
        """The conversation with this id: in memory, read back from the store, or new. Marks it active.

        May read the store: call it off the event loop unless :meth:`live` found the session.
        """
        if not session_id or len(session_id) > MAX_ID_LENGTH:
            raise ValueError(f"session id must be 1–{MAX_ID_LENGTH} characters")
        session = self._lookup(session_id)
        if session is None:
            now = self.clock()
            fresh = Session(session_id, now, now, self.default_provider, self.default_model, clock=self.clock)
            fresh.note("session created")
            session = self._register(fresh, restored=False)
        self.touch(session)
        return session

    def get(self, session_id: str) -> Session | None:
        """The conversation if it is in memory or in the store (then read back), without marking it active."""
        if not session_id or len(session_id) > MAX_ID_LENGTH:
            return None
        return self._lookup(session_id)

    def peek(self, session_id: str) -> dict[str, Any] | None:
        """The admin view of a conversation: live if in memory, else as stored (state ``stored``), unchanged."""
        session = self.live(session_id) if session_id and len(session_id) <= MAX_ID_LENGTH else None
        if session is not None:
            return session.to_detail()
        record = self._load(session_id) if session_id and len(session_id) <= MAX_ID_LENGTH else None
        if record is None:
            return None
        try:
            session = self._from_record(interrupted(record))
        except (KeyError, TypeError, ValueError):
            return None
        return {**session.to_detail(), "state": "stored"}

    def list(self) -> list[Session]:
        """Sessions in memory now, most recently active first."""
        with self._lock:
            return list(reversed(self._sessions.values()))

    def summaries(self, offset: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        """A page of every conversation: those in memory first (live state), then the store's (``stored``).

        Reads the store: call it off the event loop.
        """
        live = [s.to_summary() for s in self.list()]
        page = live[offset:offset + limit]
        wanted = limit - len(page)
        if wanted > 0:
            try:
                stored = self.store.list_page(max(0, offset - len(live)), wanted, exclude={s["id"] for s in live})
            except StoreError as exc:
                self._store_failed(exc)
                stored = []
            for meta in stored:
                page.append({**{k: v for k, v in meta.items() if k not in ("token_nonce", "pending")},
                             "state": "stored"})
        return page

    def _lookup(self, session_id: str) -> Session | None:
        session = self.live(session_id)
        if session is not None:
            return session
        record = self._load(session_id)
        if record is None:
            return None
        try:
            restored = self._from_record(interrupted(record))
        except (KeyError, TypeError, ValueError) as exc:
            logger.warning("session store: an unreadable record %s…: %s", session_id[:8], exc)
            return None
        if record is not None and restored.turns != int(record.get("turns", 0)):  # a cut turn, now shown
            self.writer.submit("append_messages", restored.id, [restored.history[-1]], meta=restored.meta())
        return self._register(restored, restored=True)

    def _load(self, session_id: str) -> dict[str, Any] | None:
        self.writer.flush()  # read what this process wrote before
        try:
            return self.store.load(session_id)
        except StoreError as exc:
            self._store_failed(exc)
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
            token_nonce=str(record.get("token_nonce") or _nonce()),
            stored=True,
            clock=self.clock,
        )
        session.note(f"session read back from the store: {session.turns} turns, {len(session.files)} files")
        return session

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

    def touch(self, session: Session) -> None:
        """Mark the session active now (no store I/O)."""
        with self._lock:
            session.last_active = self.clock()
            if session.id in self._sessions:
                self._sessions.move_to_end(session.id)

    # ------------------------------------------------------------------ memory and ending

    def end(self, session_id: str, reason: str) -> bool:
        """End a conversation for good (an admin kill): memory, stored record, token and aliases.

        True when it existed here or in the store. A running session may be ended too: its reply
        finishes but is not persisted, and the handler can stop early by checking ``session.ended``.
        """
        with self._lock:
            session = self._sessions.pop(session_id, None)
        self._drop_aliases(session_id)
        if session is not None:
            session.ended = reason
            self._free(session, reason)
        self.writer.flush()
        try:
            deleted = self.store.delete(session_id)
        except StoreError as exc:
            self._store_failed(exc)
            deleted = False
        return session is not None or deleted

    def sweep(self) -> int:
        """Free idle sessions past the TTL and any overflow of the cap; purge stored ones past retention.

        The number freed or purged. Runs in a thread (the store may be slow).
        """
        now = self.clock()
        with self._lock:
            expired = [
                s for s in self._sessions.values() if s.state == "idle" and now - s.last_active > self.idle_ttl_s
            ]
            for session in expired:
                del self._sessions[session.id]
            evicted = self._pop_over_cap()
        self._free_all(expired, "expired")
        self._free_all(evicted, "evicted")
        return len(expired) + len(evicted) + self._purge(now)

    def _purge(self, now: float) -> int:
        if not self.retention_s or self._closed:
            return 0
        self.writer.flush()
        try:
            purged = self.store.purge_inactive(now - self.retention_s)
        except StoreError as exc:
            self._store_failed(exc)
            return 0
        for session_id in purged:
            with self._lock:
                session = self._sessions.get(session_id)
                if session is not None and session.state == "idle":
                    del self._sessions[session_id]
                else:
                    session = None
            self._drop_aliases(session_id)
            if session is not None:
                session.ended = "retention"
                self._free(session, "retention")
        if purged:
            with self._lock:
                self._counts["purged_total"] += len(purged)
            logger.info("retention: %d stored conversations past %g days deleted", len(purged),
                        self.retention_s / 86_400)
        return len(purged)

    def _pop_over_cap(self, keep: Session | None = None) -> list[Session]:
        """Idle sessions beyond the cap, empty ones first, least recently active first (lock held).

        Running sessions are never freed: when every session runs, the table briefly exceeds the cap
        and the next registration or sweep trims it.
        """
        overflow = len(self._sessions) - self.max_sessions
        if overflow <= 0:
            return []
        idle = [s for s in self._sessions.values() if s is not keep and s.state == "idle"]
        victims = ([s for s in idle if s.empty] + [s for s in idle if not s.empty])[:overflow]
        for session in victims:
            del self._sessions[session.id]
        return victims

    def _free_all(self, sessions: list[Session], reason: str) -> None:
        for session in sessions:
            self._free(session, reason)

    def _free(self, session: Session, reason: str) -> None:
        """Drop what the session holds in memory; the caller has removed it from the table. The store keeps it."""
        if session.ended is not None or session.empty:
            self._drop_aliases(session.id)  # nothing left to come back to
        session.history = []  # a new list: a handler that still holds the session sees nothing of it
        session.files = {}
        session.log.clear()
        session.latencies.clear()
        session.ttfts.clear()
        if session.upload_dir is not None:
            shutil.rmtree(session.upload_dir, ignore_errors=True)
            session.upload_dir = None
        with self._lock:
            self._counts["freed_total"] += 1
            self._freed_by_reason[reason] += 1
        logger.info("session %s… freed: %s", session.id[:8], reason)

    def release(self, session_hash: str) -> bool:
        """The browser tab closed (Gradio's unload); True when that freed its session.

        The hash stops leading to a conversation it came back to. A session with nothing to come back
        to (a page view that never chatted) is freed at once; others stay until the idle TTL.
        """
        session_id = self.conversation_id(session_hash)
        self.forget_hash(session_hash)
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None or not session.empty or session.state == "running":
                return False
            del self._sessions[session_id]
        self._free(session, "unload")
        return True

    # ------------------------------------------------------------------ turns and changes

    def start_turn(self, session: Session, user_message: str) -> dict[str, Any]:
        """Append the user message, mark the session running and store both: a cut turn keeps the message."""
        if session.pending is not None:
            raise RuntimeError(f"session {session.id[:8]}… already has a turn in flight; hold session.lock")
        message = {"role": "user", "content": user_message}
        session.history.append(message)
        session.pending = message
        self.touch(session)
        self._persist(session, "append_messages", session.id, [message], meta=session.meta())
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
        steps: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Append the turn's tool steps and the assistant message, count the turn and persist it; returns the
        assistant message.

        ``reply`` is shown as given: on failure the caller puts the clear message in it (e.g. the partial
        reply then ``⚠️ …``). ``error`` is the failure class (``timeout``, ``stopped``…): it marks the
        turn failed and is counted; an empty failed reply becomes ``⚠️ The reply failed (<error>).``.
        """
        if session.pending is None:
            raise RuntimeError(f"session {session.id[:8]}… has no turn in flight; call start_turn first")
        content = reply if reply or error is None else f"⚠️ The reply failed ({error})."
        assistant = {"role": "assistant", "content": content}
        session.history.extend(steps or ())
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
        self.touch(session)
        self._persist(session, "append_messages", session.id, [*(steps or ()), assistant], meta=session.meta())
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

    def clear_history(self, session: Session, session_hash: str | None = None) -> None:
        """Forget the conversation (the Clear button) here and in the store, and revoke its token.

        Files, counters and a turn in flight stay; other tabs that came back to it with the old token
        lose it, the tab that cleared (``session_hash``) keeps it.
        """
        session.history[:] = [session.pending] if session.pending is not None else []
        session.token_nonce = _nonce()
        self._drop_aliases(session.id, keep=session_hash)
        self._persist(session, "clear_messages", session.id, meta=session.meta())

    def set_model(self, session: Session, provider: str, model: str) -> None:
        """This session's provider and model from now on (the caller checks they are offered)."""
        session.provider, session.model = provider, model
        self._persist(session, "save_session", session.meta())

    def attach_file(self, session: Session, name: str, content: str) -> None:
        """Add (or replace) a text file in this session's context."""
        session.files[name] = content
        self._persist(session, "save_file", session.id, name, content, meta=session.meta())

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
        """Queue a write for the store's thread; a store failure is logged and counted, never breaks the chat."""
        if session.ended is not None or self._closed:
            return
        session.stored = True
        self.writer.submit(method, *args, **kwargs)

    # ------------------------------------------------------------------ figures and background work

    def counts(self) -> dict[str, Any]:
        """Figures for the Stats tab, the admin API and /metrics (no store read: safe on the event loop)."""
        with self._lock:
            sessions = list(self._sessions.values())
            counts = dict(self._counts)
            by_reason = dict(self._freed_by_reason)
            aliases = len(self._aliases)
        return {
            "active": len(sessions),
            "running": sum(1 for s in sessions if s.state == "running"),
            "created_total": counts.get("created_total", 0),
            "restored_total": counts.get("restored_total", 0),
            "evicted_total": by_reason.get("evicted", 0),
            "expired_total": by_reason.get("expired", 0),
            "ended_total": counts.get("freed_total", 0),
            "ended_by_reason": by_reason,
            "purged_total": counts.get("purged_total", 0),
            "aliases": aliases,
            "store_errors": counts.get("store_errors", 0),
        }

    def stored_count(self) -> int | None:
        """Conversations in the store (None when it cannot say). Reads the store: off the event loop."""
        try:
            return self.store.count()
        except StoreError as exc:
            self._store_failed(exc)
            return None

    async def run_sweeper(self, interval_s: float) -> None:
        """Sweep every ``interval_s`` until cancelled; in a thread, so a large sweep never blocks the loop."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await asyncio.to_thread(self.sweep)
            except Exception:  # the sweeper must outlive any one failure
                logger.exception("session sweep failed")

    def close(self) -> None:
        """Apply the queued writes, stop writing and close the store; conversations stay for the next start."""
        self.writer.close()
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
