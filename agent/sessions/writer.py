"""Store writes off the event loop: one thread applies them in the order they were made."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from agent.sessions.store import SessionStore, StoreError

logger = logging.getLogger("cmw.sessions")


class StoreWriter:
    """One thread that applies store writes in the order they were made, so the event loop never waits."""

    def __init__(self, store: SessionStore, on_error: Callable[[StoreError], None]):
        self.store = store
        self._on_error = on_error
        self._writes: queue.SimpleQueue[tuple[str, tuple[Any, ...], dict[str, Any]] | threading.Event | None] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._run, name="cmw-store-writer", daemon=True)
        self._thread.start()

    def submit(self, method: str, *args: Any, **kwargs: Any) -> None:
        self._writes.put((method, args, kwargs))

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every write submitted so far is applied; False if that took longer than timeout."""
        if threading.current_thread() is self._thread:
            return True
        done = threading.Event()
        self._writes.put(done)
        return done.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        self.flush(timeout)
        self._writes.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self._writes.get()
            if item is None:
                return
            if isinstance(item, threading.Event):
                item.set()
                continue
            method, args, kwargs = item
            try:
                getattr(self.store, method)(*args, **kwargs)
            except StoreError as exc:
                self._on_error(exc)
            except Exception:  # the writer must outlive any one failure
                logger.exception("session store write %s failed", method)

