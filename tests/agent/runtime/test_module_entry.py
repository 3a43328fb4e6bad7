"""`python -m agent` serves the app without the CLI, with settings from the environment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from gradio_client import Client

from tests.servers import free_port, wait_until_ready

pytestmark = pytest.mark.server


def test_python_m_agent_serves_with_the_environments_profile(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CMW_", "GRADIO_"))}
    env.update({"CMW_PROFILE": "constrained", "CMW_SERVER__PORT": str(port), "CMW_SERVER__STATE_DIR": str(tmp_path),
                "CMW_SIM__TTFT_MS": "0", "CMW_SIM__REPLY_TOKENS": "3"})
    log_path = tmp_path / "agent.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "agent"], stdout=log, stderr=subprocess.STDOUT, env=env,
                                cwd=tmp_path)
    try:
        wait_until_ready(f"http://127.0.0.1:{port}", proc, log_path)
        client = Client(f"http://127.0.0.1:{port}", verbose=False)
        client.predict("hello", api_name="/chat")
        stats = client.predict(api_name="/stats")
        assert stats["server"]["profile"] == "constrained"
        assert stats["server"]["events"]["chat"]["limit"] == 1
        assert stats["this_session"]["turns"] == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_python_m_agent_rejects_bad_settings_with_exit_2(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CMW_", "GRADIO_"))}
    env["CHAT_CONCURRENCY_LIMIT"] = "zero"
    done = subprocess.run([sys.executable, "-m", "agent"], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=60)
    assert done.returncode == 2
    assert "CHAT_CONCURRENCY_LIMIT" in done.stderr and "Traceback" not in done.stderr
