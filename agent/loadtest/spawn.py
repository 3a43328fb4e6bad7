"""Start the app (``python -m agent``) on a free loopback port for one load test, and always stop it again."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import httpx

HOST = "127.0.0.1"


class SpawnError(Exception):
    """The server did not come up; the message carries the tail of its stderr."""


def free_port(host: str = HOST) -> int:
    """A port nobody listens on right now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class SpawnedServer:
    """A running server: its URL, the admin token we gave it, its process and where its output goes."""

    url: str
    admin_token: str
    process: subprocess.Popen[bytes]
    stderr_path: Path

    def stderr_tail(self, lines: int = 15) -> str:
        try:
            text = self.stderr_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])


def serve_command(profile: str | None, port: int, overrides: list[str]) -> list[str]:
    """The argv of the app's own entry (``python -m agent``) for this interpreter; it takes ``cmw serve``'s
    profile, host, port and ``--set`` flags, and keeps the load tester free of the CLI package."""
    command = [sys.executable, "-m", "agent", "--host", HOST, "--port", str(port)]
    if profile:
        command += ["-p", profile]
    for pair in overrides:
        command += ["--set", pair]
    return command


@contextlib.contextmanager
def spawn_server(
    profile: str | None,
    overrides: list[str] | None = None,
    *,
    start_timeout: float = 90.0,
    stop_timeout: float = 20.0,
) -> Iterator[SpawnedServer]:
    """Serve the app for the duration of the ``with`` block; raises :class:`SpawnError` if it never answers."""
    overrides = list(overrides or [])
    port = free_port()
    token = secrets.token_urlsafe(24)
    # The token goes through the environment, not argv, so `ps` never shows it.
    env = {"CMW_ADMIN__TOKEN": token}
    own_state = any(pair.split("=", 1)[0].strip() == "server.state_dir" for pair in overrides)
    with contextlib.ExitStack() as stack:
        if not own_state and "CMW_SERVER__STATE_DIR" not in os.environ:
            # Hundreds of load-test sessions do not belong in the user's own session database.
            env["CMW_SERVER__STATE_DIR"] = stack.enter_context(tempfile.TemporaryDirectory(prefix="cmw-loadtest-"))
        yield stack.enter_context(
            run_server(serve_command(profile, port, overrides), f"http://{HOST}:{port}", env=env, admin_token=token,
                       start_timeout=start_timeout, stop_timeout=stop_timeout, name="python -m agent")
        )


@contextlib.contextmanager
def run_server(
    command: list[str],
    url: str,
    *,
    env: dict[str, str] | None = None,
    admin_token: str = "",
    start_timeout: float = 90.0,
    stop_timeout: float = 20.0,
    name: str = "the server",
) -> Iterator[SpawnedServer]:
    """Run any HTTP server command until the block ends: ready when ``GET {url}/`` answers, stopped by PID.

    SIGTERM to this process is taken as Ctrl-C while the server runs, so ``timeout``, CI or a supervisor
    ending the command stops the server too, instead of leaving it (and its simulator) orphaned.
    """
    with sigterm_as_interrupt(), tempfile.TemporaryDirectory(prefix="cmw-loadtest-log-") as logdir:
        log_path = Path(logdir) / "server.log"
        with open(log_path, "wb") as log:
            # A session of its own: Ctrl-C in the terminal reaches us, and we stop it in order.
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                       env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                                       start_new_session=True)
        server = SpawnedServer(url, admin_token, process, log_path)
        try:
            _wait_ready(server, start_timeout, name)
            yield server
        finally:
            stop(process, stop_timeout)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While the block runs, SIGTERM does what Ctrl-C does (blocks unwind, servers stop); outside the main
    thread there is no handler to install, and the caller's own handling stays."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # a background job: Ctrl-C would do nothing
            raise KeyboardInterrupt
        os.kill(os.getpid(), signal.SIGINT)  # reaches an event loop's SIGINT handler, or raises KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _wait_ready(server: SpawnedServer, timeout: float, name: str) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2.0) as client:
        while True:
            code = server.process.poll()
            if code is not None:
                raise SpawnError(f"{name} exited with code {code} before answering on {server.url}:\n"
                                 f"{server.stderr_tail()}")
            try:
                if client.get(f"{server.url}/").status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SpawnError(f"{name} did not answer on {server.url} within {timeout:g}s:\n"
                                 f"{server.stderr_tail()}")
            time.sleep(0.2)  # polling a port that is not open yet: nothing to wait on but time


def stop(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM (the server finishes in-flight replies), then SIGKILL if it does not exit in time."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except KeyboardInterrupt:  # asked again while it drains: stop it now, then go on stopping
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)
        raise
    except subprocess.TimeoutExpired:
        # Its own process group (start_new_session): the simulator it started goes with it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)
