"""The admin API of a worker answers for every worker: it asks its peers over loopback and merges."""

from __future__ import annotations

import asyncio
import json
from typing import Any

LOCAL_HEADER = "x-cmw-local"  # set on peer requests: answer for this worker only
PEER_TIMEOUT_S = 5.0


class PeerAdmin:
    """ASGI wrapper: the admin API's session and queue routes answer for every worker, asked over loopback.

    HAProxy sends a Gradio session to one worker by its hash, but a conversation id says nothing about
    which worker holds it: ``GET|DELETE /admin/api/sessions/{id}`` ask every worker too.
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
                await self._aggregate(scope, headers, send)
                return
        await self.app(scope, receive, send)

    @staticmethod
    def _fanned_out(scope: dict[str, Any]) -> bool:
        path = scope["path"].rstrip("/")
        if scope["method"] == "GET" and path in ("/admin/api/sessions", "/admin/api/queue"):
            return True
        return scope["method"] in ("GET", "DELETE") and path.startswith("/admin/api/sessions/") \
            and path.count("/") == 4

    async def _aggregate(self, scope: dict[str, Any], headers: dict[bytes, bytes], send: Any) -> None:
        import httpx

        if self._client is None:
            self._client = httpx.AsyncClient(timeout=PEER_TIMEOUT_S)
        forward = {LOCAL_HEADER: "1"}
        if b"authorization" in headers:
            forward["authorization"] = headers[b"authorization"].decode("latin-1")
        method, path = scope["method"], scope["path"].rstrip("/")
        query = scope.get("query_string", b"").decode("latin-1")

        async def ask(port: int) -> tuple[int, Any]:
            try:
                response = await self._client.request(
                    method, f"http://127.0.0.1:{port}{path}" + (f"?{query}" if query else ""), headers=forward
                )
            except httpx.HTTPError as exc:
                return 0, f"unreachable ({type(exc).__name__})"
            return response.status_code, response.content

        answers = await asyncio.gather(*(ask(port) for port in self.peers))
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
