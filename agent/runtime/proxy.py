"""HAProxy in front of several cmw workers, sticky per Gradio session.

Gradio 6 carries the session hash on every route that must reach the process holding the session's
queue: the event stream ``GET /gradio_api/queue/data?session_hash=H``, the heartbeat
``GET /gradio_api/heartbeat/H``, and the JSON body (``"session_hash": H``) of ``POST /gradio_api/queue/join``,
``/gradio_api/cancel`` and ``/gradio_api/component_server``. HAProxy hashes that one value for all of them,
so browsers, ``gradio_client`` (no cookies between calls) and raw-protocol clients such as ``cmw loadtest``
land on the same worker for the whole session. The admin API's per-session routes
(``/admin/api/sessions/<id>``; a session's id is its hash) go to the same worker, so a kill reaches the
process that holds the session. Anything without a hash (pages, assets, ``/config``, uploads) is spread
by client address.

Uploads (``POST /gradio_api/upload``) carry no session hash, only a random ``upload_id``. On one host all
workers share Gradio's upload folder (``GRADIO_TEMP_DIR``), and Gradio accepts any file in that folder, so
the join that names the file may reach any worker. Across hosts the folder must be shared storage
(NFS…) mounted at the same path, which :func:`haproxy_config`'s header says.

HAProxy is used, not nginx, because it reads a field of a JSON request body (``json_query``) without
scripting. Two ways to map a session key to a worker:

- ``least-loaded`` (the local supervisor): a new session's first join goes to the worker with the fewest
  open connections and a stick table keeps the session there. Hashing 64 sessions onto 2 workers splits
  them about 38/26 as often as not; this keeps the split even. The table lives in the one HAProxy
  process: if HAProxy itself dies (the supervisor restarts it), sessions are assigned afresh on their
  next join and continue from the store.
- ``consistent`` hashing (``cmw proxy-config``, with health checks): several proxies agree without
  sharing a table, and a failed host moves only its own sessions, which continue from the shared Redis.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

HAPROXY_PACKAGE = "haproxy"
# Requests buffered for the join body: Gradio's chat textbox allows 20,000 characters, escaped to at most
# ~120 kB of JSON; HAProxy reads the body up to (bufsize - maxrewrite).
BUFSIZE = 262_144
MAXREWRITE = 1024


class ProxyError(RuntimeError):
    """The proxy cannot be configured or started; the message says what to do."""


@dataclass(frozen=True)
class Upstream:
    host: str
    port: int
    tls: bool = False

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)*\.?$")


def host_problem(host: str) -> str | None:
    """Why ``host`` cannot go into an HAProxy line (an IP address or a DNS name only), or None.

    The config is line-based: a newline or space in a host would add directives of the caller's choosing.
    """
    if any(ch.isspace() or unicodedata.category(ch)[0] == "C" for ch in host):
        return "contains whitespace or control characters"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOSTNAME.match(host):
            return "is not an IP address or a host name (letters, digits, '-', '_' and dots)"
    return None


def parse_upstream(url: str) -> Upstream:
    """``http://host:port`` (or https) → :class:`Upstream`; a bad URL is a ProxyError naming it."""
    if any(ch.isspace() or unicodedata.category(ch)[0] == "C" for ch in url.strip()):
        raise ProxyError(f"upstream {url!r}: contains whitespace or control characters")
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ProxyError(f"upstream {url!r}: expected http://HOST:PORT or https://HOST:PORT")
    if parts.path not in ("", "/") or parts.query:
        raise ProxyError(f"upstream {url!r}: give the worker's root URL, without a path (use server.root_path)")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ProxyError(f"upstream {url!r}: the port is not a number in 1–65535") from None
    problem = host_problem(parts.hostname)
    if problem is not None:
        raise ProxyError(f"upstream {url!r}: the host {problem}")
    return Upstream(parts.hostname, port, parts.scheme == "https")


def haproxy_config(
    upstreams: list[Upstream],
    *,
    bind_host: str = "0.0.0.0",
    bind_port: int = 80,
    balance: Literal["least-loaded", "map-based", "consistent"] = "consistent",
    health_checks: bool = True,
    pidfile: Path | None = None,
    maxconn: int = 20_000,
) -> str:
    """A complete haproxy.cfg: one frontend, one backend hashing each request on its session key."""
    if not upstreams:
        raise ProxyError("at least one upstream is needed")
    problem = host_problem(bind_host)
    if problem is not None:
        raise ProxyError(f"--bind {bind_host!r}: {problem}")
    if not 0 <= bind_port <= 65_535:
        raise ProxyError(f"--port {bind_port}: not a port number (1–65535)")
    for upstream in upstreams:
        if host_problem(upstream.host) is not None or not 1 <= upstream.port <= 65_535:
            raise ProxyError(f"upstream {upstream.address!r} is not a host and port")
    bind = f"[{bind_host}]:{bind_port}" if ":" in bind_host else f"{bind_host}:{bind_port}"
    lines = [
        "# Generated by cmw: sticky per Gradio session (see agent/runtime/proxy.py).",
        "# Workers on several hosts need one shared Redis (sessions.store = \"redis://...\") and a shared",
        "# GRADIO_TEMP_DIR (uploads) mounted at the same path on every host.",
        "global",
        f"    maxconn {maxconn}",
        f"    tune.bufsize {BUFSIZE}",
        f"    tune.maxrewrite {MAXREWRITE}",
    ]
    if pidfile is not None:
        lines.append(f"    pidfile {pidfile}")
    lines += [
        "",
        "defaults",
        "    mode http",
        "    option http-buffer-request",
        "    # Each worker sees the client's address in X-Forwarded-For (its per-client rate limits need it); a worker",
        "    # on another host must list this proxy's address in server.trusted_proxies.",
        "    option forwardfor",
        "    option redispatch",
        "    retries 3",
        "    timeout connect 5s",
        "    timeout http-request 60s",
        "    timeout client 1h",
        "    timeout server 1h",
        "    timeout tunnel 1h",
        "",
        "frontend cmw",
        f"    bind {bind}",
        "    default_backend cmw_workers",
        "",
        "backend cmw_workers",
        "    # The session key: the Gradio session hash wherever the route carries it, else the client address.",
        "    http-request set-var(txn.cmw_key) src",
        "    http-request set-var(txn.cmw_key) url_param(session_hash) if { url_param(session_hash) -m found }",
        "    http-request set-var(txn.cmw_key) path,field(-1,/) if { path_reg /gradio_api/heartbeat/[^/]+$ }",
        "    http-request set-var(txn.cmw_key) path,field(-1,/) if { path_reg /admin/api/sessions/[^/]+$ }",
        "    http-request set-var(txn.cmw_key) req.body,json_query('$.session_hash') if METH_POST "
        "{ path_reg /gradio_api/(queue/join|cancel|component_server)/?$ } "
        "{ req.body,json_query('$.session_hash') -m found }",
    ]
    if balance == "least-loaded":
        lines += [
            "    # A session's first join goes to the worker with the fewest open connections and the table",
            "    # records it; every later request of the session (stream, heartbeat, joins) follows the record.",
            "    # Only joins record: a client opens the event stream after its join has answered, so the record",
            "    # is always there in time, while a heartbeat racing the first join never decides the worker.",
            "    # Gradio's /call API carries no session hash: its POST records the client address, so the GET",
            "    # that reads the event's result reaches the worker that queued it.",
            "    balance leastconn",
            "    stick-table type string len 128 size 1m expire 7d",
            "    stick match var(txn.cmw_key)",
            "    stick store-request var(txn.cmw_key) if METH_POST { path_reg /gradio_api/(queue/join/?|call/.+)$ }",
        ]
    else:
        lines += [
            "    balance hash var(txn.cmw_key)",
            f"    hash-type {balance}",
        ]
    lines += [
        "    default-server init-addr libc,none",  # an unresolvable host starts down instead of failing the start
    ]
    check = " check inter 2s fall 2 rise 1" if health_checks else ""
    for index, upstream in enumerate(upstreams):
        tls = " ssl verify required ca-file @system-ca" if upstream.tls else ""
        lines.append(f"    server w{index} {upstream.address}{check}{tls}")
    return "\n".join(lines) + "\n"


def local_maxconn(ceiling: int = 20_000) -> int:
    """Connections HAProxy may take on this machine: it needs about two descriptors per connection."""
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        return ceiling
    return max(256, min(ceiling, (hard - 100) // 2))


def find_haproxy() -> str:
    """The haproxy binary, or a ProxyError naming the package to install."""
    found = shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if os.access(p, os.X_OK)), None
    )
    if found is None:
        raise ProxyError(
            "server.workers > 1 needs HAProxy in front of the workers, and it is not installed: "
            f"install the '{HAPROXY_PACKAGE}' package (apt-get install {HAPROXY_PACKAGE}), or use --workers 1"
        )
    return found
