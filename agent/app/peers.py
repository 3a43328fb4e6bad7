"""The admin API of a worker answers for every worker: it asks its peers over loopback and merges."""

from __future__ import annotations

import asyncio
import json
from typing import Any

LOCAL_HEADER = "x-cmw-local"  # set on peer requests: answer for this worker only
PEER_TIMEOUT_S = 5.0
MAX_BODY = 4096  # a limit change is a few bytes of JSON


class PeerAdmin:
    """ASGI wrapper: the admin API's session, queue and limit routes answer for every worker, asked over loopback.

    HAProxy sends a Gradio session to one worker by its hash, but a conversation id says nothing about
    which worker holds it: ``GET|DELETE /admin/api/sessions/{id}`` ask every worker too. A live limit change
    (``PUT /admin/api/limits/{event}``) reaches every worker, each running its own pools.
    """

    def __init__(self, app: Any, ctx: Any, index: int, peers: list[int], token: str):
        self.app = app
        self.ctx = ctx
        self.index = index
        self.peers = peers
        self.token = token  # checked here, before any peer is asked: a stranger's request costs one answer
        self._client: Any = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self._fanned_out(scope):
            headers = dict(scope.get("headers") or [])
            if LOCAL_HEADER.encode() not in headers:
                from agent.app.admin import token_refusal

                authorization = headers.get(b"authorization", b"").decode("latin-1") or None
                refusal = token_refusal(authorization, self.token)
                if refusal is not None:
                    await self.app(scope, receive, send)  # the admin API's own 401/403, as one worker answers
                    return
                await self._aggregate(scope, headers, send, receive)
                return
        await self.app(scope, receive, send)

    @staticmethod
    def _fanned_out(scope: dict[str, Any]) -> bool:
        path = scope["path"].rstrip("/")
        if scope["method"] == "GET" and path in ("/admin/api/sessions", "/admin/api/queue", "/admin/api/limits"):
            return True
        if scope["method"] == "PUT" and path.startswith("/admin/api/limits/") and path.count("/") == 4:
            return True  # a live limit change: every worker runs its own pools, so every worker takes it
        return scope["method"] in ("GET", "DELETE") and path.startswith("/admin/api/sessions/") \
            and path.count("/") == 4

    async def _aggregate(self, scope: dict[str, Any], headers: dict[bytes, bytes], send: Any,
                         receive: Any = None) -> None:
        import httpx

        if self._client is None:
            self._client = httpx.AsyncClient(timeout=PEER_TIMEOUT_S)
        forward = {LOCAL_HEADER: "1"}
        if b"authorization" in headers:
            forward["authorization"] = headers[b"authorization"].decode("latin-1")
        client = scope.get("client")
        if client:  # the peers log who made a change: the client this worker sees (behind HAProxy, the real one)
            forward["x-forwarded-for"] = str(client[0])
        method, path = scope["method"], scope["path"].rstrip("/")
        query = scope.get("query_string", b"").decode("latin-1")
        body: bytes | None = None
        if method == "PUT":
            body = await _read_body(receive, MAX_BODY)
            if body is None:
                await _respond(send, 413, b'{"detail": "request body too large"}')
                return
            forward["content-type"] = headers.get(b"content-type", b"application/json").decode("latin-1")

        async def ask(port: int) -> tuple[int, Any]:
            try:
                response = await self._client.request(
                    method, f"http://127.0.0.1:{port}{path}" + (f"?{query}" if query else ""), headers=forward,
                    content=body,
                )
            except httpx.HTTPError as exc:
                return 0, f"unreachable ({type(exc).__name__})"
            return response.status_code, response.content

        answers = await asyncio.gather(*(ask(port) for port in self.peers))
        if path.startswith("/admin/api/limits"):
            status, merged = self._limits(method, answers)
            await _respond(send, status, json.dumps(merged).encode())
            return
        for status, body in answers:
            if status in (401, 403, 422):  # the same for all of them: say so as one worker would
                await _respond(send, status, body)
                return
        ok = {i: json.loads(body) for i, (status, body) in enumerate(answers) if status == 200}
        errors = {i: (body if status == 0 else f"HTTP {status}") for i, (status, body) in enumerate(answers)
                  if status != 200}
        what = path.rsplit("/", 1)[-1]
        if path.count("/") == 4:  # one conversation
            if not ok:
                await _respond(send, 404, b'{"detail": "no such session"}')
                return
            # A worker that holds it in memory knows more than one that read the store.
            best = max(ok.values(), key=lambda found: found.get("state") != "stored")
            await _respond(send, 200, json.dumps(best).encode())
            return
        merged = self._sessions(ok, query) if what == "sessions" else self._merged_queue(ok, errors)
        await _respond(send, 200, json.dumps(merged).encode())

    @staticmethod
    def _sessions(answers: dict[int, list[dict[str, Any]]], query: str) -> list[dict[str, Any]]:
        """Union over workers (a live copy beats a stored one; running, then the latest, wins), one page long."""
        from urllib.parse import parse_qs

        best: dict[str, dict[str, Any]] = {}

        def rank(summary: dict[str, Any]) -> tuple[bool, bool, float]:
            state = summary.get("state")
            latest = summary.get("last_active") or summary.get("last_seen")  # an app's Gradio session: last_seen
            return state != "stored", state == "running", float(latest or 0)

        for sessions in answers.values():
            for summary in sessions:
                have = best.get(summary["id"])
                if have is None or rank(summary) > rank(have):
                    best[summary["id"]] = summary
        limit = parse_qs(query).get("limit", ["1000"])[0]
        ordered = sorted(best.values(), key=rank, reverse=True)
        return ordered[: int(limit)] if limit.isdigit() else ordered

    def _merged_queue(self, answers: dict[int, dict[str, Any]], errors: dict[int, str]) -> dict[str, Any]:
        """Sums over workers; latency percentiles are the worst worker's (percentiles do not add)."""
        events: dict[str, dict[str, int | None]] = {}
        for figures in answers.values():
            for name, fig in figures.get("events", {}).items():
                total = events.setdefault(name, {"waiting": 0, "running": 0, "limit": 0})
                for key in ("waiting", "running", "limit"):
                    if total[key] is not None and fig.get(key) is not None:
                        total[key] = int(total[key] or 0) + int(fig[key])
                    else:
                        total[key] = None if key == "limit" else total[key]
        out: dict[str, Any] = {
            "events": events,
            "waiting_total": sum(f.get("waiting_total", 0) for f in answers.values()),
            "in_flight": sum(f.get("in_flight", 0) for f in answers.values()),
            "e2e_s": _worst(answers, "e2e_s"),
            "ttft_s": _worst(answers, "ttft_s"),
            "samples": sum(f.get("samples", 0) for f in answers.values()),
            "workers": [
                {"worker": i, "port": port, **answers[i]} if i in answers
                else {"worker": i, "port": port, "error": errors.get(i, "no answer")}
                for i, port in enumerate(self.peers)
            ],
        }
        return out

    def _limits(self, method: str, answers: list[tuple[int, Any]]) -> tuple[int, dict[str, Any]]:
        """A limit change or view over every worker: the status and the answer (see the admin API's contract).

        The top-level figures are this worker's (any that answered, if it did not); ``workers`` has each one's.
        A refusal every worker gave alike (unknown event, out of range, the master switch) is answered as one
        worker would; a change that no worker took is a 502 naming why.
        """
        ok = {i: json.loads(body) for i, (status, body) in enumerate(answers) if status == 200}
        errors = {i: _error(status, body) for i, (status, body) in enumerate(answers) if status != 200}
        if not ok:
            statuses = {status for status, _ in answers}
            if len(statuses) == 1 and 400 <= answers[0][0] < 500:
                try:
                    return answers[0][0], json.loads(answers[0][1])
                except ValueError:
                    return answers[0][0], {"detail": _error(*answers[0])}
            return 502, {"detail": "no worker answered: " + "; ".join(f"worker {i}: {e}" for i, e in errors.items())}
        first = ok.get(self.index) or ok[min(ok)]
        workers: list[dict[str, Any]] = []
        for i, port in enumerate(self.peers):
            if method == "PUT":
                entry = {"worker": i, "limit": ok[i]["limit"], "previous": ok[i]["previous"]} if i in ok \
                    else {"worker": i, "error": errors.get(i, "no answer")}
            else:
                entry = {"worker": i, "port": port, **ok[i]} if i in ok \
                    else {"worker": i, "port": port, "error": errors.get(i, "no answer")}
            workers.append(entry)
        return 200, {**first, "workers": workers}


def _error(status: int, body: Any) -> str:
    """A peer's failure in one line: unreachable, or its status and the detail it gave."""
    if status == 0:
        return str(body)
    try:
        detail = json.loads(body).get("detail")
    except (ValueError, AttributeError):
        detail = None
    return f"HTTP {status}: {detail}" if isinstance(detail, str) else f"HTTP {status}"


async def _read_body(receive: Any, limit: int) -> bytes | None:
    """The request body (None when longer than ``limit``)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def _worst(answers: dict[int, dict[str, Any]], key: str) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for figures in answers.values():
        for name, value in (figures.get(key) or {}).items():
            if value is not None:
                current = out.get(name)
                out[name] = value if current is None else max(current, value)
            else:
                out.setdefault(name, None)
    return out


async def _respond(send: Any, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
