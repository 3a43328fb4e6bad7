"""`cmw` itself: version, help, exit codes through the console script, and no heavy imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from agent import __version__
from cmw_cli.main import app

runner = CliRunner()
COMMANDS = ("serve", "inspect", "config", "status", "sessions", "loadtest", "smoke", "tune", "sim", "proxy-config")
CONFIG_COMMANDS = ("show", "profiles", "validate", "diff", "init", "path", "set")
HEAVY = ("gradio", "gradio_client", "langchain", "langchain_core", "langchain_openai", "openai")


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout == f"cmw {__version__}\n"


def test_help_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    listed = {line.split()[0] for line in result.stdout.split("Commands:")[1].splitlines() if line.strip()}
    assert listed == set(COMMANDS)


def test_config_help_lists_every_subcommand() -> None:
    result = runner.invoke(app, ["config", "--help"])
    assert result.exit_code == 0
    listed = {line.split()[0] for line in result.stdout.split("Commands:")[1].splitlines() if line.strip()}
    assert listed == set(CONFIG_COMMANDS)


def test_unknown_option_is_exit_2() -> None:
    assert runner.invoke(app, ["config", "show", "--bogus"]).exit_code == 2


def _console_script(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmw = Path(sys.executable).with_name("cmw")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CMW_")}
    env |= {"CMW_PROFILES_DIR": str(tmp_path), "XDG_STATE_HOME": str(tmp_path)}
    return subprocess.run([str(cmw), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)


def test_console_script_runs_config_commands_with_their_exit_codes(tmp_path: Path) -> None:
    shown = _console_script(tmp_path, "config", "show", "-p", "high-performance", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["events.chat_concurrency_limit"]["value"] == 5
    missing = _console_script(tmp_path, "config", "show", "-p", "nope")
    assert missing.returncode == 2
    assert missing.stderr.startswith("error: unknown profile 'nope'") and "Traceback" not in missing.stderr
    usage = _console_script(tmp_path, "config", "--help")
    assert usage.returncode == 0 and usage.stdout.startswith("Usage: cmw config ")


# One interpreter runs every command in turn, so a module any of them imports stays in sys.modules.
PROBE = """
import json, sys
from cmw_cli.main import main
heavy = {heavy!r}
report = {{}}
for args in json.loads(sys.argv[1]):
    sys.argv = ["cmw", *args]
    try:
        main()
    except SystemExit:
        pass
    report[" ".join(args)] = sorted(m for m in sys.modules if m.split(".")[0] in heavy)
print(json.dumps(report), file=sys.__stderr__)
"""


def test_help_and_every_config_command_leave_gradio_langchain_and_openai_unimported(tmp_path: Path) -> None:
    runs = [
        ["--help"],
        ["--version"],
        ["config", "--help"],
        ["config", "show"],
        ["config", "show", "--json", "--set", "server.max_threads=2"],
        ["config", "show", "-p", "nope"],
        ["config", "profiles"],
        ["config", "profiles", "--json"],
        ["config", "validate"],
        ["config", "diff", "balanced", "high-performance"],
        ["config", "init", "probe", "--from", "constrained"],
        ["config", "path"],
        ["config", "set", "events.chat_concurrency_limit=3", "--live", "--url", "http://127.0.0.1:9", "--token", "t"],
        ["config", "show", "--url", "http://127.0.0.1:9", "--token", "t"],
    ]
    runs += [["config", name, "--help"] for name in CONFIG_COMMANDS]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CMW_")}
    env |= {"CMW_PROFILES_DIR": str(tmp_path), "XDG_STATE_HOME": str(tmp_path)}
    probe = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), json.dumps(runs)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = json.loads(probe.stderr.strip().splitlines()[-1])
    assert list(report) == [" ".join(args) for args in runs]
    assert {args: modules for args, modules in report.items() if modules} == {}


GC_PROBE = """
import gc, sys
from cmw_cli.__main__ import run
sys.argv = ["cmw", *sys.argv[1:]]
try:
    run()
except SystemExit:
    pass
print("gc", "on" if gc.isenabled() else "off", file=sys.__stderr__)
"""


def test_console_script_pauses_gc_only_for_commands_that_just_print(tmp_path: Path) -> None:
    def gc_after(*args: str) -> str:
        probe = subprocess.run(
            [sys.executable, "-c", GC_PROBE, *args], cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        return probe.stderr.strip().splitlines()[-1]

    assert gc_after("config", "path") == "gc off"
    # A long-running command (here stopped early by a bad port) must run with the collector on.
    assert gc_after("sim", "--port", "-1") == "gc on"
