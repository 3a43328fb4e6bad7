"""agent.app.sse: server-sent events as the WHATWG spec defines them, however the bytes are cut."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.app.sse import Event, EventTooLarge, SSEDecoder

LINE_ENDS = ("\n", "\r\n", "\r")


def decode(stream: bytes, pieces: list[int] | None = None, limit: int = 1 << 20) -> list[Event]:
    """Feed the stream cut after each offset in ``pieces``; every event the decoder dispatched."""
    decoder = SSEDecoder(limit)
    events: list[Event] = []
    start = 0
    for cut in sorted(set(pieces or [])) + [len(stream)]:
        events += decoder.feed(stream[start:cut])
        start = cut
    return events


@pytest.mark.parametrize("end", LINE_ENDS, ids=["LF", "CRLF", "CR"])
def test_every_line_end_the_spec_allows(end: str) -> None:
    stream = f"data: one{end}{end}data: two{end}{end}".encode()
    assert decode(stream) == [Event(b"one"), Event(b"two")]


def test_multi_line_data_comments_event_types_and_fields_without_a_value() -> None:
    stream = (
        b": ping - 2025-01-01\r\n\r\n"  # a comment alone dispatches nothing
        b"event: message\r\nid: 7\r\nretry: 1000\r\ndata: {\r\ndata:  \"a\": 1\r\ndata: }\r\n\r\n"
        b"event: error\ndata:no-space\n\n"
        b"data\ndata\n\n"  # two fields without a value: the data is one LF
        b"data\n\n"  # one: empty data, not dispatched
        b"unknown: field\nevent: ignored\n\n"  # no data at all: nothing
    )
    assert decode(stream) == [
        Event(b'{\n "a": 1\n}', b"message"),
        Event(b"no-space", b"error"),
        Event(b"\n"),
    ]


def test_a_leading_byte_order_mark_is_dropped() -> None:
    assert decode(b"\xef\xbb\xbfdata: x\n\n") == [Event(b"x")]


def test_an_unfinished_last_event_is_discarded() -> None:
    assert decode(b"data: whole\n\ndata: cut off") == [Event(b"whole")]


def test_an_event_over_the_limit_is_refused_before_it_is_buffered_whole() -> None:
    decoder = SSEDecoder(max_event_bytes=1000)
    decoder.feed(b"data: " + b"x" * 900)
    with pytest.raises(EventTooLarge):
        decoder.feed(b"x" * 200)  # still no blank line: 1,106 bytes pending


def test_a_whole_event_over_the_limit_is_refused_too() -> None:
    with pytest.raises(EventTooLarge):
        decode(b"data: " + b"x" * 2000 + b"\n\ndata: y\n\n", limit=1000)


text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=20)


@given(
    st.lists(st.tuples(st.lists(text, min_size=1, max_size=3), st.sampled_from(["", "message", "error"])),
             max_size=6),
    st.sampled_from(LINE_ENDS),
    st.lists(st.integers(min_value=0, max_value=400), max_size=12),
)
def test_any_events_in_any_framing_cut_anywhere_decode_the_same(
    events: list[tuple[list[str], str]], end: str, cuts: list[int]
) -> None:
    stream = ""
    expected = []
    for lines, kind in events:
        stream += f": comment{end}" + (f"event: {kind}{end}" if kind else "")
        stream += "".join(f"data: {line}{end}" for line in lines) + end
        data = "\n".join(lines).encode()
        if data:
            expected.append(Event(data, kind.encode()))
    encoded = stream.encode()
    assert decode(encoded, [c for c in cuts if c <= len(encoded)]) == expected
