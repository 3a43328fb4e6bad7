"""Where things live: one state-dir answer shared with the server, and the XDG rule (relative paths ignored)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.sessions.store import state_dir as server_state_dir
from agent.settings import Settings, state_dir_path, user_profiles_dir


@pytest.mark.parametrize(
    ("state_home", "state_dir", "expected"),
    [
        ("{tmp}/xdg", None, "{tmp}/xdg/cmw"),
        ("relative/state", None, "{home}/.local/state/cmw"),  # the XDG spec: a relative path is ignored
        ("", None, "{home}/.local/state/cmw"),
        (None, None, "{home}/.local/state/cmw"),
        ("{tmp}/xdg", "{tmp}/own", "{tmp}/own"),  # server.state_dir wins
    ],
)
def test_the_state_dir_is_the_one_the_server_uses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state_home: str | None, state_dir: str | None, expected: str
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    environ = {} if state_home is None else {"XDG_STATE_HOME": state_home.format(tmp=tmp_path)}
    settings = Settings(server={"state_dir": state_dir.format(tmp=tmp_path) if state_dir else None})
    named = state_dir_path(settings, environ)
    assert named == Path(expected.format(tmp=tmp_path, home=home))
    assert not named.exists(), "naming the folder does not create it"
    assert server_state_dir(settings, environ) == named


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"CMW_PROFILES_DIR": "{tmp}/mine", "XDG_CONFIG_HOME": "{tmp}/config"}, "{tmp}/mine"),
        ({"XDG_CONFIG_HOME": "{tmp}/config"}, "{tmp}/config/cmw/profiles"),
        ({"XDG_CONFIG_HOME": "relative/config"}, "{home}/.config/cmw/profiles"),
        ({}, "{home}/.config/cmw/profiles"),
    ],
)
def test_the_user_profiles_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, environ: dict[str, str], expected: str
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    given = {name: value.format(tmp=tmp_path) for name, value in environ.items()}
    assert user_profiles_dir(given) == Path(expected.format(tmp=tmp_path, home=tmp_path / "home"))
