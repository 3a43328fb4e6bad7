"""Start ``cmw serve`` on a free loopback port for one load test, and always stop it again."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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
    """A running ``cmw serve``: its URL, the admin token we gave it, and its process."""

    url: str
    admin_token: str
    process: subprocess.Popen[bytes]
    command: list[str]
    stderr_path: Path

    def stderr_tail(self, lines: int = 15) -> str:
        try:
            text = self.stderr_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])


def serve_command(profile: str | None, port: int, overrides: list[str]) -> list[str]:
    """The argv of ``cmw serve`` for this interpreter (the installed console script may be another venv's)."""
    command = [sys.executable, "-m", "cmw_cli.main", "serve", "--host", HOST, "--port", str(port)]
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
    """Run ``cmw serve`` for the duration of the ``with`` block; raises :class:`SpawnError` if it never answers."""
    port = free_port()
    command = serve_command(profile, port, list(overrides or []))
    token = secrets.token_urlsafe(24)
    # The token goes through the environment, not argv, so `ps` never shows it.
    env = {**os.environ, "CMW_ADMIN__TOKEN": token, "PYTHONUNBUFFERED": "1"}
    with tempfile.NamedTemporaryFile(prefix="cmw-loadtest-serve-", suffix=".log", delete=False) as log:
        log_path = Path(log.name)
    with open(log_path, "wb") as stderr:
        # A session of its own: Ctrl-C in the terminal reaches us, and we stop it in order.
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, env=env,
                                   start_new_session=True)
    server = SpawnedServer(f"http://{HOST}:{port}", token, process, command, log_path)
    try:
        _wait_ready(server, start_timeout)
        yield server
    finally:
        stop(process, stop_timeout)
        with contextlib.suppress(OSError):
            log_path.unlink()


def _wait_ready(server: SpawnedServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2.0) as client:
        while True:
            code = server.process.poll()
            if code is not None:
                raise SpawnError(f"cmw serve exited with code {code} before answering:\n{server.stderr_tail()}")
            try:
                if client.get(f"{server.url}/").status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SpawnError(f"cmw serve did not answer on {server.url} within {timeout:g}s:\n"
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
    except subprocess.TimeoutExpired:
        # Its own process group (start_new_session): the simulator it started goes with it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)
