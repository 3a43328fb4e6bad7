"""A lean HTTP/1.1 keep-alive connection on asyncio streams, for the generator's hot path only.

Each virtual user owns one connection and uses it for one request at a time (join, then the event stream), as a
browser tab does. Measured with bench/loadgen_capacity.py (a trivial Gradio-protocol server, 21 streamed updates per
turn, 2 shared cores): through one httpx pool the generator spent 10–18 ms of CPU per turn, its event loop lagged
by 0.5 s at 512 users and it topped out near 60 turns/s (httpcore scans its whole pool, polling each idle socket, on
every request); on these connections a turn costs ~2.4 ms and 512 users ran at ~190 turns/s with 45% of a core
and a loop-lag p99 of 8 ms. Discovery and admin polling still use httpx, where convenience matters more.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit


class ConnectionLost(Exception):
    """The connection failed or the server broke the HTTP framing."""


@dataclass(frozen=True)
class Origin:
    """Scheme, host and port of a URL, plus the path prefix requests are made under."""

    scheme: str
    host: str
    port: int
    prefix: str

    @classmethod
    def parse(cls, url: str) -> Origin:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(parts.scheme, parts.hostname, port, parts.path.rstrip("/"))

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        return self.host if self.port == default else f"{self.host}:{self.port}"


@dataclass
class Response:
    status: int
    headers: dict[str, str]


class Connection:
    """One keep-alive connection; reconnects when the server has closed it in between requests."""

    def __init__(self, origin: Origin, tls: ssl.SSLContext | None = None):
        self.origin = origin
        self.tls = tls
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> None:
        tls = None
        if self.origin.scheme == "https":
            tls = self.tls or ssl.create_default_context()
        self._reader, self._writer = await asyncio.open_connection(
            self.origin.host, self.origin.port, ssl=tls, server_hostname=self.origin.host if tls else None,
            limit=1 << 20,
        )

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _send(self, method: str, path: str, body: bytes | None) -> Response:
        head = (f"{method} {self.origin.prefix}{path} HTTP/1.1\r\nHost: {self.origin.host_header}\r\n"
                "User-Agent: cmw-loadtest\r\nAccept: */*\r\n")
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        data = (head + "\r\n").encode("latin-1") + (body or b"")
        # A kept-alive connection the server closed while we were idle fails before any byte of the answer:
        # then, and only then, the request cannot have been seen, and one retry on a fresh connection is safe.
        for attempt in (1, 2):
            fresh = self._writer is None
            if fresh:
                try:
                    await self._connect()
                except OSError as exc:
                    reason = exc.strerror or exc
                    raise ConnectionLost(f"cannot connect to {self.origin.host_header}: {reason}") from None
            assert self._reader is not None and self._writer is not None  # noqa: S101 - set by _connect
            try:
                self._writer.write(data)
                await self._writer.drain()
                status_line = await self._reader.readuntil(b"\r\n")
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                await self.close()
                if fresh or attempt == 2:
                    raise ConnectionLost(f"{type(exc).__name__}: {exc}") from None
                continue
            return await self._read_head(status_line)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _read_head(self, status_line: bytes) -> Response:
        assert self._reader is not None  # noqa: S101
        try:
            status = int(status_line.split(b" ", 2)[1])
            raw = await self._reader.readuntil(b"\r\n\r\n")
        except (ValueError, IndexError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            await self.close()
            raise ConnectionLost(f"bad response head: {type(exc).__name__}") from None
        headers: dict[str, str] = {}
        for line in raw.decode("latin-1").split("\r\n"):
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        return Response(status, headers)

    async def _body(self, response: Response) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive; the connection stays usable only if the body was read to its end."""
        reader = self._reader
        assert reader is not None  # noqa: S101
        try:
            if "chunked" in response.headers.get("transfer-encoding", "").lower():
                while True:
                    size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
                    if size == 0:
                        while await reader.readuntil(b"\r\n") != b"\r\n":
                            pass  # trailers
                        break
                    chunk = await reader.readexactly(size + 2)
                    yield chunk[:-2]
            elif "content-length" in response.headers:
                length = int(response.headers["content-length"])
                if length:
                    yield await reader.readexactly(length)
            else:
                while chunk := await reader.read(65536):
                    yield chunk
                await self.close()
                return
        except (ValueError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            await self.close()
            raise ConnectionLost(f"{type(exc).__name__} while reading the body") from None
        if response.headers.get("connection", "").lower() == "close":
            await self.close()

    async def post_json(self, path: str, body: bytes) -> tuple[int, bytes]:
        """POST a JSON body; (status, whole response body)."""
        response = await self._send("POST", path, body)
        return response.status, b"".join([chunk async for chunk in self._body(response)])

    @contextlib.asynccontextmanager
    async def stream(self, path: str, params: dict[str, str]) -> AsyncIterator[tuple[int, AsyncIterator[bytes]]]:
        """GET with a streamed body; leaving early closes the connection (its framing is then unknown)."""
        response = await self._send("GET", f"{path}?{urlencode(params)}", None)
        body = self._body(response)
        finished = False

        async def chunks() -> AsyncIterator[bytes]:
            nonlocal finished
            async for chunk in body:
                yield chunk
            finished = True

        try:
            yield response.status, chunks()
        finally:
            if not finished:
                await body.aclose()
                await self.close()
