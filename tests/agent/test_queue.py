"""Queue helpers that change how Gradio's queue talks to waiting clients."""

from __future__ import annotations

import asyncio
from typing import Any

from agent.queue import coalesce_estimations


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
