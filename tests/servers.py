"""Start real `cmw serve` processes on free loopback ports for tests, and stop them by PID."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

STARTUP_TIMEOUT_S = 90


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningServer:
    url: str
    port: int
    proc: subprocess.Popen[bytes]
    state_dir: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def wait_until_ready(
    url: str, proc: subprocess.Popen[bytes], log_path: Path, timeout: float = STARTUP_TIMEOUT_S,
    probe: str = "/admin/api/live",
) -> None:
    """Poll the liveness probe until it answers, the process dies, or the deadline passes (an app with its own
    auth answers /config with 401, so the public probe is what says the server is up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"cmw serve exited with {proc.returncode}:\n{tail}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}{probe}", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"cmw serve did not answer within {timeout} s:\n{log_path.read_text(errors='replace')[-3000:]}")


@contextlib.contextmanager
def cmw_server(
    tmp: Path,
    *overrides: str,
    profile: str = "balanced",
    extra_args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    port: int | None = None,
) -> Iterator[RunningServer]:
    """`cmw serve` in a subprocess with its own state dir; SIGTERM (then SIGKILL) on exit."""
    port = port or free_port()
    state_dir = tmp / "state"
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = tmp / f"serve-{port}.log"
    cmd = [sys.executable, "-m", "cmw_cli.main", "serve", "-p", profile, "--host", "127.0.0.1", "--port", str(port)]
    for item in overrides:
        cmd += ["--set", item]
    cmd += list(extra_args)
    child_env = {
        k: v for k, v in os.environ.items() if not k.startswith(("CMW_", "GRADIO_")) and k not in _SEED_ENV
    }
    child_env.update({"CMW_SERVER__STATE_DIR": str(state_dir), "PYTHONUNBUFFERED": "1", "COLUMNS": "200"})
    child_env.update(env or {})
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=child_env, cwd=tmp)
    server = RunningServer(f"http://127.0.0.1:{port}", port, proc, state_dir, log_path)
    try:
        wait_until_ready(server.url, proc, log_path)
        yield server
    finally:
        server.stop()


_SEED_ENV = {
    "CHAT_CONCURRENCY_LIMIT", "FILE_CONCURRENCY_LIMIT", "FILE_QUEUE_ID", "STATS_CONCURRENCY_LIMIT",
    "LOGS_CONCURRENCY_LIMIT", "ENABLE_CONCURRENT_PROCESSING", "OPENAI_API_KEY", "OPENROUTER_API_KEY",
}
