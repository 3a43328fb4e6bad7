"""`cmw proxy-config`: the HAProxy config it prints is valid, and a real HAProxy running it is sticky.

The stickiness test puts HAProxy (skipped when not installed; .ci/run installs it) in front of small
stdlib HTTP servers that answer with their own name, and checks that every route carrying one Gradio
session hash reaches one backend, while different sessions spread over both.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from agent.runtime.proxy import ProxyError, find_haproxy, haproxy_config, local_maxconn, parse_upstream
from cmw_cli.main import app

runner = CliRunner()

try:
    HAPROXY: str | None = find_haproxy()
except ProxyError:
    HAPROXY = None
needs_haproxy = pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed (apt-get install haproxy)")


def test_prints_a_backend_line_per_upstream() -> None:
    result = runner.invoke(app, ["proxy-config", "-u", "http://10.0.0.5:7860", "-u", "10.0.0.6:7861", "--port", "8080"])
    assert result.exit_code == 0, result.output
    assert "bind 0.0.0.0:8080" in result.output
    assert "server w0 10.0.0.5:7860 check" in result.output
    assert "server w1 10.0.0.6:7861 check" in result.output
    assert "hash-type consistent" in result.output
    assert "json_query('$.session_hash')" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-u", "ftp://host:1"], "expected http://HOST:PORT"),
        (["-u", "http://host:99999"], "port is not a number"),
        (["-u", "http://host:1/chat"], "without a path"),
        (["-u", "http://a:1", "-u", "http://a:1"], "listed twice"),
    ],
)
def test_bad_upstreams_are_exit_2_with_one_line(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["proxy-config", *args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


# Unchecked, this --bind made a config `haproxy -c` accepts, with a stats page the operator never asked for.
INJECTED_BIND = "unix@/tmp/cmw-injected.sock\n    stats enable\n    stats uri /haproxy-stats\n    bind 0.0.0.0"


@pytest.mark.parametrize(
    "args",
    [
        ["-u", "http://127.0.0.1:7860", "--bind", INJECTED_BIND],
        ["-u", "http://127.0.0.1:7860", "--bind", "0.0.0.0 ssl crt /etc/shadow"],
        ["-u", "http://127.0.0.1:7860", "--bind", "0.0.0.0\x00"],
        ["-u", "http://127.0.0.1\n    stats enable:7860"],
        ["-u", "http://host name:7860"],
        ["-u", "http://127.0.0.1:7860\tbackup"],
        ["-u", "http://bad$host:7860"],
    ],
)
def test_whitespace_or_control_characters_in_hosts_or_bind_are_exit_2(tmp_path: Path, args: list[str]) -> None:
    out = tmp_path / "haproxy.cfg"
    result = runner.invoke(app, ["proxy-config", *args, "-o", str(out)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert not out.exists()


@needs_haproxy
@pytest.mark.services
def test_an_injected_directive_never_reaches_haproxy(tmp_path: Path) -> None:
    """No config is written for an injected --bind; an honest one still passes `haproxy -c`."""
    out = tmp_path / "haproxy.cfg"
    result = runner.invoke(app, ["proxy-config", "-u", "http://127.0.0.1:7860", "--bind", INJECTED_BIND,
                                 "-o", str(out)])
    assert result.exit_code == 2 and not out.exists()
    honest = runner.invoke(app, ["proxy-config", "-u", "http://127.0.0.1:7860", "-u", "http://app-2.internal:7860",
                                 "--bind", "::", "-o", str(out)])
    assert honest.exit_code == 0, honest.output
    assert "stats" not in out.read_text()
    checked = subprocess.run([HAPROXY, "-c", "-f", str(out)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_upstream_is_required() -> None:
    result = runner.invoke(app, ["proxy-config"])
    assert result.exit_code == 2


def test_out_writes_the_file(tmp_path: Path) -> None:
    out = tmp_path / "haproxy.cfg"
    result = runner.invoke(app, ["proxy-config", "-u", "http://127.0.0.1:7860", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "server w0 127.0.0.1:7860" in out.read_text()


@needs_haproxy
@pytest.mark.services
def test_haproxy_accepts_the_generated_config(tmp_path: Path) -> None:
    out = tmp_path / "haproxy.cfg"
    assert runner.invoke(app, ["proxy-config", "-u", "http://127.0.0.1:7860", "-u", "https://127.0.0.1:7443",
                               "-o", str(out)]).exit_code == 0
    checked = subprocess.run([HAPROXY, "-c", "-f", str(out)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_missing_haproxy_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    monkeypatch.setattr("os.access", lambda path, mode: False)
    with pytest.raises(ProxyError, match=r"install the 'haproxy' package \(apt-get install haproxy\)"):
        find_haproxy()


# ---------------------------------------------------------------- a real HAProxy, sticky


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def echo_backend(name: str) -> Iterator[int]:
    """An HTTP server answering every request with its own name."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            if length:
                self.rfile.read(length)
            body = name.encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer  # noqa: N815

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@contextlib.contextmanager
def running_haproxy(config: str, port: int, workdir: Path) -> Iterator[str]:
    assert HAPROXY is not None
    path = workdir / "haproxy.cfg"
    path.write_text(config)
    proc = subprocess.Popen([HAPROXY, "-db", "-f", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"haproxy exited: {proc.stderr.read().decode() if proc.stderr else ''}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("haproxy did not listen within 20 s")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@needs_haproxy
@pytest.mark.services
@pytest.mark.parametrize("balance", ["least-loaded", "map-based", "consistent"])
def test_every_route_of_a_session_reaches_one_backend(tmp_path: Path, balance: str) -> None:
    with echo_backend("a") as port_a, echo_backend("b") as port_b:
        port = _free_port()
        config = haproxy_config(
            [parse_upstream(f"http://127.0.0.1:{port_a}"), parse_upstream(f"http://127.0.0.1:{port_b}")],
            bind_host="127.0.0.1", bind_port=port, balance=balance,  # type: ignore[arg-type]
            health_checks=balance == "consistent", maxconn=local_maxconn(),
        )
        with running_haproxy(config, port, tmp_path) as url, httpx.Client(base_url=url, timeout=10) as http:
            owners: list[str] = []
            for _ in range(24):
                session = uuid.uuid4().hex[:11]
                big = "x" * 30_000  # a long chat message before the hash, as gradio_client orders the body
                seen = {
                    http.post("/gradio_api/queue/join", content=json.dumps(
                        {"data": [big], "fn_index": 0, "event_data": None, "trigger_id": 1, "session_hash": session}
                    ), headers={"content-type": "application/json"}).text,
                    http.get("/gradio_api/queue/data", params={"session_hash": session}).text,
                    http.get(f"/gradio_api/heartbeat/{session}").text,
                    http.post("/gradio_api/cancel", json={"session_hash": session, "fn_index": 0,
                                                           "event_id": "e"}).text,
                    http.get(f"/admin/api/sessions/{session}").text,
                }
                assert len(seen) == 1, f"session {session} was split over {seen}"
                owners.append(seen.pop())
            assert set(owners) == {"a", "b"}, "24 sessions all went to one backend"
