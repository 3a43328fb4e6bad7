"""Streaming replies to the UI at a cost that stays flat under load.

Each Gradio update of a streamed reply costs the server about a millisecond (diff, postprocess,
SSE write), so one update per token saturates a process at a few dozen replies. Here the LLM
stream is read by its own task, independently of how fast Gradio pulls updates, and the reply is
pushed to the UI at most every ``interval``: the first token at once (time to first token stays
the provider's), then at ``stream.coalesce_ms`` — widened under load so that all replies together
stay within ``stream.max_updates_per_s``. The interval is measured from the end of the previous
update, so a slow update widens the next gap instead of turning every token into an update.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from agent.agents.steps import Step
from agent.app.llm import LLMError


class UpdatePacer:
    """The server-wide budget of UI updates, shared by the replies streaming right now."""

    def __init__(self, min_interval_s: float, max_updates_per_s: float):
        self.min_interval_s = min_interval_s
        self.max_updates_per_s = max_updates_per_s
        self.active = 0

    def interval(self) -> float:
        return max(self.min_interval_s, self.active / self.max_updates_per_s)


class ReplyStream:
    """Reads an agent's event stream in a task; ``updates()`` yields the reply text at the paced rate.

    Events are :class:`~agent.app.llm.Delta` (text, token count) and tool steps
    (:class:`~agent.agents.steps.Step`, kept in ``steps`` by id in the order they started); a step's start
    and end wake the consumer like text does.

    The reply is bounded: past ``max_chars`` characters or ``deadline_s`` seconds the stream is closed
    and the reply ends in a ``too_large`` or ``timeout`` :class:`~agent.app.llm.LLMError`, its text so far kept.
    """

    def __init__(
        self,
        deltas: AsyncIterator[Any],
        pacer: UpdatePacer,
        *,
        max_chars: int | None = None,
        deadline_s: float | None = None,
    ):
        self._deltas = deltas
        self._pacer = pacer
        self._max_chars = max_chars
        self._deadline_s = deadline_s
        self._chars = 0
        self._parts: list[str] = []
        self._wake = asyncio.Event()
        self._finished = asyncio.Event()
        self._done = False
        self._error: BaseException | None = None
        self.started = time.monotonic()
        self.ttft: float | None = None
        self.tokens = 0
        self.steps: dict[str, Step] = {}
        self._pump_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Send the request now, so it is in flight while the caller updates the UI."""
        if self._pump_task is None:
            self._pump_task = asyncio.create_task(self._pump())

    @property
    def text(self) -> str:
        if len(self._parts) > 1:
            self._parts = ["".join(self._parts)]
        return self._parts[0] if self._parts else ""

    def cancel(self) -> None:
        """Abandon the LLM request (the user pressed Stop or went away)."""
        if self._pump_task is not None and not self._pump_task.done():
            self._pump_task.cancel()

    async def _pump(self) -> None:
        # The deadline is this task's: it alone drives the delta stream, so the timeout never fires
        # in someone else's await.
        deadline = asyncio.timeout(self._deadline_s)
        try:
            async with deadline:
                async for delta in self._deltas:
                    if isinstance(delta, Step):
                        self.steps[delta.id] = delta
                        self._wake.set()
                        continue
                    if delta.text:
                        if self.ttft is None:
                            self.ttft = time.monotonic() - self.started
                        self._add(delta.text)
                    if delta.completion_tokens is not None:
                        self.tokens = delta.completion_tokens
        except TimeoutError as exc:
            self._error = exc
            if deadline.expired():
                message = f"The reply took longer than {self._deadline_s:g} s (llm.reply_deadline_s) and was stopped."
                self._error = LLMError("timeout", message)
        except Exception as exc:  # re-raised to the consumer in updates()
            self._error = exc
        finally:
            aclose = getattr(self._deltas, "aclose", None)
            if aclose is not None:  # a reply cut short leaves the provider's stream open otherwise
                with contextlib.suppress(Exception):
                    await aclose()
            self._done = True
            self._finished.set()
            self._wake.set()

    def _add(self, text: str) -> None:
        limit = self._max_chars
        if limit is not None and self._chars + len(text) > limit:
            self._parts.append(text[: limit - self._chars])
            self._chars = limit
            self._wake.set()
            raise LLMError("too_large", f"The reply was stopped at {limit:,} characters (llm.max_reply_chars).")
        self._chars += len(text)
        self._parts.append(text)
        self._wake.set()

    async def updates(self) -> AsyncIterator[str]:
        """Yield the reply so far, paced; raise what the LLM stream raised once everything is out."""
        self.start()
        pump = self._pump_task
        assert pump is not None
        self._pacer.active += 1
        try:
            last: float | None = None
            while not self._done:
                await self._wake.wait()
                self._wake.clear()
                if self._done:
                    break
                if last is not None:
                    delay = self._pacer.interval() - (time.monotonic() - last)
                    if delay > 0:  # pacing: tokens keep arriving meanwhile; the end of the reply cuts it short
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._finished.wait(), delay)
                    if self._done:
                        break
                yield self.text
                last = time.monotonic()
        finally:
            self._pacer.active -= 1
            if not pump.done():
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pump
        if self._error is not None:
            raise self._error


# ---------------------------------------------------------------------------------------------- an app's streams
# An operator's app streams by yielding from its own generators; Gradio turns every yield into an update. cmw
# cannot read the app's LLM stream by its own task, as it does for its agent, but it can drop the updates a
# viewer would not see: a yielded value is passed on only when the stream's interval has passed since the last
# one (the first at once, the last always), under the same budget. A value dropped just before the generator
# pauses shows with its next value or its end, so an app that yields a status and then waits a long time should
# yield it last or use stream.coalesce_ms = 0.


class _Gate:
    """One stream's pacing: pass a value when the pacer's interval has passed since the last one passed;
    otherwise hold it (only the latest is kept) for the stream's end."""

    def __init__(self, pacer: UpdatePacer):
        self.pacer = pacer
        self.last = float("-inf")
        self.held: Any = None
        self.holding = False

    def passes(self, value: Any) -> bool:
        if time.monotonic() - self.last >= self.pacer.interval():
            self.holding = False
            return True
        self.held, self.holding = value, True
        return False

    def passed(self) -> None:
        self.last = time.monotonic()


def paced(fn: Any, pacer: UpdatePacer) -> Any:
    """``fn`` (a generator function, sync or async) yielding only the values the pacer lets through."""
    import functools
    import inspect
    import threading

    if inspect.isasyncgenfunction(fn):

        @functools.wraps(fn)
        async def paced_async(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            pacer.active += 1
            source = fn(*args, **kwargs)
            gate = _Gate(pacer)
            try:
                async for value in source:
                    if gate.passes(value):
                        yield value
                        gate.passed()
                if gate.holding:
                    yield gate.held
            finally:
                pacer.active -= 1
                await source.aclose()

        return paced_async

    lock = threading.Lock()  # a sync generator advances in Gradio's worker threads

    @functools.wraps(fn)
    def paced_sync(*args: Any, **kwargs: Any) -> Any:
        with lock:
            pacer.active += 1
        source = fn(*args, **kwargs)
        gate = _Gate(pacer)
        try:
            for value in source:
                if gate.passes(value):
                    yield value
                    gate.passed()
            if gate.holding:
                yield gate.held
        finally:
            with lock:
                pacer.active -= 1
            source.close()

    return paced_sync
