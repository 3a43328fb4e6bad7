"""What every session store shares: the protocol, its error, and the ordering rule for ``last_active``."""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping
from typing import Any, Protocol

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

