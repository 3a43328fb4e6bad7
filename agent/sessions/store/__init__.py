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

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from agent.sessions.store.base import SessionStore, StoreError, last_active
from agent.sessions.store.memory import MemoryStore
from agent.sessions.store.redis import RedisStore
from agent.sessions.store.sqlite import SCHEMA_VERSION, SQLITE_MIGRATIONS, SQLiteStore
from agent.settings import ConfigError, Problem, Settings, state_dir_path

__all__ = [
    "SCHEMA_VERSION", "SQLITE_MIGRATIONS", "MemoryStore", "RedisStore", "SQLiteStore", "SessionStore", "StoreError",
    "last_active", "open_store", "private_dir", "state_dir",
]


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

    Where it is, is :func:`agent.settings.state_dir_path`'s answer (shared with ``cmw config path``).
    """
    path = state_dir_path(settings, environ)
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
