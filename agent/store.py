"""Where sessions' conversations outlive the process: an embedded SQLite database, Redis, or memory.

The session manager writes here as turns complete, so a restart (even after ``kill -9``) brings back
every completed turn. One SQLite connection in WAL mode with ``synchronous=NORMAL``: a committed
transaction is in the WAL file before ``commit`` returns, so killing the process never loses it (only
a power cut may lose the last few). The connection is shared by every caller thread behind one lock;
a turn's messages and the session's metadata are written in one transaction, so a reader never sees
half a turn.

A stored conversation lives until the user clears it, an admin deletes it, or its retention period
runs out (:meth:`SessionStore.purge_inactive`), not as long as some process holds it in memory. So the
stores page through their sessions by ``last_active`` without loading histories, and each keeps its
own schema version with a record of the migrations applied to it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from agent.settings import ConfigError, Problem, Settings, mask_url_passwords

KEY_BYTES = 32


class StoreError(RuntimeError):
    """The session store cannot be opened or written; the message names the file and the cause."""


def last_active(meta: Mapping[str, Any]) -> float:
    """``meta["last_active"]`` as the stores order and purge by: a finite JSON number, anything else 0.

    The Redis scripts (``_LAST_ACTIVE_LUA``) and the SQLite backfill apply the same rule, so every store
    agrees on where a session with a missing or odd value sorts (last) and that it is purged first.
    """
    value = meta.get("last_active")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    value = float(value)
    return value if math.isfinite(value) else 0.0


def _page_args(offset: int, limit: int) -> None:
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError(f"offset must be an integer >= 0, not {offset!r}")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValueError(f"limit must be an integer >= 0, not {limit!r}")


def _cutoff(before: float) -> float:
    if isinstance(before, bool) or not isinstance(before, int | float) or math.isnan(before):
        raise ValueError(f"purge_inactive needs a time, not {before!r}")
    return float(before)


def _key_name(name: str) -> str:
    if not isinstance(name, str) or not name or len(name) > 100:
        raise ValueError("a store key needs a name of 1 to 100 characters")
    return name


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class SessionStore(Protocol):
    """Persists session metadata, messages and attached files.

    ``meta`` is a JSON-able dict with at least ``id``; the store keeps it as opaque JSON apart from
    ``last_active`` (see :func:`last_active`), which orders :meth:`list_page` and drives
    :meth:`purge_inactive`. :meth:`load` returns that dict plus ``history`` (messages in the order
    appended) and ``files`` (name -> text), or None when the session was never saved. Writes that take
    ``meta`` also upsert it in the same transaction, so the session row exists whenever its messages or
    files do. Every method is synchronous and thread-safe; callers run them off the event loop.
    """

    def save_session(self, meta: dict[str, Any]) -> None: ...
    def append_messages(
        self, session_id: str, messages: list[dict[str, Any]], *, meta: dict[str, Any] | None = None
    ) -> None: ...
    def clear_messages(self, session_id: str, *, meta: dict[str, Any] | None = None) -> None: ...
    def save_file(self, session_id: str, name: str, content: str, *, meta: dict[str, Any] | None = None) -> None: ...
    def delete_file(self, session_id: str, name: str) -> None: ...
    def load(self, session_id: str) -> dict[str, Any] | None: ...
    def delete(self, session_id: str) -> bool: ...
    def list_ids(self) -> list[str]: ...
    def list_page(
        self, offset: int = 0, limit: int = 100, *, exclude: Collection[str] = ()
    ) -> list[dict[str, Any]]: ...
    def count(self) -> int: ...
    def purge_inactive(self, before: float) -> list[str]: ...
    def key(self, name: str) -> bytes: ...
    def close(self) -> None: ...


class MemoryStore:
    """Keeps records in this process only: nothing survives a restart (``sessions.store = "memory"``)."""

    def __init__(self) -> None:
        self._records: dict[str, dict[str, Any]] = {}
        self._keys: dict[str, bytes] = {}
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

    def clear_messages(self, session_id: str, *, meta: dict[str, Any] | None = None) -> None:
        with self._lock:
            if meta is not None:
                self._record(session_id, meta)
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

    def list_page(self, offset: int = 0, limit: int = 100, *, exclude: Collection[str] = ()) -> list[dict[str, Any]]:
        """Stored metas, latest ``last_active`` first (ties: greater id first), skipping ``exclude``."""
        _page_args(offset, limit)
        excluded = set(exclude)
        with self._lock:
            metas = [r["meta"] for sid, r in self._records.items() if r["meta"] is not None and sid not in excluded]
            metas.sort(key=lambda m: (last_active(m), str(m["id"])), reverse=True)
            return [dict(m) for m in metas[offset : offset + limit]]

    def count(self) -> int:
        with self._lock:
            return sum(1 for record in self._records.values() if record["meta"] is not None)

    def purge_inactive(self, before: float) -> list[str]:
        """Deletes (meta, messages, files) every session last active before ``before``; returns their ids."""
        before = _cutoff(before)
        with self._lock:
            gone = [
                sid for sid, r in self._records.items() if r["meta"] is not None and last_active(r["meta"]) < before
            ]
            for sid in gone:
                del self._records[sid]
            return gone

    def key(self, name: str) -> bytes:
        """A random secret made on first use; this process's alone, as the records are."""
        with self._lock:
            return self._keys.setdefault(_key_name(name), secrets.token_bytes(KEY_BYTES))

    def close(self) -> None:
        """Nothing to release; records stay readable so tests can 'restart' a manager on the same store."""


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


# The Redis scripts' reading of meta.last_active, matching last_active() above. A score a script writes
# goes through string.format('%.17g'): Redis before 7 passes a Lua number to a command with 14 digits only,
# and a rounded time.time() would sort (and purge) differently from the one Python wrote.
_LAST_ACTIVE_LUA = """
local function last_active(raw)
  if not raw then return 0 end
  local ok, meta = pcall(cjson.decode, raw)
  if not ok or type(meta) ~= 'table' then return 0 end
  local value = meta['last_active']
  if type(value) ~= 'number' or value ~= value or value == math.huge or value == -math.huge then return 0 end
  return value
end
"""

# KEYS: session, messages, files, ids, active. ARGV: last_active this process saw ('' for none), id.
_DELETE_IF_NOT_NEWER = _LAST_ACTIVE_LUA + """
local meta = redis.call('GET', KEYS[1])
if meta and ARGV[1] ~= '' then
  if last_active(meta) > tonumber(ARGV[1]) then return -1 end
end
local existed = redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('ZREM', KEYS[4], ARGV[2])
redis.call('ZREM', KEYS[5], ARGV[2])
return existed
"""

# KEYS: ids, active, then session, messages, files per candidate. ARGV: before, then the candidates' ids.
# Re-checks each candidate's meta, so a session written since the range was read survives (its score is
# put right if it was stale); an id whose meta is gone is dropped from the indexes but not reported.
_PURGE = _LAST_ACTIVE_LUA + """
local before = tonumber(ARGV[1])
local gone = {}
for i = 2, #ARGV do
  local id = ARGV[i]
  local k = 3 + (i - 2) * 3
  local meta = redis.call('GET', KEYS[k])
  local value = last_active(meta)
  if meta and value >= before then
    redis.call('ZADD', KEYS[2], string.format('%.17g', value), id)
  else
    redis.call('DEL', KEYS[k], KEYS[k + 1], KEYS[k + 2])
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZREM', KEYS[2], id)
    if meta then table.insert(gone, id) end
  end
end
return gone
"""

# KEYS: ids, active, then one session key per id. ARGV: the ids. Drops ids whose meta is (still) gone.
_DROP_DANGLING = """
for i = 1, #ARGV do
  if redis.call('EXISTS', KEYS[i + 2]) == 0 then
    redis.call('ZREM', KEYS[1], ARGV[i])
    redis.call('ZREM', KEYS[2], ARGV[i])
  end
end
return 0
"""

# KEYS: active, then session keys. ARGV: the ids. Scores each existing session by its meta, atomically
# with reading it, so a concurrent writer's newer score is never overwritten by an older one.
_INDEX_ACTIVE = _LAST_ACTIVE_LUA + """
for i = 1, #ARGV do
  local meta = redis.call('GET', KEYS[i + 1])
  if meta then redis.call('ZADD', KEYS[1], string.format('%.17g', last_active(meta)), ARGV[i]) end
end
return 0
"""

_REDIS_BATCH = 200


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class RedisStore:
    """Sessions in Redis, shared by every worker process and host (``sessions.store = "redis://…"``).

    Per session: ``cmw:session:<id>`` (meta JSON), ``cmw:messages:<id>`` (a list of JSON messages) and
    ``cmw:files:<id>`` (a hash); ``cmw:ids`` orders the ids by creation and ``cmw:active`` by
    ``last_active`` (kept with every meta write, in the same MULTI/EXEC). ``cmw:key:<name>`` holds the
    shared secrets, ``cmw:schema`` the schema version and ``cmw:migrations`` (a hash: version -> JSON
    description and time) the migrations applied. A turn is one MULTI/EXEC, so a reader (any worker)
    sees all of a turn or none of it. Durability is Redis's: configure AOF (``appendonly yes``) where a
    Redis restart must not lose turns; a worker's ``kill -9`` loses nothing.

    Deleting is guarded: a worker that ends a session it holds a stale copy of (another worker wrote a
    newer ``last_active`` since this one last read or wrote it) leaves the record alone, so one worker's
    idle expiry or LRU eviction never deletes a conversation that lives on elsewhere.
    """

    SCHEMA_VERSION = 2

    def __init__(self, url: str, *, prefix: str = "cmw:") -> None:
        import redis

        self.url = url
        self.prefix = prefix
        self._shown = mask_url_passwords(url)
        self._seen: dict[str, float] = {}  # session id -> last_active this process last read or wrote
        self._seen_lock = threading.Lock()
        self._secrets: dict[str, bytes] = {}
        self._ids_key = f"{prefix}ids"
        self._active_key = f"{prefix}active"
        self._schema_key = f"{prefix}schema"
        self._migrations_key = f"{prefix}migrations"
        try:
            self._redis = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5, decode_responses=True)
            self._redis.ping()
        except (redis.RedisError, ValueError) as exc:
            raise StoreError(mask_url_passwords(f"session store {self._shown}: cannot connect: {exc}")) from None
        self._delete_script = self._redis.register_script(_DELETE_IF_NOT_NEWER)
        self._purge_script = self._redis.register_script(_PURGE)
        self._drop_script = self._redis.register_script(_DROP_DANGLING)
        self._index_script = self._redis.register_script(_INDEX_ACTIVE)
        try:
            with self._errors("migrate"):
                self._migrate()
        except BaseException:
            self._redis.close()
            raise

    # Migrations, in order; the same rules as SQLITE_MIGRATIONS.
    def _redis_v1(self) -> None:
        """Nothing to build: v1's keys are made on demand."""

    def _redis_v2(self) -> None:
        """Scores every stored session into ``<prefix>active``, SCAN by SCAN batch."""
        pattern = _glob_escape(f"{self.prefix}session:") + "*"
        skip = len(f"{self.prefix}session:")
        batch: list[str] = []
        for session_key in self._redis.scan_iter(match=pattern, count=_REDIS_BATCH):
            batch.append(session_key)
            if len(batch) >= _REDIS_BATCH:
                self._index_script(keys=[self._active_key, *batch], args=[k[skip:] for k in batch])
                batch = []
        if batch:
            self._index_script(keys=[self._active_key, *batch], args=[k[skip:] for k in batch])

    def _migrations_list(self) -> tuple[tuple[int, str, Callable[[], None]], ...]:
        return (
            (1, "per-session meta, messages and files keys; ids sorted set", self._redis_v1),
            (2, "active sorted set by last_active (built from the stored metas); shared keys", self._redis_v2),
        )

    def _migrate(self) -> None:
        """Runs the steps past ``<prefix>schema``. Steps are idempotent, so openers racing here agree."""
        raw = self._redis.get(self._schema_key)
        if raw is None:  # before the schema key: a v1 database if it holds anything, else a fresh one
            version = 1 if self._redis.exists(self._ids_key) else 0
        else:
            try:
                version = int(raw)
            except ValueError:
                raise StoreError(f"session store {self._shown}: {self._schema_key} is not a version: {raw!r}") from None
        if version > self.SCHEMA_VERSION:
            raise StoreError(
                f"session store {self._shown}: written by a newer cmw (schema {version} > {self.SCHEMA_VERSION}); "
                "upgrade cmw or use another Redis database"
            )
        for number, description, step in self._migrations_list():
            if number > version:
                step()
            record = {"description": description, "applied_at": time.time() if number > version else None}
            self._redis.hsetnx(self._migrations_key, str(number), _dumps(record))
        if version < self.SCHEMA_VERSION:
            # Never lower it: a newer cmw may have raced us here.
            self._redis.eval(
                "local v = tonumber(redis.call('GET', KEYS[1]) or '0') "
                "if v < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end return 0",
                1, self._schema_key, str(self.SCHEMA_VERSION),
            )

    @property
    def schema_version(self) -> int:
        with self._errors("read"):
            return int(self._redis.get(self._schema_key) or 0)

    def migrations(self) -> list[dict[str, Any]]:
        """The recorded migrations, oldest first: version, description, applied_at (None: before records)."""
        with self._errors("read"):
            raw = self._redis.hgetall(self._migrations_key)
        return [{"version": int(v), **json.loads(raw[v])} for v in sorted(raw, key=int)]

    def _keys(self, session_id: str) -> tuple[str, str, str]:
        p = self.prefix
        return f"{p}session:{session_id}", f"{p}messages:{session_id}", f"{p}files:{session_id}"

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        import redis

        try:
            yield
        except redis.RedisError as exc:
            raise StoreError(f"session store {self._shown}: {what} failed: {exc}") from None

    def _see(self, meta: Mapping[str, Any] | None) -> None:
        if meta is not None and "last_active" in meta:
            with self._seen_lock:
                self._seen[str(meta["id"])] = last_active(meta)

    def _upsert(self, pipe: Any, meta: Mapping[str, Any]) -> None:
        session_key = self._keys(meta["id"])[0]
        pipe.set(session_key, _dumps(meta))
        pipe.zadd(self._ids_key, {meta["id"]: float(meta.get("created", 0.0))}, nx=True)
        pipe.zadd(self._active_key, {meta["id"]: last_active(meta)})

    def save_session(self, meta: dict[str, Any]) -> None:
        with self._errors("write"):
            pipe = self._redis.pipeline(transaction=True)
            self._upsert(pipe, meta)
            pipe.execute()
        self._see(meta)

    def append_messages(
        self, session_id: str, messages: list[dict[str, Any]], *, meta: dict[str, Any] | None = None
    ) -> None:
        with self._errors("write"):
            pipe = self._redis.pipeline(transaction=True)
            if meta is not None:
                self._upsert(pipe, meta)
            if messages:
                pipe.rpush(self._keys(session_id)[1], *(_dumps(m) for m in messages))
            pipe.execute()
        self._see(meta)

    def clear_messages(self, session_id: str, *, meta: dict[str, Any] | None = None) -> None:
        with self._errors("write"):
            pipe = self._redis.pipeline(transaction=True)
            if meta is not None:
                self._upsert(pipe, meta)
            pipe.delete(self._keys(session_id)[1])
            pipe.execute()
        self._see(meta)

    def save_file(self, session_id: str, name: str, content: str, *, meta: dict[str, Any] | None = None) -> None:
        with self._errors("write"):
            pipe = self._redis.pipeline(transaction=True)
            if meta is not None:
                self._upsert(pipe, meta)
            pipe.hset(self._keys(session_id)[2], name, content)
            pipe.execute()
        self._see(meta)

    def delete_file(self, session_id: str, name: str) -> None:
        with self._errors("write"):
            self._redis.hdel(self._keys(session_id)[2], name)

    def load(self, session_id: str) -> dict[str, Any] | None:
        session_key, messages_key, files_key = self._keys(session_id)
        with self._errors("read"):
            pipe = self._redis.pipeline(transaction=True)
            pipe.get(session_key)
            pipe.lrange(messages_key, 0, -1)
            pipe.hgetall(files_key)
            raw, messages, files = pipe.execute()
        if raw is None:
            return None
        meta = json.loads(raw)
        self._see(meta)
        return {**meta, "history": [json.loads(m) for m in messages], "files": dict(files)}

    def delete(self, session_id: str) -> bool:
        with self._seen_lock:
            seen = self._seen.pop(session_id, None)
        with self._errors("delete"):
            keys = [*self._keys(session_id), self._ids_key, self._active_key]
            result = self._delete_script(keys=keys, args=["" if seen is None else repr(seen), session_id])
        return int(result) > 0

    def list_ids(self) -> list[str]:
        """Every stored id, oldest first."""
        with self._errors("read"):
            return list(self._redis.zrange(self._ids_key, 0, -1))

    def list_page(self, offset: int = 0, limit: int = 100, *, exclude: Collection[str] = ()) -> list[dict[str, Any]]:
        """Stored metas, latest ``last_active`` first (ties: greater id first), skipping ``exclude``.

        Walks ``<prefix>active`` from the top in bounded batches and stops after ``offset + limit`` kept
        metas; ids whose meta is gone (dangling) are skipped and dropped from the indexes.
        """
        _page_args(offset, limit)
        if limit == 0:
            return []
        excluded = set(exclude)
        out: list[dict[str, Any]] = []
        dangling: list[str] = []
        skip = offset
        start = 0
        batch = max(_REDIS_BATCH, min(offset + limit, 5 * _REDIS_BATCH))
        with self._errors("read"):
            while len(out) < limit:
                ids = self._redis.zrevrange(self._active_key, start, start + batch - 1)
                if not ids:
                    break
                start += len(ids)
                wanted = [sid for sid in ids if sid not in excluded]
                raws = self._redis.mget([self._keys(sid)[0] for sid in wanted]) if wanted else []
                for sid, raw in zip(wanted, raws, strict=True):
                    if raw is None:
                        dangling.append(sid)
                    elif skip:
                        skip -= 1
                    else:
                        out.append(json.loads(raw))
                        if len(out) == limit:
                            break
        if dangling:
            self._drop_dangling(dangling)
        return out

    def _drop_dangling(self, ids: list[str]) -> None:
        with self._errors("write"):
            for i in range(0, len(ids), _REDIS_BATCH):
                chunk = ids[i : i + _REDIS_BATCH]
                keys = [self._ids_key, self._active_key, *(self._keys(sid)[0] for sid in chunk)]
                self._drop_script(keys=keys, args=chunk)

    def count(self) -> int:
        """Sessions in ``<prefix>active`` (a dangling id counts until a page or purge drops it)."""
        with self._errors("read"):
            return int(self._redis.zcard(self._active_key))

    def purge_inactive(self, before: float) -> list[str]:
        """Deletes (meta, messages, files) every session last active before ``before``; returns their ids.

        Reads candidates from ``<prefix>active`` in batches and deletes each batch in one script that
        re-checks every meta, so a session another worker has just written is kept.
        """
        before = _cutoff(before)
        gone: list[str] = []
        max_rounds = 1 + self.count() // _REDIS_BATCH + 10  # each round removes or rescores its whole batch
        with self._errors("purge"):
            for _ in range(max_rounds):
                ids = self._redis.zrangebyscore(self._active_key, "-inf", f"({before!r}", start=0, num=_REDIS_BATCH)
                if not ids:
                    break
                keys = [self._ids_key, self._active_key, *(k for sid in ids for k in self._keys(sid))]
                gone.extend(self._purge_script(keys=keys, args=[repr(before), *ids]))
        with self._seen_lock:
            for sid in gone:
                self._seen.pop(sid, None)
        return gone

    def key(self, name: str) -> bytes:
        """The 32-byte secret ``name``, made on first use (SET NX); every worker on this Redis reads the same."""
        name = _key_name(name)
        if name in self._secrets:
            return self._secrets[name]
        redis_key = f"{self.prefix}key:{name}"
        with self._errors("key"):
            self._redis.set(redis_key, secrets.token_bytes(KEY_BYTES).hex(), nx=True)
            stored = self._redis.get(redis_key)
        try:
            value = bytes.fromhex(stored or "")
        except ValueError:
            value = b""
        if len(value) != KEY_BYTES:
            raise StoreError(f"session store {self._shown}: {redis_key} does not hold a {KEY_BYTES}-byte key")
        return self._secrets.setdefault(name, value)

    def close(self) -> None:
        self._redis.close()


def open_store(spec: str, state_dir: Path) -> SessionStore:
    """The store ``sessions.store`` names: ``sqlite`` (state_dir/sessions.db), ``memory``, or ``redis://``."""
    if spec == "sqlite":
        return SQLiteStore(state_dir / "sessions.db")
    if spec == "memory":
        return MemoryStore()
    if spec.startswith(("redis://", "rediss://")):
        try:
            import redis  # noqa: F401
        except ImportError:
            raise ConfigError(
                [Problem("sessions.store: a redis:// store needs the python package 'redis' (pip install redis)")]
            ) from None
        return RedisStore(spec)
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
    return private_dir(path)


def private_dir(path: Path) -> Path:
    """``path`` once it is ours and 0700: another user's directory is refused, a looser mode is tightened.

    It holds the admin token and every conversation. A directory someone else owns could be swapped or read
    under us, so cmw will not use it; one of ours that others may read is ours to fix, and is said so.
    """
    info = path.stat()
    if info.st_uid != os.getuid():
        raise StoreError(f"state directory {path} belongs to uid {info.st_uid}, not to this user (uid {os.getuid()}); "
                         "use a directory of your own (server.state_dir)")
    if info.st_mode & 0o077:
        try:
            os.chmod(path, 0o700)
        except OSError as exc:
            raise StoreError(f"state directory {path} is open to other users and cannot be made 0700: "
                             f"{exc.strerror}") from None
        logging.getLogger("cmw.store").warning(
            "state directory %s was open to other users (mode %o); made it 0700", path, info.st_mode & 0o777
        )
    return path
