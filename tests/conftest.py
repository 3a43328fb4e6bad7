"""Fixtures shared across the test packages."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture
def settings_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A clean settings world: no cmw or seed env vars, cwd and user/state dirs under tmp_path.

    The working directory moves to tmp_path so a stray .env in the checkout is never read, and
    CMW_PROFILES_DIR points at tmp_path/profiles (created empty). Returns tmp_path.
    """
    from agent.settings import ENV_TO_KEY

    for name in list(os.environ):
        if name in ENV_TO_KEY or name.startswith("CMW_") or name == "GRADIO_DEFAULT_CONCURRENCY_LIMIT":
            monkeypatch.delenv(name)
    (tmp_path / "profiles").mkdir()
    monkeypatch.setenv("CMW_PROFILES_DIR", str(tmp_path / "profiles"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    return tmp_path
