"""Queue helpers that change how Gradio's queue talks to waiting clients."""

from __future__ import annotations

import asyncio
from typing import Any

from agent.queue import coalesce_estimations, forget_ended_sessions


class FakeQueue:
    """Just what coalesce_estimations touches: the broadcast and the per-id queues."""

    def __init__(self) -> None:
        self.event_queue_per_concurrency_id: dict[str, Any] = {"chat": object()}
        self.sent: list[tuple[str, int | None]] = []

    def broadcast_estimations(self, concurrency_id: str, after: int | None = None) -> None:
        self.sent.append((concurrency_id, after))


async def test_a_burst_of_job_starts_broadcasts_once_after_the_burst() -> None:
    queue = FakeQueue()
    coalesce_estimations(queue)
    for _ in range(16):  # Gradio's start loop: one broadcast per started job, no await in between
        queue.broadcast_estimations("chat")
    assert queue.sent == []
    await asyncio.sleep(0)
    assert queue.sent == [("chat", None)]
    queue.broadcast_estimations("chat")  # the next burst gets its own broadcast
    await asyncio.sleep(0)
    assert queue.sent == [("chat", None), ("chat", None)]


async def test_a_joining_event_learns_its_rank_at_once() -> None:
    queue = FakeQueue()
    coalesce_estimations(queue)
    queue.broadcast_estimations("chat", 3)
    assert queue.sent == [("chat", 3)]


class GradioSessions:
    """Gradio's per-session queue entries, as forget_ended_sessions sees them."""

    def __init__(self) -> None:
        self.pending_event_ids_session: dict[str, set[str]] = {}
        self.pending_messages_per_session: dict[str, asyncio.Queue[Any]] = {}

    def add(self, session_hash: str, *event_ids: str, undelivered: bool = False) -> None:
        self.pending_event_ids_session[session_hash] = set(event_ids)
        self.pending_messages_per_session[session_hash] = messages = asyncio.Queue()
        if undelivered:
            messages.put_nowait("process_completed")


async def test_only_ended_idle_sessions_are_forgotten() -> None:
    gradio = GradioSessions()
    gradio.add("ended")
    gradio.add("live")  # cmw still holds it: its next turn may be moments away
    gradio.add("ended-running", "event-1")
    gradio.add("ended-undelivered", undelivered=True)
    gradio.pending_event_ids_session["evicted-from-lru"] = set()  # its message queue already gone
    assert forget_ended_sessions(gradio, lambda session_hash: session_hash == "live") == 2
    assert set(gradio.pending_event_ids_session) == {"live", "ended-running", "ended-undelivered"}
    assert set(gradio.pending_messages_per_session) == {"live", "ended-running", "ended-undelivered"}
