"""The generator's keep-alive HTTP/1.1 connection against tiny real servers on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from agent.loadtest.connection import Connection, ConnectionLost, Origin

pytestmark = pytest.mark.server

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[Origin]]]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> Origin:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return Origin.parse(f"http://127.0.0.1:{port}/app")

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            await reader.readexactly(int(line.split(b":")[1]))
    return head


async def test_a_connection_the_server_closed_while_idle_is_reopened_once(serve) -> None:  # type: ignore[no-untyped-def]
    """Like uvicorn after its keep-alive timeout: one answer per connection, then a silent close."""
    paths: list[bytes] = []

    async def one_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await _read_request(reader)
        paths.append(head.split(b" ")[1])
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    conn = Connection(await serve(one_answer))
    assert await conn.post_json("/x", b"{}") == (200, b"ok")
    assert await conn.post_json("/y", b"{}") == (200, b"ok")
    assert paths == [b"/app/x", b"/app/y"]
    await conn.close()


async def test_chunked_stream_arrives_chunk_by_chunk_and_the_connection_is_reused(serve) -> None:  # type: ignore[no-untyped-def]
    requests = 0

    async def stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        while True:
            try:
                await _read_request(reader)
            except asyncio.IncompleteReadError:
                return
            requests += 1
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for part in (b"data: 1\n\n", b"data: 2\n\n"):
                writer.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            writer.write(b"0\r\n\r\n")
            await writer.drain()

    conn = Connection(await serve(stream))
    for _ in range(2):
        async with conn.stream("/q", {"session_hash": "s1"}) as (status, chunks):
            assert status == 200
            assert [c async for c in chunks] == [b"data: 1\n\n", b"data: 2\n\n"]
    assert requests == 2
    await conn.close()


async def test_a_stream_cut_mid_body_is_a_lost_connection(serve) -> None:  # type: ignore[no-untyped-def]
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nda")
        await writer.drain()
        writer.close()

    conn = Connection(await serve(cut))
    with pytest.raises(ConnectionLost):
        async with conn.stream("/q", {}) as (_, chunks):
            async for _ in chunks:
                pass
    await conn.close()


async def test_nobody_listening_is_a_lost_connection() -> None:
    from agent.loadtest.spawn import free_port

    conn = Connection(Origin.parse(f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(ConnectionLost, match="cannot connect"):
        await conn.post_json("/x", b"{}")
