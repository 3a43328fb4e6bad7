"""The dashboard's door: a login form that trades the admin token for a cookie, and the gate that checks it.

The token is typed once into ``/admin/`` (a plain form, no script) and never travels again: ``POST /admin/login``
answers with a cookie (HttpOnly, SameSite=Strict, Path=/admin/, Secure over https) whose value is an expiry, a
random nonce and an HMAC of both under a key derived from the token. Every worker of ``--workers N`` derives the
same key, so a login on one is good on all (HAProxy spreads pages by client), and a new token voids every cookie.
Logout clears the cookie and revokes its nonce in the processes that hear of it.

:class:`CookieGate` wraps the dashboard's mounted Gradio app: without a valid cookie its page redirects to the
form and every other route (config, queue join/data, cancel, files, uploads ...) answers 401, before Gradio
sees the request. Writes from another site are refused by ``Sec-Fetch-Site`` / ``Origin``.

Failed logins are limited per client address (:data:`FAILED_LOGINS_PER_MINUTE`, per process): a guess costs a
minute's share, and past the limit even the right token waits. The token is never logged nor echoed.

No ``from __future__ import annotations``: FastAPI resolves the routes' annotations at runtime.
"""

import base64
import hashlib
import hmac
import html
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from agent.app.dashboard_text import say
from agent.app.guard import RateLimiter, client_key
from agent.app.i18n import request_language

COOKIE = "cmw_admin"
LIFETIME_S = 8 * 3600
FAILED_LOGINS_PER_MINUTE = 5
MAX_FORM_BYTES = 4096
MAX_REVOKED = 10_000
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

Scope = dict[str, Any]


class LoginCookies:
    """Issues and checks the dashboard cookie: ``<expiry>.<nonce>.<HMAC(key, expiry.nonce)>``, never the token."""

    def __init__(self, token: str, clock: Callable[[], float] = time.time):
        self._key = hmac.new(token.encode("utf-8"), b"cmw dashboard cookie v1", hashlib.sha256).digest()
        self.clock = clock
        self._revoked: OrderedDict[str, int] = OrderedDict()  # nonce -> its expiry

    def issue(self) -> str:
        expires = int(self.clock()) + LIFETIME_S
        nonce = secrets.token_urlsafe(16)
        return f"{expires}.{nonce}.{self._mac(expires, nonce)}"

    def _mac(self, expires: int, nonce: str) -> str:
        digest = hmac.new(self._key, f"{expires}.{nonce}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def _parsed(self, value: str) -> tuple[int, str] | None:
        expires_text, _, rest = value.partition(".")
        nonce, _, mac = rest.partition(".")
        if not expires_text.isdigit() or len(expires_text) > 12 or not nonce or not mac:
            return None
        expires = int(expires_text)
        if not hmac.compare_digest(mac.encode(), self._mac(expires, nonce).encode()):
            return None
        return expires, nonce

    def valid(self, value: str | None) -> bool:
        parsed = self._parsed(value) if value else None
        return parsed is not None and parsed[0] > self.clock() and parsed[1] not in self._revoked

    def any_valid(self, values: Iterable[str]) -> bool:
        return any(self.valid(value) for value in values)

    def revoke(self, value: str) -> bool:
        """Refuse this cookie from now on (in this process); whether it was a cookie of ours."""
        parsed = self._parsed(value)
        if parsed is None:
            return False
        now = self.clock()
        for nonce, expires in list(self._revoked.items()):  # oldest first: drop the expired ones
            if expires > now and len(self._revoked) < MAX_REVOKED:
                break
            del self._revoked[nonce]
        self._revoked[parsed[1]] = parsed[0]
        return True


def cookie_values(raw_headers: Iterable[tuple[bytes, bytes]]) -> list[str]:
    """Every value of the dashboard cookie in a request's ``Cookie`` headers (a planted duplicate is one more)."""
    values = []
    for name, value in raw_headers:
        if name.lower() != b"cookie":
            continue
        for part in value.decode("latin-1").split(";"):
            key, _, found = part.strip().partition("=")
            if key == COOKIE and found:
                values.append(found.strip('"'))
    return values


def _endpoint(netloc: str, scheme: str) -> tuple[str, int] | None:
    try:
        parts = urlsplit(f"//{netloc}")
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        return None
    return (parts.hostname or "").lower(), port


def same_origin(headers: Any) -> bool | None:
    """True when the browser says the request comes from this site's own pages, False when from another, None when
    the request says nothing (no ``Sec-Fetch-Site``, no ``Origin``: not a browser's cross-site write)."""
    site = headers.get("sec-fetch-site")
    if site:
        return site == "same-origin"
    origin = headers.get("origin")
    if not origin:
        return None
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False  # "null" and the like
    mine = _endpoint(headers.get("host") or "", parts.scheme)
    return mine is not None and _endpoint(parts.netloc, parts.scheme) == mine


def is_https(scope: Scope, headers: Any) -> bool:
    """The scheme uvicorn settled (a trusted proxy's X-Forwarded-Proto), or a proxy saying https (Secure is only
    stricter, so believing it costs nothing)."""
    forwarded = (headers.get("x-forwarded-proto") or "").split(",")[0].strip().lower()
    return scope.get("scheme") in ("https", "wss") or forwarded == "https"


def cookie_path(root_path: str) -> str:
    """``/admin/`` under the app's public prefix (``server.root_path``: a path or a whole URL)."""
    prefix = urlsplit(root_path).path if "://" in root_path else root_path
    return prefix.rstrip("/") + "/admin/"


def login_page(language: str, error: str | None = None) -> str:
    """The whole login page: a form, and an error when there is one; nothing about the server."""
    def t(key: str) -> str:
        return html.escape(say(key, language))

    notice = f'<p class="error" role="alert">{html.escape(error)}</p>' if error else ""
    return f"""<!doctype html>
<html lang="{language}"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer"><title>{t("dashboard.login.heading")}</title>
<style>body{{font-family:system-ui,sans-serif;background:#f6f7f9;margin:0}}
main{{max-width:26rem;margin:12vh auto;background:#fff;padding:2rem;border-radius:.5rem;box-shadow:0 1px 4px #0002}}
h1{{font-size:1.3rem;margin-top:0}}label{{display:block;margin:1rem 0 .3rem}}
input{{width:100%;box-sizing:border-box;padding:.5rem;font-size:1rem}}
button{{margin-top:1rem;padding:.5rem 1.2rem;font-size:1rem}}.error{{color:#b00020}}</style></head>
<body><main><h1>{t("dashboard.login.heading")}</h1><p>{t("dashboard.login.prompt")}</p>{notice}
<form method="post" action="login"><label for="token">{t("dashboard.login.token")}</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
<button type="submit">{t("dashboard.login.submit")}</button></form></main></body></html>
"""


def login_router(
    cookies: LoginCookies,
    token: str,
    *,
    forced_language: str,
    root_path: str,
    on_logout: Callable[[str, Scope], Awaitable[None]] | None = None,
) -> Any:
    """``/admin`` (to ``/admin/``), ``/admin/`` (the form, or on to the dashboard), ``POST /admin/login``,
    ``POST /admin/logout`` and ``/admin/dashboard`` (to its trailing slash). Redirects are relative, so they
    hold under a proxy's sub-path."""
    from fastapi import APIRouter, Request
    from fastapi.responses import HTMLResponse, RedirectResponse, Response

    router = APIRouter(include_in_schema=False)
    failures = RateLimiter(FAILED_LOGINS_PER_MINUTE)
    path = cookie_path(root_path)
    expected = hashlib.sha256(token.encode("utf-8")).digest()  # compared as digests: equal lengths, no length leak

    def page(request: Request, status: int, error_key: str | None = None, **values: Any) -> HTMLResponse:
        language = request_language(forced_language, request)
        error = say(error_key, language, **values) if error_key else None
        return HTMLResponse(login_page(language, error), status_code=status, headers=PAGE_HEADERS)

    @router.get("/admin")
    async def admin_no_slash() -> Response:
        return RedirectResponse("admin/", status_code=307)

    @router.get("/admin/dashboard")
    async def dashboard_no_slash() -> Response:
        return RedirectResponse("dashboard/", status_code=307)

    @router.get("/admin/")
    async def admin(request: Request) -> Response:
        if cookies.any_valid(cookie_values(request.scope["headers"])):
            return RedirectResponse("dashboard/", status_code=303, headers={"Cache-Control": "no-store"})
        return page(request, 200)

    @router.post("/admin/login")
    async def login(request: Request) -> Response:
        if same_origin(request.headers) is False:
            return page(request, 403, "dashboard.login.cross_site")
        client, _loopback = client_key(request.client.host if request.client else "")
        wait = failures.wait_s(client)
        if wait > 0:
            response = page(request, 429, "dashboard.login.too_many", seconds=max(1, int(wait + 0.999)))
            response.headers["Retry-After"] = str(max(1, int(wait + 0.999)))
            return response
        form = await _read_form(request)
        if form is None:
            return page(request, 413, "dashboard.login.too_large")
        typed = (form.get("token") or [""])[0].strip().encode("utf-8")
        if not typed or not hmac.compare_digest(hashlib.sha256(typed).digest(), expected):
            failures.take(client)
            return page(request, 403, "dashboard.login.wrong")
        response = RedirectResponse("dashboard/", status_code=303, headers={"Cache-Control": "no-store"})
        response.set_cookie(COOKIE, cookies.issue(), max_age=LIFETIME_S, path=path, httponly=True,
                            samesite="strict", secure=is_https(request.scope, request.headers))
        return response

    @router.post("/admin/logout")
    async def logout(request: Request) -> Response:
        if same_origin(request.headers) is False:
            return page(request, 403, "dashboard.login.cross_site")
        for value in cookie_values(request.scope["headers"]):
            if cookies.revoke(value) and on_logout is not None:
                await on_logout(value, request.scope)
        response = RedirectResponse("./", status_code=303, headers={"Cache-Control": "no-store"})
        response.delete_cookie(COOKIE, path=path, httponly=True, samesite="strict",
                               secure=is_https(request.scope, request.headers))
        return response

    return router


async def _read_form(request: Any) -> dict[str, list[str]] | None:
    """The url-encoded form, read up to :data:`MAX_FORM_BYTES` (None past it); any other body is an empty form."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_FORM_BYTES:
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return None
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return {}
    return parse_qs(body.decode("utf-8", "replace"), max_num_fields=20)


class CookieGate:
    """ASGI middleware of the dashboard's Gradio app: nothing reaches Gradio without a valid cookie, and no write
    comes from another site. ``on_request`` sees each admitted scope (the feed learns this worker's port)."""

    def __init__(self, app: Any, *, cookies: LoginCookies, on_request: Callable[[Scope], None] | None = None):
        self.app = app
        self.cookies = cookies
        self.on_request = on_request

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if not self.cookies.any_valid(cookie_values(scope.get("headers") or [])):
            await self._refuse(scope, send)
            return
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS:
            from starlette.datastructures import Headers

            if same_origin(Headers(scope=scope)) is False:
                await _answer(send, 403, b'{"detail": "cross-site request refused"}')
                return
        if self.on_request is not None:
            self.on_request(scope)
        await self.app(scope, receive, _with_page_headers(send) if scope["type"] == "http" else send)

    async def _refuse(self, scope: Scope, send: Any) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        path, root = scope["path"], scope.get("root_path", "")
        inner = path[len(root):] if root and path.startswith(root) else path
        if scope["method"] in ("GET", "HEAD") and inner in ("", "/"):
            await _answer(send, 303, b"", [(b"location", b"../")])  # the page: to the login form
            return
        await _answer(send, 401, b'{"detail": "log in at /admin/ first"}')


def _with_page_headers(send: Any) -> Any:
    """Add no-framing and no-store to the dashboard's answers (a kill button must not be framed by another site)."""
    async def sending(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers") or [])
            names = {name.lower() for name, _ in headers}
            headers.append((b"x-frame-options", b"DENY"))
            if b"content-security-policy" not in names:
                headers.append((b"content-security-policy", b"frame-ancestors 'none'"))
            if b"cache-control" not in names:
                headers.append((b"cache-control", b"no-store"))
            message = {**message, "headers": headers}
        await send(message)

    return sending


async def _answer(send: Any, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"cache-control", b"no-store"), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
