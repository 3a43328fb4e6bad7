"""The wheel: built by hatchling, it ships the profiles as agent/profiles and finds them from anywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.server  # builds and installs a wheel in subprocesses

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ("balanced", "constrained", "high-performance")

# Runs against the unpacked wheel only: the checkout is neither the cwd nor on PYTHONPATH.
PROBE = """
import json
import agent, cmw_cli.main
from agent.settings import available_profiles, load_settings, shipped_profiles_dir
loaded = load_settings("balanced", environ={}, env_file=None)
print(json.dumps({
    "agent": agent.__file__,
    "cli": cmw_cli.main.__file__,
    "shipped": str(shipped_profiles_dir()),
    "available": {name: str(path) for name, path in available_profiles().items()},  # XDG_CONFIG_HOME: a tmp dir
    "profile": str(loaded.profile_path),
    "chat": loaded.settings.events.chat_concurrency_limit,
}))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (path,) = out.glob("cmw-*.whl")
    return path


def test_wheel_carries_both_packages_the_profiles_and_the_console_script(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"agent/settings/__init__.py", "agent/settings/model.py", "cmw_cli/main.py", "cmw_cli/config.py"} <= names
    assert {f"agent/profiles/{name}.toml" for name in PROFILES} <= names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "cmw = cmw_cli.__main__:run" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_installed_wheel_finds_its_profiles_from_another_directory(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CMW_")}
    env |= {"PYTHONPATH": str(site), "XDG_CONFIG_HOME": str(tmp_path / "config")}
    probe = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=60
    )
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout)
    for module in ("agent", "cli", "shipped", "profile"):
        assert Path(found[module]).is_relative_to(site), (module, found[module])
    assert Path(found["shipped"]) == site / "agent" / "profiles"
    assert found["available"] == {name: str(site / "agent" / "profiles" / f"{name}.toml") for name in PROFILES}
    assert found["chat"] == 3
