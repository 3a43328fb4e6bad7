"""``cmw serve --workers N``: N app processes on loopback ports behind HAProxy, supervised.

One Python process serving Gradio is bound to one core; several processes behind a proxy that is
sticky per Gradio session (see :mod:`agent.proxy`) use them all. The supervisor (:func:`supervise`):

- binds each worker's loopback socket itself and hands it to the worker, so a worker that dies is
  restarted on the same socket: the proxy's map of sessions to workers never changes, and requests for
  the dead worker's sessions wait in the socket's backlog for the new process instead of failing over
  to a worker that would hold a stale copy of them;
- creates the admin token and browser secret once, so every worker accepts the same token;
- starts HAProxy on the public host/port once every worker answers, and restarts it if it dies;
- on SIGTERM/SIGINT has every worker drain (refuse new joins, finish replies for
  ``server.shutdown_grace_s``), then stops HAProxy and exits 0; a second signal forces the workers.

A worker (``python -m agent.workers``) is today's single-process app (which reads sessions from the
shared store only when they come back) whose admin API answers the session and queue routes for the
whole set by asking its peers over loopback (:class:`PeerAdmin`), so those answers are the same from
any worker; ``queue`` lists each worker's live figures under ``workers``. A conversation id says
nothing about which worker holds it, so ``GET|DELETE /admin/api/sessions/{id}`` ask every worker too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from agent.settings import LoadedSettings

log = logging.getLogger("cmw.workers")

LOCAL_HEADER = "x-cmw-local"  # set on peer requests: answer for this worker only
READY_TIMEOUT_S = 120.0
RESTARTS_ALLOWED = 5  # per worker within RESTART_WINDOW_S; more means it cannot start: give up
RESTART_WINDOW_S = 60.0
PEER_TIMEOUT_S = 5.0


# ---------------------------------------------------------------------------------------------- supervisor


@dataclass
class Worker:
    index: int
    sock: socket.socket
    proc: subprocess.Popen[bytes] | None = None
    restarts: deque[float] = field(default_factory=lambda: deque(maxlen=RESTARTS_ALLOWED + 1))

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])


def worker_overrides(loaded: LoadedSettings) -> dict[str, Any]:
    """The values that came from flags or ``--set``: a worker reloads the rest (profile, env, .env) itself."""
    out: dict[str, Any] = {}
    for key, source in loaded.sources.items():
        if source.startswith("--"):
            value = loaded.settings.get(key)
            if hasattr(value, "get_secret_value"):
                value = value.get_secret_value()
            if isinstance(value, Path):
                value = str(value)
            out[key] = value
    return out


def supervise(loaded: LoadedSettings, *, console: Any) -> int:
    """Run ``server.workers`` workers behind HAProxy until SIGINT/SIGTERM; the process exit code."""
    from agent.admin import admin_token
    from agent.proxy import ProxyError, Upstream, find_haproxy, haproxy_config, local_maxconn
    from agent.server import StartupError, bind_socket, browser_secret
    from agent.store import StoreError
    from agent.store import state_dir as resolve_state_dir

    settings = loaded.settings
    count = settings.server.workers
    try:
        haproxy = find_haproxy()
        state_dir = resolve_state_dir(settings)
        # Made once here, so workers starting together do not each write a different one.
        admin_token(settings, state_dir)
        browser_secret(state_dir)
        if settings.sessions.store.startswith(("redis://", "rediss://")):  # one clear line, not one per worker
            from agent.store import RedisStore

            RedisStore(settings.sessions.store).close()
        public = bind_socket(settings.server.host, settings.server.port)  # is the public port free?
    except (ProxyError, StartupError, StoreError, OSError) as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        return 4
    public_host, public_port = public.getsockname()[:2]
    public.close()  # HAProxy binds it (SO_REUSEADDR both sides)

    run_dir = Path(tempfile.mkdtemp(prefix="cmw-workers-", dir=state_dir))
    plan_path = run_dir / "plan.json"
    workers = [Worker(i, bind_socket("127.0.0.1", 0)) for i in range(count)]
    plan = {
        "profile": str(loaded.profile_path) if loaded.profile_path else None,
        "overrides": worker_overrides(loaded),
        "peers": [w.port for w in workers],
    }
    fd = os.open(plan_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # may hold a secret from --set
    with os.fdopen(fd, "w") as handle:
        json.dump(plan, handle)

    stop = _StopFlag()
    previous = {sig: signal.signal(sig, stop.handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    proxy: subprocess.Popen[bytes] | None = None
    config_path = run_dir / "haproxy.cfg"
    code = 0
    try:
        for worker in workers:
            _start_worker(worker, plan_path)
        failed = _wait_ready(workers, stop)
        if failed:
            console.print(f"[bold red]error:[/] cannot start: {failed}", highlight=False)
            return 4
        if stop.count:
            return 0
        config_path.write_text(haproxy_config(
            [Upstream("127.0.0.1", w.port) for w in workers], bind_host=public_host, bind_port=public_port,
            balance="least-loaded", health_checks=False, maxconn=local_maxconn(),
        ))
        proxy = _start_proxy(haproxy, config_path, public_host, public_port)
        url = f"http://{_display(public_host)}:{public_port}{settings.server.root_path}"
        _banner(console, loaded, url, workers)

        def restart_proxy(dead: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
            nonlocal proxy
            console.print(f"[yellow]haproxy exited ({dead.returncode}); restarting it[/]", highlight=False)
            proxy = _start_proxy(haproxy, config_path, public_host, public_port)
            return proxy

        code = _supervise_loop(workers, plan_path, stop, console, proxy, restart_proxy)
    except ProxyError as exc:
        console.print(f"[bold red]error:[/] cannot start: {exc}", highlight=False)
        code = 4
    finally:
        _stop_workers(workers, settings.server.shutdown_grace_s, stop)
        if proxy is not None:
            _terminate(proxy, signal.SIGUSR1, 10)
        for worker in workers:
            worker.sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for path in (plan_path, config_path):
            with contextlib.suppress(OSError):
                path.unlink()
        with contextlib.suppress(OSError):
            run_dir.rmdir()
    if code == 0:
        console.print("[green]cmw stopped[/]")
    return code


class _StopFlag:
    def __init__(self) -> None:
        self.count = 0

    def handle(self, sig: int, frame: FrameType | None) -> None:
        self.count += 1


def _start_worker(worker: Worker, plan_path: Path) -> None:
    fd = worker.sock.fileno()
    cmd = [sys.executable, "-m", "agent.workers", "--plan", str(plan_path), "--index", str(worker.index),
           "--fd", str(fd)]
    # Own session: a terminal's Ctrl-C reaches only the supervisor, which drains each worker once.
    worker.proc = subprocess.Popen(cmd, pass_fds=(fd,), start_new_session=True, preexec_fn=_die_with_parent)


def _die_with_parent() -> None:
    """In the child: SIGTERM when the supervisor dies, so a killed supervisor leaves no orphans."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _ready(port: int) -> bool:
    import httpx

    try:
        return httpx.get(f"http://127.0.0.1:{port}/config", timeout=3).status_code == 200
    except httpx.HTTPError:
        return False


def _wait_ready(workers: list[Worker], stop: _StopFlag) -> str | None:
    """None once every worker answers; else why not (a worker exited, or the deadline passed)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    pending = list(workers)
    while pending and not stop.count:
        for worker in list(pending):
            assert worker.proc is not None
            if worker.proc.poll() is not None:
                return f"worker {worker.index} exited with code {worker.proc.returncode} (its output is above)"
            if _ready(worker.port):
                pending.remove(worker)
        if time.monotonic() > deadline:
            return f"workers {[w.index for w in pending]} did not answer within {READY_TIMEOUT_S:g} s"
        if pending:
            time.sleep(0.2)
    return None


def _start_proxy(haproxy: str, config: Path, host: str, port: int) -> subprocess.Popen[bytes]:
    from agent.proxy import ProxyError

    proc = subprocess.Popen([haproxy, "-db", "-f", str(config)], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True, preexec_fn=_die_with_parent)  # stays up while workers drain
    deadline = time.monotonic() + 20
    target = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
    while True:
        if proc.poll() is not None:
            err = (proc.stderr.read() if proc.stderr else b"").decode(errors="replace").strip().splitlines()
            alerts = [line for line in err if "ALERT" in line] or err[-1:]
            raise ProxyError(f"haproxy exited with code {proc.returncode}: {' / '.join(alerts)}")
        with contextlib.suppress(OSError), socket.create_connection((target, port), timeout=1):
            break
        if time.monotonic() > deadline:
            proc.kill()
            raise ProxyError(f"haproxy did not listen on {host}:{port} within 20 s")
        time.sleep(0.05)
    if proc.stderr is not None:  # keep draining its warnings so the pipe never fills
        import threading

        threading.Thread(target=_drain, args=(proc.stderr,), daemon=True).start()
    return proc


def _drain(stream: Any) -> None:
    for line in stream:
        text = line.decode(errors="replace").rstrip()
        if "ALERT" in text or "WARNING" in text:
            print(f"haproxy: {text}", file=sys.stderr, flush=True)


def _supervise_loop(
    workers: list[Worker],
    plan_path: Path,
    stop: _StopFlag,
    console: Any,
    proxy: subprocess.Popen[bytes],
    restart_proxy: Callable[[subprocess.Popen[bytes]], subprocess.Popen[bytes]],
) -> int:
    """Restart what dies until a signal arrives; 4 when a worker keeps dying."""
    while not stop.count:
        for worker in workers:
            assert worker.proc is not None
            code = worker.proc.poll()
            if code is None or stop.count:
                continue
            now = time.monotonic()
            worker.restarts.append(now)
            recent = [t for t in worker.restarts if now - t < RESTART_WINDOW_S]
            if len(recent) > RESTARTS_ALLOWED:
                console.print(f"[bold red]error:[/] worker {worker.index} exited {len(recent)} times within "
                              f"{RESTART_WINDOW_S:g} s (last code {code}); stopping", highlight=False)
                return 4
            console.print(f"[yellow]worker {worker.index} (pid {worker.proc.pid}) exited with code {code}; "
                          f"restarting it on port {worker.port}[/]", highlight=False)
            _start_worker(worker, plan_path)
        if proxy.poll() is not None and not stop.count:
            proxy = restart_proxy(proxy)
        time.sleep(0.2)
    return 0


def _stop_workers(workers: list[Worker], grace_s: float, stop: _StopFlag) -> None:
    """SIGTERM every worker (each drains for up to grace_s), SIGTERM again on a second signal, then kill."""
    running = [w.proc for w in workers if w.proc is not None and w.proc.poll() is None]
    for proc in running:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    signals_seen = stop.count
    deadline = time.monotonic() + grace_s + 15
    while running and time.monotonic() < deadline:
        running = [p for p in running if p.poll() is None]
        if stop.count > max(signals_seen, 1):  # asked again: force
            signals_seen = stop.count
            for proc in running:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        time.sleep(0.05)
    for proc in running:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def _terminate(proc: subprocess.Popen[bytes], sig: int, timeout: float) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _display(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else (f"[{host}]" if ":" in host else host)


def _banner(console: Any, loaded: LoadedSettings, url: str, workers: list[Worker]) -> None:
    from rich.panel import Panel
    from rich.table import Table

    from agent import __version__
    from agent.server import provider_text
    from agent.settings import mask_url_passwords

    settings = loaded.settings
    table = Table.grid(padding=(0, 2))
    table.add_row("URL", f"[bold]{url}[/]  (HAProxy, sticky per Gradio session)")
    table.add_row("workers", f"{len(workers)} on 127.0.0.1 ports {', '.join(str(w.port) for w in workers)}")
    table.add_row("profile", f"{loaded.profile_name} ({loaded.profile_path})")
    table.add_row("store", mask_url_passwords(settings.sessions.store))
    table.add_row("provider", provider_text(settings, None))
    table.add_row("admin", f"{url.rstrip('/')}/admin/api/health")
    console.print(Panel(table, title=f"cmw {__version__}", expand=False))
    for warning in loaded.warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)


# ---------------------------------------------------------------------------------------------- worker


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
                from agent.admin import token_refusal

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
        merged = self._sessions(ok, query) if what == "sessions" else self._queue(ok, errors)
        await _respond(send, 200, json.dumps(merged).encode())

    @staticmethod
    def _sessions(answers: dict[int, list[dict[str, Any]]], query: str) -> list[dict[str, Any]]:
        """Union over workers (a live copy beats a stored one; running, then the latest, wins), one page long."""
        from urllib.parse import parse_qs

        best: dict[str, dict[str, Any]] = {}

        def rank(summary: dict[str, Any]) -> tuple[bool, bool, float]:
            state = summary.get("state")
            return state != "stored", state == "running", float(summary.get("last_active") or 0)

        for sessions in answers.values():
            for summary in sessions:
                have = best.get(summary["id"])
                if have is None or rank(summary) > rank(have):
                    best[summary["id"]] = summary
        limit = parse_qs(query).get("limit", ["1000"])[0]
        ordered = sorted(best.values(), key=rank, reverse=True)
        return ordered[: int(limit)] if limit.isdigit() else ordered

    def _queue(self, answers: dict[int, dict[str, Any]], errors: dict[int, str]) -> dict[str, Any]:
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


def run_worker(loaded: LoadedSettings, sock: socket.socket, index: int, peers: list[int]) -> int:
    """One worker: the single-process app on an inherited loopback socket, sessions restored lazily."""
    import uvicorn
    from rich.console import Console

    from agent.admin import admin_token
    from agent.server import DrainingServer, _simulator, create_app
    from agent.store import StoreError
    from agent.store import state_dir as resolve_state_dir

    console = Console(stderr=True)
    try:
        state_dir = resolve_state_dir(loaded.settings)
        with _simulator(loaded) as sim_url:
            app, ctx = create_app(loaded, sim_base_url=sim_url, state_dir=state_dir)
            ctx.startup_log.append(f"worker {index} of {len(peers)} (pid {os.getpid()})")
            # The supervisor's HAProxy (option forwardfor) reaches every worker from loopback: trust it.
            trusted = [*loaded.settings.server.trusted_proxies, "127.0.0.1"]
            peer_admin = PeerAdmin(app, ctx, index, peers, admin_token(loaded.settings, state_dir))
            config = uvicorn.Config(peer_admin, loop="uvloop", http="httptools", ws="none",
                                    log_level="warning", timeout_graceful_shutdown=2, lifespan="on",
                                    forwarded_allow_ips=trusted)
            server = DrainingServer(config, ctx, loaded.settings.server.shutdown_grace_s, console)
            console.print(f"worker {index} ready (pid {os.getpid()}, port {sock.getsockname()[1]})", highlight=False)
            server.run(sockets=[sock])
    except (StoreError, OSError) as exc:
        console.print(f"[bold red]error:[/] worker {index}: {exc}", highlight=False)
        return 4
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.workers", description="One cmw worker (started by "
                                     "`cmw serve --workers N`; not meant to be run by hand).")
    parser.add_argument("--plan", required=True, type=Path)
    parser.add_argument("--index", required=True, type=int)
    parser.add_argument("--fd", required=True, type=int)
    args = parser.parse_args(argv)
    from agent.settings import ConfigError, load_settings

    plan = json.loads(args.plan.read_text())
    overrides = {key: (value, "--set") for key, value in plan["overrides"].items()}
    overrides.update({"server.workers": (1, "--set"), "server.host": ("127.0.0.1", "--set")})
    sock = socket.socket(fileno=args.fd)
    overrides["server.port"] = (sock.getsockname()[1], "--set")
    try:
        loaded = load_settings(plan["profile"], overrides)
    except ConfigError as exc:
        print(f"error: worker {args.index}: {exc}", file=sys.stderr)
        return 2
    return run_worker(loaded, sock, args.index, list(plan["peers"]))


if __name__ == "__main__":
    sys.exit(main())
