"""A small client for the admin API, shared by `cmw status`, `cmw sessions` and `cmw config show|set --url`.

It turns every way a request can fail into one line and the exit code of DESIGN.md: unreachable → 4
naming the URL, 401/403 → 2 saying where the token comes from, unknown session → 2. httpx and the
settings model load only when a command runs, so `cmw --help` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import typer

from cmw_cli.common import Exit, fail

UrlOption = Annotated[
    str | None,
    typer.Option("--url", help="Server URL [default: http://<server.host>:<server.port> from settings]."),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        help="Admin token [default: admin.token ($CMW_ADMIN_TOKEN), else <state dir>/admin.token].",
    ),
]

TIMEOUT_S = 10.0


@dataclass
class AdminClient:
    """GET/DELETE on ``<url>/admin/api``; failures exit the command with a clear line."""

    url: str
    token: str | None
    token_source: str  # where the token came from, for the 401/403 message
    timeout: float = TIMEOUT_S

    def get(self, path: str, *, missing_ok: bool = False) -> Any:
        """The answer of GET ``path``; with ``missing_ok``, None from a server without that route (an older cmw)."""
        return self._request("GET", path, missing_ok=missing_ok)

    def delete(self, path: str) -> Any:
        return self._request("DELETE", path)

    def put(self, path: str, body: Any) -> Any:
        return self._request("PUT", path, body=body)

    def _request(self, method: str, path: str, *, body: Any = None, missing_ok: bool = False) -> Any:
        import httpx

        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        target = f"{self.url}/admin/api/{path.lstrip('/')}"
        try:
            response = httpx.request(method, target, headers=headers, timeout=self.timeout, json=body)
        except httpx.TimeoutException:
            fail(f"the cmw server at {self.url} did not answer within {self.timeout:g} s", Exit.UNREACHABLE)
        except httpx.HTTPError as exc:
            fail(f"cannot reach a cmw server at {self.url} ({_reason(exc)}); is `cmw serve` running?", Exit.UNREACHABLE)
        if response.status_code == 401:
            fail(f"{self.url} wants the admin token: pass --token, set CMW_ADMIN_TOKEN, or run where the "
                 f"server's state dir is (its admin.token file){self._tried()}")
        if response.status_code == 403:
            fail(f"{self.url} refused the admin token from {self.token_source}; pass the server's token with --token")
        if response.status_code == 404 and path.startswith("sessions/"):
            fail(f"no session {path.partition('/')[2]!r} on {self.url}")
        detail = _detail(response)
        if response.status_code == 404 and missing_ok and detail == "Not Found":
            return None
        if path.startswith("limits/") and response.status_code in (404, 409, 422) and detail != "Not Found":
            fail(f"{self.url} refused the change: {detail}")  # unknown event, master switch off, out of range
        if path.startswith("limits") and response.status_code == 404:
            fail(f"{self.url} has no live limit changes (HTTP 404 for {target}); it runs an older cmw",
                 Exit.UNREACHABLE)
        if response.status_code == 404:
            fail(f"{self.url} has no cmw admin API (HTTP 404 for {target})", Exit.UNREACHABLE)
        if response.status_code >= 400:
            fail(f"{self.url} answered HTTP {response.status_code} for {method} {target}"
                 + (f": {detail}" if detail else ""), Exit.UNREACHABLE)
        try:
            return response.json()
        except ValueError:
            fail(f"{self.url} answered {method} {target} with something that is not JSON", Exit.UNREACHABLE)

    def _tried(self) -> str:
        return f" (no token found; looked in {self.token_source})" if not self.token else ""


def _detail(response: Any) -> str:
    """The ``detail`` of an error answer as one line (FastAPI's list of invalid fields joined), else ''."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        return ""
    if isinstance(detail, list):
        return "; ".join(str(item.get("msg", item)) if isinstance(item, dict) else str(item) for item in detail)
    return str(detail) if detail is not None else ""


def _reason(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__


def connect(url: str | None, token: str | None) -> AdminClient:
    """The client for --url/--token, filling what is missing from settings and the state dir's token file."""
    if url is not None and token is not None:
        return AdminClient(_normalise(url), token, "--token")
    from cmw_cli.common import load_or_exit

    settings = load_or_exit(show_warnings=False).settings
    if url is None:
        # A server bound to every interface is reached on loopback.
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(settings.server.host, settings.server.host)
        if ":" in host:
            host = f"[{host}]"
        url = f"http://{host}:{settings.server.port}{settings.server.root_path}"
    if token is not None:
        return AdminClient(_normalise(url), token, "--token")
    if settings.admin.token is not None and settings.admin.token.get_secret_value():
        return AdminClient(_normalise(url), settings.admin.token.get_secret_value(), "the admin.token setting")
    return _from_token_file(_normalise(url), settings)


def _from_token_file(url: str, settings: Any) -> AdminClient:
    from agent.app.admin import token_path
    from agent.sessions.store import StoreError, state_dir

    try:
        path = token_path(state_dir(settings))
    except StoreError as exc:
        return AdminClient(url, None, str(exc))
    try:
        token = path.read_text().strip() or None
    except OSError:
        token = None
    return AdminClient(url, token, str(path))


def _normalise(url: str) -> str:
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = f"http://{url}"
    return url
