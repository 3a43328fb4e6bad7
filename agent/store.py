"""Where sessions' conversations outlive the process: an embedded SQLite database, Redis, or memory.

The session manager writes here as turns complete, so a restart (even after ``kill -9``) brings back
every completed turn. One SQLite connection in WAL mode with ``synchronous=NORMAL``: a committed
transaction is in the WAL file before ``commit`` returns, so killing the process never loses it (only
a power cut may lose the last few). The connection is shared by the event loop and admin threads
behind one lock; a turn's messages and the session's metadata are written in one transaction, so a
reader never sees half a turn.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from agent.settings import ConfigError, Problem, Settings, mask_url_passwords

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


_DELETE_IF_NOT_NEWER = """
local meta = redis.call('GET', KEYS[1])
if meta and ARGV[1] ~= '' then
  local stored = tonumber(cjson.decode(meta)['last_active'])
  if stored and stored > tonumber(ARGV[1]) then return -1 end
end
local existed = redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('ZREM', KEYS[4], ARGV[2])
return existed
"""


class RedisStore:
    """Sessions in Redis, shared by every worker process and host (``sessions.store = "redis://…"``).

    Per session: ``cmw:session:<id>`` (meta JSON), ``cmw:messages:<id>`` (a list of JSON messages) and
    ``cmw:files:<id>`` (a hash); ``cmw:ids`` orders the ids by creation. A turn is one MULTI/EXEC, so a
    reader (any worker) sees all of a turn or none of it. Durability is Redis's: configure AOF
    (``appendonly yes``) where a Redis restart must not lose turns; a worker's ``kill -9`` loses nothing.

    Deleting is guarded: a worker that ends a session it holds a stale copy of (another worker wrote a
    newer ``last_active`` since this one last read or wrote it) leaves the record alone, so one worker's
    idle expiry or LRU eviction never deletes a conversation that lives on elsewhere.

    ``preload`` (class-wide) decides whether :meth:`list_ids` offers every session to a starting
    manager. Worker processes behind the sticky proxy turn it off: each restores only the sessions the
    proxy sends it, on their next request, instead of holding stale copies of every other worker's.
    """

    preload = True

    def __init__(self, url: str, *, prefix: str = "cmw:") -> None:
        import redis

        self.url = url
        self.prefix = prefix
        self._shown = mask_url_passwords(url)
        self._seen: dict[str, float] = {}  # session id -> last_active this process last read or wrote
        self._seen_lock = threading.Lock()
        try:
            self._redis = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5, decode_responses=True)
            self._redis.ping()
        except (redis.RedisError, ValueError) as exc:
            raise StoreError(mask_url_passwords(f"session store {self._shown}: cannot connect: {exc}")) from None
        self._delete_script = self._redis.register_script(_DELETE_IF_NOT_NEWER)

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
                self._seen[str(meta["id"])] = float(meta["last_active"])

    def _upsert(self, pipe: Any, meta: Mapping[str, Any]) -> None:
        session_key = self._keys(meta["id"])[0]
        pipe.set(session_key, json.dumps(meta, separators=(",", ":")))
        pipe.zadd(f"{self.prefix}ids", {meta["id"]: float(meta.get("created", 0.0))}, nx=True)

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
                pipe.rpush(self._keys(session_id)[1], *(json.dumps(m, separators=(",", ":")) for m in messages))
            pipe.execute()
        self._see(meta)

    def clear_messages(self, session_id: str) -> None:
        with self._errors("write"):
            self._redis.delete(self._keys(session_id)[1])

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
            keys = [*self._keys(session_id), f"{self.prefix}ids"]
            result = self._delete_script(keys=keys, args=["" if seen is None else repr(seen), session_id])
        return int(result) > 0

    def list_ids(self) -> list[str]:
        """Every stored id (oldest first), or none when this process restores sessions lazily (``preload``)."""
        return self.all_ids() if self.preload else []

    def all_ids(self) -> list[str]:
        with self._errors("read"):
            return list(self._redis.zrange(f"{self.prefix}ids", 0, -1))

    def summaries(self) -> list[dict[str, Any]]:
        """Meta plus attached file names of every stored session, for admin views across workers."""
        ids = self.all_ids()
        with self._errors("read"):
            pipe = self._redis.pipeline(transaction=False)
            for session_id in ids:
                pipe.get(self._keys(session_id)[0])
                pipe.hkeys(self._keys(session_id)[2])
            replies = pipe.execute()
        out = []
        for raw, names in zip(replies[::2], replies[1::2], strict=True):
            if raw is not None:
                out.append({**json.loads(raw), "files": list(names)})
        return out

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
