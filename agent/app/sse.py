"""Server-sent events decoded from a byte stream as the WHATWG spec defines them.

OpenAI-compatible servers frame their streams differently: most end lines with LF, servers built on
sse-starlette (llama-cpp-python's among them) with CRLF, and the spec also allows a lone CR, a
``data:`` field spread over several lines, ``:`` comments (keep-alive pings), ``event:`` types and
fields without a value. :class:`SSEDecoder` accepts all of that, bounds the bytes one event may take
(a server that never ends an event cannot fill memory), and keeps the common case — one
``data: {...}`` line per event — on a fast path: the reply stream's cost per chunk is paid once per
token by every reply in flight.
"""

from __future__ import annotations

from typing import NamedTuple

_BOM = b"\xef\xbb\xbf"


class EventTooLarge(Exception):
    """An event, or the unfinished part of one, grew past the decoder's limit."""

    def __init__(self, limit: int):
        super().__init__(f"an event exceeded {limit} bytes")
        self.limit = limit


class Event(NamedTuple):
    """One dispatched event: its data (``data:`` lines joined by LF) and its type (b"" = message)."""

    data: bytes
    type: bytes = b""


class SSEDecoder:
    """Feed it the body as it arrives; it returns the events each piece completed.

    An event left unfinished when the stream ends is discarded, as the spec says: a cut stream is
    a cut stream, not a malformed last chunk. ``id:`` and ``retry:`` fields are read past (a chat
    completion is never resumed).
    """

    def __init__(self, max_event_bytes: int):
        self.max_event_bytes = max_event_bytes
        self._buffer = b""
        self._after_cr = False  # the last piece ended in CR: an LF starting the next one belongs to it
        self._started = False

    def feed(self, piece: bytes) -> list[Event]:
        if not self._started:
            if not piece:
                return []
            self._started = True
            piece = piece.removeprefix(_BOM)
        if self._after_cr:
            self._after_cr = False
            if piece.startswith(b"\n"):
                piece = piece[1:]
        if b"\r" in piece:
            # A CR ending this piece ends a line now (an event is not held back for the next read);
            # an LF opening the next piece is then the rest of that CRLF.
            self._after_cr = piece.endswith(b"\r")
            piece = piece.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if self._buffer:
            piece = self._buffer + piece
        *blocks, rest = piece.split(b"\n\n")
        limit = self.max_event_bytes
        if len(rest) > limit:
            raise EventTooLarge(limit)
        self._buffer = rest
        events = []
        for block in blocks:
            if len(block) > limit:
                raise EventTooLarge(limit)
            if block.startswith(b"data: ") and b"\n" not in block:  # the common case, one data line
                if len(block) > 6:
                    events.append(Event(block[6:]))
            elif (event := parse_block(block)) is not None:
                events.append(event)
        return events


def parse_block(block: bytes) -> Event | None:
    """The event one block of lines (LF-separated, no blank line inside) dispatches, or None."""
    if block.startswith(b"data: ") and b"\n" not in block:  # the common case, one data line
        return Event(block[6:]) if len(block) > 6 else None
    data: list[bytes] = []
    kind = b""
    for line in block.split(b"\n"):
        if not line or line.startswith(b":"):
            continue  # a comment: keep-alive pings of sse-starlette and others
        name, colon, value = line.partition(b":")
        if colon and value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            data.append(value)
        elif name == b"event":
            kind = value
    joined = b"\n".join(data)
    return Event(joined, kind) if joined else None
