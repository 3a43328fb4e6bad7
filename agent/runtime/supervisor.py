"""``cmw serve --workers N``: N app processes on loopback ports behind HAProxy, supervised.

One Python process serving Gradio is bound to one core; several processes behind a proxy that is
sticky per Gradio session (see :mod:`agent.runtime.proxy`) use them all. The supervisor knows nothing
of what a worker serves (:mod:`agent.runtime.worker` does); it:

- binds each worker's loopback socket itself and hands it to the worker, so a worker that dies is
  restarted on the same socket: the proxy's map of sessions to workers never changes, and requests for
  the dead worker's sessions wait in the socket's backlog for the new process instead of failing over
  to a worker that would hold a stale copy of them;
- creates the admin token and browser secret once, so every worker accepts the same token;
- starts HAProxy on the public host/port once every worker answers, and restarts it if it dies;
- on SIGTERM/SIGINT has every worker drain (refuse new joins, finish replies for
  ``server.shutdown_grace_s``), then stops HAProxy and exits 0; a second signal forces the workers.
"""

from __future__ import annotations

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

READY_TIMEOUT_S = 120.0
RESTARTS_ALLOWED = 5  # per worker within RESTART_WINDOW_S; more means it cannot start: give up
RESTART_WINDOW_S = 60.0


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
    """The values that came from the command line (flags, ``--set``, the APP argument): a worker reloads the
    rest (profile, env, .env) itself."""
    out: dict[str, Any] = {}
    for key, source in loaded.sources.items():
        if not source.startswith(("profile:", "env:", ".env", "default")):
            value = loaded.settings.get(key)
            if hasattr(value, "get_secret_value"):
                value = value.get_secret_value()
            if isinstance(value, Path):
                value = str(value)
            out[key] = value
    return out


def supervise(loaded: LoadedSettings, *, console: Any) -> int:
    """Run ``server.workers`` workers behind HAProxy until SIGINT/SIGTERM; the process exit code."""
    from agent.app.admin import admin_token
    from agent.app.asgi import browser_secret
    from agent.runtime.banner import display_host, print_workers_banner
    from agent.runtime.proxy import ProxyError, Upstream, find_haproxy, haproxy_config, local_maxconn
    from agent.runtime.server import StartupError, bind_socket
    from agent.sessions.store import StoreError
    from agent.sessions.store import state_dir as resolve_state_dir

    settings = loaded.settings
    count = settings.server.workers
    try:
        haproxy = find_haproxy()
        state_dir = resolve_state_dir(settings)
        # Made once here, so workers starting together do not each write a different one.
        admin_token(settings, state_dir)
        browser_secret(state_dir)
        if settings.sessions.store.startswith(("redis://", "rediss://")):  # one clear line, not one per worker
            from agent.sessions.store import RedisStore

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
        url = f"http://{display_host(public_host)}:{public_port}{settings.server.root_path}"
        print_workers_banner(console, loaded, url, [w.port for w in workers])

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
    cmd = [sys.executable, "-m", "agent.runtime.worker", "--plan", str(plan_path), "--index", str(worker.index),
           "--fd", str(fd)]
    # Own session: a terminal's Ctrl-C reaches only the supervisor, which drains each worker once.
    worker.proc = subprocess.Popen(cmd, pass_fds=(fd,), start_new_session=True, preexec_fn=_die_with_parent)


def _die_with_parent() -> None:
    """In the child: SIGTERM when the supervisor dies, so a killed supervisor leaves no orphans."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _ready(port: int) -> bool:
    """The worker answers its liveness probe (public, unlike an operator's app's /config behind its own auth)."""
    import httpx

    try:
        return httpx.get(f"http://127.0.0.1:{port}/admin/api/live", timeout=3).status_code == 200
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
    from agent.runtime.proxy import ProxyError

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


