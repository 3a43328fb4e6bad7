"""The reply pacer in isolation: what the UI is sent of a delta stream, and how the stream ends.

The deltas come from plain async generators, the LLM client's output type; the client itself is tested
against real servers in test_llm.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from agent.app.llm import Delta, LLMError
from agent.app.streaming import ReplyStream, UpdatePacer, paced


async def deltas(*texts: str, tokens: int | None = None, fail: Exception | None = None) -> AsyncIterator[Delta]:
    for text in texts:
        await asyncio.sleep(0)  # another task may run between chunks, as between network reads
        yield Delta(text)
    if fail is not None:
        raise fail
    if tokens is not None:
        yield Delta("", completion_tokens=tokens)


async def collect(stream: ReplyStream) -> list[str]:
    return [update async for update in stream.updates()]


def test_the_interval_widens_once_the_replies_together_would_exceed_the_budget() -> None:
    pacer = UpdatePacer(min_interval_s=0.05, max_updates_per_s=100)
    assert pacer.interval() == 0.05
    pacer.active = 5  # 5 replies × 20 updates/s = the budget
    assert pacer.interval() == 0.05
    pacer.active = 50
    assert pacer.interval() == pytest.approx(0.5)


async def test_updates_grow_the_reply_and_the_text_at_the_end_is_all_of_it() -> None:
    """Updates are the reply so far; the whole reply is ``text`` once they end (the handler shows it last)."""
    pacer = UpdatePacer(0.0, 1e9)
    stream = ReplyStream(deltas("Hel", "lo", ", ", "world"), pacer)
    updates = await collect(stream)
    assert updates and stream.text == "Hello, world"
    shown = [*updates, stream.text]
    assert all(later.startswith(earlier) for earlier, later in zip(shown, shown[1:], strict=False))
    assert stream.ttft is not None and stream.ttft >= 0
    assert pacer.active == 0


async def test_a_burst_of_tokens_becomes_a_few_updates() -> None:
    """A thousand tokens that arrive within one pacing interval are not a thousand UI updates."""
    stream = ReplyStream(deltas(*["x"] * 1000), UpdatePacer(min_interval_s=60.0, max_updates_per_s=1e9))
    updates = await collect(stream)
    assert updates[0] == "x"  # the first token goes out at once: time to first token is the provider's
    assert len(updates) <= 2 and stream.text == "x" * 1000  # the end of the reply cuts the wait short


async def test_the_completion_token_count_is_taken_from_the_stream() -> None:
    stream = ReplyStream(deltas("a", "b", tokens=7), UpdatePacer(0.0, 1e9))
    await collect(stream)
    assert stream.tokens == 7


async def test_a_reply_past_max_chars_stops_there_with_too_large_and_keeps_its_text() -> None:
    stream = ReplyStream(deltas("abcd", "efgh", "ijkl"), UpdatePacer(0.0, 1e9), max_chars=6)
    with pytest.raises(LLMError) as failed:
        await collect(stream)
    assert failed.value.kind == "too_large"
    assert stream.text == "abcdef"


async def test_an_error_mid_reply_is_raised_after_the_text_so_far() -> None:
    stream = ReplyStream(deltas("part", "ial", fail=LLMError("disconnect", "cut")), UpdatePacer(0.0, 1e9))
    seen: list[str] = []
    with pytest.raises(LLMError) as failed:
        async for update in stream.updates():
            seen.append(update)
    assert failed.value.kind == "disconnect"
    assert stream.text == "partial" and seen and all("partial".startswith(update) for update in seen)


async def test_a_silent_provider_hits_the_deadline_and_its_stream_is_closed() -> None:
    closed = asyncio.Event()

    async def silent() -> AsyncIterator[Delta]:
        try:
            yield Delta("first")
            await asyncio.Event().wait()  # never another chunk
            yield Delta("never")
        finally:
            closed.set()

    stream = ReplyStream(silent(), UpdatePacer(0.0, 1e9), deadline_s=0.05)
    with pytest.raises(LLMError) as failed:
        await collect(stream)
    assert failed.value.kind == "timeout" and "llm.reply_deadline_s" in failed.value.message
    assert closed.is_set() and stream.text == "first"


async def test_a_consumer_that_goes_away_cancels_the_llm_request() -> None:
    closed = asyncio.Event()

    async def endless() -> AsyncIterator[Delta]:
        try:
            while True:
                await asyncio.sleep(0)
                yield Delta("y")
        finally:
            closed.set()

    pacer = UpdatePacer(0.0, 1e9)
    stream = ReplyStream(endless(), pacer)
    updates = stream.updates()
    assert (await anext(updates)).startswith("y")
    await updates.aclose()  # the user pressed Stop, or the browser went away
    await asyncio.wait_for(closed.wait(), 10)
    assert pacer.active == 0


# --------------------------------------------------------------------------- an operator's app's streams


async def _count_up(n: int, request: object = None):  # type: ignore[no-untyped-def]
    for i in range(1, n + 1):
        yield i


def _count_up_sync(n: int, request: object = None):  # type: ignore[no-untyped-def]
    yield from range(1, n + 1)


async def test_an_apps_stream_passes_the_first_and_last_values_and_drops_what_comes_too_fast() -> None:
    pacer = UpdatePacer(min_interval_s=60.0, max_updates_per_s=1000)
    assert [v async for v in paced(_count_up, pacer)(500)] == [1, 500]
    assert list(paced(_count_up_sync, pacer)(500)) == [1, 500]
    assert pacer.active == 0  # every stream gave back its share of the budget


async def test_with_no_interval_every_value_passes() -> None:
    pacer = UpdatePacer(min_interval_s=0.0, max_updates_per_s=10**9)
    assert [v async for v in paced(_count_up, pacer)(50)] == list(range(1, 51))
    assert list(paced(_count_up_sync, pacer)(50)) == list(range(1, 51))


def test_a_paced_stream_keeps_the_apps_signature_for_gradio() -> None:
    import inspect

    pacer = UpdatePacer(min_interval_s=0.1, max_updates_per_s=250)
    for fn in (_count_up, _count_up_sync):
        wrapped = paced(fn, pacer)
        assert inspect.signature(wrapped) == inspect.signature(fn)
        assert inspect.isasyncgenfunction(wrapped) == inspect.isasyncgenfunction(fn)
        assert inspect.isgeneratorfunction(wrapped) == inspect.isgeneratorfunction(fn)


async def test_closing_a_paced_stream_closes_the_apps_generator() -> None:
    closed: list[bool] = []

    async def endless():  # type: ignore[no-untyped-def]
        try:
            while True:
                yield "x"
        finally:
            closed.append(True)

    pacer = UpdatePacer(min_interval_s=0.0, max_updates_per_s=10**9)
    stream = paced(endless, pacer)()
    assert await stream.__anext__() == "x"
    await stream.aclose()
    assert closed == [True] and pacer.active == 0
