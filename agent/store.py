"""Where sessions' conversations outlive the process: an embedded SQLite database, or memory.

The session manager writes here as turns complete, so a restart (even after ``kill -9``) brings back
every completed turn. One SQLite connection in WAL mode with ``synchronous=NORMAL``: a committed
transaction is in the WAL file before ``commit`` returns, so killing the process never loses it (only
a power cut may lose the last few). The connection is shared by the event loop and admin threads
behind one lock; a turn's messages and the session's metadata are written in one transaction, so a
reader never sees half a turn.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from agent.settings import ConfigError, Problem, Settings

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, meta TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS messages (seq INTEGER PRIMARY KEY, session_id TEXT NOT NULL, message TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS messages_by_session ON messages (session_id, seq);
CREATE TABLE IF NOT EXISTS files (
    session_id TEXT NOT NULL, name TEXT NOT NULL, content TEXT NOT NULL, PRIMARY KEY (session_id, name)
);
"""


class StoreError(RuntimeError):
    """The session store cannot be opened or written; the message names the file and the cause."""


class SessionStore(Protocol):
    """Persists session metadata, messages and attached files.

    ``meta`` is a JSON-able dict with at least ``id``. :meth:`load` returns that dict plus
    ``history`` (messages in the order appended) and ``files`` (name -> text), or None when the
    session was never saved. Writes that take ``meta`` also upsert it in the same transaction, so the
    session row exists whenever its messages or files do.
    """

    def save_session(self, meta: dict[str, Any]) -> None: ...
    def append_messages(
        self, session_id: str, messages: list[dict[str, Any]], *, meta: dict[str, Any] | None = None
    ) -> None: ...
    def clear_messages(self, session_id: str) -> None: ...
    def save_file(self, session_id: str, name: str, content: str, *, meta: dict[str, Any] | None = None) -> None: ...
    def delete_file(self, session_id: str, name: str) -> None: ...
    def load(self, session_id: str) -> dict[str, Any] | None: ...
    def delete(self, session_id: str) -> bool: ...
    def list_ids(self) -> list[str]: ...
    def close(self) -> None: ...


class MemoryStore:
    """Keeps records in this process only: nothing survives a restart (``sessions.store = "memory"``)."""

    def __init__(self) -> None:
        self._records: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def _record(self, session_id: str, meta: dict[str, Any] | None) -> dict[str, Any]:
        record = self._records.setdefault(session_id, {"meta": None, "history": [], "files": {}})
        if meta is not None:
            record["meta"] = dict(meta)
        return record

    def save_session(self, meta: dict[str, Any]) -> None:
        with self._lock:
            self._record(meta["id"], meta)

    def append_messages(
        self, session_id: str, messages: list[dict[str, Any]], *, meta: dict[str, Any] | None = None
    ) -> None:
        with self._lock:
            self._record(session_id, meta)["history"].extend(dict(m) for m in messages)

    def clear_messages(self, session_id: str) -> None:
        with self._lock:
            if session_id in self._records:
                self._records[session_id]["history"] = []

    def save_file(self, session_id: str, name: str, content: str, *, meta: dict[str, Any] | None = None) -> None:
        with self._lock:
            self._record(session_id, meta)["files"][name] = content

    def delete_file(self, session_id: str, name: str) -> None:
        with self._lock:
            if session_id in self._records:
                self._records[session_id]["files"].pop(name, None)

    def load(self, session_id: str) -> dict[str, Any] | None:
        with self._lock:
            record = self._records.get(session_id)
            if record is None or record["meta"] is None:
                return None
            return {
                **record["meta"],
                "history": [dict(m) for m in record["history"]],
                "files": dict(record["files"]),
            }

    def delete(self, session_id: str) -> bool:
        with self._lock:
            return self._records.pop(session_id, None) is not None

    def list_ids(self) -> list[str]:
        with self._lock:
            return [sid for sid, record in self._records.items() if record["meta"] is not None]

    def close(self) -> None:
        """Nothing to release; records stay readable so tests can 'restart' a manager on the same store."""


class SQLiteStore:
    """Sessions in one SQLite file (WAL); the file is created 0600 since it holds conversations."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not self.path.exists():
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
            # Autocommit mode: every write below opens its own explicit transaction.
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA busy_timeout = 5000")
            mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"session store {self.path}: the file system does not support WAL (mode {mode})")
            self._db.execute("PRAGMA synchronous = NORMAL")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"session store {self.path}: written by a newer cmw (schema {version} > {SCHEMA_VERSION}); "
                    "upgrade cmw or point server.state_dir elsewhere"
                )
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            raise StoreError(f"session store {self.path}: cannot open: {exc}") from None
        except OSError as exc:
            raise StoreError(f"session store {self.path}: cannot open: {exc.strerror}") from None

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StoreError(f"session store {self.path}: write failed: {exc}") from None

    @staticmethod
    def _upsert(db: sqlite3.Connection, meta: Mapping[str, Any]) -> None:
        db.execute(
            "INSERT INTO sessions (id, meta) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET meta = excluded.meta",
            (meta["id"], json.dumps(meta, separators=(",", ":"))),
        )

    def save_session(self, meta: dict[str, Any]) -> None:
        with self._write() as db:
            self._upsert(db, meta)

    def append_messages(
        self, session_id: str, messages: list[dict[str, Any]], *, meta: dict[str, Any] | None = None
    ) -> None:
        with self._write() as db:
            if meta is not None:
                self._upsert(db, meta)
            db.executemany(
                "INSERT INTO messages (session_id, message) VALUES (?, ?)",
                [(session_id, json.dumps(m, separators=(",", ":"))) for m in messages],
            )

    def clear_messages(self, session_id: str) -> None:
        with self._write() as db:
            db.execute("DELETE FROM messages WHERE session_id = ?", (session_id,))

    def save_file(self, session_id: str, name: str, content: str, *, meta: dict[str, Any] | None = None) -> None:
        with self._write() as db:
            if meta is not None:
                self._upsert(db, meta)
            db.execute(
                "INSERT INTO files (session_id, name, content) VALUES (?, ?, ?) "
                "ON CONFLICT (session_id, name) DO UPDATE SET content = excluded.content",
                (session_id, name, content),
            )

    def delete_file(self, session_id: str, name: str) -> None:
        with self._write() as db:
            db.execute("DELETE FROM files WHERE session_id = ? AND name = ?", (session_id, name))

    def load(self, session_id: str) -> dict[str, Any] | None:
        with self._lock:
            try:
                row = self._db.execute("SELECT meta FROM sessions WHERE id = ?", (session_id,)).fetchone()
                if row is None:
                    return None
                history = [
                    json.loads(m)
                    for (m,) in self._db.execute(
                        "SELECT message FROM messages WHERE session_id = ? ORDER BY seq", (session_id,)
                    )
                ]
                files = dict(
                    self._db.execute(
                        "SELECT name, content FROM files WHERE session_id = ? ORDER BY rowid", (session_id,)
                    )
                )
            except sqlite3.Error as exc:
                raise StoreError(f"session store {self.path}: read failed: {exc}") from None
        return {**json.loads(row[0]), "history": history, "files": files}

    def delete(self, session_id: str) -> bool:
        with self._write() as db:
            deleted = db.execute("DELETE FROM sessions WHERE id = ?", (session_id,)).rowcount
            db.execute("DELETE FROM messages WHERE session_id = ?", (session_id,))
            db.execute("DELETE FROM files WHERE session_id = ?", (session_id,))
        return deleted > 0

    def list_ids(self) -> list[str]:
        with self._lock:
            try:
                return [sid for (sid,) in self._db.execute("SELECT id FROM sessions ORDER BY rowid")]
            except sqlite3.Error as exc:
                raise StoreError(f"session store {self.path}: read failed: {exc}") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()


def open_store(spec: str, state_dir: Path) -> SessionStore:
    """The store ``sessions.store`` names: ``sqlite`` (state_dir/sessions.db), ``memory``, or ``redis://``."""
    if spec == "sqlite":
        return SQLiteStore(state_dir / "sessions.db")
    if spec == "memory":
        return MemoryStore()
    if spec.startswith(("redis://", "rediss://")):
        raise ConfigError(
            [Problem("sessions.store: a redis:// store is not available yet; use sqlite (default) or memory")]
        )
    raise ConfigError([Problem(f"sessions.store = {spec!r}: allowed: sqlite|memory|redis://…")])


def state_dir(settings: Settings, environ: Mapping[str, str] | None = None) -> Path:
    """The directory holding the session database and the admin token, created 0700.

    ``server.state_dir`` when set, else ``$XDG_STATE_HOME/cmw`` (an absolute path, per the XDG spec),
    else ``~/.local/state/cmw``.
    """
    environ = os.environ if environ is None else environ
    if settings.server.state_dir is not None:
        path = Path(settings.server.state_dir).expanduser()
    else:
        xdg = environ.get("XDG_STATE_HOME", "")
        base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "state"
        path = base / "cmw"
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise StoreError(f"state directory {path}: cannot create: {exc.strerror} (set server.state_dir)") from None
    return path
