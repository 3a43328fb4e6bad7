"""A store in this process only (``sessions.store = "memory"``): nothing survives a restart."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Collection
from typing import Any

from agent.sessions.store.base import (
    KEY_BYTES,
    _cutoff,
    _key_name,
    _page_args,
    last_active,
)


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

