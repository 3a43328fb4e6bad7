"""One plain Gradio server (every variant of plain_app.py mounted on it) for the whole directory."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.loadtest.spawn import HOST, free_port, run_server

PLAIN_APP = Path(__file__).with_name("plain_app.py")


@pytest.fixture(scope="session")
def plain_server() -> Iterator[str]:
    """Base URL of the plain app server; variants live at /chat, /plain, /shared, /slow, /tiny, /iface, /fail."""
    port = free_port()
    command = [sys.executable, str(PLAIN_APP), "--port", str(port)]
    with run_server(command, f"http://{HOST}:{port}", start_timeout=120, name="plain_app.py") as server:
        yield server.url
