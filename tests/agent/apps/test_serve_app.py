"""`cmw serve APP`: an operator's Gradio app under a profile's limits, over real HTTP."""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from agent.app.admin import token_path
from cmw_cli.main import app as cli
from tests.raw import call as raw_call
from tests.raw import event
from tests.servers import RunningServer, cmw_server

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[3]
COUNTING = Path(__file__).resolve().parent / "fixtures" / "counting_app.py"
AUTH = ("operator", "s3cret-pass")
runner = CliRunner()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with cmw_server(tmp_path_factory.mktemp("app"), f"server.app={COUNTING}", "events.limits.work=2") as running:
        yield running


@pytest.fixture(scope="module")
def session(served: RunningServer) -> Iterator[httpx.Client]:
    """A client logged in with the app's own auth (from its unguarded launch(auth=...))."""
    with httpx.Client(base_url=served.url, timeout=30) as client:
        login = client.post("/login", data={"username": AUTH[0], "password": AUTH[1]})
        assert login.status_code == 200, login.text
        yield client


def call(client: httpx.Client, api_name: str, data: list[object]) -> object:
    """Gradio's /call API: POST the inputs, then read the event's outcome from its stream."""
    started = client.post(f"/gradio_api/call/{api_name}", json={"data": data})
    assert started.status_code == 200, started.text
    event_id = started.json()["event_id"]
    with client.stream("GET", f"/gradio_api/call/{api_name}/{event_id}") as stream:
        lines = [line for line in stream.iter_lines() if line.startswith("data:")]
    return json.loads(lines[-1][5:])


def test_the_apps_auth_is_kept(served: RunningServer) -> None:
    assert httpx.post(f"{served.url}/login", data={"username": AUTH[0], "password": "wrong"}).status_code == 400
    with httpx.Client(base_url=served.url) as stranger:
        assert stranger.post("/gradio_api/call/work", json={"data": ["x"]}).status_code == 401


def test_in_flight_events_reach_but_never_exceed_the_profile_limit(session: httpx.Client) -> None:
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        outcomes = list(pool.map(lambda n: call(session, "work", [f"job {n}"]), range(6)))
    assert outcomes == [[f"done job {n}"] for n in range(6)]
    assert call(session, "peak", []) == ["2"]  # counted inside the app: the profile's events.limits.work


def test_the_run_route_is_closed(session: httpx.Client) -> None:
    assert session.post("/gradio_api/run/work", json={"data": ["x"]}).status_code == 404


def test_status_metrics_and_inspect_agree_with_what_the_app_runs(served: RunningServer) -> None:
    token = token_path(served.state_dir).read_text().strip()
    queue = httpx.get(f"{served.url}/admin/api/queue", headers={"Authorization": f"Bearer {token}"}).json()
    assert {name: fig["limit"] for name, fig in queue["events"].items()} == {"work": 2, "peak": 5}
    metrics = httpx.get(f"{served.url}/metrics").text
    limits = {s.labels["event"]: s.value for f in text_string_to_metric_families(metrics) for s in f.samples
              if s.name == "cmw_queue_limit"}
    assert limits == {"work": 2.0, "peak": 5.0}
    status = runner.invoke(cli, ["status", "--url", served.url, "--token", token, "--json"])
    assert status.exit_code == 0, status.output
    assert set(json.loads(status.stdout)["queue"]["events"]) == {"work", "peak"}
    inspected = runner.invoke(cli, ["inspect", str(COUNTING), "--set", "events.limits.work=2", "--json"])
    assert inspected.exit_code == 0, inspected.output
    assert {e["api_name"]: e["limit"] for e in json.loads(inspected.stdout)["events"]} == {"work": 2, "peak": 5}


def test_sessions_list_shows_the_apps_sessions(served: RunningServer, session: httpx.Client) -> None:
    call(session, "peak", [])
    token = token_path(served.state_dir).read_text().strip()
    listed = runner.invoke(cli, ["sessions", "list", "--url", served.url, "--token", token, "--json"])
    assert listed.exit_code == 0, listed.output
    sessions = json.loads(listed.stdout)
    assert sessions and all(s["events"] >= 1 and s["state"] in ("running", "idle") for s in sessions)
    table = runner.invoke(cli, ["sessions", "list", "--url", served.url, "--token", token])
    assert table.exit_code == 0 and "events" in table.stdout and sessions[0]["id"][:8] in table.stdout
    metrics = httpx.get(f"{served.url}/metrics").text
    active = [s.value for f in text_string_to_metric_families(metrics) for s in f.samples
              if s.name == "cmw_sessions_active"]
    assert active == [float(len(sessions))]


@pytest.mark.parametrize(
    ("source", "spec", "says"),
    [
        (None, "no/such/app.py", "no such file no/such/app.py"),
        ("import gradio as gr\n1 / 0\n", "broken.py", "broken.py failed while importing: ZeroDivisionError"),
        ("x = 1\n", "empty.py", "defines no gradio Blocks"),
        ("import gradio as gr\na = gr.Blocks()\nb = gr.Blocks()\n", "two.py", "several Gradio apps (a, b)"),
        ("import gradio as gr\ndemo = gr.Blocks()\n", "attr.py:nope", "has no attribute 'nope'"),
    ],
)
def test_a_bad_app_exits_2_with_one_line(tmp_path: Path, source: str | None, spec: str, says: str) -> None:
    if source is not None:
        (tmp_path / spec.partition(":")[0]).write_text(source, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "cmw_cli", "serve", spec, "--port", "0", "--set", f"server.state_dir={tmp_path}/st"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and says in errors[0], done.stderr
    if "ZeroDivisionError" in says:  # the app's own traceback, not cmw's
        assert "broken.py" in done.stderr and "line 2" in done.stderr and "agent/app" not in done.stderr


BLOCKS = ROOT / "examples" / "blocks_app.py"


@pytest.mark.services
def test_workers_serve_the_app_given_as_the_argument(tmp_path: Path) -> None:
    from agent.runtime.proxy import find_haproxy

    if find_haproxy() is None:
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    with cmw_server(tmp_path, "events.limits.tool_*=2", extra_args=(str(BLOCKS), "--workers", "2")) as server:
        upper = event(server.url, api_name="tool_upper")
        outcomes = [raw_call(server.url, upper.fn_index, [f"w{n}"], f"sticky-{n}") for n in range(4)]
        assert [(o.ok, o.outputs) for o in outcomes] == [(True, [f"W{n}"]) for n in range(4)]
        token = token_path(server.state_dir).read_text().strip()
        with httpx.Client(base_url=server.url, timeout=30) as client:  # /call: no session hash, one client
            called = [call(client, "tool_upper", [f"c{n}"]) for n in range(4)]
        assert called == [[f"C{n}"] for n in range(4)]
        admin = {"Authorization": f"Bearer {token}"}
        queue = httpx.get(f"{server.url}/admin/api/queue", headers=admin).json()
        sessions = httpx.get(f"{server.url}/admin/api/sessions", headers=admin).json()
        killed = httpx.delete(f"{server.url}/admin/api/sessions/sticky-3", headers=admin)
    assert queue["events"]["tool_upper"]["limit"] == 4 and len(queue["workers"]) == 2  # each worker's pool of 2
    listed = {s["id"]: s["events"] for s in sessions}  # every worker's: the sticky ones and the /call ones
    assert {k: v for k, v in listed.items() if k.startswith("sticky-")} == {f"sticky-{n}": 1 for n in range(4)}
    assert len(listed) == 8
    assert killed.json() == {"id": "sticky-3", "ended": "killed", "cancelled": 0}  # found on its worker


@pytest.mark.services
def test_an_app_with_its_own_login_is_refused_with_several_workers(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cmw_cli", "serve", str(COUNTING), "--port", "0", "--workers", "2",
         "--set", f"server.state_dir={tmp_path}/st"], capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert done.returncode == 4 and "Gradio keeps logins in each process" in done.stderr
