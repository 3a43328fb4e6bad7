"""Sessions in one SQLite file (WAL), with numbered, recorded schema migrations."""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agent.sessions.store.base import (
    KEY_BYTES,
    StoreError,
    _cutoff,
    _dumps,
    _key_name,
    _page_args,
    last_active,
)

# SQLite schema migrations, applied in order on open inside one transaction and recorded in the
# ``migrations`` table; ``PRAGMA user_version`` holds the last one applied. Append new steps; never edit
# one that has shipped (a database that already ran it will not run it again).
_V1_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, meta TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS messages (seq INTEGER PRIMARY KEY, session_id TEXT NOT NULL, message TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS messages_by_session ON messages (session_id, seq)",
    "CREATE TABLE IF NOT EXISTS files ("
    "session_id TEXT NOT NULL, name TEXT NOT NULL, content TEXT NOT NULL, PRIMARY KEY (session_id, name))",
)


def _sqlite_v1(db: sqlite3.Connection) -> None:
    for statement in _V1_SCHEMA:
        db.execute(statement)


def _sqlite_v2(db: sqlite3.Connection) -> None:
    db.execute("ALTER TABLE sessions ADD COLUMN last_active REAL NOT NULL DEFAULT 0")
    # Backfilled by last_active() itself rather than json_extract, so odd values sort as they will on write.
    rows = db.execute("SELECT id, meta FROM sessions").fetchall()
    updates = []
    for sid, raw in rows:
        try:
            meta = json.loads(raw)
        except ValueError:
            meta = {}
        value = last_active(meta) if isinstance(meta, dict) else 0.0
        if value:
            updates.append((value, sid))
    db.executemany("UPDATE sessions SET last_active = ? WHERE id = ?", updates)
    db.execute("CREATE INDEX IF NOT EXISTS sessions_by_last_active ON sessions (last_active, id)")
    db.execute("CREATE TABLE IF NOT EXISTS secrets (name TEXT PRIMARY KEY, value BLOB NOT NULL)")


SQLITE_MIGRATIONS: tuple[tuple[int, str, Callable[[sqlite3.Connection], None]], ...] = (
    (1, "sessions, messages and files tables", _sqlite_v1),
    (2, "sessions.last_active column (backfilled) and its index; secrets table", _sqlite_v2),
)
SCHEMA_VERSION = SQLITE_MIGRATIONS[-1][0]


class SQLiteStore:
    """Sessions in one SQLite file (WAL); the file is created 0600 since it holds conversations."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._secrets: dict[str, bytes] = {}
        self._db: sqlite3.Connection | None = None
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
            self._migrate(self._db)
        except BaseException as exc:
            if self._db is not None:
                self._db.close()
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"session store {self.path}: cannot open: {exc}") from None
            if isinstance(exc, OSError):
                raise StoreError(f"session store {self.path}: cannot open: {exc.strerror}") from None
            raise

    def _migrate(self, db: sqlite3.Connection) -> None:
        """Brings the schema to SCHEMA_VERSION in one transaction; concurrent openers queue on the write lock."""
        db.execute("BEGIN IMMEDIATE")
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"session store {self.path}: written by a newer cmw (schema {version} > {SCHEMA_VERSION}); "
                    "upgrade cmw or point server.state_dir elsewhere"
                )
            db.execute(
                "CREATE TABLE IF NOT EXISTS migrations (version INTEGER PRIMARY KEY, description TEXT, applied_at REAL)"
            )
            for number, description, step in SQLITE_MIGRATIONS:
                # Steps a database ran before migrations were recorded are recorded with applied_at NULL.
                if number > version:
                    step(db)
                applied_at = time.time() if number > version else None
                db.execute(
                    "INSERT OR IGNORE INTO migrations (version, description, applied_at) VALUES (?, ?, ?)",
                    (number, description, applied_at),
                )
            if version < SCHEMA_VERSION:
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    @property
    def schema_version(self) -> int:
        return self._read(lambda db: db.execute("PRAGMA user_version").fetchone()[0])

    def migrations(self) -> list[dict[str, Any]]:
        """The recorded migrations, oldest first: version, description, applied_at (None: before records)."""
        rows = self._read(
            lambda db: db.execute("SELECT version, description, applied_at FROM migrations ORDER BY version").fetchall()
        )
        return [{"version": v, "description": d, "applied_at": a} for v, d, a in rows]

    def _read(self, query: Callable[[sqlite3.Connection], Any]) -> Any:
        with self._lock:
            assert self._db is not None
            try:
                return query(self._db)
            except sqlite3.Error as exc:
                raise StoreError(f"session store {self.path}: read failed: {exc}") from None

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            assert self._db is not None
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
            "INSERT INTO sessions (id, meta, last_active) VALUES (?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET meta = excluded.meta, last_active = excluded.last_active",
            (meta["id"], _dumps(meta), last_active(meta)),
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
                [(session_id, _dumps(m)) for m in messages],
            )

    def clear_messages(self, session_id: str, *, meta: dict[str, Any] | None = None) -> None:
        with self._write() as db:
            if meta is not None:
                self._upsert(db, meta)
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
        def query(db: sqlite3.Connection) -> tuple[Any, list[Any], dict[str, str]] | None:
            row = db.execute("SELECT meta FROM sessions WHERE id = ?", (session_id,)).fetchone()
            if row is None:
                return None
            history = [
                json.loads(m)
                for (m,) in db.execute("SELECT message FROM messages WHERE session_id = ? ORDER BY seq", (session_id,))
            ]
            files = dict(
                db.execute("SELECT name, content FROM files WHERE session_id = ? ORDER BY rowid", (session_id,))
            )
            return row[0], history, files

        found = self._read(query)
        if found is None:
            return None
        raw, history, files = found
        return {**json.loads(raw), "history": history, "files": files}

    def delete(self, session_id: str) -> bool:
        with self._write() as db:
            deleted = db.execute("DELETE FROM sessions WHERE id = ?", (session_id,)).rowcount
            db.execute("DELETE FROM messages WHERE session_id = ?", (session_id,))
            db.execute("DELETE FROM files WHERE session_id = ?", (session_id,))
        return deleted > 0

    def list_ids(self) -> list[str]:
        return self._read(lambda db: [sid for (sid,) in db.execute("SELECT id FROM sessions ORDER BY rowid")])

    def list_page(self, offset: int = 0, limit: int = 100, *, exclude: Collection[str] = ()) -> list[dict[str, Any]]:
        """Stored metas, latest ``last_active`` first (ties: greater id first), skipping ``exclude``.

        Walks the ``last_active`` index and stops after ``offset + limit`` kept rows, so a page costs
        the rows before it (plus the excluded ones among them), never a history.
        """
        _page_args(offset, limit)
        if limit == 0:
            return []
        excluded = set(exclude)

        def query(db: sqlite3.Connection) -> list[str]:
            out: list[str] = []
            skip = offset
            cursor = db.execute("SELECT id, meta FROM sessions ORDER BY last_active DESC, id DESC")
            try:
                for sid, raw in cursor:
                    if sid in excluded:
                        continue
                    if skip:
                        skip -= 1
                        continue
                    out.append(raw)
                    if len(out) == limit:
                        break
            finally:
                cursor.close()
            return out

        return [json.loads(raw) for raw in self._read(query)]

    def count(self) -> int:
        return self._read(lambda db: db.execute("SELECT COUNT(*) FROM sessions").fetchone()[0])

    def purge_inactive(self, before: float) -> list[str]:
        """Deletes (meta, messages, files) every session last active before ``before``; returns their ids."""
        before = _cutoff(before)
        with self._write() as db:
            gone = [sid for (sid,) in db.execute("SELECT id FROM sessions WHERE last_active < ?", (before,))]
            if gone:
                stale = "SELECT id FROM sessions WHERE last_active < ?"
                db.execute(f"DELETE FROM messages WHERE session_id IN ({stale})", (before,))
                db.execute(f"DELETE FROM files WHERE session_id IN ({stale})", (before,))
                db.execute("DELETE FROM sessions WHERE last_active < ?", (before,))
        return gone

    def key(self, name: str) -> bytes:
        """The 32-byte secret ``name``, made on first use; every process on this file reads the same one."""
        name = _key_name(name)
        with self._lock:
            if name in self._secrets:
                return self._secrets[name]
        with self._write() as db:
            db.execute(
                "INSERT OR IGNORE INTO secrets (name, value) VALUES (?, ?)", (name, secrets.token_bytes(KEY_BYTES))
            )
            value = bytes(db.execute("SELECT value FROM secrets WHERE name = ?", (name,)).fetchone()[0])
        with self._lock:
            return self._secrets.setdefault(name, value)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()

